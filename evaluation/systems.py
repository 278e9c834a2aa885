"""The systems an evaluation compares: streamrec behind the baseline interface, and building
them all by name."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from inference.events import Event
from inference.explore import ExploreConfig
from inference.index import ItemIndex
from inference.ranking import LinearHead
from inference.recommender import Recommender, RecommenderConfig
from inference.seen import KeyLookup, item_keys

from .baselines import ALSBaseline, CooccurrenceKNN, PopularityBaseline, System
from .text import ItemTextPlan

SYSTEMS: tuple[str, ...] = ("streamrec", "streamrec-untrained", "popularity", "cooccurrence-knn", "als",
                             "streamrec-explore-thompson", "streamrec-explore-epsilon")
#: streamrec-untrained with exploration on: streaming protocol only, measured on the served lists
EXPLORE_SYSTEMS: tuple[str, ...] = ("streamrec-explore-thompson", "streamrec-explore-epsilon")

#: ``retrain(recommender, events_so_far[, text_vecs=...]) -> None``: refit whatever the training
#: code fits and switch the recommender to it (``recommender.use_model``). Called every
#: ``retrain_every`` events in the streaming run, once on the training part offline. The
#: default is :class:`training.trainer.PeriodicRetrainer`, what ``streamrec train`` runs.
RetrainHook = Callable[[Recommender, Sequence[Event]], None]

RETRAINING_NOTE = ("no retrain hook was given (--retrain-hook none), so 'streamrec' is the untrained "
                   "recommender (identical to 'streamrec-untrained'); nothing is refitted")



class StreamrecSystem(System):
    """The worker's recommender behind the baseline interface.

    One :class:`UserState` per user; every event goes through :meth:`Recommender.observe` (with
    the review's text vector, as the worker encodes it) and :meth:`scores` is
    ``Recommender.ranker.score_all`` -- what :meth:`Recommender.recommend` ranks -- with the
    worker's exclusion (:meth:`excluded`: the state's seen items). :meth:`recommend_worker`
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
        self._universe_keys = KeyLookup(item_keys(self.item_ids), np.arange(self.n_items))
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
        """Universe positions of what the worker leaves out of this user's list: every item in
        the state's seen-items set (:meth:`Recommender.request`'s exclusion), none with repeats."""
        state = self.states.get(user_id)
        keys = self.rec.exclusion(state)
        if not len(keys):
            return np.empty(0, dtype=np.int64)
        return self._universe_keys.rows_of(keys)

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
