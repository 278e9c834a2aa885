"""The Faust worker: events in, refreshed Top-N out, bad input to the dead-letter topic.

One agent reads the three co-partitioned event topics (clicks, reviews, and the internal
re-keyed topic) in chunks: every review text of a chunk is encoded in one batched call
(off the event loop), then the events are applied one by one, in partition order, the
chunk's lists are ranked together (one matrix product) and published in order, and the
user table is written once the broker has the chunk's lists. The user table is
changelog-backed (RocksDB where rocksdict installs), so a restarted or re-assigned worker
resumes each user where it was.

Use :func:`build_worker` and run it with ``streamrec worker`` (see ``streams.cli``).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import faust
from faust import streams as _faust_streams

from inference.batcher import MicroBatcher
from inference.encoder import Encoder
from inference.events import PROCESSING_ERROR, UNKNOWN_ITEM, Event, InvalidEvent, parse_event
from inference.events import derive_event_id
from inference.index import ItemIndex
from inference.recommender import ActiveModel, RankRequest, Recommendation, Recommender, RecommenderConfig
from inference.user import UserState

from . import transport as _transport  # registers the "streamrec://" transport
from .api import ApiConfig, register_api
from .catalog import CatalogueFollower
from .metrics import Metrics
from .models import ModelFollower
from .records import dead_letter_record, dumps, recommendation_record
from .settings import KafkaConfig, default_model_dir, default_state_dir
from .topics import Topics

log = logging.getLogger("streamrec.worker")

#: Fetch wait of the catalogue follower. An idle consumer fetches about once per wait, and on
#: the embedded broker each fetch cost ~1 ms of worker CPU and ~1 ms of broker CPU (measured:
#: 70 fetches/s at 10 ms, ~12% of a core in all, with nothing to read); catalogue changes
#: need not land within 10 ms (the events' own fetch wait stays ``fetch_wait_ms``).
CATALOGUE_FETCH_WAIT_MS = 100


@dataclass
class WorkerConfig:
    """Everything a worker needs; the CLI fills it from flags and ``STREAMREC_*`` variables."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: Topics = field(default_factory=Topics)
    app_id: str = "streamrec"
    partitions: int = 6
    model_dir: Path = field(default_factory=default_model_dir)
    variant: str = "auto"
    device: str = "auto"
    max_tokens: int | None = None
    encoder_threads: int | None = None
    state_dir: Path = field(default_factory=default_state_dir)
    store: str = "auto"  # auto | rocksdb | memory
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    unknown_items: str = "dead-letter"  # dead-letter | accept (text-only signal, item remembered as seen)
    min_interval_ms: float = 0.0  # per-user: publish at most one list per interval (0: after every event)
    explain: bool = False  # include score parts in output records
    registry: Path | None = None  # model registry shared with the trainer (None: serve the encoder alone)
    retrain_every_events: int = 0  # ask the trainer for a new version after N accepted events (0: never)
    retrain_interval_s: float = 0.0  # ... or after this long with at least one accepted event (0: never)
    api: ApiConfig = field(default_factory=ApiConfig)  # HTTP API limits and token (streams.api)
    # Batching and Kafka timing (see README "Timeouts"):
    chunk_size: int = 64
    chunk_wait_s: float = 0.005
    batch_max: int = 32
    batch_wait_ms: float = 5.0
    batch_queue: int = 1024
    session_timeout_s: float = 10.0
    heartbeat_s: float = 3.0
    fetch_wait_ms: int = 10
    commit_interval_s: float = 1.0
    shutdown_timeout_s: float = 20.0  # SIGTERM/SIGINT end the process within this, whatever the broker does
    producer_batch_bytes: int | None = None  # Kafka batch.size; None: Faust's default (16 KiB)
    replication_factor: int = 1  # of the topics the worker creates (changelog included)
    loglevel: str = "info"


