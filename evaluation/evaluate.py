"""``streamrec evaluate``: how good is it, and better than what?

Two protocols on one dataset (a shared one by name, or your own files by path), every system
in the same run:

**Streaming (prequential, test-then-train).** Events are replayed in event-time order through
the same :class:`~inference.recommender.Recommender` the stream workers run (no Kafka). Before
each event, the event's item is looked up in that user's current ranking; then the event is
applied. Reported per system: HR@K, NDCG@K, MRR (full ranking, not truncated), catalogue
coverage (share of items that appeared in at least one Top-K) and ``cold_hit@K``: HR@K on events
whose item was first seen within the last ``cold_window`` events (including its very first
event). Systems that need refitting (ALS, and streamrec once a training hook exists) are refitted
every ``retrain_every`` events on all events so far.

**Offline (leave-last-out).** Each user's last event is the test item, everything else trains;
the item is ranked among *all* items (no sampled negatives), the user's training items excluded.
Reported: HR, NDCG, MRR, precision, recall, F1 and MAP at K, averaged over test users, so the
figures can be set beside published ones.

Systems: ``streamrec`` (with retraining, once the training issue lands), ``streamrec-untrained``
(worker defaults), ``popularity`` (recency-weighted), ``cooccurrence-knn`` (incremental item-item)
and ``als`` (``implicit``), see :mod:`evaluation.baselines`. ``streamrec-explore-thompson`` and
``streamrec-explore-epsilon`` are ``streamrec-untrained`` with the exploration policy on
(:mod:`inference.explore`, ``--explore-share`` of each list): they are measured on the lists
*as served* (exploration slots included; a hit in an explored slot is the policy's reward), in
the streaming protocol only (the offline protocol ranks by score, which exploration leaves alone).

Output (``--out``, default ``bench/results/``): ``eval-<dataset>.json``, ``eval-<dataset>.md``
and ``eval-<dataset>.png`` (cumulative and rolling HR@K over event index, refits marked).
The JSON has exactly these top-level keys::

    {"dataset": str,
     "protocol": {...how it was run: k, cold_window, retrain_every, "retraining": bool,
                  item_text_source, limit, configs, per-system notes, timings...},
     "events": {...rows, events, duplicates, invalid, replayed, scored, repeats, cold...},
     "systems": {NAME: {"hr@K", "ndcg@K", "mrr", "coverage", "cold_hit@K"}},
     "offline": {"protocol", "users", "skipped", "systems": {NAME: {"hr@K", "ndcg@K", "mrr",
                 "precision@K", "recall@K", "f1@K", "map@K"}}} | null}

Definitions that matter when reading the numbers:

* **Rank** of the true item: 1 + the number of items scored higher + the number scored equal
  that come first in the (seeded, shuffled) universe order -- exactly the order of the Top-K
  list, so "hit" means "was in the list the user would have seen". Items a system cannot rank
  (never seen; ``-inf``) and excluded items never count as hits.
* **Exclusion**: every system leaves out every item the user has interacted with; streamrec
  through the worker's own rule (the state's seen-items set, :mod:`inference.seen`), so what is
  measured is what the worker publishes. ``--repeats`` lets streamrec re-recommend seen items
  (the worker's ``--repeats``; repeat events are still not scored, so it can only lose here).
  ``protocol.systems[NAME].seen_in_top_k`` counts Top-K lists that still held an item the user
  had already interacted with (0 unless ``--repeats``).
* **Repeats** (a user's second interaction with the same item) are applied but not scored: every
  system excludes seen items, so they are unwinnable. They are counted in ``events.repeats``.
* **Duplicates**: exact duplicate rows are dropped by :func:`inference.datasets.load_dataset`
  (the same event-id logic the worker applies to a re-delivered message) and counted in
  ``events.duplicates``; rows the worker would reject are counted per reason in
  ``events.invalid``.

Example::

    streamrec evaluate --dataset musical_instruments
    streamrec evaluate --dataset ./my_events.jsonl --out /tmp/eval --limit 20000 --no-offline
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from inference.datasets import Dataset, DatasetNotFound, dataset_names, load_dataset
from inference.events import Event
from inference.recommender import RecommenderConfig

from .baselines import ALSBaseline
from .protocol import evaluate_offline, leave_last_out, replay
from .report import _fmt, to_markdown, write_results
from .systems import (
    ABLATION_SYSTEMS,
    EXPLORE_SYSTEMS,
    RETRAINING_NOTE,
    SYSTEMS,
    EvalConfig,
    RetrainHook,
    StreamrecSystem,
    _hook_name,
    build_systems,
)
from .text import DEFAULT_CACHE, encode_cached, plan_item_text

log = logging.getLogger("streamrec.evaluate")

DEFAULT_MODEL_DIR = "~/.cache/streamrec/models/all-MiniLM-L6-v2"
DEFAULT_OUT = "bench/results"


# the whole evaluation
# ============================================================================================


def _universe(events: Sequence[Event], seed: int) -> list[str]:
    """Items of the replayed events, in a seeded random order (ties in a ranking go to the lower
    position, so the order must carry no information: not first-seen order, not popularity)."""
    ids = list(dict.fromkeys(ev.item_id for ev in events))
    rng = np.random.default_rng(seed)
    return [ids[i] for i in rng.permutation(len(ids))]


class _one_blas_thread:
    """Limit BLAS to one thread until :meth:`close` (no-op without threadpoolctl)."""

    def __init__(self) -> None:
        try:
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(1, "blas")
        except Exception:  # noqa: BLE001 - optional
            self._limits = None

    def close(self) -> None:
        if self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None


def _load_hook(spec: str | None) -> RetrainHook | None:
    if not spec:
        return None
    mod, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--retrain-hook must be MODULE:FUNCTION, not {spec!r}")
    fn = importlib.import_module(mod)
    for part in attr.split("."):
        fn = getattr(fn, part)
    return fn


def evaluate(dataset: str | Path | Dataset, *, model_dir: str | Path | None = None, encoder=None,
             cfg: EvalConfig | None = None, retrain_hook: RetrainHook | None = None,
             cache_dir: str | Path | None = "default", progress: bool = False,
             keep: dict | None = None) -> dict:
    """Run both protocols and return the result dict (see the module docstring for its keys).

    ``encoder`` (an :class:`inference.encoder.Encoder`) wins over ``model_dir``; it is only
    loaded when a streamrec system is evaluated. ``keep``, if given, receives the internals
    (``run``, ``systems``, ``events``, ``items``, ``plan``) for plotting and tests.
    """
    cfg = cfg or EvalConfig()
    t_all = time.perf_counter()
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    timing["load"] = round(time.perf_counter() - t0, 2)
    events = ds.events[: cfg.limit] if cfg.limit else list(ds.events)
    if not events:
        raise ValueError(f"dataset {ds.name!r} has no valid events to replay")
    item_ids = _universe(events, cfg.seed)
    names = [n for n in cfg.systems]
    known = SYSTEMS + tuple(ABLATION_SYSTEMS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    wants_streamrec = any(n.startswith("streamrec") for n in names)

    # -- encode item and review text once ---------------------------------------------------
    plan = plan_item_text(ds, item_ids, cfg.item_text)
    item_vecs: dict[str, np.ndarray] = {}
    text_vecs: dict[str, np.ndarray] = {}
    model_info: dict | None = None
    if wants_streamrec:
        if encoder is None:
            from inference.encoder import Encoder

            encoder = Encoder(Path(model_dir or default_model_dir()).expanduser(), device="cpu")
        info = getattr(encoder, "info", None)
        model_info = asdict(info) if info is not None else {"dim": encoder.dim}
        t0 = time.perf_counter()
        cat_ids = [i for i in item_ids if i in plan.catalogue]
        enc_stats: dict[str, int] = {}
        vecs = encode_cached(encoder, [plan.catalogue[i] for i in cat_ids], cache_dir, progress=progress,
                             desc="encoding items", stats=enc_stats)
        item_vecs = {i: v for i, v in zip(cat_ids, vecs) if np.any(v)}
        with_text = [ev for ev in events if ev.text]
        rvecs = encode_cached(encoder, [ev.text for ev in with_text], cache_dir, progress=progress,
                              desc="encoding reviews", stats=enc_stats)
        text_vecs = {ev.event_id: v for ev, v in zip(with_text, rvecs) if ev.event_id is not None}
        timing["encode"] = round(time.perf_counter() - t0, 2)
        timing["texts_encoded"] = enc_stats.get("encoded", 0)
        timing["texts_from_cache"] = enc_stats.get("cached", 0)
    dim = int(encoder.dim) if encoder is not None else None

    # -- streaming ----------------------------------------------------------------------------
    systems, skipped = build_systems(names, item_ids, dim=dim, plan=plan, item_vecs=item_vecs,
                                     text_vecs=text_vecs, cfg=cfg, retrain_hook=retrain_hook,
                                     total_events=len(events))
    blas = _one_blas_thread()  # one matrix-vector product per event: BLAS threads only spin (7x slower)
    t0 = time.perf_counter()
    run = replay(events, item_ids, systems, k=cfg.k, cold_window=cfg.cold_window,
                 retrain_every=cfg.retrain_every, progress=progress, desc=f"replay {ds.name}")
    timing["stream"] = round(time.perf_counter() - t0, 2)
    # where the replay's time went, per system: "score" (requests and ranking the blocks),
    # "observe" (applying events) and "retrain"; the streamrec systems share one stream state,
    # so applying each event is counted once, under the first of them. ALS refits on a second
    # thread while streamrec retrains: "stream_retrain" is the wall time at the retrain points.
    timing["stream_per_system"] = {n: run.split[n] for n in systems}
    for part in ("score", "observe"):
        timing[f"stream_{part}"] = round(sum(s[part] for s in run.split.values()), 2)
    timing["stream_retrain"] = run.retrain_seconds
    timing["stream_other"] = round(timing["stream"] - sum(timing[f"stream_{p}"] for p in ("score", "observe", "retrain")),
                                   2)
    results: dict[str, dict] = {n: run.metrics(n) for n in systems}
    if "streamrec" in names and "streamrec" not in systems and "streamrec-untrained" in systems:
        results["streamrec"] = dict(results["streamrec-untrained"])
    results = {n: results[n] for n in names if n in results}

    # -- offline ------------------------------------------------------------------------------
    offline = None
    if cfg.offline:
        t0 = time.perf_counter()
        train, test, skipped_users = leave_last_out(events)
        # the refit on the training part validates on each user's last training event: the task this
        # protocol measures (the streaming retrains validate on the newest events)
        offline_hook = retrain_hook
        if getattr(retrain_hook, "variant", None) is not None and getattr(retrain_hook.cfg, "recipe", "") == "sequence":
            offline_hook = retrain_hook.variant(validation_slice="last")
        osys, _ = build_systems([n for n in names if n not in EXPLORE_SYSTEMS], item_ids, dim=dim, plan=plan,
                                item_vecs=item_vecs, text_vecs=text_vecs, cfg=cfg, retrain_hook=offline_hook)
        ores = evaluate_offline(train, test, item_ids, osys, k=cfg.k, progress=progress)
        if "streamrec" in names and "streamrec" not in osys and "streamrec-untrained" in ores:
            ores["streamrec"] = dict(ores["streamrec-untrained"])
        offline_secs = {n: r.pop("_seconds") for n, r in ores.items()}
        offline = {
            "protocol": "leave-last-out: each user's last event is the test item, all other events train; "
                        "full ranking over all items minus the user's training items (no sampled negatives); "
                        "metrics averaged over test users (F1 per user, then averaged)",
            "users": len(test),
            "train_events": len(train),
            "skipped": skipped_users,
            "systems": {n: ores[n] for n in names if n in ores},
            "not_run": {n: "exploration changes the lists served, not the scores this protocol ranks by"
                        for n in names if n in EXPLORE_SYSTEMS},
        }
        timing["offline"] = round(time.perf_counter() - t0, 2)
        timing["offline_per_system"] = offline_secs
    blas.close()
    timing["total"] = round(time.perf_counter() - t_all, 2)

    # -- describe -----------------------------------------------------------------------------
    retraining = retrain_hook is not None
    sys_info: dict[str, dict] = {}
    for n in names:
        s = systems.get(n)
        if s is None:
            if n in results:
                sys_info[n] = {"retraining": False, "note": skipped.get(n, "")}
            else:
                sys_info[n] = {"skipped": skipped.get(n, "not run")}
            continue
        info = {"retraining": bool(s.needs_retraining), "config": s.config(),
                "seen_in_top_k": run.seen_in_top_k[n], "seconds": round(run.seconds[n], 2),
                "seconds_split": run.split[n]}
        if isinstance(s, ALSBaseline) or n == "sasrec":
            info["fits"] = s.fits
            info["fit_seconds"] = round(s.fit_seconds, 2)
        if isinstance(s, StreamrecSystem):
            info["retrains"] = s.retrains
            if getattr(s.retrain_hook, "history", None) is not None:
                info["retrain_history"] = s.retrain_hook.history
            if getattr(s.retrain_hook, "skipped", None):
                info["retrain_skipped"] = s.retrain_hook.skipped
            info["unknown_item_events"] = s.unknown_item_events
            info["items_in_index_at_end"] = len(s.index)
        sys_info[n] = info
    n_items = len(item_ids)
    protocol = {
        "name": "prequential (test-then-train): each event is scored against the user's current ranking, "
                "then applied; streamrec systems run inference.recommender.Recommender.observe/recommend, "
                "the step the stream workers run",
        "k": cfg.k,
        "cold_window": cfg.cold_window,
        "retrain_every": cfg.retrain_every,
        "retraining": retraining,
        "retrain_hook": _hook_name(retrain_hook),
        "retraining_note": None if retraining else RETRAINING_NOTE,
        "retrain_points": run.retrain_points,
        "exploration": {"systems": [n for n in names if n in EXPLORE_SYSTEMS], "share": cfg.explore_share,
                        "epsilon": cfg.explore_epsilon, "seed": cfg.seed,
                        "measured_on": "the list as served (exploration slots included); rank past the list: "
                                       "K + rank among the items not served, by score"},
        "limit": cfg.limit,
        "prefix": bool(cfg.limit and cfg.limit < len(ds.events)),
        "item_text_source": plan.source,
        "rank": "1 + items scored higher + items scored equal earlier in a seeded random item order (the "
                "Top-K order); unrankable (-inf) or excluded items never hit; MRR over the full ranking",
        "exclusion": "every system: every item the user interacted with (streamrec: the worker's seen-items "
                     "set, UserState.seen; unless --repeats)",
        "repeats": "a user's repeated interaction with an item is applied but not scored",
        "cold": f"item first seen within the last {cfg.cold_window} events (its first event included)",
        "coverage": f"share of the {n_items} items that appeared in at least one scored Top-{cfg.k}",
        "random_hr@k": round(min(1.0, cfg.k / n_items), 6) if n_items else None,
        "seed": cfg.seed,
        "model": model_info,
        "systems": sys_info,
        "timing_s": timing,
    }
    events_info = {
        "rows": ds.stats.get("rows"),
        "loaded": len(ds.events),
        "duplicates": ds.stats.get("duplicates", 0),
        "invalid": ds.stats.get("invalid", {}),
        "replayed": run.replayed,
        "replay_duplicates": run.duplicates,
        "scored": int(len(run.scored)),
        "repeats": run.repeats,
        "cold": int(run.cold.sum()),
        "users": len({e.user_id for e in events}),
        "items": n_items,
        "time_range": [events[0].event_time, events[-1].event_time],
        "format": ds.stats.get("format"),
        "source": ds.stats.get("source"),
    }
    if keep is not None:
        keep.update(run=run, systems=systems, events=events, items=item_ids, plan=plan, dataset=ds,
                    item_vecs=item_vecs, text_vecs=text_vecs, dim=dim)
    return {"dataset": ds.name, "protocol": protocol, "events": events_info, "systems": results,
            "offline": offline}


# ============================================================================================
# output
def default_model_dir() -> str:
    return os.environ.get("STREAMREC_MODEL_DIR") or DEFAULT_MODEL_DIR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamrec evaluate",
        description="Prequential (test-then-train) and leave-last-out evaluation of streamrec against "
                    "popularity, co-occurrence kNN and ALS baselines.")
    p.add_argument("--dataset", required=True,
                   help=f"a dataset name ({', '.join(dataset_names())}) or a path to your events file/folder")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help=f"exported encoder directory (default: $STREAMREC_MODEL_DIR or {DEFAULT_MODEL_DIR})")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events (in event-time order)")
    p.add_argument("--k", type=int, default=10, help="list length for HR/NDCG/coverage (default: %(default)s)")
    p.add_argument("--cold-window", type=int, default=1000,
                   help="an item is cold while first seen within the last N events (default: %(default)s)")
    p.add_argument("--retrain-every", type=int, default=1000,
                   help="refit ALS (and streamrec, given --retrain-hook) every N events (default: %(default)s; "
                        "0 = never)")
    p.add_argument("--retrain-hook", default=None, metavar="MODULE:FUNCTION",
                   help="retrain(recommender, events_so_far) -> None for the 'streamrec' system (default: "
                        "training.trainer.PeriodicRetrainer, what `streamrec train` does; 'none' = no retraining)")
    p.add_argument("--train-window", type=int, default=20_000,
                   help="each retrain uses the last N events plus a random sample of older ones (default: %(default)s)")
    p.add_argument("--train-every", type=int, default=0,
                   help="retrain streamrec only once N events came since its last retrain (default: at every "
                        "--retrain-every point; ALS still refits at each)")
    p.add_argument("--train-first", type=int, default=0,
                   help="... but the first retrain once N events came, the next ones each time the events have "
                        "doubled, until --train-every is the shorter wait (default: --train-every throughout): early "
                        "versions on a long stream")
    p.add_argument("--train-recipe", choices=("sequence", "adapter"), default="sequence",
                   help="what streamrec's retrains fit: the sequence encoder (default) or the earlier adapter recipe")
    p.add_argument("--train-epochs", type=int, default=None, help="adapter recipe: epochs per retrain (default: "
                                                                  "TrainConfig's)")
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads while retraining (default: %(default)s; on a busy 2-core box one thread "
                        "was 4x faster than two, with the same weights)")
    p.add_argument("--train-holdout", type=float, default=None,
                   help="newest share of each retrain's events held back to accept or reject (default: TrainConfig's)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="comma-separated systems to run (default: %(default)s; also: "
                        f"{', '.join(ABLATION_SYSTEMS)})")
    p.add_argument("--ablations", action="store_true",
                   help=f"also run {' and '.join(ABLATION_SYSTEMS)}: streamrec retrained with the sequence encoder "
                        "reading only the items' text, or only learned id vectors (one more training chain each)")
    p.add_argument("--item-text", choices=("auto", "catalogue", "history"), default="auto",
                   help="item vectors from catalogue text, from review text seen so far (honest online), or auto: "
                        "catalogue text where there is some, history otherwise (default: %(default)s)")
    p.add_argument("--no-offline", action="store_true", help="skip the leave-last-out protocol")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached encodings")
    p.add_argument("--cache-dir", default="default",
                   help=f"encoding cache (default: $STREAMREC_EVAL_CACHE or {DEFAULT_CACHE})")
    p.add_argument("--seed", type=int, default=0, help="seed for the item order used to break ties")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("streamrec tuning (defaults: the worker's RecommenderConfig)")
    d = RecommenderConfig()
    g.add_argument("--half-life-days", type=float, default=d.update.half_life_s / 86400,
                   help="user vector half-life in event time (default: %(default)s)")
    g.add_argument("--popularity-half-life-days", type=float, default=d.popularity_half_life_s / 86400,
                   help="popularity half-life, also used by the baselines (default: %(default)s)")
    g.add_argument("--popularity-weight", type=float, default=d.weights.popularity,
                   help="weight of popularity in the blended score (default: %(default)s)")
    g.add_argument("--repeats", action="store_true",
                   help="streamrec may re-recommend items the user interacted with (the worker's --repeats)")
    g.add_argument("--text-mix", type=float, default=d.update.text_mix,
                   help="share of the review-text vector in a review's event vector (default: %(default)s)")
    g.add_argument("--explore-share", type=float, default=EvalConfig.explore_share,
                   help="streamrec-explore-*: share of each list given to exploration (default: %(default)s)")
    g.add_argument("--explore-epsilon", type=float, default=EvalConfig.explore_epsilon,
                   help="streamrec-explore-epsilon: chance a slot takes a random candidate (default: %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    d = RecommenderConfig()
    rc = replace(d, repeats=args.repeats, popularity_half_life_s=args.popularity_half_life_days * 86400.0,
                 update=replace(d.update, half_life_s=args.half_life_days * 86400.0, text_mix=args.text_mix),
                 weights=replace(d.weights, popularity=args.popularity_weight))
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    if args.ablations:
        systems += tuple(n for n in ABLATION_SYSTEMS if n not in systems)
    known = SYSTEMS + tuple(ABLATION_SYSTEMS)
    bad = [s for s in systems if s not in known]
    if bad:
        raise SystemExit(f"streamrec evaluate: unknown system(s) {', '.join(bad)}; choose from {', '.join(known)}")
    if args.k <= 0 or args.cold_window < 0 or (args.limit is not None and args.limit <= 0):
        raise SystemExit("streamrec evaluate: --k and --limit must be positive, --cold-window non-negative")
    return EvalConfig(k=args.k, cold_window=args.cold_window, retrain_every=args.retrain_every or None,
                      limit=args.limit, systems=systems, item_text=args.item_text, offline=not args.no_offline,
                      seed=args.seed, recommender=rc, popularity_half_life_s=rc.popularity_half_life_s,
                      explore_share=args.explore_share, explore_epsilon=args.explore_epsilon)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.retrain_hook is None:
            from training.trainer import PeriodicRetrainer, TrainConfig

            tc = TrainConfig(recipe=args.train_recipe)
            if args.train_epochs is not None:
                tc.epochs = args.train_epochs
            if args.train_holdout is not None:
                tc.holdout = args.train_holdout
            tc.threads = args.train_threads or None
            hook = PeriodicRetrainer(tc, window=args.train_window, replay_sample=args.train_window // 2,
                                     every=args.train_every, first=args.train_first)
        elif args.retrain_hook.lower() == "none":
            hook = None
        else:
            hook = _load_hook(args.retrain_hook)
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"streamrec evaluate: cannot load --retrain-hook {args.retrain_hook!r}: {exc}", file=sys.stderr)
        return 2
    keep: dict = {}
    try:
        res = evaluate(args.dataset, model_dir=args.model, cfg=cfg, retrain_hook=hook,
                       cache_dir=None if args.no_cache else args.cache_dir, progress=not args.quiet, keep=keep)
    except DatasetNotFound as exc:
        print(f"streamrec evaluate: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:  # e.g. the model directory (ModelDirError)
        print(f"streamrec evaluate: {exc}", file=sys.stderr)
        return 2
    paths = write_results(res, args.out, run=keep.get("run"), plot=not args.no_plot)
    _print_summary(res)
    for kind, path in paths.items():
        print(f"wrote {path}")
    return 0


def _print_summary(res: dict) -> None:
    k = res["protocol"]["k"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        print(to_markdown(res))
        return
    con = Console()
    if not con.is_terminal:  # piped: don't squeeze the tables into 80 columns
        con = Console(width=120)

    def table(title: str, cols: list[str], systems: dict[str, dict]) -> Table:
        t = Table(title=title)
        t.add_column("system")
        for c in cols:
            t.add_column(c, justify="right")
        for n, m in systems.items():
            t.add_row(n, *(_fmt(m.get(c)) for c in cols))
        return t

    con.print(table(f"{res['dataset']}: streaming (test-then-train), {res['events']['scored']:,} scored events",
                    [f"hr@{k}", f"ndcg@{k}", "mrr", "coverage", f"cold_hit@{k}"], res["systems"]))
    off = res.get("offline")
    if off:
        con.print(table(f"{res['dataset']}: leave-last-out, {off['users']:,} users, full ranking",
                        [f"hr@{k}", f"ndcg@{k}", "mrr", f"precision@{k}", f"recall@{k}", f"f1@{k}", f"map@{k}"],
                        off["systems"]))
    if not res["protocol"]["retraining"]:
        con.print(f"[yellow]retraining: false[/] — {res['protocol']['retraining_note']}")
    leak = res["protocol"]["item_text_source"].get("leakage")
    if leak:
        con.print(f"[yellow]item text:[/] {leak}")


if __name__ == "__main__":
    sys.exit(main())

