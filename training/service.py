"""``streamrec train``: the trainer process, and ``streamrec models``.

The trainer reads the input topics themselves (kafka-python, manual assignment, from the
offsets where the last accepted version stopped to the end offsets seen when it starts), adds
a bounded sample of older events kept with that version, trains (``training.trainer``), and
measures the candidate against the current version on the most recent held-out slice. Only a
candidate at least as good is published: the version folder is written atomically to the
registry and a ``model-published`` record goes to the control topic, where every worker picks
it up. A worse candidate is kept in the registry as ``rejected``, with its numbers.

Retraining is asked for by the workers (a ``retrain-request`` record on the control topic,
after ``--retrain-every-events`` accepted events) or run directly with ``--once``.

Control records (topic ``<prefix>control``, one partition, JSON)::

    {"type": "retrain-request", "model_version": "<encoder>:<variant>:v2", "events": 5000,
     "worker": "host:pid", "requested_at": 1700000000.0}
    {"type": "model-published", "version": "v3", "parent": "v2", "path": "v3",
     "metrics": {"candidate": {...}, "current": {...}}, "published_at": 1700000000.0}
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference.events import Event, InvalidEvent, parse_event, parse_item
from inference.wire import KafkaConfig, Topics, add_kafka_args, kafka_from_args, topic_partitions

from .registry import Registry
from .trainer import TrainConfig, evaluate_slice, split_holdout, train_version

log = logging.getLogger("streamrec.trainer")

REQUEST = "retrain-request"
PUBLISHED = "model-published"


def default_registry() -> Path:
    return Path(os.environ.get("STREAMREC_REGISTRY", "~/.cache/streamrec/registry")).expanduser()


@dataclass
class TrainerConfig:
    kafka: KafkaConfig
    topics: Topics
    registry: Path
    model_dir: Path
    train: TrainConfig
    min_events: int = 100  # fewer new events than this: nothing to learn yet, no version is made
    replay_sample: int = 20_000  # older events kept with each version and replayed by the next
    max_events: int = 200_000  # newest events read per run (older ones only through the sample)
    max_texts: int = 20_000  # review texts encoded per run (newest first); the rest count as clicks
    progress: bool = True


# ------------------------------------------------------------------------------------------
# reading the topics
# ------------------------------------------------------------------------------------------


def _consumer(kafka: KafkaConfig):
    from kafka import KafkaConsumer

    return KafkaConsumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100,
                         consumer_timeout_ms=1000, **kafka.kafka_python())


def read_range(kafka: KafkaConfig, topics: Sequence[str], start: dict[str, int] | None = None,
               ) -> tuple[list, dict[str, int], dict[str, int]]:
    """Every record of ``topics`` from ``start`` (``"topic:partition" -> offset``; missing:
    the beginning) to the end offsets seen now. Returns ``(records, start, end)``."""
    consumer = _consumer(kafka)
    try:
        tps = [tp for t in topics for tp in topic_partitions(consumer, t)]
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        first: dict[str, int] = {}
        for tp in tps:
            key = f"{tp.topic}:{tp.partition}"
            first[key] = max((start or {}).get(key, begin[tp]), begin[tp])
            consumer.seek(tp, first[key])
        out: list = []
        todo = {tp for tp in tps if first[f"{tp.topic}:{tp.partition}"] < end[tp]}
        idle_since = time.monotonic()
        while todo:
            batch = consumer.poll(timeout_ms=500)
            if batch:
                idle_since = time.monotonic()
            for tp, recs in batch.items():
                for r in recs:
                    if r.offset < end[tp]:
                        out.append(r)
                if tp in todo and consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
            for tp in list(todo):
                if consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
            if time.monotonic() - idle_since > 30:
                raise TimeoutError(f"no records for 30 s while reading {sorted(map(str, todo))}: is the broker up?")
        return out, first, {f"{tp.topic}:{tp.partition}": end[tp] for tp in tps}
    finally:
        consumer.close()


def read_events(kafka: KafkaConfig, topics: Topics, start: dict[str, int] | None
                ) -> tuple[list[Event], dict, dict[str, int]]:
    """Valid events (by the workers' own rules) from the clicks and reviews topics, in event
    time order, duplicates by event id dropped. Unkeyed events are read here as they were
    produced (the workers' re-keyed copies are not read, so nothing counts twice)."""
    records, first, end = read_range(kafka, [topics.clicks, topics.reviews], start)
    events: list[Event] = []
    invalid = 0
    seen: set[str] = set()
    for r in records:
        kind = "click" if r.topic == topics.clicks else "review"
        try:
            ev = parse_event(r.value if r.value is not None else b"", kind, key=r.key)
        except InvalidEvent:
            invalid += 1
            continue
        if ev.event_id is None:
            from dataclasses import replace

            from inference.events import derive_event_id

            ev = replace(ev, event_id=derive_event_id(ev.user_id, ev.item_id, ev.event_time, ev.text))
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        events.append(ev)
    events.sort(key=lambda e: e.event_time)
    return events, {"start": first, "end": end, "records": len(records), "invalid": invalid}, end


def read_catalogue(kafka: KafkaConfig, topics: Topics) -> dict[str, str]:
    """item id -> text, the latest record per item (a null value deletes it)."""
    records, _, _ = read_range(kafka, [topics.items])
    items: dict[str, str] = {}
    for r in records:
        key = r.key.decode("utf-8", "replace") if r.key is not None else None
        if r.value is None:
            items.pop(key, None)
            continue
        try:
            rec = parse_item(r.value, key=r.key)
        except InvalidEvent:
            continue
        if rec is not None:
            items[rec.item_id] = rec.text()
    return items


# ------------------------------------------------------------------------------------------
# one training run
# ------------------------------------------------------------------------------------------


def _encode(encoder, texts: list[str], progress: bool, desc: str) -> np.ndarray:
    from tqdm import tqdm

    out = np.zeros((len(texts), encoder.dim), np.float32)
    step = 256
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
        for s in range(0, len(texts), step):
            out[s: s + step] = encoder.encode(texts[s: s + step])
            bar.update(len(texts[s: s + step]))
    return out


def _plot_curve(curve: list[dict], version: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    trained = [c for c in curve if c.get("loss") is not None]
    ax.plot([c["epoch"] for c in trained], [c["loss"] for c in trained], marker="o", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("sampled-softmax loss")
    if any("val_loss" in c for c in curve):  # the adapter recipe: validation loss
        ax.plot([c["epoch"] for c in curve], [c.get("val_loss") for c in curve], marker="s", label="validation loss")
    elif any("val_ndcg" in c for c in curve):  # the sequence recipe: validation NDCG@10, its own axis
        ax2 = ax.twinx()
        ax2.plot([c["epoch"] for c in curve if "val_ndcg" in c], [c["val_ndcg"] for c in curve if "val_ndcg" in c],
                 marker="s", color="tab:orange", label="validation NDCG@10")
        ax2.set_ylabel("validation NDCG@10")
        ax2.legend(loc="upper right")
    best = [c["epoch"] for c in curve if c.get("best")]
    if best:
        ax.axvline(best[0], color="grey", ls=":", label=f"kept (epoch {best[0]})")
    ax.set_title(f"streamrec {version}: training curve")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_once(cfg: TrainerConfig, encoder=None, request: dict | None = None) -> dict | None:
    """Read, train, measure, write a version (accepted or rejected), publish if accepted.
    Returns the new manifest, or None when there were too few new events or training pairs."""
    t0 = time.time()
    reg = Registry(cfg.registry)
    parent = reg.latest_accepted()
    parent_version = parent["version"] if parent else "v0"
    start = parent["data_range"]["end_offsets"] if parent else None
    new, info, end = read_events(cfg.kafka, cfg.topics, start)
    if len(new) < cfg.min_events:
        log.info("only %d new valid events since %s (need %d): nothing to train", len(new), parent_version,
                 cfg.min_events)
        return None
    new = new[-cfg.max_events:]
    older = reg.replay_sample(parent_version) if parent else []
    events = sorted(older, key=lambda e: e.event_time) + new
    log.info("training on %d new events (offsets %s) and %d replayed older ones", len(new), info["start"], len(older))

    if encoder is None:
        from inference.encoder import Encoder

        encoder = Encoder(cfg.model_dir)
    catalogue = read_catalogue(cfg.kafka, cfg.topics)
    if not catalogue:
        raise RuntimeError(f"the catalogue topic {cfg.topics.items} is empty: publish items before training")
    item_ids = sorted(catalogue)
    item_vecs = _encode(encoder, [catalogue[i] for i in item_ids], cfg.progress, "encoding items")
    with_text = [e for e in events if e.text][-cfg.max_texts:]
    tv = _encode(encoder, [e.text for e in with_text], cfg.progress, "encoding reviews")
    text_vecs = {e.event_id: v for e, v in zip(with_text, tv) if np.any(v)}

    train, held = split_holdout(events, cfg.train)
    parent_params = reg.params(parent_version) if parent else None
    result = train_version(train, item_ids, item_vecs, text_vecs, parent=parent_params, cfg=cfg.train,
                           progress=cfg.progress)
    if result.too_few_pairs:
        log.info("only %d training pairs in %d events since %s (need %d; a pair is a user's next choice after "
                 "some history): nothing to train yet, the next request reads these events again with the newer "
                 "ones", result.pairs, len(new), parent_version, result.validation["need"])
        return None
    scores = evaluate_slice(train, held, item_ids, item_vecs, text_vecs,
                            {"candidate": result.params, "current": parent_params}, k=cfg.train.k)
    cand, cur = scores["candidate"], scores["current"]
    accepted = cand["events"] > 0 and cand["ndcg"] >= cur["ndcg"]
    version = reg.next_version()
    rng = random.Random(cfg.train.seed)
    if cfg.train.recipe == "sequence":  # the newest events, whole: users' sequences stay contiguous
        sample = events[-cfg.replay_sample:]
    else:
        sample = events if len(events) <= cfg.replay_sample else rng.sample(events, cfg.replay_sample)
    enc = encoder.info
    manifest = {
        "version": version,
        "parent": parent_version if parent else None,
        "status": "accepted" if accepted else "rejected",
        "created_at": round(time.time(), 3),
        "request": request,
        "data_range": {"start_offsets": info["start"], "end_offsets": end, "records_read": info["records"],
                       "invalid_skipped": info["invalid"], "new_events": len(new), "replayed_events": len(older),
                       "event_time": [events[0].event_time, events[-1].event_time],
                       "train_events": len(train), "held_out_events": len(held)},
        "training": {"seconds": round(result.seconds, 2), "pairs": result.pairs, "curve": result.curve,
                     "validation": result.validation, "config": result.config,
                     "residual_items": len(result.params.residual_ids), "recipe": cfg.train.recipe},
        "metrics": {f"candidate_ndcg@{cfg.train.k}": cand["ndcg"], f"current_ndcg@{cfg.train.k}": cur["ndcg"],
                    "candidate": cand, "current": cur, "held_out_scored": cand["events"]},
        "encoder": {"reuses": str(cfg.model_dir), "model_name": enc.model_name, "dim": encoder.dim,
                    "note": "the encoder is frozen: this version adds a sequence encoder over its vectors "
                            "(sequence.onnx, sequence.npz)" if result.params.sequence is not None else
                            "the encoder is frozen: this version adds an adapter, residuals and a head over it"},
        "weights": asdict(result.params.weights),
    }
    if not accepted:
        manifest["rejected_because"] = (f"NDCG@{cfg.train.k} on the {len(held)} most recent events: candidate "
                                        f"{cand['ndcg']:.4f} < current {parent_version} {cur['ndcg']:.4f}")
    reg.write(version, result.params, manifest, replay=sorted(sample, key=lambda e: e.event_time),
              curve_png=(lambda p: _plot_curve(result.curve, version, p)) if result.curve else None)
    if accepted:
        publish(cfg.kafka, cfg.topics, manifest)
        log.info("published %s: NDCG@%d %.4f vs %s %.4f (%d held-out events, %.0f s)", version, cfg.train.k,
                 cand["ndcg"], parent_version, cur["ndcg"], cand["events"], time.time() - t0)
    else:
        log.warning("rejected %s (kept in %s for inspection): %s", version, reg.path(version),
                    manifest["rejected_because"])
    return manifest


def publish(kafka: KafkaConfig, topics: Topics, manifest: dict) -> None:
    from kafka import KafkaProducer

    record = {"type": PUBLISHED, "version": manifest["version"], "parent": manifest["parent"],
              "path": manifest["version"], "metrics": {k: manifest["metrics"][k] for k in ("candidate", "current")},
              "published_at": round(time.time(), 3)}
    prod = KafkaProducer(acks="all", **kafka.kafka_python())
    try:
        prod.send(topics.control, key=b"model", value=json.dumps(record).encode()).get(timeout=30)
    finally:
        prod.close()


# ------------------------------------------------------------------------------------------
# the long-running trainer
# ------------------------------------------------------------------------------------------


def pending_request(records: list, current: str) -> dict | None:
    """The newest retrain request made against the current version, if any is still open."""
    todo = None
    for r in records:
        try:
            msg = json.loads(r.value)
        except (TypeError, ValueError):
            continue
        if msg.get("type") == PUBLISHED:
            todo = None
        elif msg.get("type") == REQUEST and str(msg.get("model_version", "")).rsplit(":", 1)[-1] == current:
            todo = msg
    return todo


def run_trainer(cfg: TrainerConfig, stop=None) -> None:
    """Follow the control topic and train on each open request (until ``stop()`` is true)."""
    from kafka import KafkaConsumer

    from inference.encoder import Encoder

    encoder = Encoder(cfg.model_dir)
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=200, **cfg.kafka.kafka_python())
    tps = topic_partitions(consumer, cfg.topics.control)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    history: list = []
    log.info("trainer ready: following %s, registry %s", cfg.topics.control, cfg.registry)
    try:
        while stop is None or not stop():
            batch = consumer.poll(timeout_ms=1000)
            for recs in batch.values():
                history.extend(recs)
            if not batch:
                current = (Registry(cfg.registry).latest_accepted() or {}).get("version", "v0")
                req = pending_request(history, current)
                if req is not None:
                    log.info("retrain requested by %s after %s events on %s", req.get("worker"), req.get("events"),
                             req.get("model_version"))
                    manifest = train_once(cfg, encoder, request=req)
                    history.clear()  # requests up to now are served (or had too little data)
                    if manifest is None:
                        continue
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrec train", description="Retrain on the accumulated events and publish "
                                "a new model version when it is at least as good as the current one.")
    add_kafka_args(p)
    p.add_argument("--registry", type=Path, default=default_registry(),
                   help="model registry folder, shared with the workers (env STREAMREC_REGISTRY; default %(default)s)")
    p.add_argument("--model", type=Path, default=None,
                   help="exported encoder directory (default: $STREAMREC_MODEL_DIR or ~/.cache/streamrec/models/...)")
    p.add_argument("--once", action="store_true", help="train once now and exit (no retrain request needed)")
    p.add_argument("--min-events", type=int, default=100, help="new events needed to train (default: %(default)s)")
    p.add_argument("--replay-sample", type=int, default=20_000,
                   help="older events kept per version and replayed by the next: the newest ones (sequence "
                        "recipe: users' histories stay whole) or a random sample (adapter) (default: %(default)s)")
    p.add_argument("--min-pairs", type=int, default=TrainConfig.min_pairs,
                   help="training pairs (a user's next choice after some history) needed to fit a version "
                        "(default: %(default)s)")
    p.add_argument("--recipe", choices=("sequence", "adapter"), default=TrainConfig.recipe,
                   help="sequence: a sequence encoder over users' recent items, blended with their text vector, "
                        "item co-occurrence and popularity; adapter: the earlier adapter + residuals recipe "
                        "(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                   help="adapter recipe: epochs per version (default: %(default)s)")
    p.add_argument("--holdout", type=float, default=TrainConfig.holdout,
                   help="most recent share of events held out to accept or reject (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--loglevel", default="info")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from inference.encoder import ModelDirError  # noqa: F401 - clear error below
    model_dir = args.model or Path(os.environ.get("STREAMREC_MODEL_DIR",
                                                  "~/.cache/streamrec/models/all-MiniLM-L6-v2")).expanduser()
    train = TrainConfig(recipe=args.recipe, epochs=args.epochs, holdout=args.holdout, min_pairs=args.min_pairs)
    cfg = TrainerConfig(kafka=kafka_from_args(args), topics=Topics(args.prefix), registry=args.registry,
                        model_dir=model_dir, train=train,
                        min_events=args.min_events, replay_sample=args.replay_sample, progress=not args.quiet)
    try:
        if args.once:
            manifest = train_once(cfg)
            if manifest is None:
                print("streamrec train: too few new events or training pairs; no version written (see the log)",
                      file=sys.stderr)
                return 0
            print(json.dumps({k: manifest[k] for k in ("version", "status", "parent")} |
                             {"metrics": {k: v for k, v in manifest["metrics"].items() if "@" in k}}))
            return 0
        run_trainer(cfg)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"streamrec train: {exc}", file=sys.stderr)
        return 2
    return 0


def models_main(argv: Sequence[str] | None = None) -> int:
    """``streamrec models``: list the registry's versions with their metrics."""
    p = argparse.ArgumentParser(prog="streamrec models", description="List model versions and their metrics.")
    p.add_argument("--registry", type=Path, default=default_registry(),
                   help="model registry folder (env STREAMREC_REGISTRY; default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the manifests as JSON")
    args = p.parse_args(argv)
    versions = Registry(args.registry).versions()
    if args.json:
        print(json.dumps(versions, indent=2))
        return 0
    if not versions:
        print(f"no versions in {args.registry} (run `streamrec train --once` or start a trainer)")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"model versions in {args.registry}")
    for col in ("version", "parent", "status", "created", "new events", "held out", "NDCG@10 new", "NDCG@10 old",
                "train s"):
        t.add_column(col, justify="right" if col not in ("version", "parent", "status") else "left")
    for m in versions:
        met = m.get("metrics", {})
        t.add_row(m["version"], str(m.get("parent") or "-"), m.get("status", "?"),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("created_at", 0))),
                  str(m.get("data_range", {}).get("new_events", "")),
                  str(met.get("held_out_scored", "")),
                  f"{met.get('candidate', {}).get('ndcg', 0):.4f}", f"{met.get('current', {}).get('ndcg', 0):.4f}",
                  str(m.get("training", {}).get("seconds", "")))
    Console(width=120).print(t)
    return 0
