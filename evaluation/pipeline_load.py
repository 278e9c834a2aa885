"""The pipeline bench's workload and measuring parts: the 10k-item catalogue and users, loading
and pacing events into Kafka, reading the outputs back with their arrival times, and the
statistics made of them."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.wire import topic_partitions

if TYPE_CHECKING:
    pass

log = logging.getLogger("streamrec.bench")

ENCODER_JSON = "bench/results/encoder.json"
T0 = 1_700_000_000  # event times (epoch s): one second apart per event, far from "the future"
@dataclass
class Plan:
    """Sizes of one bench run (``--quick`` shrinks all of them)."""

    catalogue: int = 10_000
    users: int = 10_000
    preload: dict[str, int] = field(default_factory=lambda: {"ceiling": 20_000, "clicks": 20_000,
                                                             "clicks-seq": 20_000, "reviews": 3_000,
                                                             "naive": 500})
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    phase_s: float = 10.0
    warmup_s: float = 1.0  # latency samples sent in the first second of a phase are dropped
    partitions: int = 6
    encoder_seconds: float = 6.0
    stall_s: float = 60.0  # saturation gives up when no output arrives for this long
    max_rate: float | None = None  # cap on offered rates (quick mode: its saturation figures are noise)
    drain_s: float | None = None  # after a phase, wait this long for the last outputs (None: 2 x phase, >= 15 s)
    linger_ms: int = 5  # the load producer's linger (Kafka's default since 4.0); stamps stay the send() time


QUICK = Plan(catalogue=200, users=10_000,
             preload={"ceiling": 200, "clicks": 200, "clicks-seq": 200, "reviews": 32, "naive": 8},
             fractions=(0.5,), phase_s=1.5, warmup_s=0.0, encoder_seconds=0.5, stall_s=30.0, max_rate=10.0,
             drain_s=8.0)




# --------------------------------------------------------------------------------------------
# workload: a 10k catalogue of real items, 10k synthetic users, clicks and real reviews


@dataclass
class Workload:
    items: list  # ItemRecord, catalogue order
    reviews: list  # Event (real text + rating + real item), file order
    user_p: Any  # np.ndarray: activity of each synthetic user
    item_p: Any  # np.ndarray: click popularity of each catalogue item
    users: list[str]
    sources: dict


def build_workload(plan: Plan, seed: int = 7) -> Workload:
    """MovieLens movies + Musical Instruments items (real titles/descriptions) up to
    ``plan.catalogue`` items; the MI review events whose item is in it."""
    import numpy as np

    from inference.datasets import DatasetNotFound, load_dataset
    from inference.events import ItemRecord

    mi = load_dataset("musical_instruments")
    counts: dict[str, int] = {}
    for ev in mi.events:
        if ev.text:
            counts[ev.item_id] = counts.get(ev.item_id, 0) + 1
    n_mi = min(len(mi.items), max(1, plan.catalogue // 5))
    mi_ids = sorted(mi.items, key=lambda i: (-counts.get(i, 0), i))[:n_mi]
    items = [mi.items[i] for i in mi_ids]
    sources = {"musical_instruments": len(items)}
    need = plan.catalogue - len(items)
    try:
        ml = load_dataset("movielens")
        ml_items = [replace(r, item_id=f"ml{r.item_id}") for r in list(ml.items.values())[:need]]
        sources["movielens"] = len(ml_items)
    except DatasetNotFound:
        ml_items = []
    items += ml_items
    if len(items) < plan.catalogue:  # no MovieLens here: generated items fill the rest
        words = ("acoustic", "electric", "vintage", "bass", "studio", "compact", "stage", "warm", "bright", "pro")
        rng = np.random.default_rng(seed)
        extra = [ItemRecord(f"gen{k}", title=" ".join(rng.choice(words, 3)) + f" model {k}",
                            tags=tuple(rng.choice(words, 2))) for k in range(plan.catalogue - len(items))]
        sources["generated"] = len(extra)
        items += extra
    wanted = set(mi_ids)
    reviews = [ev for ev in mi.events if ev.text and ev.item_id in wanted]
    rng = np.random.default_rng(seed)
    users = [f"u{k:05d}" for k in range(plan.users)]
    user_p = 1.0 / (np.arange(plan.users) + 10.0) ** 0.8
    user_p = rng.permutation(user_p / user_p.sum())
    item_p = 1.0 / (np.arange(len(items)) + 5.0) ** 0.9
    item_p = rng.permutation(item_p / item_p.sum())
    return Workload(items, reviews, user_p, item_p, users, sources)


class EventSource:
    """Unique events of one run (ids ``<run>-<n>``, event times one second apart)."""

    def __init__(self, wl: Workload, run: str, kind: str, seed: int = 11) -> None:
        import numpy as np

        self.wl, self.run, self.kind = wl, run, kind
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self._review_pos = 0

    def take(self, count: int) -> list[tuple[bytes, bytes, str]]:
        """``count`` (key, value, event_id) records."""
        wl = self.wl
        users = self.rng.choice(len(wl.users), size=count, p=wl.user_p)
        items = self.rng.choice(len(wl.items), size=count, p=wl.item_p) if self.kind == "click" else None
        out = []
        for k in range(count):
            user = wl.users[users[k]]
            eid = f"{self.run}-{self.n}"
            ev: dict[str, Any] = {"user_id": user, "event_time": T0 + self.n, "event_id": eid}
            if self.kind == "click":
                ev.update(type="click", item_id=wl.items[items[k]].item_id)
            else:
                src = wl.reviews[self._review_pos % len(wl.reviews)]
                self._review_pos += 1
                ev.update(type="review", item_id=src.item_id, text=src.text)
                if src.rating is not None:
                    ev["rating"] = src.rating
            self.n += 1
            out.append((user.encode(), json.dumps(ev, ensure_ascii=False).encode(), eid))
        return out


# --------------------------------------------------------------------------------------------
# a sequence version for the worker to serve (the clicks-seq run)

SEQ_VERSION = "v1"
#: All four parts of a sequence version's score non-zero: every part is computed (the worst case).
SEQ_WEIGHTS = {"similarity": 1.0, "popularity": 1.0, "head": 0.0, "text": 1.0, "cooccurrence": 1.0}


@dataclass
class SequenceVersion:
    """A version written to a registry folder, ready to be published on a run's control topic."""

    registry: Path
    manifest: dict
    summary: dict  # what the result JSON records about it


