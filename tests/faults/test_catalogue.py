"""The catalogue and the dead letters: records that arrive while it loads, items deleted later.

README ("Catalogue record", "Guarantees"): a worker processes no event before its catalogue is
loaded, so no valid event is rejected as an unknown item because the worker has just started,
and records waiting meanwhile are a backlog, not a stall; an item deleted (tombstone) leaves
every later list, events about it are then dead-lettered ``unknown_item``; and a rejected
record's dead letter is written once per source offset, across re-reads and restarts.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import replace

from faultkit import (RECOVERABLE, TopicReader, dead_letter_sources, event_records, interleave_broken, output_ids,
                      partition_of, publish, publish_items, rewind_group, wait_committed, wait_quiet)
from harness import fresh_topics, is_ready, start_worker, stop_worker, wait_ready

from streams.settings import KafkaConfig
from streams.transport import STALL_AFTER_S

BROKEN = 12
LOAD_ENCODE_S = 6.0  # per encoder call of the restarted worker: its 60-item catalogue takes two calls


def _clicks(events):
    return [replace(e, kind="click", text=None, rating=None) for e in events]


def test_records_sent_while_the_catalogue_loads_wait_for_it_and_are_dead_lettered_once(
        broker, model_dir, workload, tmp_path):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka)
    publish_items(kafka, topics, workload.items)
    clicks = _clicks(workload.events)
    warm, later = clicks[:120], clicks[120:420]
    unknown = [replace(e, item_id="not-in-the-catalogue", event_id=f"{e.event_id}-unknown") for e in later[:6]]
    app_id = f"cat-{uuid.uuid4().hex[:8]}"
    w = start_worker(kafka, topics, model_dir, tmp_path / "w", *RECOVERABLE, app_id=app_id)
    try:  # a first run, so that every partition has a committed offset (a restarted group)
        with TopicReader(kafka, topics.recommendations) as out:
            publish(kafka, event_records(topics, warm))
            out.wait(lambda rs: {e.event_id for e in warm} <= set(output_ids(rs)), 120, "lists of the first run")
        ends = Counter((topics.clicks, partition_of(e.user_id.encode(), 6)) for e in warm)
        wait_committed(kafka, app_id, dict(ends), 60, "the first run committed")
    finally:
        stop_worker(w)

    records = interleave_broken(event_records(topics, later + unknown), topics, BROKEN)
    with TopicReader(kafka, topics.recommendations) as out, TopicReader(kafka, topics.dead_letters) as dlq:
        w = start_worker(kafka, topics, model_dir, tmp_path / "w", *RECOVERABLE, app_id=app_id, wait=False,
                         entry="tests.faults.slow_encoder", env={"STREAMREC_FAKE_ENCODE_S": str(LOAD_ENCODE_S)})
        try:
            publish(kafka, records)  # the worker is starting: its catalogue is not loaded yet
            arrived_while_loading = not is_ready(w)
            t0 = time.monotonic()
            wait_ready(w)
            loading_s = time.monotonic() - t0
            wanted = {e.event_id for e in later}
            out.wait(lambda rs: wanted <= set(output_ids(rs)), 120, "a list for every valid event")
            dlq.wait(lambda rs: len(dead_letter_sources(rs)) >= BROKEN + len(unknown), 60, "the dead letters")
            counts = wait_quiet([w])
            time.sleep(1.0)  # a dead letter or list written twice would arrive now
            dead = dlq.snapshot()
            recs = out.json()
            rereads = w.metric("streamrec_rereads_total")
        finally:
            stop_worker(w)

    assert arrived_while_loading and loading_s > STALL_AFTER_S + 1, loading_s  # the premise
    reasons = Counter(json.loads(r.value)["reason"] for r in dead)
    sources = dead_letter_sources(dead)
    assert set(sources.values()) == {1}, sources.most_common(3)  # each dead letter once
    assert len(sources) == BROKEN + len(unknown)
    # no valid event was rejected as unknown: the only unknown items are the invented one and the broken kind
    unknown_letters = [json.loads(r.value) for r in dead if json.loads(r.value)["reason"] == "unknown_item"]
    assert all("not-in-the-catalogue" in d["detail"] or "no-such-item" in d["detail"] for d in unknown_letters)
    assert reasons["unknown_item"] >= len(unknown)
    ids = output_ids(recs)
    assert wanted <= set(ids) and set(ids.values()) == {1}
    assert rereads == 0 and counts["streamrec_duplicates_total"] == 0
    assert counts["streamrec_events_total"] == len(later)


def test_events_for_a_deleted_item_are_dead_lettered_once_and_it_leaves_the_lists(
        broker, model_dir, workload, tmp_path):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka)
    publish_items(kafka, topics, workload.items)
    clicks = _clicks(workload.events)[:200]
    gone = Counter(e.item_id for e in clicks).most_common(1)[0][0]  # an item with events before its deletion
    users = sorted({e.user_id for e in clicks})[:5]
    t_after = max(e.event_time for e in clicks) + 60
    after = [replace(clicks[0], user_id=u, item_id=gone, event_time=t_after, event_id=f"{u}-after-delete")
             for u in users]  # events about the item once it is deleted
    others = [i.item_id for i in workload.items if i.item_id != gone]
    check = [replace(clicks[0], user_id=u, item_id=others[k], event_time=t_after + 1, event_id=f"{u}-check")
             for k, u in enumerate(users)]  # later lists of the same users
    app_id = f"del-{uuid.uuid4().hex[:8]}"
    with TopicReader(kafka, topics.recommendations) as out, TopicReader(kafka, topics.dead_letters) as dlq:
        w = start_worker(kafka, topics, model_dir, tmp_path / "w", *RECOVERABLE, app_id=app_id)
        try:
            publish(kafka, event_records(topics, clicks))
            out.wait(lambda rs: {e.event_id for e in clicks} <= set(output_ids(rs)), 120, "lists before the delete")
            assert any(gone == i["item_id"] for r in out.json() for i in r["items"])  # it was being recommended
            publish(kafka, [(topics.items, gone.encode(), None)])  # tombstone
            deadline = time.monotonic() + 60
            while w.metric('streamrec_catalogue_updates_total{op="delete"}') < 1:
                assert time.monotonic() < deadline, "the worker did not apply the delete"
                time.sleep(0.2)
            publish(kafka, event_records(topics, after + check))
            out.wait(lambda rs: {e.event_id for e in check} <= set(output_ids(rs)), 60, "lists after the delete")
            dlq.wait(lambda rs: len(rs) >= len(after), 60, "dead letters of the events about the deleted item")
            first = wait_quiet([w])
        finally:
            stop_worker(w)
        lists_before = len(out.snapshot())

        # read everything again: the events about the item from before its deletion are duplicates
        # (not unknown items now), and those from after it are not dead-lettered a second time
        rewind_group(kafka, app_id, topics.event_topics(), 6)
        w = start_worker(kafka, topics, model_dir, tmp_path / "w", *RECOVERABLE, app_id=app_id)
        try:
            n = len(clicks) + len(after) + len(check)
            deadline = time.monotonic() + 120
            while w.metric("streamrec_duplicates_total") < n and time.monotonic() < deadline:
                time.sleep(0.3)
            second = wait_quiet([w])
            time.sleep(1.0)
            dead, recs = dlq.snapshot(), out.json()
        finally:
            stop_worker(w)

    letters = [json.loads(r.value) for r in dead]
    assert len(letters) == len(after) and {d["reason"] for d in letters} == {"unknown_item"}
    assert set(dead_letter_sources(dead).values()) == {1}
    assert first["streamrec_events_total"] == len(clicks) + len(check)
    later = [r for r in recs if r["trigger"]["event_id"] in {e.event_id for e in check}]
    assert len(later) == len(check) and all(gone not in [i["item_id"] for i in r["items"]] for r in later)
    assert second["streamrec_dead_letters_total"] == 0 and second["streamrec_events_total"] == 0
    assert second["streamrec_duplicates_total"] == n
    assert len(recs) == lists_before
