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
below).

**Stall guard, by progress.** A partition is stalled when its *processed offset* (the first
offset at or after the committed one that is not processed: ``_processed_offset``) has not
moved for ``STALL_AFTER_S`` although the consumer has gone past it (a later record was
handed to Faust, or the fetch position is beyond it) and the record at it is not in flight
(not waiting in Faust's buffers, not being processed: ``_delivered`` holds every record
handed to Faust until it is acknowledged or dropped). A backlog is never a stall: records
waiting behind a slow encoder are in flight. The guard then seeks the partition back to
the processed offset, on the consumer's own thread (aiokafka's consumer is not thread-safe),
backing off up to a minute if the same offset stalls again (offsets that hold no record, see
README "Guarantees"). The events in between are delivered again; those already applied are
dropped as duplicates by the event-id check and their dead letters are not written again
(``streams/app.py``). Each seek counts in ``streamrec_rereads_total``.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as _drv
from mode import Service

SCHEME = "streamrec"
_HOLD = 1 << 62  # a read offset past any record: Faust drops what is delivered below it
STALL_AFTER_S = 5.0
STALL_MAX_WAIT_S = 60.0
HOLD_MAX_S = 5.0

log = logging.getLogger("streamrec.transport")


class ConsumerThread(_drv.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "streamrec_fetch_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read by aiokafka when the fetcher starts
        return consumer


class Consumer(_drv.Consumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: tp -> {offset: message} of every record handed to Faust and still alive (weak: a record
        #: Faust drops from its buffers leaves by itself); in flight = in here and not acknowledged
        self._delivered: dict = defaultdict(weakref.WeakValueDictionary)
        self._delivered_max: dict = {}  # tp -> highest offset handed to Faust since the assignment
        self._delivering = 0  # records being handed over right now (Faust's buffers full: backpressure)
        self._committing: dict = {}  # tp -> offset a commit is under way to (processed, not yet committed)
        self._watch: dict = {}  # tp -> (processed offset, since when it has not moved)
        self._sought: dict = {}  # tp -> (offset read again from, how many times)
        self._holding: dict = {}  # tp -> (offset sought to, since when): see _hold
        self._log_start: dict = {}  # tp -> first offset, for partitions without a committed offset
        self.rereads = 0
        deliver = self.callback

        def tracked(message):
            tp, offset = message.tp, message.offset
            self._delivered[tp][offset] = message
            if offset > self._delivered_max.get(tp, -1):
                self._delivered_max[tp] = offset
            return self._handing_over(deliver(message))

        self.callback = tracked
        # Faust's recovery resumes a new assignment's partitions, seeks them to the committed offsets
        # and only then resumes flow control, which empties the agents' buffers: records fetched in
        # between are dropped past the fetch position. Read those partitions again right after.
        flow = self.app.flow_control
        resume = flow.resume

        def resumed() -> None:
            resume()
            self._after_buffers_cleared()

        flow.resume = resumed

    async def _handing_over(self, delivery) -> None:
        self._delivering += 1
        try:
            await delivery
        finally:
            self._delivering -= 1

    def ack(self, message) -> bool:
        """Faust's ack, refused for a record whose processing has not finished (``streams/app.py``
        marks a chunk's records until the chunk is through): Faust's ``take_events`` acknowledges
        a chunk when the agent is cancelled mid-chunk at shutdown, and the final commit then
        passed events that had no list yet (seen with SIGTERM while the broker was frozen)."""
        unfinished = getattr(self.app, "streamrec_unfinished", None)
        if unfinished is not None and message in unfinished:
            return False
        return super().ack(message)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked) -> None:
        self._forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        self._forget(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    def _forget(self, tps) -> None:
        for tp in tps:
            for table in (self._delivered, self._delivered_max, self._committing, self._watch, self._sought,
                          self._log_start, self._holding):
                table.pop(tp, None)
            if self._read_offset.get(tp) == _HOLD:
                self._read_offset.pop(tp, None)

    def _after_buffers_cleared(self) -> None:
        """Flow control emptied the agents' buffers: every partition whose next record to process
        was delivered since the assignment and is gone now is read again from there. Until the
        seek lands, Faust drops what arrives for it (it is fetched again after the seek)."""
        try:
            assigned = self.assignment()
        except Exception:  # noqa: BLE001 - not started, or stopping
            return
        again = {}
        for tp in assigned:
            if self._is_changelog_tp(tp) or not self.app.topics.acks_enabled_for(tp.topic):
                continue
            offset = self._processed_offset(tp)
            if offset is None or self._delivered_max.get(tp, -1) < offset or self._in_flight(tp, offset):
                continue
            again[tp] = offset
            self._hold(tp, offset)
        if again:
            self._reseek = asyncio.ensure_future(self._read_dropped_again(again))

    async def _read_dropped_again(self, offsets: dict) -> None:
        try:
            await self._thread.call_thread(self._seek_many_on_consumer_thread, offsets)
        except Exception as exc:  # noqa: BLE001 - the stall guard reads them again later
            for tp in offsets:
                self._release(tp)
            log.warning("reading again after a new assignment failed (%s: %s); the stall guard will",
                        type(exc).__name__, exc)
            return
        log.info("read again after Faust emptied its buffers (a new assignment): %s",
                 ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(offsets.items())))

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset, and those without one (none yet, or 0 after
        a rewind) to their first offset. aiokafka's ``seek_to_committed`` leaves a partition whose
        committed offset is 0 or missing where its fetcher happens to be, and records fetched there
        while Faust had the partition paused (recovery) were dropped: a fresh or rewound partition
        then silently skipped its first records (seen after rewinding a group to 0)."""
        await super().perform_seek()
        try:
            assigned = self.assignment()
        except Exception:  # noqa: BLE001 - not started, or stopping
            return
        fresh = [tp for tp in assigned if self._committed_offset.get(tp) is None and not self._is_changelog_tp(tp)
                 and self.app.topics.acks_enabled_for(tp.topic)]
        if not fresh:
            return
        starts = await self._thread.earliest_offsets(*fresh)
        for tp, offset in starts.items():
            self._log_start[tp] = offset
            self._hold(tp, offset)
        await self._thread.call_thread(self._seek_many_on_consumer_thread, dict(starts))

    def _hold(self, tp, offset: int) -> None:
        """Before seeking ``tp`` to ``offset``: Faust drops what is delivered for it until a fetch
        that starts at ``offset`` comes back. Setting the read offset right after the seek is not
        enough: a fetch made before the seek can come back later, move Faust's read offset past
        ``offset``, and Faust then drops the records read again (seen: a partition stalled again
        right after each re-read)."""
        self._read_offset[tp] = _HOLD
        self._holding[tp] = (offset, time.monotonic())

    def _release(self, tp) -> None:
        held = self._holding.pop(tp, None)
        if held is not None and self._read_offset.get(tp) == _HOLD:
            self._read_offset[tp] = held[0] if held[0] else None

    async def _getmany(self, active_partitions, timeout: float):
        records = await super()._getmany(active_partitions, timeout)
        if self._holding:
            for tp, batch in records.items():
                held = self._holding.get(tp)
                if held is not None and batch and batch[0].offset <= held[0]:
                    self._release(tp)  # fetched after the seek: deliver from here on
        return records

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
        that record (the stall guard reads it again). The offset a commit goes to is kept:
        Faust forgets the run's acknowledgements before the broker has the commit, and a
        frozen broker can hold a commit for minutes."""
        acked = self._acked.get(tp)
        committed = self._committed_offset.get(tp)
        if committed is None:
            committed = self._log_start.get(tp)  # nothing committed yet: the run must start at the first offset
        if acked and committed is not None and min(acked) != committed:
            return None
        offset = super()._new_offset(tp)
        if offset is not None:
            self._committing[tp] = max(offset, self._committing.get(tp, offset))
        return offset

    def _processed_offset(self, tp) -> int | None:
        """The first offset of ``tp`` at or after the committed one that is not processed (None
        before the partition's first commit)."""
        committed = self._committed_offset.get(tp)
        if committed is None:
            committed = self._log_start.get(tp)
            if committed is None:
                return None
        offset = max(committed, self._committing.get(tp, committed))
        acked = self._acked_index.get(tp, ())
        while offset in acked:
            offset += 1
        return offset

    def _in_flight(self, tp, offset: int) -> bool:
        message = self._delivered.get(tp, {}).get(offset)
        return message is not None and not message.acked

    @Service.timer(1.0)
    async def _guard_stalled_partitions(self) -> None:
        try:
            await self._check_stalled_partitions()
        except Exception as exc:  # noqa: BLE001 - the guard must never take the consumer down with it
            log.warning("stall guard: check skipped this second (%s: %s); it runs again in 1 s",
                        type(exc).__name__, exc)

    async def _check_stalled_partitions(self) -> None:
        app = self.app
        now = time.monotonic()
        for tp, (_, since) in list(self._holding.items()):
            if now - since > HOLD_MAX_S:  # no record at the offset sought to (or none fetched): stop holding
                self._release(tp)
        if app.rebalancing or app.in_recovery or not self.flow_active or self.should_stop or self._delivering:
            # a rebalance or recovery moves partitions and positions; records being handed over
            # (Faust's buffers are full) are a backlog: nothing can be judged stalled now
            self._watch.clear()
            return
        try:
            assigned = self.assignment()
        except Exception:  # noqa: BLE001 - not started yet, or stopping
            return
        now = time.monotonic()
        for tp in assigned:
            if tp in self._paused_partitions or self._is_changelog_tp(tp) or not app.topics.acks_enabled_for(tp.topic):
                continue
            offset = self._processed_offset(tp)
            if offset is None or self._in_flight(tp, offset):
                self._watch.pop(tp, None)
                continue
            watched = self._watch.get(tp)
            if watched is None or watched[0] != offset:
                self._watch[tp] = (offset, now)  # the processed offset moved (or is new): start the clock
                continue
            wait = STALL_AFTER_S
            if self._sought.get(tp, (None,))[0] == offset:  # read again already: back off, 10, 20, 40 .. 60 s
                wait = min(STALL_MAX_WAIT_S, wait * 2 ** self._sought[tp][1])
            if now - watched[1] < wait:
                continue
            # The consumer went past it: a later record was handed to Faust, or the fetch position is
            # beyond it. (Neither: nothing was fetched after it yet, it is simply the next record.)
            position = None
            if self._delivered_max.get(tp, -1) < offset:
                position = await self.position(tp)
                if position is None or position <= offset:
                    continue
            await self._read_again(tp, offset, now - watched[1], position)

    async def _read_again(self, tp, offset: int, idle_s: float, position: int | None) -> None:
        tries = self._sought[tp][1] + 1 if self._sought.get(tp, (None,))[0] == offset else 1
        self._sought[tp] = (offset, tries)
        self._watch.pop(tp, None)
        past = (f"offset {self._delivered_max[tp]} was delivered" if position is None
                else f"the fetch position is {position}")
        message = self._delivered.get(tp, {}).get(offset)
        seen = ("not delivered, or dropped" if message is None else
                f"delivered, acknowledged={message.acked}, refcount={message.refcount}")
        log.warning("partition %s[%d] stalled: offset %d (%s) is neither processed nor in flight for %.0fs while "
                    "%s (committed %s, read offset %s); reading again from it (try %d). Events already applied "
                    "are dropped as duplicates.", tp.topic, tp.partition, offset, seen, idle_s, past,
                    self._committed_offset.get(tp), self._read_offset.get(tp), tries)
        self._hold(tp, offset)
        try:
            await self._thread.call_thread(self._seek_on_consumer_thread, tp, offset)
        except BaseException:
            self._release(tp)
            raise
        self.rereads += 1
        hook = getattr(self.app, "streamrec_on_reread", None)
        if hook is not None:
            hook(tp)

    async def _seek_on_consumer_thread(self, tp, offset: int) -> None:
        """Runs on the consumer thread's own loop (``call_thread``), where aiokafka lives."""
        self._thread._ensure_consumer().seek(tp, offset)

    async def _seek_many_on_consumer_thread(self, offsets: dict) -> None:
        consumer = self._thread._ensure_consumer()
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)


class Transport(_drv.Transport):
    Consumer = Consumer


TRANSPORTS.data[SCHEME] = f"{__name__}:Transport"