def write_sequence_version(registry: Path, item_ids: list[str], dim: int, seed: int = 0) -> SequenceVersion:
    """A sequence version (:data:`SEQ_VERSION`) over the bench catalogue, written to ``registry``.

    Its weights are untrained (random initialisation) and its item text vectors random unit
    vectors of the encoder's ``dim``: what a chunk costs does not depend on their values, only
    on the shapes (the default recipe's ``d``, blocks and ``max_len``, every item with an id
    vector), and this takes seconds where a fit would take minutes. The export and its parity
    check are the trainer's own (:func:`training.seqmodel.to_params`).
    """
    from dataclasses import asdict

    import numpy as np
    import torch

    from inference.model import ModelParams
    from inference.ranking import Weights
    from training.registry import Registry
    from training.seqmodel import SequenceConfig, SequenceModel, to_params

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(item_ids), dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cfg = SequenceConfig(seed=seed)
    model = SequenceModel(cfg, item_ids, vecs, item_ids)
    idx = rng.integers(1, len(item_ids) + 1, (8, cfg.max_len))  # parity-check histories
    weights = Weights(**SEQ_WEIGHTS)
    seq = to_params(model, idx, np.zeros(idx.shape, np.float32), np.ones(idx.shape, np.int64),
                    text_weight=weights.text, meta={"bench": "untrained: random weights and item vectors"})
    summary = {"version": SEQ_VERSION, "weights": asdict(weights), "d": cfg.d, "blocks": cfg.blocks,
               "heads": cfg.heads, "max_len": cfg.max_len, "items": len(item_ids), "id_items": len(seq.id_items),
               "text_dim": dim, "trained": False, "parity_max_abs_diff": seq.meta["parity_max_abs_diff"],
               "build_s": round(time.perf_counter() - t0, 1)}
    note = {"note": "streamrec bench pipeline: untrained speed-test version, not evaluated"}
    manifest = {"version": SEQ_VERSION, "parent": None, "status": "accepted", "created_at": round(time.time(), 3),
                "metrics": {"candidate": note, "current": note}, "weights": summary["weights"],
                "training": {"recipe": "sequence", "config": asdict(cfg), "bench": summary}}
    Registry(registry).write(SEQ_VERSION, ModelParams(dim, weights=weights, sequence=seq), manifest, replay=[])
    return SequenceVersion(Path(registry), manifest, summary)


