"""What the fault scenarios share: a real workload, raw topic reads, the offline reference.

The reference a worker's final user state is compared with is computed here with the very
code the worker runs (:meth:`inference.recommender.Recommender.observe`, fed the same
events in per-user order and an :class:`~inference.index.ItemIndex` built from the same
encoder and catalogue), and the worker's state is read back from the users table's
changelog topic (the last value per user key), as a replacement worker would restore it.

Workers in these tests run the FP32 encoder: INT8 dynamic quantisation scales activations
per call, so a text's vector depends on the other texts in its batch (cosine down to 0.976
between "alone" and "in a batch of 64" on the Musical Instruments reviews), while FP32
agrees to ~1e-7. The fault paths do not depend on the variant; the equality check does.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from inference.events import Event, ItemRecord
from inference.index import ItemIndex
from inference.recommender import Recommender, RecommenderConfig
from inference.user import UserState
from streams.replay import encode_event, producer, publish_catalogue, topic_for
from streams.settings import KafkaConfig
from streams.topics import Topics

REPO = Path(__file__).resolve().parents[2]
#: Worker flags of every fault scenario that checks state: the deterministic encoder (see
#: the module docstring) and short texts (the encoder dominates the run time on 2 cores).
STATE_FLAGS = ("--variant", "fp32", "--max-tokens", "64")
#: One record per producer batch: Tansu answers ListOffsets(latest) with the last batch's
#: base offset + 1, so changelog recovery would stop short of a multi-record last batch.
RECOVERABLE = ("--producer-batch-bytes", "1")
MAX_TOKENS = 64


@dataclass
class Workload:
    """Real Musical Instruments events on a small catalogue: mostly clicks, some reviews."""

    items: list[ItemRecord]
    events: list[Event]

    @property
    def users(self) -> list[str]:
        return sorted({e.user_id for e in self.events})

    def by_user(self) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = defaultdict(list)
        for e in self.events:
            out[e.user_id].append(e)
        return dict(out)

    def split(self, *fractions: float) -> list[list[Event]]:
        """Consecutive slices of the event list (per-user order is kept across slices)."""
        cuts = [0] + [int(len(self.events) * f) for f in np.cumsum(fractions)] + [len(self.events)]
        return [self.events[a:b] for a, b in zip(cuts, cuts[1:])]


def make_workload(ds, *, users: int, top_items: int = 60, review_every: int = 10, min_events: int = 3,
                  skip_users: int = 0) -> Workload:
    """Events of ``users`` real users on the ``top_items`` most reviewed items, in event-time order.

    Every ``review_every``-th event keeps its review text and rating (reviews topic, encoded by
    the model); the others become clicks (no text, no rating), as most traffic would be.
    ``skip_users`` picks a different set of users from the same pool.
    """
    popular = {i for i, _ in Counter(e.item_id for e in ds.events).most_common(top_items)}
    events = [e for e in ds.events if e.item_id in popular]
    per_user = Counter(e.user_id for e in events)
    pool = sorted(u for u, n in per_user.items() if n >= min_events)
    chosen = set(pool[skip_users: skip_users + users])
    picked = [e for e in events if e.user_id in chosen]
    out = [e if k % review_every == 0 else replace(e, kind="click", text=None, rating=None)
           for k, e in enumerate(picked)]
    return Workload(items=[ds.items[i] for i in sorted(popular)], events=out)


# -- Kafka I/O ------------------------------------------------------------------------------
def publish_items(kafka: KafkaConfig, topics: Topics, items: list[ItemRecord]) -> None:
    prod = producer(kafka)
    publish_catalogue(prod, topics, items)
    prod.close()


Record = tuple[str, bytes | None, bytes | None]  # topic, key, value


def event_records(topics: Topics, events: list[Event]) -> list[Record]:
    """Events as a producer sends them: keyed by user, clicks and reviews to their topics."""
    return [(topic_for(e, topics), e.user_id.encode(), encode_event(e)) for e in events]


#: Broken records of many kinds (one per reason family), keyed like real traffic.
BROKEN = [
    b"{not json",
    b"[1, 2, 3]",
    json.dumps({"user_id": "u", "event_time": 1_400_000_000}).encode(),  # no item_id
    json.dumps({"user_id": "u", "item_id": "x", "event_time": "yesterday"}).encode(),
    json.dumps({"user_id": "u", "item_id": "x", "event_time": 1_400_000_000, "rating": 99}).encode(),
    b"\xff\xfe not utf-8",
    json.dumps({"user_id": "u", "item_id": True, "event_time": 1_400_000_000}).encode(),
    json.dumps({"user_id": "u", "item_id": "no-such-item", "event_time": 1_400_000_000}).encode(),  # unknown_item
]


def interleave_broken(records: list[Record], topics: Topics, n: int) -> list[Record]:
    """``records`` with ``n`` broken ones spread evenly among them. A broken record's key is
    the user of its neighbour, except for user-less kinds; the ``user_id`` in a broken JSON
    value is rewritten to match the key (no key_mismatch) where there is one."""
    out: list[Record] = []
    step = max(1, len(records) // max(n, 1))
    k = 0
    for i, rec in enumerate(records):
        out.append(rec)
        if k < n and i % step == step - 1:
            out.append(_broken(k, rec[1], topics))
            k += 1
    while k < n:
        out.append(_broken(k, b"flood", topics))
        k += 1
    return out


def _broken(k: int, key: bytes | None, topics: Topics) -> Record:
    value = BROKEN[k % len(BROKEN)]
    if b'"user_id": "u"' in value and key is not None:
        value = value.replace(b'"user_id": "u"', b'"user_id": ' + json.dumps(key.decode()).encode())
    return (topics.reviews if k % 2 else topics.clicks, key, value)


def publish(kafka: KafkaConfig, records: list[Record], **producer_overrides) -> float:
    """Send (topic, key, value) records in order as fast as the producer goes; return the
    seconds taken, the broker's acknowledgements included."""
    prod = producer(kafka, **{"linger_ms": 5, **producer_overrides})
    t0 = time.perf_counter()
    for topic, key, value in records:
        prod.send(topic, key=key, value=value)
    prod.flush()
    seconds = time.perf_counter() - t0
    prod.close()
    return seconds


