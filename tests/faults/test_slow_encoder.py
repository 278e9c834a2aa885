"""Backlog: 2,000 reviews queued behind a slow encoder are a backlog, never a stall.

The encoder is the one fake here (``slow_encoder.py``: each call sleeps 0.25 s; an encoder
slower than its input is a real condition that a test cannot produce on demand and size);
broker, worker process, Faust and Kafka I/O are real. After a first wave has been processed
and committed on every partition, 1,000 reviews for three partitions are sent, and then 1,000
for the other three, which wait in the worker's buffers behind the first thousand for longer
than the stall guard's window. The stall guard must not take that wait for a stall: no
partition is read again (``streamrec_rereads_total`` stays 0, no "stalled" line in the log), so
no event is delivered twice (0 duplicates) and every review gets exactly one list.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter

from faultkit import (Outcome, TopicReader, event_records, output_ids, partition_of, publish, publish_items,
                      wait_committed, wait_quiet)
from harness import fresh_topics, start_worker, stop_worker

from streams.settings import KafkaConfig
from streams.transport import STALL_AFTER_S

PARTITIONS = 6
WARMUP = 60
BACKLOG = 2000
ENCODE_S = 0.25  # per encoder call: a chunk of 64 texts is two calls, so the first thousand take > 8 s


def _reviews(ds, n: int):
    """The first ``n`` reviews (event-time order) on the 150 most reviewed items, and those items."""
    popular = {i for i, _ in Counter(e.item_id for e in ds.events).most_common(150)}
    events = [e for e in ds.events if e.item_id in popular and e.text][:n]
    return events, [ds.items[i] for i in sorted(popular)]


def test_a_backlog_behind_a_slow_encoder_is_never_read_again(broker, model_dir, mi_dataset, tmp_path):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka, partitions=PARTITIONS)
    events, items = _reviews(mi_dataset, WARMUP + BACKLOG)
    warmup, backlog = events[:WARMUP], events[WARMUP:]
    part = {e.user_id: partition_of(e.user_id.encode(), PARTITIONS) for e in events}
    assert {part[e.user_id] for e in warmup} == set(range(PARTITIONS))  # the first wave commits everywhere
    first = [e for e in backlog if part[e.user_id] < PARTITIONS // 2]
    second = [e for e in backlog if part[e.user_id] >= PARTITIONS // 2]
    assert min(len(first), len(second)) > 800
    publish_items(kafka, topics, items)
    app_id = f"backlog-{uuid.uuid4().hex[:8]}"
    w = start_worker(kafka, topics, model_dir, tmp_path, app_id=app_id, entry="tests.faults.slow_encoder",
                     env={"STREAMREC_FAKE_ENCODE_S": str(ENCODE_S)})
    started = time.perf_counter()
    try:
        with TopicReader(kafka, topics.recommendations) as out:
            publish(kafka, event_records(topics, warmup))
            out.wait(lambda rs: {e.event_id for e in warmup} <= set(output_ids(rs)), 120, "lists of the first wave")
            ends = Counter((topics.reviews, part[e.user_id]) for e in warmup)
            wait_committed(kafka, app_id, dict(ends), 60, "the first wave committed on every partition")

            publish(kafka, event_records(topics, first))
            out.wait(lambda rs: len(rs) > WARMUP, 60, "the worker busy with the first thousand")
            sent_second = time.time()
            publish(kafka, event_records(topics, second))
            out.wait(lambda rs: {e.event_id for e in events} <= set(output_ids(rs)), 300, "a list for every review")
            counts = wait_quiet([w])
            recs = out.json()
        rereads = w.metric("streamrec_rereads_total")
        has_metric = any(k.startswith("streamrec_rereads_total") for k in w.metrics())
        log = w.log_path.read_text(errors="replace")
        assert w.proc.poll() is None
    finally:
        stop_worker(w)

    second_ids = {e.event_id for e in second}
    waited = [r["published_at"] - sent_second for r in recs if r["trigger"]["event_id"] in second_ids]
    # the test's premise: the second thousand really waited behind the first for longer than the window
    assert min(waited) > STALL_AFTER_S + 2, min(waited)
    assert "stalled" not in log, [ln for ln in log.splitlines() if "stalled" in ln][:3]
    assert counts["streamrec_duplicates_total"] == 0  # nothing was delivered twice
    assert has_metric and rereads == 0, rereads
    assert counts["streamrec_events_total"] == len(events) and counts["streamrec_dead_letters_total"] == 0
    ids = output_ids(recs)
    assert set(ids) == {e.event_id for e in events} and set(ids.values()) == {1}

    Outcome("backlog behind a slow encoder", events_in=len(events), processed=len(ids), duplicates=0,
            dead_letters=0, lost=len(events) - len(ids), seconds=time.perf_counter() - started,
            extra={"rereads": int(rereads), "second_wave_min_wait_s": round(min(waited), 1),
                   "second_wave_max_wait_s": round(max(waited), 1)}).report()
