"""Keep every worker's item index current from the compacted catalogue topic.

Each worker needs the *whole* catalogue, not a share of it, so the catalogue is not read
by a consumer group: every worker assigns itself all partitions of the items topic,
reads it from the beginning (compaction keeps the latest record per item) and then
follows it. A null value deletes the item. Events wait until the first pass has reached
the end offsets seen at start, so no valid event is rejected as an unknown item merely
because the worker has just started.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from inference.events import InvalidEvent, ItemRecord, parse_item
from inference.index import ItemIndex

from .follow import follow_topic

log = logging.getLogger("streamrec.catalog")

EncodeMany = Callable[[list[str]], Awaitable[np.ndarray]]
Reject = Callable[[InvalidEvent, object], Awaitable[None]]


class CatalogueFollower:
    """Apply catalogue records (upsert / delete) to an :class:`ItemIndex`."""

    def __init__(self, index: ItemIndex, encode_many: EncodeMany, *, on_reject: Reject | None = None,
                 on_applied: Callable[[str, int], None] | None = None) -> None:
        self.index = index
        self.encode_many = encode_many
        self.on_reject = on_reject
        self.on_applied = on_applied
        self.ready = asyncio.Event()
        self.records: dict[str, ItemRecord] = {}

    async def apply(self, messages: list) -> None:
        """Apply a batch of consumer records in order; texts are encoded in one call.

        Within a batch only the last record per item counts (as compaction would keep).
        """
        latest: dict[str, tuple[object, ItemRecord | None]] = {}
        for msg in messages:
            key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
            if msg.value is None:
                if key is None:
                    continue
                latest[key] = (msg, None)
                continue
            try:
                rec = parse_item(msg.value, key=msg.key)
            except InvalidEvent as exc:
                if self.on_reject is not None:
                    await self.on_reject(exc, msg)
                continue
            latest.pop(rec.item_id, None)
            latest[rec.item_id] = (msg, rec)
        upserts = [(item_id, rec) for item_id, (_, rec) in latest.items() if rec is not None]
        deletes = [item_id for item_id, (_, rec) in latest.items() if rec is None]
        if upserts:
            changed = [(i, r) for i, r in upserts if self.records.get(i) != r or i not in self.index]
            if changed:
                vecs = await self.encode_many([r.text() for _, r in changed])
                ok = [(i, r, v) for (i, r), v in zip(changed, vecs) if np.any(v)]
                if ok:
                    self.index.upsert_many([i for i, _, _ in ok], np.stack([v for _, _, v in ok]))
                for i, r, _ in ok:
                    self.records[i] = r
            if self.on_applied:
                self.on_applied("upsert", len(upserts))
        for item_id in deletes:
            self.index.remove(item_id)
            self.records.pop(item_id, None)
        if deletes and self.on_applied:
            self.on_applied("delete", len(deletes))

    async def run(self, consumer_factory: Callable[[], object], topic: str, poll_ms: int = 100) -> None:
        """Follow ``topic`` forever with an aiokafka consumer from ``consumer_factory``."""
        async def caught_up() -> None:
            self.ready.set()
            log.info("catalogue ready: %d items", len(self.index))

        log.info("catalogue: loading %s", topic)
        await follow_topic(consumer_factory, topic, self.apply, caught_up, poll_ms)


def item_json(rec: ItemRecord) -> bytes:
    return json.dumps(rec.to_json(), ensure_ascii=False).encode("utf-8")