def publish_events(kafka: KafkaConfig, topics: Topics, events: list[Event], **producer_overrides) -> float:
    return publish(kafka, event_records(topics, events), **producer_overrides)


@dataclass
class Raw:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int


class TopicReader:
    """Read a whole topic (every partition, no group) and keep following it in a thread.

    ``wait(cond)`` blocks until ``cond(records)`` holds; records keep arriving meanwhile,
    so a test can watch outputs while it kills workers or freezes the broker.
    """

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self.records: list[Raw] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=kafka.servers, group_id=None, enable_auto_commit=False,
                                       fetch_max_wait_ms=50, request_timeout_ms=60_000,
                                       connections_max_idle_ms=120_000)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"reader-{topic}")
        self._error: BaseException | None = None
        self._thread.start()

    def _run(self) -> None:
        from kafka import TopicPartition

        try:
            parts = None
            while not parts and not self._stop.is_set():
                parts = self._consumer.partitions_for_topic(self.topic)
                if not parts:
                    time.sleep(0.1)
            tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
            self._consumer.assign(tps)
            self._consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                for recs in self._consumer.poll(timeout_ms=100).values():
                    with self._lock:
                        self.records.extend(Raw(r.key, r.value, r.partition, r.offset, r.timestamp) for r in recs)
        except BaseException as exc:  # noqa: BLE001 - surfaced by wait()
            self._error = exc

    def snapshot(self) -> list[Raw]:
        with self._lock:
            return list(self.records)

    def json(self) -> list[dict]:
        return [{**json.loads(r.value), "_partition": r.partition, "_offset": r.offset}
                for r in self.snapshot() if r.value is not None]

    def wait(self, cond: Callable[[list[Raw]], bool], timeout_s: float, what: str) -> list[Raw]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"reading {self.topic} failed: {self._error!r}")
            snap = self.snapshot()
            if cond(snap):
                return snap
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not reached within {timeout_s:.0f}s on {self.topic} "
                           f"({len(self.snapshot())} records)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def committed_offsets(kafka: KafkaConfig, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets as the broker has them: (topic, partition) -> offset."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka.servers, client_id="faults-offsets", request_timeout_ms=10_000)
    try:
        got = admin.list_group_offsets({group: None}).get(group, {})
        return {(tp.topic, tp.partition): meta.offset for tp, meta in got.items() if meta.offset >= 0}
    finally:
        admin.close()


def wait_committed(kafka: KafkaConfig, group: str, wanted: dict[tuple[str, int], int], timeout_s: float = 60.0,
                   what: str = "offsets committed") -> dict[tuple[str, int], int]:
    """Block until the group has committed at least ``wanted`` on each (topic, partition)."""
    deadline = time.monotonic() + timeout_s
    got: dict = {}
    while time.monotonic() < deadline:
        try:
            got = committed_offsets(kafka, group)
        except Exception:  # noqa: BLE001 - the coordinator may not be ready yet
            got = {}
        if all(got.get(tp, -1) >= off for tp, off in wanted.items()):
            return got
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s (want {wanted}, have {got})")


