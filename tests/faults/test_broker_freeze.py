"""Broker unavailable: the broker stops answering for 20 s, then comes back.

The embedded broker's process is frozen (SIGSTOP) and thawed (SIGCONT): its storage is in
memory, so a restart would wipe the topics. This test runs its own broker, since freezing
the session's broker would stall every other test.

While the broker is frozen a producer keeps sending (its client buffers and retries), the
workers' fetches, heartbeats, commits and sends hang. In-flight output is not lost: a list
handed to the producer before or during the freeze waits in the producer (Faust allows
``producer_request_timeout``, 20 minutes) and is delivered when the broker answers again,
and the user state behind it is written only after that list is acknowledged. Afterwards the
group rebalances (the broker saw no heartbeat for longer than the session timeout); events
whose offsets were not committed are delivered again and dropped by the event-id check.
"""
from __future__ import annotations

import threading
import time
import uuid

from faultkit import (RECOVERABLE, STATE_FLAGS, Outcome, TopicReader, assert_states_equal, changelog_topic,
                      event_records, last_states, output_ids, publish_events, publish_items, start_group,
                      states_cover, wait_assignment, wait_quiet)
from harness import fresh_topics, stop_worker

from streams.broker import EmbeddedBroker, free_port
from streams.replay import producer
from streams.settings import KafkaConfig

FREEZE_S = 20.0


def test_broker_frozen_for_20s_loses_nothing(model_dir, workload, reference, tmp_path):
    with EmbeddedBroker(port=free_port()) as broker:
        kafka = KafkaConfig(broker.bootstrap)
        topics = fresh_topics(kafka)
        publish_items(kafka, topics, workload.items)
        app_id = f"freeze-{uuid.uuid4().hex[:8]}"
        workers = start_group(kafka, topics, model_dir, tmp_path, 2, *STATE_FLAGS, *RECOVERABLE, app_id=app_id)
        started = time.perf_counter()
        before, during, after = workload.split(1 / 3, 1 / 3)
        try:
            wait_assignment(workers)
            with TopicReader(kafka, topics.recommendations) as out:
                publish_events(kafka, topics, before)
                out.wait(lambda rs: {e.event_id for e in before} <= set(output_ids(rs)), 240, "lists before the freeze")

                # keep producing across the freeze: half a second of events before it, the rest while frozen
                records = event_records(topics, during)

                errors: list[BaseException] = []

                def paced() -> None:  # one client, a steady trickle that goes on while the broker is frozen
                    try:
                        prod = producer(kafka, request_timeout_ms=90_000, retries=1_000_000)
                        for topic, key, value in records:
                            prod.send(topic, key=key, value=value)
                            time.sleep(FREEZE_S / 2 / len(records))
                        prod.flush()
                        prod.close()
                    except BaseException as exc:  # noqa: BLE001 - reported by the test below
                        errors.append(exc)

                sender = threading.Thread(target=paced, daemon=True)
                sender.start()
                time.sleep(0.5)
                frozen_at = time.time()
                broker.pause()
                try:
                    time.sleep(FREEZE_S)
                    assert all(w.proc.poll() is None for w in workers)  # the workers wait; none gives up
                finally:
                    broker.resume()
                thawed_at = time.time()
                sender.join(180)
                assert not sender.is_alive() and not errors, f"the producer failed across the freeze: {errors}"
                publish_events(kafka, topics, after)
                out.wait(lambda rs: {e.event_id for e in workload.events} <= set(output_ids(rs)), 300,
                         "a list for every event after the freeze")
                counts = wait_quiet(workers)
                time.sleep(1.0)
                recs = out.json()

            assert all(w.proc.poll() is None for w in workers)
            ids = output_ids(recs)
            assert set(ids) == {e.event_id for e in workload.events}  # no event lost
            users = {u: {e.event_id for e in evs} for u, evs in workload.by_user().items()}
            with TopicReader(kafka, changelog_topic(app_id)) as log:
                states = last_states(log.wait(lambda rs: states_cover(rs, users), 120, "every event in the state"))
            worst = assert_states_equal(states, reference)  # every event applied once
            held = [r for r in recs if frozen_at <= r["published_at"] <= thawed_at]
        finally:
            for w in workers:
                stop_worker(w)

    Outcome("broker frozen 20 s", events_in=len(workload.events), processed=len(ids),
            duplicates=int(counts["streamrec_duplicates_total"]),
            dead_letters=int(counts["streamrec_dead_letters_total"]), lost=len(workload.events) - len(ids),
            seconds=time.perf_counter() - started,
            extra={"lists_published": len(recs), "lists_republished": len(recs) - len(ids),
                   "lists_handed_to_producer_while_frozen": len(held),
                   "events_applied_by_workers": int(counts["streamrec_events_total"]),
                   "sent_while_frozen": len(during), "max_vector_diff": worst}).report()
