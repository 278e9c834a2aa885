"""``streamrec demo``: the whole product on one machine, in one command.

It starts the embedded broker, creates the topics, exports the encoder if it is not
there yet, starts one worker process, publishes the Musical Instruments catalogue,
replays the reviews (plus a few deliberately broken records), shows live Top-N updates
for the most active users, and ends with totals: events, lists published, dead letters,
duplicates and end-to-end latency percentiles. It then stops everything and exits 0.

Timeouts are tuned for the embedded broker (a consumer-group join takes about half the
session timeout there): session 3 s, heartbeat 1 s, fetch wait 10 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from .settings import KafkaConfig, default_model_dir
from .topics import Topics

BAD_RECORDS: list[tuple[str, bytes | None, bytes]] = [
    ("reviews", b"u-bad-1", b'{"user_id": "u-bad-1", "item_id": '),  # malformed JSON
    ("reviews", b"u-bad-2", b'{"item_id": "B0002E1G5C", "event_time": 1400000000, "text": "no user"}'),
    ("clicks", b"u-bad-3", b'{"user_id": "u-bad-3", "item_id": "B0002E1G5C", "event_time": 32503680000}'),
    ("reviews", b"u-bad-4", b'{"user_id": "u-bad-4", "item_id": "B0002E1G5C", "event_time": 1400000000, '
                            b'"rating": 99, "text": "ten stars"}'),
    ("clicks", b"u-bad-5", b'{"user_id": "u-bad-5", "item_id": "no-such-item", "event_time": 1400000000}'),
    ("reviews", b"u-bad-6", b'\xff\xfe not utf-8'),
]


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="musical_instruments", help="dataset name or path (default: shipped data)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    p.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    p.add_argument("--port", type=int, default=None, help="embedded broker port (default: a free one)")
    p.add_argument("--broker", default=None, help="use this Kafka cluster instead of the embedded broker")
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--users", type=int, default=3, help="how many users to follow live")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument("--json-out", type=Path, default=None, help="also write the totals as JSON here")
    p.add_argument("--quiet", action="store_true", help="no live view (for logs and CI)")


def _free_port() -> int:
    from .broker import free_port

    return free_port()


def _ensure_model(model_dir: Path) -> None:
    if (model_dir / "manifest.json").is_file():
        return
    print(f"exporting the encoder to {model_dir} (first run only, about a minute)...", flush=True)
    # `streamrec export-onnx` as a user would run it: streams code never imports training.
    done = subprocess.run([sys.executable, "-m", "streams.cli", "export-onnx", "--out", str(model_dir)])
    if done.returncode != 0:
        raise SystemExit(f"streamrec demo: exporting the encoder to {model_dir} failed (exit {done.returncode}); "
                         "see the lines above, or export it yourself with `streamrec export-onnx --out DIR` "
                         "and pass --model DIR")


def _metrics(port: int) -> dict[str, float]:
    """Parse the worker's Prometheus text into {name{labels}: value}."""
    out: dict[str, float] = {}
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return out
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k == prefix or k.startswith(prefix + "{"))


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode} before it was ready; see its log above")
        try:
            body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read())
            if body.get("ready"):
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the worker was not ready within {timeout_s:.0f}s")


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from inference.datasets import load_dataset

    from .broker import EmbeddedBroker
    from .replay import producer, publish_catalogue, replay_events
    from .tail import read_topic
    from .topics import ensure_topics

    def _terminate(signum, frame):  # run the finally-block below on SIGTERM too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    console = Console(stderr=False)
    model_dir = Path(args.model).expanduser()
    _ensure_model(model_dir)
    ds = load_dataset(args.dataset, limit=args.limit)
    console.print(f"[bold]dataset[/] {ds.name}: {len(ds.events):,} events, {len(ds.items):,} items, "
                  f"{ds.stats.get('users', '?')} users")

    broker = None
    if args.broker:
        kafka = KafkaConfig(bootstrap=args.broker)
    else:
        broker = EmbeddedBroker(port=args.port or _free_port()).start()
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        console.print(f"[bold]broker[/] embedded Tansu on {broker.bootstrap}")
    run_id = time.strftime("%Y%m%d%H%M%S")
    topics = Topics(f"streamrec-demo-{run_id}." if args.broker else "streamrec.")
    worker = prod = reader = None
    done = threading.Event()
    web_port = _free_port()
    state = tempfile.mkdtemp(prefix="streamrec-demo-")
    try:
        ensure_topics(kafka, topics, partitions=6)
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", kafka.bootstrap, "--prefix", topics.prefix,
               "--app-id", f"streamrec-demo-{run_id}", "--model", str(model_dir), "--state-dir", state,
               "--web-port", str(web_port), "--session-timeout", "3", "--heartbeat", "1", "--fetch-wait-ms", "10",
               "--loglevel", "warn"]
        worker = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        prod = producer(kafka)
        n_items = publish_catalogue(prod, topics, ds.items.values())
        console.print(f"[bold]catalogue[/] {n_items} items -> {topics.items}; starting the worker...")
        _wait_ready(web_port, worker, timeout_s=120)
        console.print(f"[bold]worker[/] ready (metrics: http://127.0.0.1:{web_port}/metrics)")

        follow = [u for u, _ in Counter(e.user_id for e in ds.events).most_common(args.users)]
        latest: dict[str, dict] = {}
        latencies: list[float] = []
        received = Counter()

        def consume() -> None:
            for _, value, _rec in read_topic(kafka, topics.recommendations, from_beginning=True, idle_s=None,
                                            poll_ms=50, stop=done):
                received["lists"] += 1
                latencies.append(float(value.get("latency_ms", 0.0)))
                if value.get("user_id") in follow:
                    latest[value["user_id"]] = value

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        sent = {"n": 0}

        def send() -> None:
            replay_events(prod, topics, ds.events, rate=args.rate, progress=False, stats=None)
            for topic, key, value in BAD_RECORDS:
                prod.send(getattr(topics, topic), key=key, value=value)
            prod.flush()
            sent["n"] = len(ds.events) + len(BAD_RECORDS)

        started = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        total = len(ds.events) + len(BAD_RECORDS)

        def view() -> Table:
            m = _metrics(web_port)
            t = Table(title=f"streamrec demo: live Top-5 for the {len(follow)} most active users")
            t.add_column("user")
            t.add_column("events")
            t.add_column("Top-5 (item ids)")
            t.add_column("latency")
            for u in follow:
                rec = latest.get(u)
                if rec:
                    t.add_row(u, str(received_for(u)), ", ".join(i["item_id"] for i in rec["items"][:5]),
                              f"{rec['latency_ms']:.0f} ms")
                else:
                    t.add_row(u, "0", "(waiting)", "")
            processed = _sum(m, "streamrec_events_total")
            t.caption = (f"processed {processed:,.0f} / {total:,}  lists {received['lists']:,}  "
                         f"dead letters {_sum(m, 'streamrec_dead_letters_total'):,.0f}  "
                         f"duplicates {_sum(m, 'streamrec_duplicates_total'):,.0f}")
            return t

        per_user = Counter()

        def received_for(u: str) -> int:
            rec = latest.get(u)
            if rec and rec.get("trigger", {}).get("offset") != per_user.get(u + ":last"):
                per_user[u] += 1
                per_user[u + ":last"] = rec["trigger"].get("offset")
            return per_user[u]

        def finished() -> bool:
            m = _metrics(web_port)
            accounted = (_sum(m, "streamrec_events_total") + _sum(m, "streamrec_dead_letters_total")
                         + _sum(m, "streamrec_duplicates_total"))
            return sent["n"] > 0 and accounted >= sent["n"]

        deadline = started + args.timeout
        if args.quiet:
            while not finished() and time.monotonic() < deadline:
                time.sleep(0.5)
        else:
            with Live(view(), console=console, refresh_per_second=4) as live:
                while not finished() and time.monotonic() < deadline:
                    time.sleep(0.25)
                    live.update(view())
                live.update(view())
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # let the reader catch the last records
        done.set()
        m = _metrics(web_port)
        totals = {
            "events_sent": sent["n"],
            "events_processed": int(_sum(m, "streamrec_events_total")),
            "lists_published": int(_sum(m, "streamrec_recommendations_total")),
            "lists_received": received["lists"],
            "dead_letters": {k.split('reason="')[1].rstrip('"}'): int(v) for k, v in m.items()
                             if k.startswith("streamrec_dead_letters_total{")},
            "duplicates": int(_sum(m, "streamrec_duplicates_total")),
            "seconds": round(elapsed, 2),
            "events_per_s": round(sent["n"] / elapsed, 1) if elapsed else None,
        }
        if latencies:
            p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
            totals["latency_ms"] = {"p50": round(float(p50), 1), "p95": round(float(p95), 1),
                                    "p99": round(float(p99), 1)}
        ok = finished()
        console.print(_totals_table(totals))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(totals, indent=2))
        if not ok:
            console.print(f"[red]the worker did not account for every event within {args.timeout:.0f}s[/]")
            return 1
        return 0
    finally:
        # the demo's own clients close before the broker goes (else they log its disappearance as errors)
        done.set()
        if reader is not None:
            reader.join(5)
        if prod is not None:
            prod.close(timeout=5)
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()


def _totals_table(totals: dict):
    from rich.table import Table

    t = Table(title="streamrec demo: totals", show_header=False)
    for k, v in totals.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items()) or "none"
        t.add_row(k.replace("_", " "), str(v))
    return t