def store_url(kind: str) -> str:
    """``rocksdb://`` when rocksdict imports (and was asked for or ``auto``), else ``memory://``."""
    if kind == "memory":
        return "memory://"
    try:
        import rocksdict  # noqa: F401
    except ImportError:
        if kind == "rocksdb":
            raise RuntimeError("--store rocksdb needs the rocksdict package: pip install rocksdict") from None
        log.warning("rocksdict is not installed: user state lives in memory and is rebuilt from the changelog "
                    "on restart")
        return "memory://"
    return "rocksdb://"


class StreamrecWorker:
    """The parts of a running worker: encoder, index, recommender, metrics and the Faust app."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.encoder = Encoder(cfg.model_dir, variant=cfg.variant, device=cfg.device,
                               max_tokens=cfg.max_tokens, batch_size=cfg.batch_max, threads=cfg.encoder_threads)
        self.batcher = MicroBatcher(self.encoder.encode, max_batch=cfg.batch_max, max_wait_ms=cfg.batch_wait_ms,
                                    max_queue=cfg.batch_queue,
                                    on_batch=lambda n, _s: self.metrics.batch_size.observe(n))
        self.index = ItemIndex(self.encoder.dim, device=_index_device(self.encoder.info.provider))
        self.recommender = Recommender(self.index, config=cfg.recommender)
        self.models = ModelFollower(self.recommender, cfg.registry, on_swap=self._on_swap)
        self._accepted_since_swap = 0
        self._since = time.monotonic()
        self.metrics.set_model(self.model_version, self.encoder.info.variant, self.encoder.info.provider)
        self.catalogue = CatalogueFollower(self.index, self._encode_many, on_reject=self._reject_item,
                                           on_applied=self._on_catalogue)
        self._pending: OrderedDict[str, dict] = OrderedDict()  # coalesced lists waiting for their slot
        self._last_publish: OrderedDict[str, float] = OrderedDict()
        # dead letters written once per source offset: each dead-lettered (topic, partition, offset),
        # here from when it is sent and in the ``dead-lettered`` table once the broker has it
        self._dead_pending: set[tuple[str, int, int]] = set()
        self._dead_sent: list[tuple[object, object]] = []  # (source message, send future) of this chunk
        self.app = self._build_app()

    @property
    def model_version(self) -> str:
        """``<encoder>:<variant>:v<N>`` (v0: the encoder alone), as output records carry it."""
        return self.version_label(self.recommender.model_version)

    def version_label(self, version: str) -> str:
        info = self.encoder.info
        return f"{info.model_name}:{info.variant}:{version}"

    def serving_ready(self) -> bool:
        """Catalogue loaded and the newest published model version active."""
        return self.catalogue.ready.is_set() and self.models.ready.is_set()

    def _on_swap(self, version: str) -> None:
        self._accepted_since_swap = 0
        self._since = time.monotonic()
        self.metrics.set_model(self.version_label(version), self.encoder.info.variant, self.encoder.info.provider)
        self.metrics.model_swaps.inc()

    # -- Faust app ---------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        cfg = self.cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            cfg.app_id,
            broker=[f"{_transport.SCHEME}://{s}" for s in cfg.kafka.servers],
            broker_credentials=cfg.kafka.faust_credentials(),
            store=store_url(cfg.store),
            datadir=str(cfg.state_dir / cfg.app_id),
            topic_partitions=cfg.partitions,
            topic_replication_factor=cfg.replication_factor,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=cfg.session_timeout_s,
            broker_heartbeat_interval=cfg.heartbeat_s,
            broker_commit_interval=cfg.commit_interval_s,
            web_host=cfg.web_host,
            web_port=cfg.web_port,
            web_enabled=True,
            producer_linger=0.0,
            **({"producer_max_batch_size": cfg.producer_batch_bytes} if cfg.producer_batch_bytes else {}),
            stream_wait_empty=False,
        )
        app.streamrec_fetch_wait_ms = cfg.fetch_wait_ms
        app.streamrec_on_reread = lambda tp: self.metrics.rereads.labels(topic=tp.topic).inc()  # stall guard
        app.streamrec_unfinished = weakref.WeakSet()  # messages of the chunk being processed (transport.Consumer.ack)
        t = cfg.topics
        for name in t.event_topics():
            self.metrics.rereads.labels(topic=name)  # shown as 0 from the start
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.events_topic = app.topic(*t.event_topics(), partitions=cfg.partitions, **raw)
        self.rekeyed_topic = app.topic(t.rekeyed, partitions=cfg.partitions, **raw)
        self.recs_topic = app.topic(t.recommendations, partitions=cfg.partitions, **raw)
        self.dlq_topic = app.topic(t.dead_letters, **raw)
        self.control_topic = app.topic(t.control, **raw)
        # value_type=bytes makes Faust store and ship the value raw (UserState.to_bytes)
        self.users = app.Table("users", default=None, key_type=str, value_type=bytes, partitions=cfg.partitions,
                               help="user state (inference.user.UserState bytes)")
        # "<topic>[<partition>]@<offset>" of each input record whose dead letter the broker has: a record
        # read again (stall guard, rebalance, restart, rewound offsets) is not dead-lettered twice. One
        # entry per offset, not a high-water mark: within a chunk dead letters are not written in offset
        # order (parse errors first, unknown items and processing errors after), and after a dropped
        # record later offsets are processed before it is read again.
        self.dead_lettered = app.Table("dead-lettered", default=None, key_type=str, value_type=int,
                                       partitions=cfg.partitions, help="dead-lettered input offsets")

        @app.agent(self.events_topic, name="process-events")
        async def process(stream):
            await self.catalogue.ready.wait()
            await self.models.ready.wait()
            _settle_heap()
            unfinished = app.streamrec_unfinished
            async for chunk in stream.take_events(cfg.chunk_size, within=cfg.chunk_wait_s):
                # take_events acknowledges a chunk's events however its processing ends, cancelled at
                # shutdown included: until the chunk is through, the consumer refuses those acks, so a
                # chunk cut short is never committed (it is delivered again on restart)
                messages = [ev.message for ev in chunk]
                unfinished.update(messages)
                await self.process_chunk(stream, chunk)
                unfinished.difference_update(messages)

        @app.task
        async def follow_catalogue():
            from aiokafka import AIOKafkaConsumer

            def factory():
                return AIOKafkaConsumer(client_id=f"{cfg.app_id}-catalogue", enable_auto_commit=False,
                                        fetch_max_wait_ms=max(cfg.fetch_wait_ms, CATALOGUE_FETCH_WAIT_MS),
                                        **cfg.kafka.aiokafka())
            await self.catalogue.run(factory, t.items)

        @app.task
        async def follow_models():
            from aiokafka import AIOKafkaConsumer

            def factory():
                return AIOKafkaConsumer(client_id=f"{cfg.app_id}-control", enable_auto_commit=False,
                                        fetch_max_wait_ms=max(cfg.fetch_wait_ms, 100), **cfg.kafka.aiokafka())
            await self.models.run(factory, t.control)

        if cfg.retrain_every_events > 0 or cfg.retrain_interval_s > 0:
            @app.timer(interval=1.0)
            async def request_retrain():
                await self._maybe_request_retrain()

        if cfg.min_interval_ms > 0:
            @app.timer(interval=max(cfg.min_interval_ms / 2000.0, 0.01))
            async def flush_coalesced():
                await self._flush_pending(force=False)

        @app.page("/metrics")
        async def metrics_view(web, request):
            self.metrics.catalogue.set(len(self.index))
            return web.bytes(self.metrics.render(), content_type="text/plain; version=0.0.4")

        @app.page("/health")
        async def health_view(web, request):
            ready = self.serving_ready()
            return web.json({"ready": ready, "items": len(self.index), "model_version": self.model_version},
                            status=200 if ready else 503)

        self.api = register_api(self, app, cfg.api)

        @app.on_before_shutdown.connect
        async def _drain(app_, **kwargs):
            await self._flush_pending(force=True)

        self._process_agent = process
        return app

    # -- processing ----------------------------------------------------------------------
    async def _encode_many(self, texts: list[str]):
        return await self.batcher.encode_many(texts)

    def _on_catalogue(self, op: str, n: int) -> None:
        self.metrics.catalogue_updates.labels(op=op).inc(n)
        self.metrics.catalogue.set(len(self.index))

    async def process_chunk(self, stream, chunk) -> None:
        """Validate, encode (one batched call), apply each event in order, rank the chunk's
        events together (one matrix product), then publish each list and stage each state
        in order; the states are written once the broker has acknowledged the lists."""
        parsed: list[tuple[object, Event | None]] = []
        t = self.cfg.topics
        now = time.time()
        for ev in chunk:
            msg = ev.message
            kind = "click" if msg.topic == t.clicks else "review" if msg.topic == t.reviews else None
            try:
                event = parse_event(msg.value if msg.value is not None else b"", kind, key=msg.key, now=now)
            except InvalidEvent as exc:
                await self._dead_letter(exc.reason, exc.detail, msg, exc.field)
                parsed.append((ev, None))
                continue
            if msg.key is None:  # unkeyed: re-publish keyed by user so the owner of that user sees it
                await self.rekeyed_topic.send(key=event.user_id.encode(), value=msg.value)
                self.metrics.rekeyed.inc()
                parsed.append((ev, None))
                continue
            if event.event_id is None:
                event = _with_event_id(event)
            parsed.append((ev, event))
        texts = [e.text for _, e in parsed if e is not None and e.text]
        # one batched encoder call for the chunk; a text that fails is that event's error alone
        vectors = iter(await asyncio.gather(*(self.batcher.encode(t) for t in texts), return_exceptions=True))
        users = _ChunkUsers(self.users, self.recommender.new_state)
        # how many of each user's events are still to come in this chunk: a user's state is
        # serialised once, when it is written, unless a later event of theirs may need it back
        users.left = Counter(e.user_id for _, e in parsed if e is not None)
        # One version scores the whole chunk (a swap lands between chunks). Exploration is
        # stateful per served list and explanations recompute the ranking: those go one by one.
        model = self.recommender.active if not self.cfg.explain and self.recommender.explorer is None else None
        staged: list[_Staged] = []
        for ev, event in parsed:
            if event is None:
                continue
            text_vec = next(vectors) if event.text else None
            with _as_current(ev):  # table reads and writes go to this event's partition
                try:
                    if isinstance(text_vec, BaseException):
                        raise text_vec
                    step = await self.apply_event(ev, event, text_vec, users, model)
                    if step is not None and model is None:
                        await self._finish(step, users)
                except Exception as exc:  # noqa: BLE001 - one event must never stop the worker
                    users.forget(event.user_id)  # its next event starts from its last good state
                    await self._processing_error(ev, event, exc)
                    continue
            if step is None:
                continue
            if isinstance(step.state, bytes):
                users.applied(event.user_id, step.state)
            if model is not None:
                staged.append(step)
        for step, rec in zip(staged, self._rank(staged, model)):
            with _as_current(step.ev):
                try:
                    if isinstance(rec, BaseException):
                        raise rec
                    step.rec = rec
                    await self._finish(step, users)
                except Exception as exc:  # noqa: BLE001
                    await self._processing_error(step.ev, step.event, exc)
        await self._write_states(users)
        await self._record_dead_letters()

    async def _write_states(self, users: _ChunkUsers) -> None:
        """Write the chunk's user states once the broker has acknowledged the chunk's lists.

        A state holds the ids of the events applied to it, so once it is written a re-delivered
        event is a duplicate and gets no list: writing it before its list is safely in Kafka
        would let a crash lose that list for good (the changelog and the output are separate
        partitions, delivered independently). Waiting per chunk keeps the cost to one round
        trip per chunk.
        """
        if users.sent:
            await asyncio.gather(*users.sent)
        for user_id, (ev, state) in users.writes.items():
            with _as_current(ev):  # the changelog partition is the one of the user's event
                self.users[user_id] = state if isinstance(state, bytes) else state.to_bytes()

    async def apply_event(self, ev, event: Event, text_vec, users: _ChunkUsers,
                          model: ActiveModel | None = None) -> _Staged | None:
        """Duplicate check, unknown-item policy, state update; what to publish and store (None:
        nothing). The state is the user's as of its previous event, in this chunk or in the
        table. With ``model`` the list is left to rank with the chunk (``_Staged.request``);
        without, it is ranked now, with exploration and explanations as configured."""
        msg = ev.message
        state = users.get(event.user_id)
        # The event-id check: an event already in the user's state (a re-delivery after a
        # crash or rebalance, or a re-sent event) changes nothing and publishes nothing.
        if state.has_seen(event.event_id):
            self.metrics.duplicates.inc()
            # Written again (after this chunk's lists, like any state): a worker stopped before the
            # changelog had its last write (crash, or a shutdown cut short with the broker unreachable)
            # restarts with that write in its local store only; re-delivered events end up here, and
            # this brings the changelog, which any later owner of the user restores from, level again.
            users.writes.setdefault(event.user_id, (ev, state.to_bytes()))
            return None
        if event.item_id not in self.index and self.cfg.unknown_items == "dead-letter":
            await self._dead_letter(UNKNOWN_ITEM, f"item {event.item_id!r} is not in the catalogue: publish it to "
                                    f"{self.cfg.topics.items} before events about it, or run the worker with "
                                    "--unknown-items accept", msg, "item_id")
            return None
        self.recommender.observe(state, event, text_vec)
        users.left[event.user_id] -= 1
        # the bytes now if a later event of this user in the chunk may fail and need them back;
        # else the state itself, serialised once when the chunk's writes go out
        step = _Staged(ev, event, state.to_bytes() if users.left[event.user_id] > 0 else state)
        if model is not None:
            step.request = self.recommender.request(state, model)  # the list shows the state right after this event
        else:
            step.rec = self.recommender.recommend(state, user_id=event.user_id)
            step.explanations = self.recommender.explain(state, step.rec) if self.cfg.explain else None
        return step

    def _rank(self, staged: list[_Staged], model: ActiveModel | None) -> list:
        """Each staged event's list; if ranking them together fails, each alone (its own error)."""
        if not staged:
            return []
        try:
            return self.recommender.recommend_many([s.request for s in staged], model)
        except Exception:  # noqa: BLE001 - find the one that fails
            out: list = []
            for s in staged:
                try:
                    out.extend(self.recommender.recommend_many([s.request], model))
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    async def _finish(self, step: _Staged, users: _ChunkUsers) -> None:
        """Publish the list, then stage the state write (``step.ev`` is Faust's current event)."""
        event, msg, rec = step.event, step.ev.message, step.rec
        record = recommendation_record(event, rec, model_version=self.version_label(rec.model_version),
                                       source=_source(msg), received_ts=msg.timestamp, explain=self.cfg.explain,
                                       explanations=step.explanations)
        # The list goes out before the state is written (and the write waits for its ack):
        # a crash in between re-processes the event and publishes again (at-least-once)
        # instead of losing the list.
        sent = await self._publish(event.user_id, record)
        if sent is not None:
            users.sent.append(sent)
        users.writes[event.user_id] = (step.ev, step.state)
        self.metrics.events.labels(type=event.kind).inc()
        self._accepted_since_swap += 1

    async def _processing_error(self, ev, event: Event, exc: Exception) -> None:
        log.error("event %s of user %s failed", event.event_id, event.user_id, exc_info=exc)
        await self._dead_letter(PROCESSING_ERROR, f"{type(exc).__name__}: {exc}; the worker carried on. "
                                "Report this with the source offset.", ev.message)

    async def _maybe_request_retrain(self) -> None:
        """Ask the trainer for a new version once enough events were accepted since the swap
        (the count restarts after each request and each swap)."""
        cfg, n = self.cfg, self._accepted_since_swap
        due = (cfg.retrain_every_events > 0 and n >= cfg.retrain_every_events) or (
            cfg.retrain_interval_s > 0 and n > 0 and time.monotonic() - self._since >= cfg.retrain_interval_s)
        if not due:
            return
        request = {"type": "retrain-request", "model_version": self.model_version, "events": n,
                   "worker": f"{socket.gethostname()}:{os.getpid()}", "requested_at": round(time.time(), 3)}
        await self.control_topic.send(key=b"retrain-request", value=dumps(request))
        self.metrics.retrain_requests.inc()
        log.info("asked for retraining: %d events accepted on %s", n, self.model_version)
        self._accepted_since_swap = 0
        self._since = time.monotonic()

    async def _publish(self, user_id: str, record: dict):
        """Send the list now (returns the send's future) or hold it back (``--min-interval-ms``,
        returns None: a held-back list is lost if the worker crashes before it goes out)."""
        interval = self.cfg.min_interval_ms / 1000.0
        now = time.time()
        if interval > 0:
            last = self._last_publish.get(user_id)
            if last is not None and now - last < interval:
                # Hold the list back; a still-waiting older list for this user is superseded
                # (its event counts as coalesced) and this record says how many it folds in.
                previous = self._pending.pop(user_id, None)
                if previous is not None:
                    self.metrics.coalesced.inc()
                    record["coalesced"] = previous.get("coalesced", 0) + 1
                self._pending[user_id] = record
                return None
            self._last_publish[user_id] = now
            self._last_publish.move_to_end(user_id)
            while len(self._last_publish) > 100_000:
                self._last_publish.popitem(last=False)
        return await self._send_record(user_id, record)

    async def _send_record(self, user_id: str, record: dict):
        """Hand the record to the producer; the returned future resolves when the broker has it."""
        # Straight to Faust's producer (what Topic.send ends in): the topic layer's per-message
        # futures, sensors and debug logging were ~half of publishing's cost and nothing reads
        # them. aiokafka's future resolves on the broker's ack, as the topic's did.
        sent = await self.app.producer.send(self.cfg.topics.recommendations, user_id.encode(), dumps(record),
                                            None, None, None)
        self.metrics.published.inc()
        self.metrics.latency.observe(max(record["latency_ms"], 0.0) / 1000.0)
        return sent

    async def _flush_pending(self, force: bool) -> None:
        interval = self.cfg.min_interval_ms / 1000.0
        now = time.time()
        for user_id in list(self._pending):
            if force or now - self._last_publish.get(user_id, 0.0) >= interval:
                record = self._pending.pop(user_id)
                record["latency_ms"] = round((now - record["published_at"]) * 1000.0 + record["latency_ms"], 3)
                record["published_at"] = round(now, 6)
                self._last_publish[user_id] = now
                await self._send_record(user_id, record)

    async def _dead_letter(self, reason: str, detail: str, msg, field: str | None = None) -> None:
        """Write the record's dead letter, unless one was written for its source offset already (an
        input record read again): that delivery is dropped and counted as a duplicate. Catalogue
        records (``_AioMsg``) are not tracked: every worker reads the whole catalogue at each start."""
        tracked = not isinstance(msg, _AioMsg)
        if tracked and self._dead_lettered_already(msg):
            self.metrics.duplicates.inc()
            log.info("dead letter for %s[%d]@%d already written: not again", msg.topic, msg.partition, msg.offset)
            return
        record = dead_letter_record(reason, detail, source=_source(msg), key=msg.key, value=msg.value, field=field)
        sent = await self.dlq_topic.send(key=msg.key, value=dumps(record))
        self.metrics.dead_letters.labels(reason=reason).inc()
        log.warning("dead letter %s at %s[%d]@%d: %s", reason, msg.topic, msg.partition, msg.offset, detail)
        if tracked:
            self._dead_pending.add((msg.topic, msg.partition, msg.offset))
            self._dead_sent.append((msg, sent))

    @staticmethod
    def _dead_key(msg) -> str:
        return f"{msg.topic}[{msg.partition}]@{msg.offset}"

    def _dead_lettered_already(self, msg) -> bool:
        """Whether ``msg``'s source offset has its dead letter: sent in this chunk, or in the table."""
        if (msg.topic, msg.partition, msg.offset) in self._dead_pending:
            return True
        with _as_current(_SourceEvent(msg)):  # the table partition is the record's own
            return self.dead_lettered.get(self._dead_key(msg)) is not None

    async def _record_dead_letters(self) -> None:
        """Once the broker has the chunk's dead letters, store their source offsets (the table's
        changelog makes them survive restarts and follow the partition to another worker). A crash
        in between can write a dead letter twice; a re-read never does."""
        sent, self._dead_sent = self._dead_sent, []
        if not sent:
            return
        await asyncio.gather(*(fut for _, fut in sent))
        for msg, _ in sent:
            with _as_current(_SourceEvent(msg)):
                self.dead_lettered[self._dead_key(msg)] = msg.offset
            self._dead_pending.discard((msg.topic, msg.partition, msg.offset))

    async def _reject_item(self, exc: InvalidEvent, msg) -> None:
        await self._dead_letter(exc.reason, exc.detail, _AioMsg(msg), exc.field)

    async def close(self) -> None:
        await self.batcher.close()