# --------------------------------------------------------------------------------------------
# Kafka helpers (kafka-python, as a user's own clients would be)


def _producer(kafka, **kw):
    from kafka import KafkaProducer

    opts = dict(acks="all", linger_ms=0, max_request_size=4 * 1024 * 1024, client_id="streamrec-bench")
    opts.update(kw)
    return KafkaProducer(**kafka.kafka_python(), **opts)


def _consumer(kafka, **kw):
    from kafka import KafkaConsumer

    opts = dict(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10, client_id="streamrec-bench")
    opts.update(kw)
    return KafkaConsumer(**kafka.kafka_python(), **opts)


def preload(kafka, topic: str, records: list[tuple[bytes, bytes, str]], progress: bool) -> None:
    from tqdm import tqdm

    prod = _producer(kafka, linger_ms=5, batch_size=256 * 1024)
    try:
        for key, value, _ in tqdm(records, desc=f"preload {topic}", unit="ev", disable=not progress,
                                  mininterval=0.5, leave=False):
            prod.send(topic, key=key, value=value)
        prod.flush()
    finally:
        prod.close()


def publish_items(kafka, topic: str, items: list) -> None:
    from streams.catalog import item_json

    prod = _producer(kafka, linger_ms=5, batch_size=256 * 1024)
    try:
        for rec in items:
            prod.send(topic, key=rec.item_id.encode(), value=item_json(rec))
        prod.flush()
    finally:
        prod.close()


def _event_id(value: bytes) -> str | None:
    """The input event id an output record answers (streamrec/naive: ``trigger``; ceiling: the event itself)."""
    try:
        v = json.loads(value)
    except ValueError:
        return None
    trig = v.get("trigger")
    return (trig or v).get("event_id") if isinstance(trig or v, dict) else None


# --------------------------------------------------------------------------------------------
# the systems under test (each its own process)


