"""Produce and read records the way a user's own Kafka clients would (kafka-python)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.settings import KafkaConfig


def send(kafka: KafkaConfig, topic: str, records: list[tuple[bytes | None, bytes | dict | None]]) -> None:
    """Send (key, value) pairs in order and wait for the broker to acknowledge them."""
    prod = KafkaProducer(bootstrap_servers=kafka.servers, acks="all", linger_ms=0,
                         max_request_size=4 * 1024 * 1024)
    for key, value in records:
        if isinstance(value, dict):
            value = json.dumps(value).encode()
        prod.send(topic, key=key, value=value).get(timeout=30)
    prod.flush()
    prod.close()


def read_all(kafka: KafkaConfig, topic: str, *, until: Callable[[list[dict]], bool], timeout_s: float = 60.0,
             settle_s: float = 0.0) -> list[dict]:
    """Read ``topic`` from the beginning (no consumer group) until ``until(records)`` holds.

    After it holds, keep reading for ``settle_s`` more seconds to catch anything extra
    (for asserting that nothing *more* arrives). Each record is the JSON value plus ``_key``.
    """
    consumer = KafkaConsumer(bootstrap_servers=kafka.servers, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=50)
    try:
        parts = None
        t0 = time.monotonic()
        while not parts and time.monotonic() - t0 < 30:
            parts = consumer.partitions_for_topic(topic)
            time.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        settled_at = None
        while time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=100).values():
                for r in recs:
                    value = json.loads(r.value) if r.value is not None else None
                    out.append({**(value or {}), "_key": r.key, "_offset": r.offset, "_partition": r.partition})
            if settled_at is None and until(out):
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() - settled_at >= settle_s:
                return out
        raise TimeoutError(f"condition not met on {topic} within {timeout_s}s; got {len(out)} records")
    finally:
        consumer.close()


def for_user(records: list[dict], user: str) -> list[dict]:
    return [r for r in records if r.get("user_id") == user]
