"""Read recommendation records as an ordinary Kafka consumer (``streamrec tail``).

No consumer group: the reader assigns itself every partition, so it starts at once and
never disturbs the workers' group. This is also how the demo and the tests read output.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

from .settings import KafkaConfig


def read_topic(kafka: KafkaConfig, topic: str, *, from_beginning: bool = False, timeout_s: float | None = None,
               idle_s: float | None = None, poll_ms: int = 100,
               stop: threading.Event | None = None) -> Iterator[tuple[bytes | None, dict, object]]:
    """Yield ``(key, value_dict, record)`` from every partition of ``topic``.

    Stops after ``timeout_s`` in total, ``idle_s`` without a record (None: never), or once
    ``stop`` is set (checked every ``poll_ms``), and then closes its consumer.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka.kafka_python(), enable_auto_commit=False, group_id=None,
                             fetch_max_wait_ms=poll_ms, client_id="streamrec-tail")
    try:
        parts = None
        deadline = time.monotonic() + 30
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        if not parts:
            raise RuntimeError(f"topic {topic} does not exist: start a worker or run `streamrec topics` first")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        start = last = time.monotonic()
        while stop is None or not stop.is_set():
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                return
            if idle_s is not None and now - last > idle_s:
                return
            batch = consumer.poll(timeout_ms=poll_ms)
            for records in batch.values():
                for r in records:
                    last = time.monotonic()
                    try:
                        value = json.loads(r.value) if r.value is not None else None
                    except ValueError:
                        value = {"_raw": r.value[:200].decode("utf-8", "replace")}
                    yield r.key, value, r
    finally:
        consumer.close()


def format_record(value: dict, width: int = 5) -> str:
    """One line per recommendation record, for humans."""
    items = ", ".join(i["item_id"] for i in value.get("items", [])[:width])
    trig = value.get("trigger", {})
    return (f"{value.get('user_id')}: [{items}]  after {trig.get('type')} of {trig.get('item_id')} "
            f"({value.get('latency_ms', 0):.0f} ms, {value.get('model_version')})")