def rewind_group(kafka: KafkaConfig, group: str, topics: list[str], partitions: int, timeout_s: float = 60.0) -> None:
    """Set the (stopped) group's committed offsets of ``topics`` back to 0, as an operator re-processing
    a topic would. Tansu refuses offset commits from outside the group (UnknownMemberId even for an
    empty group) and keeps a group's protocol once chosen, so this joins the group as its only member
    under the name of Faust's assignor (a round-robin one: it is alone), commits, and leaves."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.structs import OffsetAndMetadata

    class AsFaust(RoundRobinPartitionAssignor):
        name = "faust"

    from kafka.errors import InconsistentGroupProtocolError

    wanted = {TopicPartition(t, p) for t in topics for p in range(partitions)}
    deadline = time.monotonic() + timeout_s
    while True:
        consumer = KafkaConsumer(*topics, bootstrap_servers=kafka.servers, group_id=group, enable_auto_commit=False,
                                 session_timeout_ms=3000, heartbeat_interval_ms=1000, auto_offset_reset="earliest",
                                 fetch_max_wait_ms=50, client_id="faults-rewind",
                                 partition_assignment_strategy=[AsFaust])
        try:
            while consumer.assignment() != wanted:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rewind: group {group} did not give one member {len(wanted)} partitions "
                                       f"within {timeout_s:.0f}s (has {len(consumer.assignment())})")
                consumer.poll(timeout_ms=200, max_records=1)
            consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in wanted})
            break
        except InconsistentGroupProtocolError:  # the worker's membership has not expired yet (Faust's assignor)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            consumer.close()
    got = committed_offsets(kafka, group)
    assert all(got.get((tp.topic, tp.partition), 0) == 0 for tp in wanted), got


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``, as the producers here use it."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def output_ids(records: list[Raw] | list[dict]) -> Counter:
    """How many output records each trigger event id has (raw records or parsed ones)."""
    parsed = (r if isinstance(r, dict) else json.loads(r.value) for r in records
              if isinstance(r, dict) or r.value)
    return Counter(r["trigger"]["event_id"] for r in parsed)


def dead_letter_sources(records: list[Raw]) -> Counter:
    """How many dead letters each source record (topic, partition, offset) has."""
    out: Counter = Counter()
    for r in records:
        s = json.loads(r.value)["source"]
        out[(s["topic"], s["partition"], s["offset"])] += 1
    return out


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-users-changelog"


def last_states(records: list[Raw]) -> dict[str, UserState]:
    """The users table as a restoring worker sees it: the last changelog value per key
    (Faust writes the str key as JSON)."""
    last: dict[str, bytes | None] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        last[json.loads(r.key)] = r.value
    return {k: UserState.from_bytes(v) for k, v in last.items() if v is not None}


def states_cover(records: list[Raw], wanted: dict[str, set[str]]) -> bool:
    """True once every user's last changelog state holds every event id it should."""
    states = last_states(records)
    return all(u in states and ids <= set(states[u].recent_events) for u, ids in wanted.items())


# -- the offline reference ------------------------------------------------------------------
def reference_states(encoder, workload: Workload, config: RecommenderConfig | None = None) -> dict[str, UserState]:
    """Each user's state after one uninterrupted single pass over the workload's events."""
    index = ItemIndex(encoder.dim)
    index.upsert_many([r.item_id for r in workload.items], encoder.encode([r.text() for r in workload.items]))
    rec = Recommender(index, config=config or RecommenderConfig())
    texts = [e.text for e in workload.events if e.text]
    vectors = iter(encoder.encode(texts)) if texts else iter(())
    states: dict[str, UserState] = {}
    for e in workload.events:
        state = states.setdefault(e.user_id, rec.new_state())
        rec.observe(state, e, next(vectors) if e.text else None)
    return states