class System:
    """A measured process: started after the pre-load, stopped at the end of its run."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, health_port: int | None = None) -> None:
        self.name, self.cmd, self.log_path, self.health_port = name, cmd, log_path, health_port
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300.0) -> float:
        """Start, wait until ready (worker: /health; others: at once); returns seconds to ready."""
        t0 = time.monotonic()
        repo = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        if self.health_port is None:
            return time.monotonic() - t0
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            self.check()
            try:
                url = f"http://127.0.0.1:{self.health_port}/health"
                if json.loads(urllib.request.urlopen(url, timeout=2).read()).get("ready"):
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"{self.name} not ready within {timeout_s:.0f}s; log: {self.log_path}\n{self.tail()}")

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)


def terminate(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM a child process and wait for it; kill it if it is still there after ``grace_s``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


# --------------------------------------------------------------------------------------------
# measurements


def percentiles_ms(latencies_s: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(latencies_s) * 1000.0
    p50, p95, p99 = (float(x) for x in np.percentile(a, [50, 95, 99]))
    return {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "p99_ms": round(p99, 2),
            "max_ms": round(float(a.max()), 2)}


def steady_rate(timestamps_ms: list[int], lo: float = 0.1, hi: float = 0.9) -> dict[str, float]:
    """Events/s over the ``lo``..``hi`` share of the outputs (and first to last)."""
    ts = sorted(timestamps_ms)
    n = len(ts)
    out = {"outputs": n}
    if n < 2:
        return {**out, "events_per_s": 0.0, "events_per_s_first_to_last": 0.0, "seconds": 0.0}
    span = (ts[-1] - ts[0]) / 1000.0
    i, j = int(lo * (n - 1)), int(hi * (n - 1))
    win = (ts[j] - ts[i]) / 1000.0
    total = (n - 1) / span if span > 0 else float("inf")
    bins: dict[int, int] = {}
    for t in ts:
        bins[(t - ts[0]) // 1000] = bins.get((t - ts[0]) // 1000, 0) + 1
    out["per_second"] = [bins.get(k, 0) for k in range(max(bins) + 1)][:600]
    steady = (j - i) / win if win > 0 and j > i else total
    return {**out, "events_per_s": round(steady, 1), "events_per_s_first_to_last": round(total, 1),
            "seconds": round(span, 3)}


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process (all its threads) has used so far (Linux)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_per_event(samples: list[tuple[int, dict[str, float | None]]], n: int, lo: float = 0.1,
                  hi: float = 0.9) -> dict[str, float | None]:
    """CPU ms per output of each process between the polls that saw ``lo`` and ``hi`` of ``n`` outputs.

    Unlike events/s this barely moves when other work shares the cores, so it is what to compare
    between two versions of the worker on a busy machine."""
    first = next((s for s in samples if s[0] >= lo * n), None)
    last = next((s for s in samples if s[0] >= hi * n), samples[-1] if samples else None)
    if first is None or last is None or last[0] <= first[0]:
        return {}
    out: dict[str, float | None] = {}
    for name, cpu in last[1].items():
        before = first[1].get(name)
        out[name] = None if cpu is None or before is None else round((cpu - before) * 1000.0 / (last[0] - first[0]), 3)
    return out


def collect_outputs(kafka, topic: str, start: dict[int, int], n: int, system: System, stall_s: float,
                    progress: bool, desc: str, cpu_pids: dict[str, int | None] | None = None,
                    cpu_samples: list | None = None, versions: dict[str, int] | None = None) -> list[int]:
    """Wait until ``n`` records past ``start`` are on ``topic`` (or none arrive for ``stall_s``), then
    read them; returns their Kafka timestamps (ms). With ``cpu_pids``, each poll appends
    ``(outputs so far, {name: CPU seconds})`` to ``cpu_samples``; with ``versions``, the outputs
    are counted there by ``model_version`` (which version a run measured, read off its records).

    While the system runs only end offsets are polled (cheap: reading 20k records alongside would
    take CPU from the measured system). Tansu's end offsets can stay short of the last batch for
    good, so an end offset that stops moving near ``n`` also ends the wait, and the records are
    then counted by reading them.
    """
    from tqdm import tqdm

    consumer = _consumer(kafka, fetch_max_wait_ms=100, max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        tps = topic_partitions(consumer, topic)
        done, last, last_change = 0, -1, time.monotonic()
        with tqdm(total=n, desc=desc, unit="ev", disable=not progress, leave=False, mininterval=0.5) as bar:
            while done < n:
                system.check()
                end = consumer.end_offsets(tps)
                done = sum(end[tp] - start.get(tp.partition, 0) for tp in tps)
                if cpu_pids and cpu_samples is not None:
                    cpu_samples.append((done, {k: cpu_seconds(pid) for k, pid in cpu_pids.items()}))
                bar.update(max(0, min(done, n) - bar.n))
                if done != last:
                    last, last_change = done, time.monotonic()
                quiet = time.monotonic() - last_change
                if (quiet > 2.0 and done >= 0.9 * n) or quiet > stall_s:
                    break
                time.sleep(0.25)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
        out: list[int] = []
        last_change = time.monotonic()
        while len(out) < n and time.monotonic() - last_change < 3.0:
            for recs in consumer.poll(timeout_ms=200, max_records=20_000).values():
                out += [r.timestamp for r in recs]
                if versions is not None:
                    count_versions(recs, versions)
                last_change = time.monotonic()
        if len(out) < n:
            log.warning("%s: %d/%d outputs (no progress for %.0fs)", system.name, len(out), n, stall_s)
        return out
    finally:
        consumer.close()


_MODEL_VERSION = re.compile(rb'"model_version":\s*"((?:[^"\\]|\\.)*)"')


def count_versions(records: list, versions: dict[str, int]) -> None:
    """Add each output record's ``model_version`` (the ceiling's and the naive consumer's have none)."""
    for r in records:
        m = _MODEL_VERSION.search(r.value or b"")
        if m:
            v = m.group(1).decode()
            versions[v] = versions.get(v, 0) + 1


def end_offsets(kafka, topic: str) -> dict[int, int]:
    consumer = _consumer(kafka)
    try:
        tps = topic_partitions(consumer, topic)
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


