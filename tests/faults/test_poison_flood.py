"""Poison and floods: 10,000 broken records among valid ones, sent as one burst.

The burst arrives far faster than a worker can process it (the test measures both rates
and requires at least 3x, and that most of the burst was still unprocessed when sending
ended: the ratio itself moves with the host and with the worker's speed). The worker must not take it all in: it fetches from Kafka only
as fast as it processes (Faust's per-partition buffers pause fetching when full), so the
backlog waits in Kafka and the worker's memory stays bounded (peak RSS reported and
checked) even though the broken records include large ones; then it catches up: every
valid event gets a list, every broken record a dead letter, and the counters add up.
The worker runs with its default settings (INT8 encoder, default batching).

This test has its own broker: the burst and its dead letters stay in the broker's memory
for as long as it runs.
"""
from __future__ import annotations

import threading
import time

from faultkit import (Outcome, TopicReader, event_records, interleave_broken, output_ids, peak_rss_mb, publish,
                      publish_items, rss_mb, wait_quiet)
from harness import fresh_topics, start_worker, stop_worker

from streams.broker import EmbeddedBroker, free_port
from streams.settings import KafkaConfig

BROKEN = 10_000
LARGE_EVERY = 1000  # every 1000th broken record is a large one (100 KB of junk, under the 256 KiB limit):
LARGE_BYTES = 100_000  # dead letters keep them whole; more would only measure the broker (~4 MB/s here)
RSS_GROWTH_LIMIT_MB = 250.0


def _flood(records, topics):
    """The valid records with BROKEN broken ones spread among them; every LARGE_EVERY-th broken
    record is large."""
    valid = {id(r) for r in records}
    out, k = [], 0
    for rec in interleave_broken(records, topics, BROKEN):
        if id(rec) not in valid:
            if k % LARGE_EVERY == 0:
                rec = (rec[0], rec[1], b"{" + b"x" * LARGE_BYTES)  # malformed JSON, and big
            k += 1
        out.append(rec)
    return out


def test_broken_records_and_a_burst_keep_memory_bounded(model_dir, workload, tmp_path):
    with EmbeddedBroker(port=free_port()) as broker:
        kafka = KafkaConfig(broker.bootstrap)
        topics = fresh_topics(kafka)
        publish_items(kafka, topics, workload.items)
        valid = event_records(topics, workload.events)
        burst = _flood(valid, topics)
        n_broken = len(burst) - len(valid)
        large = sum(1 for r in burst if len(r[2] or b"") >= LARGE_BYTES)
        w = start_worker(kafka, topics, model_dir, tmp_path)
        try:
            rss_before = rss_mb(w.proc.pid)
            samples: list[float] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set() and w.proc.poll() is None:
                    samples.append(rss_mb(w.proc.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with TopicReader(kafka, topics.recommendations) as out:
                t0 = time.perf_counter()
                send_s = publish(kafka, burst, linger_ms=20, batch_size=256 * 1024, max_request_size=4 * 1024 * 1024)
                processed_when_sent = sum(w.metric(m) for m in ("streamrec_events_total",
                                                                 "streamrec_dead_letters_total"))
                out.wait(lambda rs: {e.event_id for e in workload.events} <= set(output_ids(rs)), 400,
                         "a list for every valid event")
                counts = wait_quiet([w], timeout_s=300)
                drain_s = time.perf_counter() - t0
                ids = output_ids(out.snapshot())
            done.set()
            sampler.join(5)
            peak = peak_rss_mb(w.proc.pid)
            assert w.proc.poll() is None
        finally:
            stop_worker(w)

    offered = len(burst) / send_s
    sustained = len(burst) / drain_s
    assert offered >= 3 * sustained, (offered, sustained)  # it was a burst, well over what the worker sustains
    assert processed_when_sent < 0.5 * len(burst)  # most of it was still waiting in Kafka when sending ended...
    assert counts["streamrec_events_total"] == len(valid)  # ...and then the worker caught up, all of it
    assert counts["streamrec_dead_letters_total"] == n_broken
    assert counts["streamrec_duplicates_total"] == 0
    assert set(ids) == {e.event_id for e in workload.events} and set(ids.values()) == {1}
    growth = max(samples + [peak]) - rss_before
    assert growth < RSS_GROWTH_LIMIT_MB, (rss_before, peak, growth)

    Outcome("poison and flood", events_in=len(burst), processed=len(ids), duplicates=0, dead_letters=n_broken,
            lost=len(valid) - len(ids), seconds=drain_s,
            extra={"large_broken_records": large, "burst_mb": round(sum(len(r[2] or b"") for r in burst) / 1e6, 1),
                   "offered_per_s": round(offered), "sustained_per_s": round(sustained),
                   "processed_when_burst_sent": int(processed_when_sent), "rss_before_mb": round(rss_before),
                   "peak_rss_mb": round(peak), "rss_growth_mb": round(growth)}).report()