def assert_states_equal(actual: dict[str, UserState], expected: dict[str, UserState], atol: float = 1e-5) -> float:
    """Every user present, same counts, ids, times and weights; vectors within ``atol``.
    Returns the largest vector difference seen."""
    assert set(actual) == set(expected), (sorted(set(expected) - set(actual))[:5], sorted(set(actual) - set(expected))[:5])
    worst = 0.0
    for user, want in expected.items():
        got = actual[user]
        assert got.count == want.count, (user, got.count, want.count)  # a duplicate applied twice shows here
        # Sets, not lists: a user's clicks and reviews are on two topics, and Kafka orders only
        # within a partition, so a click and a review may be applied in either order (the
        # vector and weight do not depend on that beyond float rounding: decay is in event time).
        assert set(got.recent_events) == set(want.recent_events), (user, got.recent_events, want.recent_events)
        assert set(got.recent_items) == set(want.recent_items), user
        # the sequence a trained version reads: the same events at the same times (events of equal
        # time keep their arrival order, which two topics do not fix)
        assert sorted(zip(got.seq.times.tolist(), got.seq.keys.tolist())) == \
            sorted(zip(want.seq.times.tolist(), want.seq.keys.tolist())), user
        assert got.last_time == want.last_time, user
        assert abs(got.weight - want.weight) <= 1e-6 * max(1.0, want.weight), (user, got.weight, want.weight)
        diff = float(np.max(np.abs(got.vector - want.vector)))
        assert diff <= atol, (user, diff)
        worst = max(worst, diff)
    return worst


# -- processes ------------------------------------------------------------------------------
def start_group(kafka: KafkaConfig, topics: Topics, model_dir: Path, tmp: Path, n: int, *flags: str,
                app_id: str, names: list[str] | None = None) -> list:
    """Start ``n`` workers of one group side by side (separate processes); each has its own
    state directory ``tmp/<name>`` so that a restart can reuse it."""
    from harness import start_worker, stop_worker

    names = names or [f"w{i}" for i in range(n)]
    started: list = [None] * n
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            started[i] = start_worker(kafka, topics, model_dir, tmp / names[i], *flags, app_id=app_id)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after cleaning up
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for w in started:
            if w is not None:
                stop_worker(w)
        raise errors[0]
    return started


def assignment(w) -> dict[str, list[int]]:
    """Which worker (by web URL) holds which table partitions, as ``w``'s group leader said (the
    tables, users and dead-lettered, are co-partitioned: a worker holds the same ones of each)."""
    import urllib.request

    body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{w.web_port}/router/", timeout=5).read())
    return {url: sorted({p for parts in tables.values() for p in parts}) for url, tables in body.items()}


def url(w) -> str:
    return f"http://127.0.0.1:{w.web_port}"


def wait_assignment(workers: list, partitions: int = 6, timeout_s: float = 120.0) -> dict[str, list[int]]:
    """Block until every worker reports the same assignment, covering all partitions, with a
    share for each of them (the group is stable); return it."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            views = [assignment(w) for w in workers]
        except OSError:
            views = []
        if views and all(v == views[0] for v in views):
            view = views[0]
            owned = sorted(p for parts in view.values() for p in parts)
            if set(view) == {url(w) for w in workers} and all(view.values()) and owned == list(range(partitions)):
                return view
        last = views
        time.sleep(0.5)
    raise TimeoutError(f"group did not settle in {timeout_s:.0f}s: {last}")


def total(workers: list, metric: str) -> float:
    return sum(w.metric(metric) for w in workers)


COUNTED = ("streamrec_events_total", "streamrec_duplicates_total", "streamrec_dead_letters_total")


def wait_quiet(workers: list, quiet_s: float = 2.0, timeout_s: float = 120.0) -> dict[str, float]:
    """Block until the workers' event counters stop moving for ``quiet_s``; return them."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = {m: total(workers, m) for m in COUNTED}
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
        time.sleep(0.2)
    raise TimeoutError(f"workers still busy after {timeout_s:.0f}s: {last}")


def owner_runs(records: list[dict]) -> dict[str, list[str]]:
    """Per user, the workers that published its lists, in output order, runs collapsed
    (``[a, a, b]`` -> ``[a, b]``): a worker appearing twice would mean two owners at once."""
    runs: dict[str, list[str]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["_partition"], r["_offset"])):
        seq = runs[r["user_id"]]
        if not seq or seq[-1] != r["worker"]:
            seq.append(r["worker"])
    return dict(runs)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM for pid {pid}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def kill9(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


# -- reporting ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One scenario's numbers, printed always, written to bench/results only when asked."""

    scenario: str
    events_in: int
    processed: int
    duplicates: int
    dead_letters: int
    lost: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def report(self) -> None:
        print(f"\n[faults] {self.scenario}: in {self.events_in}, processed {self.processed}, duplicates "
              f"{self.duplicates}, dead letters {self.dead_letters}, lost {self.lost}, {self.seconds:.1f}s "
              f"{json.dumps(self.extra)}")
        if os.environ.get("STREAMREC_WRITE_RESULTS") == "1":
            path = REPO / "bench" / "results" / "faults.json"
            data = json.loads(path.read_text()) if path.is_file() else {}
            data[self.scenario] = {k: v for k, v in self.__dict__.items() if k != "scenario"}
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
