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
and ``als`` (``implicit``), see :mod:`training.baselines`. ``streamrec-explore-thompson`` and
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
* **Exclusion** in the streaming run is each system's own: streamrec excludes what the worker
  excludes (the user's last ``UpdateConfig.recent_items`` items), the baselines every item the
  user has interacted with. ``protocol.systems[NAME].seen_in_top_k`` counts Top-K lists that
  still held an item the user had already interacted with.
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
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inference.datasets import Dataset, DatasetNotFound, dataset_names, load_dataset, read_catalogue
from inference.events import Event
from inference.explore import ExploreConfig
from inference.index import ItemIndex
from inference.ranking import LinearHead
from inference.recommender import Recommender, RecommenderConfig
from inference.vectors import top_k

from .baselines import ALSBaseline, CooccurrenceKNN, PopularityBaseline, System

log = logging.getLogger("streamrec.evaluate")

__all__ = [
    "SYSTEMS",
    "RetrainHook",
    "StreamrecSystem",
    "ExploringStreamrecSystem",
    "EXPLORE_SYSTEMS",
    "ItemTextPlan",
    "StreamRun",
    "EvalConfig",
    "hit_at_k",
    "ndcg_at_k",
    "reciprocal_rank",
    "precision_at_k",
    "recall_at_k",
    "f1_at_k",
    "average_precision_at_k",
    "rank_of",
    "rank_metrics",
    "plan_item_text",
    "encode_cached",
    "build_systems",
    "replay",
    "leave_last_out",
    "evaluate_offline",
    "evaluate",
    "write_results",
    "main",
]

SYSTEMS: tuple[str, ...] = ("streamrec", "streamrec-untrained", "popularity", "cooccurrence-knn", "als",
                             "streamrec-explore-thompson", "streamrec-explore-epsilon")
#: streamrec-untrained with exploration on: streaming protocol only, measured on the served lists
EXPLORE_SYSTEMS: tuple[str, ...] = ("streamrec-explore-thompson", "streamrec-explore-epsilon")
DEFAULT_MODEL_DIR = "~/.cache/streamrec/models/all-MiniLM-L6-v2"
DEFAULT_OUT = "bench/results"
DEFAULT_CACHE = "~/.cache/streamrec/eval"  # $STREAMREC_EVAL_CACHE overrides it

#: ``retrain(recommender, events_so_far[, text_vecs=...]) -> None``: refit whatever the training
#: code fits and switch the recommender to it (``recommender.use_model``). Called every
#: ``retrain_every`` events in the streaming run, once on the training part offline. The
#: default is :class:`training.trainer.PeriodicRetrainer`, what ``streamrec train`` runs.
RetrainHook = Callable[[Recommender, Sequence[Event]], None]

RETRAINING_NOTE = ("no retrain hook was given (--retrain-hook none), so 'streamrec' is the untrained "
                   "recommender (identical to 'streamrec-untrained'); nothing is refitted")


# ============================================================================================
# metrics
# ============================================================================================


def hit_at_k(rank: float, k: int) -> float:
    """1 if the relevant item is ranked in the top ``k`` (ranks start at 1), else 0."""
    return 1.0 if rank <= k else 0.0


def ndcg_at_k(rank: float, k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 1)`` inside the top ``k``, else 0."""
    return 1.0 / math.log2(rank + 1.0) if rank <= k else 0.0


def reciprocal_rank(rank: float) -> float:
    """``1 / rank`` over the full ranking (0 when the item cannot be ranked: rank = inf)."""
    return 0.0 if not math.isfinite(rank) else 1.0 / rank


def precision_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """Share of the first ``k`` slots holding a relevant item (the denominator is ``k``)."""
    rel = set(relevant)
    return sum(1 for x in list(ranked)[:k] if x in rel) / k


def recall_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """Share of the relevant items found in the first ``k`` (0 when nothing is relevant)."""
    rel = set(relevant)
    if not rel:
        return 0.0
    return sum(1 for x in list(ranked)[:k] if x in rel) / len(rel)


def f1_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """Harmonic mean of :func:`precision_at_k` and :func:`recall_at_k` (0 when both are 0)."""
    rel = set(relevant)
    p, r = precision_at_k(ranked, rel, k), recall_at_k(ranked, rel, k)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def average_precision_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """AP@k: mean of precision@i at each relevant position i <= k, over ``min(|relevant|, k)``."""
    rel = set(relevant)
    if not rel:
        return 0.0
    hits, total = 0, 0.0
    for i, x in enumerate(list(ranked)[:k], start=1):
        if x in rel:
            hits += 1
            total += hits / i
    return total / min(len(rel), k)


def rank_metrics(rank: float, k: int) -> dict[str, float]:
    """All offline metrics for one user with one relevant item at ``rank`` (inf: unranked).

    Equal to the list functions above for a list holding the item at that position.
    """
    hit = hit_at_k(rank, k)
    p, r = hit / k, hit
    return {
        f"hr@{k}": hit,
        f"ndcg@{k}": ndcg_at_k(rank, k),
        "mrr": reciprocal_rank(rank),
        f"precision@{k}": p,
        f"recall@{k}": r,
        f"f1@{k}": 0.0 if p + r == 0 else 2 * p * r / (p + r),
        f"map@{k}": 1.0 / rank if hit else 0.0,
    }


def rank_of(scores: np.ndarray, target: int, exclude: np.ndarray | None = None) -> float:
    """1-based rank of ``scores[target]`` with ``exclude`` removed, ties to the lower index first
    (the order :func:`inference.vectors.top_k` lists them in); ``inf`` when it cannot be ranked."""
    s = scores
    if exclude is not None and len(exclude):
        s = np.array(scores, copy=True)
        s[exclude] = -np.inf
    t = s[target]
    if not np.isfinite(t):
        return math.inf
    return float(1 + np.count_nonzero(s > t) + np.count_nonzero(s[:target] == t))


# ============================================================================================
# item text: where each item's vector comes from
# ============================================================================================


@dataclass
class ItemTextPlan:
    """Which items get a vector from catalogue text up front, and which from reviews as they arrive.

    ``catalogue``: ``{item_id: text}`` encoded once before the replay (the worker's catalogue
    topic). ``history``: items whose vector is the running mean of the review-text vectors seen
    *so far* (added to the index at their first review with text; updated with each one), the
    honest online variant when there is no catalogue text.
    """

    mode: str
    catalogue: dict[str, str]
    history: set[str]
    source: dict[str, Any]


def _catalogue_only_text(ds: Dataset, items: Sequence[str]) -> dict[str, str]:
    """Item text that does not come from the reviews (title, catalogue description, tags)."""
    how = ds.stats.get("item_text") or {}
    if not (how.get("summaries", 0) or how.get("review_text", 0)):
        return {i: ds.items[i].text() for i in items if i in ds.items and ds.items[i].text().strip()}
    path = ds.stats.get("catalogue_file")
    if not path:
        return {}
    try:
        raw, _ = read_catalogue(path, wanted=set(items))
    except DatasetNotFound:
        return {}
    return {i: raw[i].text() for i in items if i in raw and raw[i].text().strip()}


def plan_item_text(ds: Dataset, items: Sequence[str], mode: str = "auto") -> ItemTextPlan:
    """Decide where item vectors come from.

    * ``catalogue``: the text :func:`load_dataset` built for every item -- for items without a
      catalogue description that is a digest of the item's reviews over the *whole file*, which
      leaks future reviews into the prequential protocol (said in ``source.leakage``);
    * ``history``: review text seen so far only (no catalogue text at all);
    * ``auto`` (default): catalogue text where the catalogue has some (title, description, tags;
      never review-derived), review history for the rest.
    """
    if mode not in ("auto", "catalogue", "history"):
        raise ValueError(f"item text mode must be auto, catalogue or history, not {mode!r}")
    how = dict(ds.stats.get("item_text") or {})
    from_reviews = how.get("summaries", 0) + how.get("review_text", 0)
    if mode == "catalogue":
        cat = {i: ds.items[i].text() for i in items if i in ds.items and ds.items[i].text().strip()}
        leak = (f"{from_reviews} of {len(ds.items)} items have text built by load_dataset from their reviews "
                "over the whole file (summaries first): those item vectors know reviews that come later in the "
                "replay, which flatters every streamrec figure (future information). Use --item-text history "
                "or auto for the honest online variant.") if from_reviews else None
        source = {"mode": "catalogue", "items_from_catalogue_text": len(cat), "items_from_review_history": 0,
                  "load_dataset_item_text": how, "leakage": leak}
        return ItemTextPlan("catalogue", cat, set(), source)
    cat = {} if mode == "history" else _catalogue_only_text(ds, items)
    hist = {i for i in items if i not in cat}
    leak = None
    if ds.stats.get("format") == "movielens" and cat:
        leak = ("MovieLens item text includes the most frequent user tags from tags.csv over the whole file "
                "(tags are time-stamped; a few were written after some of the replayed ratings). Title and "
                "genres are catalogue data.")
    source = {"mode": mode, "items_from_catalogue_text": len(cat), "items_from_review_history": len(hist),
              "load_dataset_item_text": how, "leakage": leak,
              "history_rule": "vector = mean of the item's review-text vectors seen so far; the item joins the "
                              "index at its first review with text, after that review has been scored"}
    return ItemTextPlan(mode, cat, hist, source)


# ============================================================================================
# encoding, cached
# ============================================================================================


def default_cache_dir() -> str:
    return os.environ.get("STREAMREC_EVAL_CACHE") or DEFAULT_CACHE


def encode_cached(encoder, texts: Sequence[str], cache_dir: str | Path | None = "default", *,
                  progress: bool = False, desc: str = "encoding", chunk: int = 256,
                  stats: dict | None = None) -> np.ndarray:
    """``encoder.encode(texts)`` in length-sorted chunks, cached as ``.npy`` keyed by a hash of the
    model (manifest, variant, max tokens) and the texts, so re-runs skip the encoder.
    ``cache_dir`` "default" is ``$STREAMREC_EVAL_CACHE`` or ``~/.cache/streamrec/eval``; None: no cache."""
    texts = list(texts)
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    dim = int(encoder.dim)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        h.update(json.dumps(getattr(encoder, "manifest", {}), sort_keys=True, default=str).encode())
        info = getattr(encoder, "info", None)
        h.update(f"|{getattr(info, 'variant', '')}|{getattr(encoder, 'max_tokens', '')}|{len(texts)}|".encode())
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
        path = Path(cache_dir).expanduser() / f"{h.hexdigest()[:32]}.npy"
        if path.is_file():
            try:
                arr = np.load(path)
                if arr.shape == (len(texts), dim):
                    if stats is not None:
                        stats["cached"] = stats.get("cached", 0) + len(texts)
                    return arr
            except (OSError, ValueError):
                pass
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), dim), dtype=np.float32)
    bar = _bar(total=len(texts), desc=desc, unit="text", enabled=progress)
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        out[idx] = encoder.encode([texts[i] for i in idx])
        bar.update(len(idx))
    bar.close()
    if stats is not None:
        stats["encoded"] = stats.get("encoded", 0) + len(texts)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, out)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not cache encodings at %s: %s", path, exc)
    return out


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _bar(*, total: int, desc: str, unit: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


# ============================================================================================
# the streamrec adapter
# ============================================================================================


class StreamrecSystem(System):
    """The worker's recommender behind the baseline interface.

    One :class:`UserState` per user; every event goes through :meth:`Recommender.observe` (with
    the review's text vector, as the worker encodes it) and :meth:`scores` is
    ``Recommender.ranker.score_all`` -- what :meth:`Recommender.recommend` ranks -- with the
    worker's exclusion (:meth:`excluded`: the state's ``recent_items``). :meth:`recommend_worker`
    returns the worker's list itself, for checking that the two agree.

    Item vectors: ``item_vectors`` (catalogue text) are in the index from the start; items in
    ``history_items`` join it when their first review with text is observed (after it was
    scored) and move to the running mean of their reviews' text vectors. An event whose item is
    still unknown is applied as the worker's ``--unknown-items accept`` does (text signal only)
    and counted in ``unknown_item_events``.
    """

    def __init__(self, item_ids: Sequence[str], dim: int, *, name: str = "streamrec-untrained",
                 item_vectors: dict[str, np.ndarray] | None = None, history_items: Iterable[str] = (),
                 text_vecs: dict[str, np.ndarray] | None = None, config: RecommenderConfig | None = None,
                 head: LinearHead | None = None, retrain_hook: RetrainHook | None = None) -> None:
        super().__init__(item_ids)
        self.name = name
        self.index = ItemIndex(dim, capacity=max(1024, self.n_items))
        self.rec = Recommender(self.index, config=config or RecommenderConfig(), head=head)
        self.states: dict[str, Any] = {}
        self.text_vecs = text_vecs or {}
        self.history_items = set(history_items)
        self.retrain_hook = retrain_hook
        self.needs_retraining = retrain_hook is not None
        self.retrains = 0
        self.unknown_item_events = 0
        self.duplicates = 0
        self._u_of_row = np.full(max(1024, self.n_items), -1, dtype=np.int64)
        self._sums: dict[str, np.ndarray] = {}
        if item_vectors:
            ids = [i for i in self.item_ids if i in item_vectors]
            if ids:
                self.index.upsert_many(ids, np.stack([item_vectors[i] for i in ids]))
                self._map_rows(ids)
        self._identity = len(self.index) == self.n_items and all(
            self._u_of_row[r] == r for r in range(self.n_items))

    def _map_rows(self, ids: Iterable[str]) -> None:
        for i in ids:
            row = self.index.row(i)
            if row >= len(self._u_of_row):
                grown = np.full(max(2 * len(self._u_of_row), row + 1), -1, dtype=np.int64)
                grown[: len(self._u_of_row)] = self._u_of_row
                self._u_of_row = grown
            self._u_of_row[row] = self.pos[i]

    def observe(self, event: Event) -> None:
        state = self.states.get(event.user_id)
        if state is None:
            state = self.states[event.user_id] = self.rec.new_state()
        if state.has_seen(event.event_id):  # the worker's duplicate rule
            self.duplicates += 1
            return
        text_vec = self.text_vecs.get(event.event_id) if event.event_id is not None else None
        if text_vec is not None and not np.any(text_vec):
            text_vec = None
        item = event.item_id
        if item in self.history_items and text_vec is not None:
            total = self._sums.get(item)
            total = text_vec.astype(np.float32).copy() if total is None else total + text_vec
            self._sums[item] = total
            new = item not in self.index
            self.index.upsert(item, total)  # upsert normalises: the mean's direction
            if new:
                self._map_rows([item])
        if item not in self.index:
            self.unknown_item_events += 1
        self.rec.observe(state, event, text_vec)
        if item in self.pos:
            self._remember(event.user_id, self.pos[item])

    def scores(self, user_id: str) -> np.ndarray:
        total, _ = self.rec.score_all(self.states.get(user_id))
        if self._identity and len(total) == self.n_items:
            return total  # every item indexed up front, in universe order: row == position
        out = np.full(self.n_items, -np.inf, dtype=np.float32)
        rows = np.flatnonzero(self.index.alive)
        out[self._u_of_row[rows]] = total[rows]
        return out

    def excluded(self, user_id: str) -> np.ndarray:
        state = self.states.get(user_id)
        if state is None or not self.rec.config.exclude_seen:
            return np.empty(0, dtype=np.int64)
        return np.asarray([self.pos[i] for i in state.recent_items if i in self.pos], dtype=np.int64)

    def is_cold(self, user_id: str) -> bool:
        """True when the worker would answer this user with the cold-start (popularity) list."""
        state = self.states.get(user_id)
        return state is None or state.unit() is None

    def recommend_worker(self, user_id: str, n: int | None = None) -> list[str]:
        """The list :meth:`Recommender.recommend` gives this user now (what the worker publishes)."""
        return self.rec.recommend(self.states.get(user_id), n).item_ids

    def retrain(self, events_so_far: Sequence[Event]) -> None:
        if self.retrain_hook is not None:
            if "text_vecs" in inspect.signature(self.retrain_hook).parameters:
                self.retrain_hook(self.rec, events_so_far, text_vecs=self.text_vecs)
            else:  # a two-argument hook (recommender, events)
                self.retrain_hook(self.rec, events_so_far)
            history = getattr(self.retrain_hook, "history", None)  # a hook that may skip a call says so
            self.retrains = len(history) if history is not None else self.retrains + 1

    def config(self) -> dict:
        cfg = asdict(self.rec.config)
        return {"recommender": cfg, "worker_defaults": cfg == asdict(RecommenderConfig()),
                "head": self.rec.ranker.head is not None,
                "retrain_hook": _hook_name(self.retrain_hook)}


class ExploringStreamrecSystem(StreamrecSystem):
    """:class:`StreamrecSystem` with exploration on: :meth:`served` is the list the worker would
    publish (exploration slots included) and counts as shown to the user; the user's next event
    on one of its items is the policy's reward (inside :meth:`Recommender.observe`)."""

    def served(self, user_id: str, k: int) -> np.ndarray:
        """Universe positions of the Top-``k`` as served, in list order."""
        ids = self.rec.recommend(self.states.get(user_id), k, user_id=user_id).item_ids
        return np.asarray([self.pos[i] for i in ids if i in self.pos], dtype=np.int64)

    def config(self) -> dict:
        out = super().config()
        ex = self.rec.explorer
        out["exploration"] = {"explored_slots": ex.explored, "rewarded_clicks": ex.rewarded} if ex else None
        return out


def _hook_name(hook: Any) -> str | None:
    if hook is None:
        return None
    return f"{getattr(hook, '__module__', '?')}:{getattr(hook, '__qualname__', repr(hook))}"


# ============================================================================================
# configuration and system construction
# ============================================================================================


@dataclass
class EvalConfig:
    """Everything that decides the numbers (all of it lands in ``protocol`` in the JSON)."""

    k: int = 10
    cold_window: int = 1000
    retrain_every: int | None = 1000
    limit: int | None = None
    systems: tuple[str, ...] = SYSTEMS
    item_text: str = "auto"
    offline: bool = True
    seed: int = 0
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    popularity_half_life_s: float = 14 * 86400.0
    als: dict = field(default_factory=dict)
    knn: dict = field(default_factory=dict)
    explore_share: float = 0.2  # streamrec-explore-*: share of each list given to exploration
    explore_epsilon: float = 0.1  # streamrec-explore-epsilon: chance a slot goes to a random candidate


def build_systems(names: Sequence[str], item_ids: Sequence[str], *, dim: int | None = None,
                  plan: ItemTextPlan | None = None, item_vecs: dict[str, np.ndarray] | None = None,
                  text_vecs: dict[str, np.ndarray] | None = None, cfg: EvalConfig | None = None,
                  retrain_hook: RetrainHook | None = None) -> tuple[dict[str, System], dict[str, str]]:
    """Fresh systems by name. Returns ``(systems, skipped)``; ``skipped`` says why a system is
    not run (e.g. ``streamrec`` without a retrain hook is the same as ``streamrec-untrained``)."""
    cfg = cfg or EvalConfig()
    out: dict[str, System] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in ("streamrec", "streamrec-untrained"):
            if name == "streamrec" and retrain_hook is None:
                skipped[name] = RETRAINING_NOTE
                continue
            if dim is None:
                raise ValueError("streamrec systems need the encoder dimension (dim)")
            out[name] = StreamrecSystem(
                item_ids, dim, name=name, item_vectors=item_vecs,
                history_items=plan.history if plan is not None else (), text_vecs=text_vecs,
                config=_copy_config(cfg.recommender), retrain_hook=retrain_hook if name == "streamrec" else None)
        elif name in EXPLORE_SYSTEMS:
            if dim is None:
                raise ValueError("streamrec systems need the encoder dimension (dim)")
            rc = _copy_config(cfg.recommender)
            rc.explore = ExploreConfig(share=cfg.explore_share, policy=name.rsplit("-", 1)[1],
                                       epsilon=cfg.explore_epsilon, seed=cfg.seed)
            out[name] = ExploringStreamrecSystem(
                item_ids, dim, name=name, item_vectors=item_vecs,
                history_items=plan.history if plan is not None else (), text_vecs=text_vecs, config=rc)
        elif name == "popularity":
            out[name] = PopularityBaseline(item_ids, half_life_s=cfg.popularity_half_life_s)
        elif name == "cooccurrence-knn":
            try:
                out[name] = CooccurrenceKNN(item_ids, popularity_half_life_s=cfg.popularity_half_life_s, **cfg.knn)
            except MemoryError as exc:
                skipped[name] = str(exc)
        elif name == "als":
            out[name] = ALSBaseline(item_ids, popularity_half_life_s=cfg.popularity_half_life_s, **cfg.als)
        else:
            raise ValueError(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
    return out, skipped


def _copy_config(c: RecommenderConfig) -> RecommenderConfig:
    return replace(c, update=replace(c.update), weights=replace(c.weights))


# ============================================================================================
# the streaming (prequential) runner
# ============================================================================================


@dataclass
class StreamRun:
    """What :func:`replay` measured. Per-system arrays are aligned with ``scored`` (the indices,
    into the replayed events, of the events that were scored)."""

    k: int
    n_items: int
    scored: np.ndarray
    cold: np.ndarray
    ranks: dict[str, np.ndarray]
    covered: dict[str, np.ndarray]
    seen_in_top_k: dict[str, int]
    seconds: dict[str, float]
    retrain_points: list[int]
    replayed: int
    repeats: int
    duplicates: int

    def metrics(self, name: str) -> dict[str, float | None]:
        k = self.k
        r = self.ranks[name]
        hits = r <= k
        with np.errstate(divide="ignore"):
            ndcg = np.where(hits, 1.0 / np.log2(r + 1.0), 0.0)
            rr = np.where(np.isfinite(r), 1.0 / r, 0.0)
        cold = self.cold
        return {
            f"hr@{k}": _mean(hits),
            f"ndcg@{k}": _mean(ndcg),
            "mrr": _mean(rr),
            "coverage": round(float(self.covered[name].mean()), 6) if self.n_items else None,
            f"cold_hit@{k}": _mean(hits[cold]) if cold.any() else None,
        }


def _mean(a: np.ndarray) -> float | None:
    return round(float(np.mean(a)), 6) if len(a) else None


def replay(events: Sequence[Event], item_ids: Sequence[str], systems: dict[str, System], *, k: int = 10,
           cold_window: int = 1000, retrain_every: int | None = None, progress: bool = False,
           on_score: Callable[[int, Event, dict[str, System]], None] | None = None,
           desc: str = "replay") -> StreamRun:
    """Test-then-train over ``events`` (already in replay order).

    For each event: skip it if its id was already replayed (duplicate); unless the user has
    interacted with the item before (a repeat), let every system score it (``on_score`` is called
    first, with the systems as they are *before* the event) and record the true item's rank and
    the Top-``k``; then ``observe`` it everywhere. After every ``retrain_every`` replayed events,
    systems with ``needs_retraining`` are refitted on all events so far.
    """
    pos = {i: p for p, i in enumerate(item_ids)}
    n_items = len(item_ids)
    names = list(systems)
    ranks: dict[str, list[float]] = {n: [] for n in names}
    covered = {n: np.zeros(n_items, dtype=bool) for n in names}
    seen_in = {n: 0 for n in names}
    secs = {n: 0.0 for n in names}
    scored: list[int] = []
    cold: list[bool] = []
    first_seen: dict[str, int] = {}
    user_items: dict[str, set[int]] = {}
    seen_ids: set[str] = set()
    so_far: list[Event] = []
    retrain_points: list[int] = []
    repeats = duplicates = 0
    bar = _bar(total=len(events), desc=desc, unit="ev", enabled=progress)
    for i, ev in enumerate(events):
        if ev.event_id is not None:
            if ev.event_id in seen_ids:
                duplicates += 1
                bar.update(1)
                continue
            seen_ids.add(ev.event_id)
        step = len(so_far)
        target = pos.get(ev.item_id)
        mine = user_items.setdefault(ev.user_id, set())
        if target is not None and target in mine:
            repeats += 1
        elif target is not None:
            if on_score is not None:
                on_score(step, ev, systems)
            first = first_seen.get(ev.item_id)
            cold.append(first is None or step - first < cold_window)
            scored.append(step)
            for name in names:
                t0 = time.perf_counter()
                sys_ = systems[name]
                s = np.asarray(sys_.scores(ev.user_id), dtype=np.float32)
                drop = sys_.excluded(ev.user_id)
                if drop.size:
                    s = s.copy()
                    s[drop] = -np.inf
                served = getattr(sys_, "served", None)
                if served is not None:  # exploration: the list as served, then the rest by score
                    best = served(ev.user_id, min(k, n_items))
                    hit = np.flatnonzero(best == target)
                    if hit.size:
                        ranks[name].append(float(hit[0] + 1))
                    else:
                        rest = s.copy()
                        rest[best] = -np.inf
                        ranks[name].append(len(best) + rank_of(rest, target))
                else:
                    ranks[name].append(rank_of(s, target))
                    best = top_k(s, min(k, n_items))
                    best = best[np.isfinite(s[best])]
                covered[name][best] = True
                if mine and any(int(b) in mine for b in best):
                    seen_in[name] += 1
                secs[name] += time.perf_counter() - t0
        for name in names:
            t0 = time.perf_counter()
            systems[name].observe(ev)
            secs[name] += time.perf_counter() - t0
        if target is not None:
            mine.add(target)
        first_seen.setdefault(ev.item_id, step)
        so_far.append(ev)
        if retrain_every and len(so_far) % retrain_every == 0:
            refit = [n for n in names if systems[n].needs_retraining]
            if refit:
                retrain_points.append(len(so_far))
            for name in refit:
                t0 = time.perf_counter()
                systems[name].retrain(list(so_far))  # a snapshot: hooks may keep it
                secs[name] += time.perf_counter() - t0
        bar.update(1)
        if progress and len(scored) and len(scored) % 500 == 0 and names:
            bar.set_postfix_str(" ".join(f"{n[:10]}={np.mean(np.asarray(ranks[n]) <= k):.3f}" for n in names[:3]))
    bar.close()
    return StreamRun(k=k, n_items=n_items, scored=np.asarray(scored, dtype=np.int64),
                     cold=np.asarray(cold, dtype=bool),
                     ranks={n: np.asarray(r, dtype=np.float64) for n, r in ranks.items()},
                     covered=covered, seen_in_top_k=seen_in, seconds=secs, retrain_points=retrain_points,
                     replayed=len(so_far), repeats=repeats, duplicates=duplicates)


# ============================================================================================
# the offline (leave-last-out) protocol
# ============================================================================================


def leave_last_out(events: Sequence[Event]) -> tuple[list[Event], list[Event], dict[str, int]]:
    """``(train, test, skipped)``: each user's last event (in replay order) is their test event;
    users with one event are skipped, as are users whose last item is already among their
    training items (a repeat: excluded from the ranking by definition, so unwinnable)."""
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    for i, ev in enumerate(events):
        last[ev.user_id] = i
        count[ev.user_id] = count.get(ev.user_id, 0) + 1
    test_idx = {i for u, i in last.items() if count[u] >= 2}
    train = [ev for i, ev in enumerate(events) if i not in test_idx]
    train_items: dict[str, set[str]] = {}
    for ev in train:
        train_items.setdefault(ev.user_id, set()).add(ev.item_id)
    test, repeat = [], 0
    for i in sorted(test_idx):
        ev = events[i]
        if ev.item_id in train_items.get(ev.user_id, ()):
            repeat += 1
        else:
            test.append(ev)
    # single-event users have nothing to test, but their event still trains (usual leave-one-out)
    single = sum(1 for u in count if count[u] < 2)
    return train, test, {"single_event_users": single, "repeat_test_item": repeat}


def evaluate_offline(train: Sequence[Event], test: Sequence[Event], item_ids: Sequence[str],
                     systems: dict[str, System], *, k: int = 10, progress: bool = False) -> dict[str, dict]:
    """Fit each system on ``train`` (replayed in order, then one refit for those that need it),
    rank each test item among all items minus the user's training items, average the metrics."""
    pos = {i: p for p, i in enumerate(item_ids)}
    train_items: dict[str, list[int]] = {}
    for ev in train:
        p = pos.get(ev.item_id)
        if p is not None:
            train_items.setdefault(ev.user_id, []).append(p)
    out: dict[str, dict] = {}
    for name, sys_ in systems.items():
        t0 = time.perf_counter()
        bar = _bar(total=len(train) + len(test), desc=f"offline {name}", unit="ev", enabled=progress)
        for ev in train:
            sys_.observe(ev)
            bar.update(1)
        if sys_.needs_retraining:
            sys_.retrain(train)
        sums: dict[str, float] = {}
        for ev in test:
            s = np.array(sys_.scores(ev.user_id), dtype=np.float32, copy=True)
            drop = train_items.get(ev.user_id)
            if drop:
                s[np.asarray(drop, dtype=np.int64)] = -np.inf
            r = rank_of(s, pos[ev.item_id])
            for key, v in rank_metrics(r, k).items():
                sums[key] = sums.get(key, 0.0) + v
            bar.update(1)
        bar.close()
        n = max(1, len(test))
        out[name] = {key: round(v / n, 6) for key, v in sums.items()} if test else {}
        out[name]["_seconds"] = round(time.perf_counter() - t0, 2)
    return out


# ============================================================================================
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


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"


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
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(unknown)}: choose from {', '.join(SYSTEMS)}")
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
                                     text_vecs=text_vecs, cfg=cfg, retrain_hook=retrain_hook)
    blas = _one_blas_thread()  # one matrix-vector product per event: BLAS threads only spin (7x slower)
    t0 = time.perf_counter()
    run = replay(events, item_ids, systems, k=cfg.k, cold_window=cfg.cold_window,
                 retrain_every=cfg.retrain_every, progress=progress, desc=f"replay {ds.name}")
    timing["stream"] = round(time.perf_counter() - t0, 2)
    results: dict[str, dict] = {n: run.metrics(n) for n in systems}
    if "streamrec" in names and "streamrec" not in systems and "streamrec-untrained" in systems:
        results["streamrec"] = dict(results["streamrec-untrained"])
    results = {n: results[n] for n in names if n in results}

    # -- offline ------------------------------------------------------------------------------
    offline = None
    if cfg.offline:
        t0 = time.perf_counter()
        train, test, skipped_users = leave_last_out(events)
        osys, _ = build_systems([n for n in names if n not in EXPLORE_SYSTEMS], item_ids, dim=dim, plan=plan,
                                item_vecs=item_vecs, text_vecs=text_vecs, cfg=cfg, retrain_hook=retrain_hook)
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
                "seen_in_top_k": run.seen_in_top_k[n], "seconds": round(run.seconds[n], 2)}
        if isinstance(s, ALSBaseline):
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
        "exclusion": "streamrec: the worker's (last UpdateConfig.recent_items items of the user); baselines: every "
                     "item the user interacted with",
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
# ============================================================================================


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def to_markdown(res: dict) -> str:
    """The result as a README-ready markdown section."""
    p, ev, k = res["protocol"], res["events"], res["protocol"]["k"]
    lines = [f"## `streamrec evaluate` — {res['dataset']}", ""]
    prefix = f" (prefix: first {p['limit']:,} events)" if p.get("prefix") else ""
    lines.append(f"{ev['replayed']:,} events replayed{prefix}, {ev['scored']:,} scored, {ev['users']:,} users, "
                 f"{ev['items']:,} items; {ev['duplicates']} exact duplicate rows dropped, invalid rows: "
                 f"{sum(ev['invalid'].values())}{' ' + str(ev['invalid']) if ev['invalid'] else ''}; "
                 f"{ev['repeats']} repeat interactions applied but not scored; {ev['cold']:,} cold-item events.")
    lines.append("")
    lines.append(f"### Streaming (prequential, test-then-train), K = {k}")
    lines.append("")
    cols = [f"hr@{k}", f"ndcg@{k}", "mrr", "coverage", f"cold_hit@{k}"]
    lines.append("| system | " + " | ".join(cols) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for n, m in res["systems"].items():
        lines.append(f"| {n} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
    lines.append(f"| *random (expected)* | {_fmt(p.get('random_hr@k'))} | | | | |")
    lines.append("")
    off = res.get("offline")
    if off:
        lines.append(f"### Offline (leave-last-out, full ranking), K = {k}")
        lines.append("")
        cols = [f"hr@{k}", f"ndcg@{k}", "mrr", f"precision@{k}", f"recall@{k}", f"f1@{k}", f"map@{k}"]
        lines.append("| system | " + " | ".join(cols) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
        for n, m in off["systems"].items():
            lines.append(f"| {n} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
        lines.append("")
        lines.append(f"{off['users']:,} test users; skipped: {off['skipped']}.")
        lines.append("")
    lines.append("### Notes")
    lines.append("")
    if not p["retraining"]:
        lines.append(f"- **No retraining**: {p['retraining_note']}.")
    src = p["item_text_source"]
    lines.append(f"- Item text (`--item-text {src['mode']}`): {src['items_from_catalogue_text']} items from catalogue "
                 f"text, {src['items_from_review_history']} from review text seen so far.")
    if src.get("leakage"):
        lines.append(f"- **Leakage**: {src['leakage']}")
    als = p["systems"].get("als", {})
    if als.get("fits") == 0:
        lines.append(f"- **ALS was never fitted** (fewer than --retrain-every={p['retrain_every']} events): "
                     "its figures are the popularity fallback's.")
    elif "fits" in als:
        lines.append(f"- ALS refits every {p['retrain_every']} events on all events so far ({als['fits']} refits, "
                     f"{als.get('fit_seconds')} s); between refits users are folded in from their current items.")
    cfgs = {n: i["config"] for n, i in p["systems"].items() if "config" in i and not n.startswith("streamrec")}
    if cfgs:
        lines.append("- Baselines: " + "; ".join(
            f"{n} ({', '.join(f'{a}={b}' for a, b in c.items() if isinstance(b, (int, float)))})"
            for n, c in cfgs.items()) + ".")
    sr = p["systems"].get("streamrec-untrained", {}).get("config")
    if sr:
        lines.append(f"- streamrec-untrained runs the worker's RecommenderConfig "
                     f"({'defaults' if sr['worker_defaults'] else 'NOT the defaults: tuned by flags'}).")
    ex = p.get("exploration") or {}
    if ex.get("systems"):
        lines.append(f"- Exploration ({', '.join(ex['systems'])}): streamrec-untrained with {ex['share']:.0%} of each "
                     f"list's slots given to the policy (epsilon {ex['epsilon']}), measured on {ex['measured_on']}; "
                     "the offline protocol does not run them.")
    lines.append(f"- Rank: {p['rank']}. Exclusion: {p['exclusion']}.")
    seen = {n: i.get("seen_in_top_k") for n, i in p["systems"].items() if i.get("seen_in_top_k")}
    if seen:
        lines.append(f"- Top-{k} lists holding an item the user had already interacted with: {seen}.")
    t = p["timing_s"]
    cached = f", {t['texts_from_cache']:,} of them from the cache" if t.get("texts_from_cache") else ""
    lines.append(f"- Time: {t.get('total')} s in all (load {t.get('load')} s, encode {t.get('encode', 0)} s for "
                 f"{t.get('texts_encoded', 0) + t.get('texts_from_cache', 0):,} texts{cached}, "
                 f"stream {t.get('stream')} s, offline {t.get('offline', 0)} s) on {os.cpu_count()} cores "
                 f"(a shared machine: timings are indicative).")
    return "\n".join(lines) + "\n"


def write_results(res: dict, out_dir: str | Path, *, run: StreamRun | None = None,
                  plot: bool = True) -> dict[str, Path]:
    """``eval-<dataset>.json`` / ``.md`` (and ``.png`` when ``run`` is given and ``plot``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{_safe_name(res['dataset'])}"
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(res, indent=2, default=_json_default) + "\n")
    paths["md"].write_text(to_markdown(res))
    if plot and run is not None and run.ranks:
        from .plots import plot_stream

        paths["png"] = plot_stream(run, out / f"{stem}.png", title=f"{res['dataset']}: prequential HR@{run.k}",
                                   random_hr=res["protocol"].get("random_hr@k"),
                                   aliases={"streamrec-untrained": "streamrec-untrained (= streamrec)"}
                                   if not res["protocol"]["retraining"] and "streamrec" in res["systems"] else None)
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ============================================================================================
# CLI
# ============================================================================================


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
    p.add_argument("--train-epochs", type=int, default=None, help="epochs per retrain (default: TrainConfig's)")
    p.add_argument("--train-holdout", type=float, default=None,
                   help="newest share of each retrain's events held back to accept or reject (default: TrainConfig's)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="comma-separated systems to run (default: %(default)s)")
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
    g.add_argument("--text-mix", type=float, default=d.update.text_mix,
                   help="share of the review-text vector in a review's event vector (default: %(default)s)")
    g.add_argument("--explore-share", type=float, default=EvalConfig.explore_share,
                   help="streamrec-explore-*: share of each list given to exploration (default: %(default)s)")
    g.add_argument("--explore-epsilon", type=float, default=EvalConfig.explore_epsilon,
                   help="streamrec-explore-epsilon: chance a slot takes a random candidate (default: %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    d = RecommenderConfig()
    rc = replace(d, popularity_half_life_s=args.popularity_half_life_days * 86400.0,
                 update=replace(d.update, half_life_s=args.half_life_days * 86400.0, text_mix=args.text_mix),
                 weights=replace(d.weights, popularity=args.popularity_weight))
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"streamrec evaluate: unknown system(s) {', '.join(bad)}; choose from {', '.join(SYSTEMS)}")
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
            from .trainer import PeriodicRetrainer, TrainConfig

            tc = TrainConfig()
            if args.train_epochs is not None:
                tc.epochs = args.train_epochs
            if args.train_holdout is not None:
                tc.holdout = args.train_holdout
            hook = PeriodicRetrainer(tc, window=args.train_window, replay_sample=args.train_window // 2,
                                     every=args.train_every)
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
    t = Table(title=f"{res['dataset']}: streaming (test-then-train), {res['events']['scored']:,} scored events")
    cols = [f"hr@{k}", f"ndcg@{k}", "mrr", "coverage", f"cold_hit@{k}"]
    t.add_column("system")
    for c in cols:
        t.add_column(c, justify="right")
    for n, m in res["systems"].items():
        t.add_row(n, *(_fmt(m.get(c)) for c in cols))
    con.print(t)
    off = res.get("offline")
    if off:
        cols = [f"hr@{k}", f"ndcg@{k}", "mrr", f"precision@{k}", f"recall@{k}", f"f1@{k}", f"map@{k}"]
        t = Table(title=f"{res['dataset']}: leave-last-out, {off['users']:,} users, full ranking")
        t.add_column("system")
        for c in cols:
            t.add_column(c, justify="right")
        for n, m in off["systems"].items():
            t.add_row(n, *(_fmt(m.get(c)) for c in cols))
        con.print(t)
    if not res["protocol"]["retraining"]:
        con.print(f"[yellow]retraining: false[/] — {res['protocol']['retraining_note']}")
    leak = res["protocol"]["item_text_source"].get("leakage")
    if leak:
        con.print(f"[yellow]item text:[/] {leak}")


if __name__ == "__main__":
    sys.exit(main())