class LatencyReader:
    """The receiving side of the latency measurement, in its own process (``_reader``).

    It assigns itself every partition of the output topic from its end, and notes for each
    output record the wall time it arrived and the record's Kafka timestamp. A separate process
    keeps the producer's pacing and the reader's polling from queueing on one GIL (in one
    process the reader thread added up to ~100 ms at a few hundred records/s).
    """

    def __init__(self, kafka, topic: str, min_seq: int, work: Path, name: str) -> None:
        self.out = work / f"{name}-latency.json"
        cmd = _py("evaluation.pipeline", "_reader", "--broker", kafka.bootstrap, "--topic", topic, "--min-seq", str(min_seq),
                  "--out", str(self.out))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(work / f"{name}-reader.log", "wb"),
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.count = 0
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"latency reader did not start; see {work / f'{name}-reader.log'}")
        self._thread = threading.Thread(target=self._follow, name="bench-reader-progress", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        for line in self.proc.stdout:
            try:
                self.count = int(line)
            except ValueError:
                pass

    def close(self) -> dict[str, list[float]]:
        """Stop the reader; ``{event_id: [received_at, output_kafka_timestamp_s]}``."""
        terminate(self.proc)
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {}


_EVENT_ID = re.compile(rb'"event_id":\s*"((?:[^"\\]|\\.)*)"')


def _fast_event_id(value: bytes | None) -> str | None:
    """The event id in an output record (one ``"event_id"`` key in all three output formats)."""
    m = _EVENT_ID.search(value or b"")
    return m.group(1).decode() if m else _event_id(value or b"")


def run_reader(argv: list[str]) -> int:
    """``python -m evaluation.pipeline _reader``: note arrival times of output records until SIGTERM."""
    p = argparse.ArgumentParser(prog="evaluation.pipeline _reader")
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--min-seq", type=int, default=0, help="count only event ids <run>-<seq> with seq >= this")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.settings import KafkaConfig

    async def read() -> dict[str, list[float]]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        consumer = AIOKafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=10, client_id="streamrec-bench",
                                    **KafkaConfig(args.broker).aiokafka())
        await consumer.start()
        seen: dict[str, list[float]] = {}
        try:
            parts = consumer.partitions_for_topic(args.topic)
            while not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(args.topic)
            tps = [TopicPartition(args.topic, q) for q in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            print("ready", flush=True)
            counted, last_report = 0, 0.0
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for recs in batches.values():
                    for r in recs:
                        eid = _fast_event_id(r.value)
                        if eid is None or eid in seen:
                            continue
                        seen[eid] = [now, r.timestamp / 1000.0]
                        seq = eid.rpartition("-")[2]
                        if seq.isdigit() and int(seq) >= args.min_seq:
                            counted += 1
                if time.monotonic() - last_report > 0.2:
                    print(counted, flush=True)
                    last_report = time.monotonic()
        finally:
            await consumer.stop()
        return seen

    args.out.write_text(json.dumps(asyncio.run(read())))
    return 0


def paced_send(kafka, topic: str, records: list[tuple[bytes, bytes, str]], rate: float, progress: bool,
               desc: str, linger_ms: int = 5) -> tuple[dict[str, float], float]:
    """Send ``records`` at ``rate``/s with an aiokafka producer (acks=all); each record's Kafka
    timestamp (CreateTime) is its send time. Returns ``{event_id: send time}`` and the seconds it took."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    sent: dict[str, float] = {}

    async def send() -> float:
        prod = AIOKafkaProducer(acks="all", linger_ms=linger_ms, max_request_size=4 * 1024 * 1024,
                                client_id="streamrec-bench", **kafka.aiokafka())
        await prod.start()
        try:
            with tqdm(total=len(records), desc=desc, unit="ev", disable=not progress, leave=False,
                      mininterval=0.5) as bar:
                start = time.perf_counter()
                for i, (key, value, eid) in enumerate(records):
                    wait = start + i / rate - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    now = time.time()
                    sent[eid] = now
                    await prod.send(topic, value=value, key=key, timestamp_ms=int(now * 1000))
                    if i % 64 == 0:
                        bar.update(i + 1 - bar.n)
                await prod.flush()
                return time.perf_counter() - start
        finally:
            await prod.stop()

    return sent, asyncio.run(send())


def latency_stats(sent: dict[str, float], seen: dict[str, list[float]], warmup_s: float) -> dict:
    """Percentiles of send -> received (and send -> the output's Kafka timestamp) over ``sent``."""
    if not sent:
        return {"sent": 0, "received": 0, "samples": 0, **percentiles_ms([])}
    t0 = min(sent.values())
    keep = [e for e, t in sent.items() if e in seen and t - t0 >= warmup_s]
    to_pub = percentiles_ms([seen[e][1] - sent[e] for e in keep])
    return {"sent": len(sent), "received": sum(1 for e in sent if e in seen), "samples": len(keep),
            **percentiles_ms([seen[e][0] - sent[e] for e in keep]),
            "to_published_p50_ms": to_pub["p50_ms"], "to_published_p99_ms": to_pub["p99_ms"]}


