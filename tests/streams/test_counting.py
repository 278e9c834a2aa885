"""Nothing is lost: every event in is processed, dropped as a duplicate, or dead-lettered."""
from __future__ import annotations

from collections import Counter

from harness import fresh_topics, start_worker, stop_worker
from kafkaio import read_all, send
from streams.replay import producer, publish_catalogue

T0 = 1_400_000_000


def test_counting_invariant_on_real_reviews(worker, mi_dataset):
    events = mi_dataset.events[2000:2300]  # real reviews with text: the encoder is on the path
    users = {e.user_id for e in events}
    before = {k: worker.metric(k) for k in ("streamrec_events_total", "streamrec_duplicates_total",
                                            "streamrec_dead_letters_total")}
    records = [(e.user_id.encode(), e.to_json()) for e in events]
    records += [(e.user_id.encode(), e.to_json()) for e in events[:15]]  # resent: duplicates
    records += [(b"mallory", b"{not json") for _ in range(10)]
    records += [(b"mallory", {"user_id": "mallory", "item_id": "nope", "event_time": T0, "rating": 3})] * 5
    send(worker.kafka, worker.topics.reviews, records)
    n = len(records)

    def delta(name: str) -> float:
        return worker.metric(name) - before[name]

    out = read_all(worker.kafka, worker.topics.recommendations, timeout_s=240, settle_s=1.0,
                   until=lambda rs: (delta("streamrec_events_total") + delta("streamrec_duplicates_total")
                                     + delta("streamrec_dead_letters_total")) >= n)
    processed = delta("streamrec_events_total")
    dups, dead = delta("streamrec_duplicates_total"), delta("streamrec_dead_letters_total")
    assert (processed, dups, dead) == (300, 15, 15)
    assert processed + dups + dead == n
    ids = Counter(r["trigger"]["event_id"] for r in out if r["user_id"] in users)
    assert set(ids) == {e.event_id for e in events}
    assert set(ids.values()) == {1}  # exactly one list per processed event


def test_min_interval_coalesces_and_counts(broker, model_dir, mi_dataset, tmp_path):
    kafka = broker_kafka(broker)
    topics = fresh_topics(kafka)
    items = sorted(mi_dataset.items)[:60]
    prod = producer(kafka)
    publish_catalogue(prod, topics, [mi_dataset.items[i] for i in items])
    prod.close()
    w = start_worker(kafka, topics, model_dir, tmp_path, "--min-interval-ms", "1500")
    try:
        burst = [(f"u{u}".encode(), {"user_id": f"u{u}", "item_id": items[(u * 7 + k) % 60], "event_time": T0 + k,
                                     "event_id": f"u{u}-{k}"}) for k in range(12) for u in range(3)]
        send(kafka, topics.clicks, burst)
        out = read_all(kafka, topics.recommendations, timeout_s=60, settle_s=2.0,
                       until=lambda rs: {r["trigger"]["event_id"] for r in rs} >= {"u0-11", "u1-11", "u2-11"})
        processed = w.metric("streamrec_events_total")
        published = w.metric("streamrec_recommendations_total")
        coalesced = w.metric("streamrec_coalesced_total")
        assert processed == 36
        assert published == len(out) < 36  # fewer lists than events...
        assert published + coalesced == processed  # ...and every event accounted for
        assert sum(1 + r.get("coalesced", 0) for r in out) == processed
        last = {r["user_id"]: r["trigger"]["event_id"] for r in out}
        assert last == {"u0": "u0-11", "u1": "u1-11", "u2": "u2-11"}  # the newest state always goes out
    finally:
        stop_worker(w)


def broker_kafka(broker):
    from streams.settings import KafkaConfig

    return KafkaConfig(broker.bootstrap)
