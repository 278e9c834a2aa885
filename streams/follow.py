"""Read a topic whole and then keep following it, without a consumer group.

Every worker needs *all* of the catalogue and *all* of the control topic, not a share of
them, so these topics are read with manual assignment of every partition from the beginning
(which also joins at once: no group rebalance to wait for).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def follow_topic(consumer_factory: Callable[[], object], topic: str,
                       on_batch: Callable[[list], Awaitable[None]],
                       on_caught_up: Callable[[], Awaitable[None]], poll_ms: int = 100) -> None:
    """Apply every record of ``topic`` in order with ``on_batch`` (one call per partition
    batch), forever; ``on_caught_up`` is awaited once, when the end offsets seen at start
    have been passed and a fetch came back empty (some brokers report the end offset of the
    last batch rather than past its records)."""
    from aiokafka import TopicPartition

    consumer = consumer_factory()
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            await consumer._client.force_metadata_update()  # topic may be created a moment later
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        caught_up = False
        while True:
            batches = await consumer.getmany(timeout_ms=poll_ms, max_records=512)
            for msgs in batches.values():
                await on_batch(msgs)
            if not caught_up and not batches and all([await consumer.position(tp) >= off
                                                      for tp, off in end.items()]):
                caught_up = True
                await on_caught_up()
    finally:
        await consumer.stop()