@dataclass
class _Staged:
    """An applied event waiting for its list: what to rank (or the list), and the state to store."""

    ev: object  # the Faust event (its message is the source record)
    event: Event
    state: bytes | UserState  # the user's state right after this event (bytes: a snapshot)
    request: RankRequest | None = None  # ranked with the chunk
    rec: Recommendation | None = None  # the list, once ranked
    explanations: list[dict] | None = None


class _ChunkUsers:
    """The users a chunk touches: states carried from one of their events to the next, and the
    writes and list sends that wait for the end of the chunk.

    Table writes happen after the chunk's lists are acknowledged, so a user's second event in a
    chunk must start from the first one's in-memory state, not from the table. After a failed
    event the user starts again from the state of its last good event (or the table's).
    """

    def __init__(self, table, new_state) -> None:
        self.table, self.new_state = table, new_state
        self.live: dict[str, UserState] = {}
        self.good: dict[str, bytes] = {}  # state bytes right after the user's last applied event
        self.writes: dict[str, tuple[object, bytes | UserState]] = {}  # user -> (Faust event, state) to write
        self.sent: list = []  # the chunk's list sends (futures resolved by the broker's ack)
        self.left: Counter = Counter()  # user -> their events still to come in the chunk

    def get(self, user_id: str) -> UserState:
        state = self.live.get(user_id)
        if state is None:
            raw = self.good.get(user_id)
            if raw is None:
                raw = self.table.get(user_id)
            state = UserState.from_bytes(raw) if raw is not None else self.new_state()
            self.live[user_id] = state
        return state

    def applied(self, user_id: str, raw: bytes) -> None:
        self.good[user_id] = raw

    def forget(self, user_id: str) -> None:
        self.live.pop(user_id, None)


