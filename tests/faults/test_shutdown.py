"""Bounded shutdown: SIGTERM ends a worker within 30 s while the broker is frozen.

The broker (its own, as in ``test_broker_freeze``) is frozen with SIGSTOP mid-stream, a real
fault: the worker's fetches, sends and commits hang. A graceful Faust stop would then wait for
the producer's request timeout (20 minutes); the worker must end within 30 s anyway (its
``--shutdown-timeout``, 20 s by default). The broker is thawed and the worker started again
on the same disk. What it had processed but not committed is delivered again and counted:
every record from the committed offsets on is processed, dropped as a duplicate, or
dead-lettered (each processed or dead-lettered at most once; a record delivered twice is one
more duplicate); nothing is lost (a list for every event) and every user's state equals a
single uninterrupted pass.
"""
from __future__ import annotations

import signal
import time
import uuid

from faultkit import (RECOVERABLE, STATE_FLAGS, Outcome, TopicReader, assert_states_equal, changelog_topic,
                      committed_offsets, event_records, interleave_broken, last_states, output_ids, publish,
                      publish_items, states_cover, wait_quiet)
from harness import fresh_topics, start_worker, stop_worker

from streams.app import EXIT_SHUTDOWN_TIMEOUT
from streams.broker import EmbeddedBroker, free_port
from streams.settings import KafkaConfig

BROKEN = 12
BOUND_S = 30.0


def test_sigterm_with_the_broker_frozen_ends_within_30s_and_loses_nothing(model_dir, workload, reference, tmp_path):
    with EmbeddedBroker(port=free_port()) as broker:
        kafka = KafkaConfig(broker.bootstrap)
        topics = fresh_topics(kafka)
        publish_items(kafka, topics, workload.items)
        app_id = f"shutdown-{uuid.uuid4().hex[:8]}"
        flags = (*STATE_FLAGS, *RECOVERABLE)
        before, rest = workload.split(0.3)
        first = event_records(topics, before)
        second = interleave_broken(event_records(topics, rest), topics, BROKEN)
        started = time.perf_counter()
        w = start_worker(kafka, topics, model_dir, tmp_path / "w", *flags, app_id=app_id)
        try:
            with TopicReader(kafka, topics.recommendations) as out:
                publish(kafka, first)
                out.wait(lambda rs: {e.event_id for e in before} <= set(output_ids(rs)), 240, "lists of the first part")
                publish(kafka, second)
                out.wait(lambda rs: len(rs) >= len(first) + 40, 120, "the worker busy with the second part")
                broker.pause()
                try:
                    t0 = time.monotonic()
                    w.proc.send_signal(signal.SIGTERM)
                    try:
                        rc = w.proc.wait(BOUND_S + 30)
                    except Exception:  # noqa: BLE001 - reported below
                        rc = None
                    stopped_s = time.monotonic() - t0
                finally:
                    broker.resume()
                log = w.log_path.read_text(errors="replace")
                assert rc is not None and stopped_s < BOUND_S, (rc, stopped_s, log[-3000:])
                assert rc in (0, EXIT_SHUTDOWN_TIMEOUT), (rc, log[-3000:])

                committed = committed_offsets(kafka, app_id)  # what the stopped worker managed to commit
                redelivered = len(first) + len(second) - sum(committed.values())
                w = start_worker(kafka, topics, model_dir, tmp_path / "w", *flags, app_id=app_id)  # same disk
                out.wait(lambda rs: {e.event_id for e in workload.events} <= set(output_ids(rs)), 240,
                         "a list for every event after the restart")
                counts = wait_quiet([w])
                deadline = time.monotonic() + 60
                while sum(counts.values()) < redelivered and time.monotonic() < deadline:  # all of it accounted
                    time.sleep(0.3)
                    counts = wait_quiet([w], quiet_s=1.0)
                recs = out.json()
            users = {u: {e.event_id for e in evs} for u, evs in workload.by_user().items()}
            with TopicReader(kafka, changelog_topic(app_id)) as changelog:
                states = last_states(changelog.wait(lambda rs: states_cover(rs, users), 120,
                                                    "every event in the state"))
        finally:
            stop_worker(w)

    # the restarted worker accounted for everything delivered to it again (a record delivered twice
    # there, as Faust's recovery can, is one more duplicate), each record processed or dead-lettered
    # at most once...
    accounted = sum(counts.values())
    assert redelivered > 0
    assert counts["streamrec_events_total"] + counts["streamrec_dead_letters_total"] <= redelivered, counts
    assert redelivered <= accounted <= redelivered + redelivered // 2, (counts, redelivered)
    ids = output_ids(recs)
    assert set(ids) == {e.event_id for e in workload.events}  # ...lost nothing...
    worst = assert_states_equal(states, reference)  # ...and applied every event once
    assert sum(s.count for s in states.values()) == len(workload.events)

    Outcome("SIGTERM with the broker frozen", events_in=len(first) + len(second), processed=len(ids),
            duplicates=int(counts["streamrec_duplicates_total"]),
            dead_letters=int(counts["streamrec_dead_letters_total"]), lost=len(workload.events) - len(ids),
            seconds=time.perf_counter() - started,
            extra={"stopped_in_s": round(stopped_s, 1), "exit_status": rc, "redelivered": redelivered,
                   "accounted_after_restart": int(accounted),
                   "processed_after_restart": int(counts["streamrec_events_total"]),
                   "lists_republished": len(recs) - len(ids), "max_vector_diff": worst}).report()
