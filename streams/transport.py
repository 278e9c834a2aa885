"""Faust's aiokafka transport with two changes: a configurable fetch wait, and a stall guard.

**Fetch wait.** faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for its
consumer. A broker that only answers a waiting fetch when that time is up (Tansu does;
MEASURED.md) then adds ~1.5 s to every event, and even on Apache Kafka a lower bound caps
the worst case when ``fetch.min.bytes`` is not yet reached. We keep Faust's consumer as it
is and only set that one number from ``app.conf`` (the ``STREAMREC_FETCH_WAIT_MS`` setting).

**Rebalance guard.** Around a rebalance (a worker crashed or left), Faust can drop records
it has already fetched for a partition (its buffers are cleared, or the partition is paused
while a fetch is in flight) without moving the fetch position back. Faust then sees the
next record's offset jump and counts the skipped offsets as processed (its "gap" handling,
meant for compacted topics and transaction markers), so the next commit passes events
nobody processed: in the kill -9 fault test this lost dozens of events in about one run in
three. Here skipped offsets are never counted as processed: the commit stops at the first
one (Faust also committed past a lost record at the committed offset itself: ``_new_offset``
below), and every second the consumer checks each assigned input partition; when the next
offset to commit has not been processed for ``STALL_AFTER_S`` (``STALL_IN_FLIGHT_S`` while
a record at it is still being processed) yet the fetch position is past it, it seeks the
partition back there (backing off up to a minute if that repeats). The events in between
are delivered again; those already applied are dropped as duplicates by the event-id check
(``streams/app.py``).
"""
from __future__ import annotations

import logging
import time

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as _drv
from mode import Service

SCHEME = "streamrec"
STALL_AFTER_S = 5.0
STALL_IN_FLIGHT_S = 30.0

log = logging.getLogger("streamrec.transport")


class ConsumerThread(_drv.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "streamrec_fetch_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read by aiokafka when the fetcher starts
        return consumer


class Consumer(_drv.Consumer):
    #: tp -> (committed offset, position, since when) while that tp looks stalled
    _suspects: dict
    #: tp -> (committed offset last read again from, how many times)
    _sought: dict

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        """Faust calls this when the next record delivered for ``tp`` is past the one after the
        last delivered; it would count the offsets in between as processed. On a rebalance
        those offsets can be records Faust fetched and then dropped, so counting them would
        commit past unprocessed events (seen in the kill -9 test). Leave them unacknowledged
        instead: the commit stops there and the stall guard reads them again. (Offsets that
        hold no records, such as transaction markers in an input topic, then hold the commit
        back: see README "Guarantees".)"""
        log.info("offsets %d..%d of %s[%d] were not delivered after %s: not counted as processed",
                 offset_from, offset_to - 1, tp.topic, tp.partition, self._committed_offset.get(tp))

    def _new_offset(self, tp):
        """Faust commits the acknowledged run that starts at the lowest acknowledged offset
        unless that offset is more than one past the committed one, so a lost record *at* the
        committed offset (the first one after an assignment or a seek) is committed past.
        Commit only a run that starts exactly at the committed offset; otherwise wait for
        that record (the stall guard reads it again)."""
        acked = self._acked.get(tp)
        committed = self._committed_offset.get(tp)
        if acked and committed is not None and min(acked) != committed:
            return None
        return super()._new_offset(tp)

    @Service.timer(1.0)
    async def _guard_stalled_partitions(self) -> None:
        try:
            await self._check_stalled_partitions()
        except Exception as exc:  # noqa: BLE001 - the guard must never take the consumer down with it
            log.warning("stall guard: check skipped this second (%s: %s); it runs again in 1 s",
                        type(exc).__name__, exc)

    async def _check_stalled_partitions(self) -> None:
        if not hasattr(self, "_suspects"):
            self._suspects, self._sought = {}, {}
        app = self.app
        if app.rebalancing or app.in_recovery or not self.flow_active:
            self._suspects.clear()
            return
        try:
            assigned = self.assignment()
        except Exception:  # noqa: BLE001 - not started yet, or stopping
            return
        in_flight = {(m.tp, m.offset) for m in list(self._unacked_messages)}
        now = time.monotonic()
        for tp in assigned:
            if tp in self._paused_partitions or self._is_changelog_tp(tp) or not app.topics.acks_enabled_for(tp.topic):
                continue
            committed = self._committed_offset.get(tp)
            if committed is None or committed in self._acked_index.get(tp, ()):
                self._suspects.pop(tp, None)
                continue
            position = await self.position(tp)
            if position is None or position <= committed:
                self._suspects.pop(tp, None)
                continue
            seen = self._suspects.get(tp)
            if seen is None or seen[:2] != (committed, position):
                self._suspects[tp] = (committed, position, now)
                continue
            # a record being processed may be slow (a frozen broker, a long encoder batch): wait longer
            wait = STALL_IN_FLIGHT_S if (tp, committed) in in_flight else STALL_AFTER_S
            if self._sought.get(tp, (None,))[0] == committed:  # read again already: back off, 5, 10, 20 .. 60 s
                wait = min(60.0, wait * 2 ** self._sought[tp][1])
            if now - seen[2] < wait:
                continue
            self._suspects.pop(tp, None)
            tries = self._sought[tp][1] + 1 if self._sought.get(tp, (None,))[0] == committed else 1
            self._sought[tp] = (committed, tries)
            log.warning("partition %s[%d] stalled: offset %d was fetched (position %d) but not processed for %.0fs; "
                        "reading again from it (try %d). Events already applied are dropped as duplicates.",
                        tp.topic, tp.partition, committed, position, now - seen[2], tries)
            await self.seek(tp, committed)


class Transport(_drv.Transport):
    Consumer = Consumer


TRANSPORTS.data[SCHEME] = f"{__name__}:Transport"