class _SourceEvent:
    """Stands in for the Faust event of ``message`` where only its partition matters (table routing)."""

    def __init__(self, message) -> None:
        self.message = message


class _AioMsg:
    """An aiokafka record seen through the attribute names Faust messages use."""

    def __init__(self, m) -> None:
        self.topic, self.partition, self.offset = m.topic, m.partition, m.offset
        self.timestamp = m.timestamp / 1000.0 if m.timestamp else None
        self.key, self.value = m.key, m.value


def _source(msg) -> dict:
    return {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
            "timestamp": round(msg.timestamp, 6) if msg.timestamp else None}


def _with_event_id(event: Event) -> Event:
    from dataclasses import replace

    return replace(event, event_id=derive_event_id(event.user_id, event.item_id, event.event_time, event.text))


class _as_current:
    """Make ``event`` Faust's current event while its table read or write happens.

    Faust routes a table read or write to the partition of the *current* event; after
    ``take_events`` that would be the chunk's last event for every write, so we set it
    per event (the same context variable Faust's own stream loop sets).
    """

    def __init__(self, event) -> None:
        self.event = event

    def __enter__(self):
        self.token = _faust_streams._current_event.set(weakref.ref(self.event))

    def __exit__(self, *exc):
        _faust_streams._current_event.reset(self.token)


