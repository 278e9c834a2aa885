"""Stream a dataset into the topics in event-time order (``streamrec replay``).

The catalogue goes first (key = item id, compacted topic), then the events, each keyed by
its user id: reviews to the reviews topic, everything else to the clicks topic. Pacing is
either a fixed rate (events per second), a speed-up of the data's own clock, or as fast
as the producer goes.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from inference.events import Event, ItemRecord

from .settings import KafkaConfig
from .topics import Topics

log = logging.getLogger("streamrec.replay")


@dataclass
class ReplayStats:
    items: int = 0
    events: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    first_send_ts: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def producer(kafka: KafkaConfig, **overrides):
    """A kafka-python producer that waits for every replica (acks=all) and retries."""
    from kafka import KafkaProducer

    kw = dict(acks="all", linger_ms=5, retries=5, max_request_size=2 * 1024 * 1024, client_id="streamrec-replay")
    kw.update(overrides)
    return KafkaProducer(**kafka.kafka_python(), **kw)


def encode_event(event: Event) -> bytes:
    return json.dumps(event.to_json(), ensure_ascii=False).encode("utf-8")


def publish_catalogue(prod, topics: Topics, items: Iterable[ItemRecord]) -> int:
    n = 0
    for rec in items:
        prod.send(topics.items, key=rec.item_id.encode(), value=json.dumps(rec.to_json(), ensure_ascii=False).encode())
        n += 1
    prod.flush()
    return n


def topic_for(event: Event, topics: Topics) -> str:
    return topics.reviews if event.kind == "review" else topics.clicks


def replay_events(
    prod,
    topics: Topics,
    events: list[Event],
    *,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = True,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Send ``events`` in order; ``rate`` (events/s) or ``speedup`` (x real time) paces them."""
    from tqdm import tqdm

    stats = stats or ReplayStats()
    start = time.perf_counter()
    t0 = events[0].event_time if events else 0.0
    bar = tqdm(total=len(events), unit="ev", desc="replay", disable=not progress, mininterval=0.5)
    try:
        for i, ev in enumerate(events):
            if rate:
                due = start + i / rate
            elif speedup:
                due = start + (ev.event_time - t0) / speedup
            else:
                due = 0.0
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            topic = topic_for(ev, topics)
            prod.send(topic, key=ev.user_id.encode(), value=encode_event(ev))
            if stats.first_send_ts is None:
                stats.first_send_ts = time.time()
            stats.by_topic[topic] = stats.by_topic.get(topic, 0) + 1
            stats.events += 1
            bar.update(1)
        prod.flush()
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
