"""State after lists: ``kill -9`` between a chunk's acknowledged lists and its state write.

A chunk's lists are published first and its user states written to the table (and so its
changelog) only once the broker has acknowledged them (``StreamrecWorker._write_states`` in
``streams/app.py``). A crash in between must cost a second list, never state. The window is
real but microseconds wide, so the worker here runs with ``paused_writer.py``: after the ack
it marks the pause in a file and waits before writing (an injected delay; everything else is
real). The test kills it there, while a second batch waits behind the paused chunk, and
starts a plain worker on the same group and disk. The paused chunk's events were never
committed and are not in any state, so they are processed again and each gets exactly one
more list; every other event gets one list; and every user's final state (the last changelog
value, what any later owner restores) equals one uninterrupted pass over the same events:
``count`` is the user's number of events, nothing lost and nothing applied twice.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

from faultkit import (RECOVERABLE, STATE_FLAGS, Outcome, TopicReader, Workload, assert_states_equal, changelog_topic,
                      event_records, kill9, last_states, output_ids, publish, publish_items, reference_states,
                      states_cover, wait_quiet)
from harness import fresh_topics, start_worker, stop_worker

from streams.settings import KafkaConfig

USERS = 5
PER_USER = 8  # 40 clicks in all
FIRST = 20  # published before the worker starts; the rest while it is held in the pause
PAUSE_S = 30.0


def _clicks(workload: Workload) -> Workload:
    """The first ``PER_USER`` events of the ``USERS`` most active users, all as clicks, in event-time order."""
    by_user = workload.by_user()
    top = sorted(by_user, key=lambda u: (-len(by_user[u]), u))[:USERS]
    assert all(len(by_user[u]) >= PER_USER for u in top)
    keep = {e.event_id for u in top for e in by_user[u][:PER_USER]}
    events = [replace(e, kind="click", text=None, rating=None) for e in workload.events if e.event_id in keep]
    return Workload(items=workload.items, events=events)


def _pauses(marker: Path) -> list[dict]:
    """The pauses the worker has marked so far (complete lines only)."""
    if not marker.is_file():
        return []
    return [json.loads(ln) for ln in marker.read_text().splitlines(keepends=True) if ln.endswith("\n")]


def _wait_paused(marker: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := _pauses(marker):
            return got[0]
        time.sleep(0.1)
    raise TimeoutError(f"no chunk paused before its state write within {timeout_s:.0f}s")


def test_kill_9_between_acked_lists_and_state_write(broker, model_dir, state_encoder, workload, tmp_path):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka)
    clicks = _clicks(workload)
    events = clicks.events
    reference = reference_states(state_encoder, clicks)
    publish_items(kafka, topics, clicks.items)
    app_id = f"after-lists-{uuid.uuid4().hex[:8]}"
    flags = (*STATE_FLAGS, *RECOVERABLE)
    disk = tmp_path / "w"  # the restarted worker gets the killed one's state directory, as on one machine
    marker = tmp_path / "paused"
    started = time.perf_counter()
    # the first batch waits for the worker, so that its first chunk (the one paused) takes in several
    # users' events at once rather than the first record to arrive
    publish(kafka, event_records(topics, events[:FIRST]))
    paused = start_worker(kafka, topics, model_dir, disk, *flags, app_id=app_id, entry="tests.faults.paused_writer",
                          env={"STREAMREC_PAUSE_S": str(PAUSE_S), "STREAMREC_PAUSE_MARKER": str(marker)})
    plain = None
    try:
        with TopicReader(kafka, topics.recommendations) as out:
            pause = _wait_paused(marker, 180)
            out.wait(lambda rs: len(rs) >= pause["lists"], 60, "the paused chunk's lists")
            publish(kafka, event_records(topics, events[FIRST:]))  # queued behind the paused chunk
            kill9(paused.proc)
            killed_at = time.time()
            # the premise: the kill landed inside the one pause, after the ack and before any write
            assert killed_at - pause["at"] < PAUSE_S - 1, killed_at - pause["at"]
            assert len(_pauses(marker)) == 1 and pause["lists"] > 0
            time.sleep(1.0)
            before = output_ids(out.snapshot())
            assert sum(before.values()) == pause["lists"]  # only the paused chunk's lists went out
            assert len({e.user_id for e in events if e.event_id in before}) == pause["users"]

            plain = start_worker(kafka, topics, model_dir, disk, *flags, app_id=app_id)
            wanted = {e.event_id for e in events}
            out.wait(lambda rs: wanted <= set(output_ids(rs)), 240, "a list for every event after the restart")
            counts = wait_quiet([plain], quiet_s=3.0)
            time.sleep(1.0)
            ids = output_ids(out.snapshot())
        by_user = clicks.by_user()
        with TopicReader(kafka, changelog_topic(app_id)) as log:
            users = {u: {e.event_id for e in evs} for u, evs in by_user.items()}
            states = last_states(log.wait(lambda rs: states_cover(rs, users), 120, "every event in the state"))
    finally:
        stop_worker(paused)
        if plain is not None:
            stop_worker(plain)

    # (a) every event has a list, and nothing else does
    assert set(ids) == wanted
    # (b) the paused chunk's events were processed again (their state write was lost with the
    # worker): one more list each, counted; the events queued behind it got exactly one
    again = {i: n for i, n in ids.items() if i in before}
    assert set(again.values()) == {2}, again
    assert {n for i, n in ids.items() if i not in before} == {1}
    # the restarted worker applied every event (none was in a state yet), none as a duplicate
    assert counts["streamrec_events_total"] == len(events) and counts["streamrec_duplicates_total"] == 0, counts
    # (c) each user's state is one uninterrupted pass: every event applied exactly once
    worst = assert_states_equal(states, reference)
    assert {u: s.count for u, s in states.items()} == {u: len(evs) for u, evs in by_user.items()}

    Outcome("kill -9 between acked lists and state write", events_in=len(events), processed=len(ids),
            duplicates=0, dead_letters=0, lost=len(wanted - set(ids)), seconds=time.perf_counter() - started,
            extra={"lists_before_kill": len(before), "users_in_paused_chunk": pause["users"],
                   "lists_republished": sum(ids.values()) - len(ids), "max_vector_diff": worst}).report()