def _index_device(provider: str) -> str:
    """Score on the GPU only when the encoder runs there *and* torch can reach it (the CPU
    torch build that `.ci/setup` installs cannot, even on a GPU host)."""
    if not provider.startswith("CUDA"):
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    if not torch.cuda.is_available():
        log.warning("the encoder runs on CUDA but this torch build has no CUDA: scoring stays on the CPU "
                    "(install a CUDA torch build to score on the GPU too)")
        return "cpu"
    return "cuda"


def _settle_heap() -> None:
    """Exempt everything built before the first event (Faust, the model, the catalogue: ~100k
    objects) from the garbage collector's full passes. A full pass walks every object and
    stops the event loop meanwhile: 30-160 ms on the 2-core bench box, straight into p99."""
    gc.collect()
    gc.freeze()


def build_worker(cfg: WorkerConfig) -> StreamrecWorker:
    return StreamrecWorker(cfg)


def limit_blas_threads() -> None:
    """One BLAS thread (env ``STREAMREC_BLAS_THREADS`` to change): a worker scores one user per
    event, a small matrix-vector product, and BLAS threads only fight the encoder and the event
    loop for the cores (bench pipeline profile: 10k x 384 on 2 busy cores took 7 ms with
    OpenBLAS's threads, 1 ms with one)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with implicit
        return
    threadpool_limits(int(os.environ.get("STREAMREC_BLAS_THREADS", "1")), user_api="blas")


#: Exit status of a worker whose shutdown did not finish within its deadline (see below).
EXIT_SHUTDOWN_TIMEOUT = 3


def faust_worker(app: faust.App, loglevel: str, shutdown_timeout_s: float | None = None):
    """Faust's worker without its start-up spinner, and with a bounded shutdown.

    At ``--loglevel warn`` or above the spinner sets the root logger to DEBUG for good, so
    every Faust ``logger.debug`` (two per event: output and changelog sends) built a log
    record that was then dropped (bench pipeline, py-spy --gil: ~5% of the worker's time).

    Shutdown: after SIGTERM or SIGINT, Faust stops gracefully (commit, flush the producer,
    leave the group), which waits for the broker: with the broker unreachable, for the
    producer's request timeout (20 minutes). With ``shutdown_timeout_s`` the process ends
    within that time whatever the broker does (a second signal ends it at once), with exit
    status ``EXIT_SHUTDOWN_TIMEOUT``. That is safe by the same argument as a crash: offsets
    are committed only after the producer is flushed, so whatever was processed but not
    committed is delivered again on restart and dropped there as duplicates (or, if its
    state never reached the store, processed again); nothing is lost.
    """
    from faust.worker import Worker

    class _Worker(Worker):
        def on_setup_root_logger(self, logger, level: int) -> None:
            self.spinner = None
            super().on_setup_root_logger(logger, level)

        def _schedule_shutdown(self, signal) -> None:
            if shutdown_timeout_s is not None:
                if self._signal_stop_time:  # asked again while stopping: now
                    _exit_now(f"signal {signal.name} received again while stopping")
                _arm_shutdown_deadline(shutdown_timeout_s)
            super()._schedule_shutdown(signal)

    return _Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)


def _arm_shutdown_deadline(seconds: float) -> None:
    import threading

    def expired() -> None:
        _exit_now(f"shutdown did not finish within {seconds:g}s (is the broker reachable?)")

    timer = threading.Timer(seconds, expired)
    timer.daemon = True  # the deadline never keeps a finished worker alive
    timer.start()


def _exit_now(why: str) -> None:
    log.warning("%s: exiting now (status %d). Events processed since the last commit are delivered again "
                "on restart and dropped there as duplicates; nothing is lost.", why, EXIT_SHUTDOWN_TIMEOUT)
    logging.shutdown()  # flush the log handlers: os._exit skips them
    os._exit(EXIT_SHUTDOWN_TIMEOUT)


def run_worker(cfg: WorkerConfig) -> None:
    """Run until SIGINT/SIGTERM (blocking): what ``streamrec worker`` does."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    limit_blas_threads()
    w = build_worker(cfg)
    faust_worker(w.app, cfg.loglevel, cfg.shutdown_timeout_s).execute_from_commandline()
