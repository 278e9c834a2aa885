"""The systems an evaluation compares: streamrec behind the baseline interface, and building
them all by name."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, astuple, dataclass, field, replace
from typing import Any

import numpy as np

from inference.events import Event
from inference.explore import ExploreConfig
from inference.index import ItemIndex
from inference.ranking import LinearHead
from inference.recommender import ActiveModel, RankRequest, Recommender, RecommenderConfig
from inference.seen import KeyLookup, item_keys
from inference.vectors import top_k_rows

from .baselines import ALSBaseline, CooccurrenceKNN, PopularityBaseline, System
from .text import ItemTextPlan

SYSTEMS: tuple[str, ...] = ("streamrec", "streamrec-untrained", "popularity", "cooccurrence-knn", "als", "sasrec",
                             "streamrec-explore-thompson", "streamrec-explore-epsilon")
#: streamrec-untrained with exploration on: streaming protocol only, measured on the served lists
EXPLORE_SYSTEMS: tuple[str, ...] = ("streamrec-explore-thompson", "streamrec-explore-epsilon")
#: streamrec retrained with the sequence encoder reading only the items' text ("text-only") or
#: only learned id vectors ("id-only"): what the text encoder adds is the gap to "streamrec"
#: (text and ids). Not run unless asked for (``--ablations``): each is one more training chain.
ABLATION_SYSTEMS: dict[str, dict] = {"streamrec-text-only": {"use_id": False},
                                     "streamrec-id-only": {"use_text": False}}

#: ``retrain(recommender, events_so_far[, text_vecs=...]) -> None``: refit whatever the training
#: code fits and switch the recommender to it (``recommender.use_model``). Called every
#: ``retrain_every`` events in the streaming run, once on the training part offline. The
#: default is :class:`training.trainer.PeriodicRetrainer`, what ``streamrec train`` runs.
RetrainHook = Callable[[Recommender, Sequence[Event]], None]

RETRAINING_NOTE = ("no retrain hook was given (--retrain-hook none), so 'streamrec' is the untrained "
                   "recommender (identical to 'streamrec-untrained'); nothing is refitted")



class StreamState:
    """What a streamrec system follows from the stream, apart from how it ranks: the user
    states, the item index (catalogue vectors up front, ``history_items`` joining at their first
    review with text) and item popularity, all updated by :meth:`Recommender.observe`.

    Several systems that differ only in how they rank (model version, blend weights,
    exploration) but apply events alike (same ``UpdateConfig`` and popularity half-life) share
    one, so each event is applied once for all of them (:func:`build_systems` groups them).
    Members must observe the same events in the same order, interleaved (the streaming replay)
    or one after the other (the offline protocol); a member ranks with the state once it has
    observed every event applied so far.
    """

    def __init__(self, item_ids: Sequence[str], dim: int, *, item_vectors: dict[str, np.ndarray] | None = None,
                 history_items: Iterable[str] = (), text_vecs: dict[str, np.ndarray] | None = None,
                 config: RecommenderConfig | None = None) -> None:
        config = config or RecommenderConfig()
        self.item_ids = list(item_ids)
        self.pos = {i: k for k, i in enumerate(self.item_ids)}
        self.index = ItemIndex(dim, capacity=max(1024, len(self.item_ids)))
        # the update rule without exploration: each member rewards its own policy
        self.rec = Recommender(self.index, config=replace(config, explore=ExploreConfig()))
        self.popularity = self.rec.popularity
        self.cooccurrence = self.rec.cooccurrence
        self.states: dict[str, Any] = {}
        self.text_vecs = text_vecs or {}
        self.history_items = set(history_items)
        self._sums: dict[str, np.ndarray] = {}
        self.u_of_row = np.full(max(1024, len(self.item_ids)), -1, dtype=np.int64)
        self.log: list[tuple[Event, str]] = []  # every event applied, and how: "known" | "unknown" | "duplicate"
        self._at: dict[int, int] = {}  # id(member) -> how far into the log it has observed
        self.members: list[StreamrecSystem] = []
        # members that rank alike (same version, head, weights, exclusion: the untrained system
        # and its exploring twins) share each request and each block's product (see ``request``)
        self._requests: dict[tuple, Any] = {}
        self._requests_at = -1
        self._products: list[tuple[tuple, list, np.ndarray, np.ndarray]] = []
        if item_vectors:
            ids = [i for i in self.item_ids if i in item_vectors]
            if ids:
                self.index.upsert_many(ids, np.stack([item_vectors[i] for i in ids]))
                self._map_rows(ids)
        self.identity = len(self.index) == len(self.item_ids) and all(
            self.u_of_row[r] == r for r in range(len(self.item_ids)))

    def applies_like(self, config: RecommenderConfig) -> bool:
        """Whether a system with ``config`` would apply every event exactly as this state does."""
        return config.update == self.rec.config.update and \
            config.popularity_half_life_s == self.rec.config.popularity_half_life_s

    def join(self, member: StreamrecSystem) -> None:
        if self.log:
            raise ValueError("a system joins a stream state before any event is applied")
        self.members.append(member)
        self._at[id(member)] = 0

    def caught_up(self, member: StreamrecSystem) -> bool:
        return self._at.get(id(member), 0) == len(self.log)

    def observe(self, member: StreamrecSystem, event: Event) -> str:
        """Apply ``event`` (once for all members) and say how: "duplicate" (already applied to
        its user: nothing changes), "unknown" (item not in the index: text signal only) or "known"."""
        at = self._at[id(member)]
        if at < len(self.log):
            seen, how = self.log[at]
            if seen is not event:
                raise ValueError("systems sharing a stream state must observe the same events in the same order")
        else:
            how = self._apply(event)
            self.log.append((event, how))
        self._at[id(member)] = at + 1
        return how

    def _apply(self, event: Event) -> str:
        state = self.states.get(event.user_id)
        if state is None:
            state = self.states[event.user_id] = self.rec.new_state()
        if state.has_seen(event.event_id):  # the worker's duplicate rule
            return "duplicate"
        text_vec = self.text_vecs.get(event.event_id) if event.event_id is not None else None
        if text_vec is not None and not np.any(text_vec):
            text_vec = None
        item = event.item_id
        if item in self.history_items and text_vec is not None:
            total = self._sums.get(item)
            total = text_vec.astype(np.float32).copy() if total is None else total + text_vec
            self._sums[item] = total
            new = item not in self.index
            for m in self.members:
                m._score_open()  # requests taken before this change rank with the index they saw
            self._products = []
            self.index.upsert(item, total)  # upsert normalises: the mean's direction
            if new:
                self._map_rows([item])
        how = "known" if item in self.index else "unknown"
        self.rec.observe(state, event, text_vec)
        return how

    def request(self, member: StreamrecSystem, user_id: str, model: ActiveModel) -> RankRequest:
        """``member.rec.request`` for the user now; members that rank alike get the very same
        request object, taken once (requests have no side effects, and at one point of the log
        every member sees the same state, index and popularity)."""
        at = len(self.log)
        if at != self._requests_at:
            self._requests.clear()
            self._requests_at = at
        key = (user_id, member.ranks_like(model))
        req = self._requests.get(key)
        if req is None:
            req = self._requests[key] = member.rec.request(self.states.get(user_id), model)
        return req

    def product(self, member: StreamrecSystem, model: ActiveModel, requests: list[RankRequest]
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, universe)`` scores of ``requests`` under ``model``: computed once for members
        that rank alike and rank the very same requests (the index cannot change in between:
        :meth:`_apply` has every member rank its open requests before it changes the index)."""
        key = member.ranks_like(model)
        for k, reqs, rows, block in self._products:
            if k == key and len(reqs) == len(requests) and all(a is b for a, b in zip(reqs, requests)):
                return rows, block
        rows = member.rec.score_requests(requests, model)
        block = member._to_universe(rows)
        self._products = [(key, list(requests), rows, block)] + self._products[:1]
        return rows, block

    def _map_rows(self, ids: Iterable[str]) -> None:
        for i in ids:
            row = self.index.row(i)
            if row >= len(self.u_of_row):
                grown = np.full(max(2 * len(self.u_of_row), row + 1), -1, dtype=np.int64)
                grown[: len(self.u_of_row)] = self.u_of_row
                self.u_of_row = grown
            self.u_of_row[row] = self.pos[i]


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

    States, index and popularity live in a :class:`StreamState`, shared with the other
    streamrec systems of a run that apply events alike (``streams``); this system's own
    :class:`Recommender` ranks over them with its own version, weights and exploration.
    """

    def __init__(self, item_ids: Sequence[str], dim: int, *, name: str = "streamrec-untrained",
                 item_vectors: dict[str, np.ndarray] | None = None, history_items: Iterable[str] = (),
                 text_vecs: dict[str, np.ndarray] | None = None, config: RecommenderConfig | None = None,
                 head: LinearHead | None = None, retrain_hook: RetrainHook | None = None,
                 streams: StreamState | None = None) -> None:
        super().__init__(item_ids)
        self.name = name
        config = config or RecommenderConfig()
        if streams is None or not streams.applies_like(config) or streams.item_ids != self.item_ids:
            streams = StreamState(self.item_ids, dim, item_vectors=item_vectors, history_items=history_items,
                                  text_vecs=text_vecs, config=config)
        self.streams = streams
        streams.join(self)
        self.index = streams.index
        self.rec = Recommender(self.index, config=config, head=head, popularity=streams.popularity,
                               cooccurrence=streams.rec.cooccurrence)
        self.states: dict[str, Any] = streams.states
        self.text_vecs = streams.text_vecs
        self.history_items = streams.history_items
        self.retrain_hook = retrain_hook
        self.needs_retraining = retrain_hook is not None
        self.retrains = 0
        self.unknown_item_events = 0
        self.duplicates = 0
        self._universe_keys = KeyLookup(item_keys(self.item_ids), np.arange(self.n_items))
        self._open: list[_Ticket] = []  # requests not ranked yet (see request)
        self._alike: tuple[ActiveModel, tuple] | None = None

    def ranks_like(self, model: ActiveModel) -> tuple:
        """:func:`_ranks_alike` for ``model``, kept until the model changes (it is asked per event)."""
        if self._alike is None or self._alike[0] is not model:
            self._alike = (model, _ranks_alike(self.rec, model))
        return self._alike[1]

    def observe(self, event: Event) -> None:
        how = self.streams.observe(self, event)
        if how == "duplicate":
            self.duplicates += 1
            return
        if how == "unknown":
            self.unknown_item_events += 1
        self._clicked(event)
        if event.item_id in self.pos:
            self._remember(event.user_id, self.pos[event.item_id])

    def _clicked(self, event: Event) -> None:
        """What :meth:`Recommender.observe` does for this system's own exploration policy (the
        shared state was updated without one): a click on a list served earlier is a reward."""
        if self.rec.explorer is not None:
            self.rec.explorer.clicked(event.user_id, event.item_id)

    def _check(self) -> None:
        if not self.streams.caught_up(self):
            raise RuntimeError(f"{self.name} ranks before observing every event its shared stream state has applied")

    def scores(self, user_id: str) -> np.ndarray:
        self._check()
        total, _ = self.rec.score_all(self.states.get(user_id))
        return self._to_universe(total[None, :])[0]

    def _to_universe(self, total: np.ndarray) -> np.ndarray:
        """Index-row scores (users x rows) as universe-position scores (users x items)."""
        if self.streams.identity and total.shape[1] == self.n_items:
            return total  # every item indexed up front, in universe order: row == position
        out = np.full((len(total), self.n_items), -np.inf, dtype=np.float32)
        rows = np.flatnonzero(self.index.alive)
        out[:, self.streams.u_of_row[rows]] = total[:, rows]
        return out

    # -- a block of events ranked together, as the worker ranks a chunk --------------------
    def request(self, user_id: str) -> _Ticket:
        """:meth:`Recommender.request` for the user now (vector, seen items and popularity of
        this moment, the active version); ranked with the rest of the block by
        :meth:`score_requests` (:meth:`Recommender.score_requests`: one matrix product)."""
        self._check()
        model = self.rec.active
        ticket = _Ticket(model, self.streams.request(self, user_id, model), user_id)
        self._open.append(ticket)
        return ticket

    def score_requests(self, requests: Sequence[_Ticket]) -> np.ndarray:
        if any(t.scores is None for t in requests):
            self._score_open()
        if not requests:
            return np.zeros((0, self.n_items), np.float32)
        block = requests[0].block
        if block is not None and len(block) == len(requests) and all(
                t.block is block and t.at == i for i, t in enumerate(requests)):
            return block  # the usual case: the block was ranked in one product, in this order
        return np.stack([t.scores for t in requests])

    def _score_open(self) -> None:
        """Rank every open request now (before the index changes, a version swap, or when
        asked): consecutive requests for the same version in one product."""
        todo, self._open = [t for t in self._open if t.scores is None], []
        start = 0
        while start < len(todo):
            model = todo[start].model
            end = start
            while end < len(todo) and todo[end].model is model:
                end += 1
            part = todo[start:end]
            rows, block = self.streams.product(self, model, [t.request for t in part])
            for i, t in enumerate(part):
                t.scores, t.rows, t.block, t.at = block[i], rows[i], block, i
            start = end
        if todo:
            self._ranked(todo)

    def _ranked(self, tickets: list[_Ticket]) -> None:
        """Hook: ``tickets`` were just ranked (``rows``: their index-row scores)."""

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
        self._score_open()  # open requests belong to the version they were made for
        if self.retrain_hook is not None:
            if "text_vecs" in inspect.signature(self.retrain_hook).parameters:
                self.retrain_hook(self.rec, events_so_far, text_vecs=self.text_vecs)
            else:  # a two-argument hook (recommender, events)
                self.retrain_hook(self.rec, events_so_far)
            self._alike = None  # the hook may have changed the weights or the version in place
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
    on one of its items is the policy's reward (inside :meth:`Recommender.observe`).

    Ranked a block at a time (:meth:`request` with ``n``, then :meth:`score_requests`), the
    policy still sees everything in event order: the candidates of each request come from
    the block's product, and the picks (:meth:`Recommender.serve`) and rewards
    (``Explorer.clicked``) are replayed in the order the events came, when the block is ranked
    (``Ticket.served``)."""

    serves_in_blocks = True  # replay: request(user, n=...), then Ticket.served once ranked

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._policy: list[tuple] = []  # ("serve", ticket) / ("click", user, item), in event order

    def served(self, user_id: str, k: int) -> np.ndarray:
        """Universe positions of the Top-``k`` as served, in list order."""
        self._score_open()
        ids = self.rec.recommend(self.states.get(user_id), k, user_id=user_id).item_ids
        return self._positions(ids)

    def _positions(self, ids: Sequence[str]) -> np.ndarray:
        return np.asarray([self.pos[i] for i in ids if i in self.pos], dtype=np.int64)

    def request(self, user_id: str, n: int | None = None) -> _Ticket:
        ticket = super().request(user_id)
        ticket.n = n
        self._policy.append(("serve", ticket))
        return ticket

    def _clicked(self, event: Event) -> None:
        if self._policy:  # lists served before this event are not picked yet: the reward waits for them
            self._policy.append(("click", event.user_id, event.item_id))
        else:
            super()._clicked(event)

    def _ranked(self, tickets: list[_Ticket]) -> None:
        by_n: dict[int | None, list[_Ticket]] = {}
        for t in tickets:
            by_n.setdefault(t.n, []).append(t)
        for n, group in by_n.items():  # each request's ranked candidates, as Ranker.recommend picks them
            index = group[0].model.ranker.index
            rows = np.stack([t.rows for t in group])
            best = top_k_rows(rows, min(self.rec.wide_length(n), len(index)))
            finite = np.isfinite(np.take_along_axis(rows, best, 1))
            id_at = index.id_at
            for t, b, f in zip(group, best.tolist(), finite.tolist()):
                t.wide = [id_at(r) for r, ok in zip(b, f) if ok]
        # every open request is ranked now: the policy catches up, in event order
        explorer = self.rec.explorer
        for step in self._policy:
            if step[0] == "serve":
                t = step[1]
                t.served = self._positions(self.rec.serve(t.wide, t.n, user_id=t.user_id))
            elif explorer is not None:
                explorer.clicked(step[1], step[2])
        self._policy = []

    def config(self) -> dict:
        out = super().config()
        ex = self.rec.explorer
        out["exploration"] = {"explored_slots": ex.explored, "rewarded_clicks": ex.rewarded} if ex else None
        return out


@dataclass(slots=True)
class _Ticket:
    """One :meth:`StreamrecSystem.request`: the worker's request, and once ranked its scores."""

    model: ActiveModel  # the version it was made for
    request: RankRequest
    user_id: str
    scores: np.ndarray | None = None  # universe positions, excluded items at -inf
    rows: np.ndarray | None = None  # the same, per index row
    block: np.ndarray | None = None  # the matrix ``scores`` is a row of
    at: int = 0
    n: int | None = None  # exploring systems: the list length served
    wide: list[str] | None = None  # exploring systems: the ranked candidates
    served: np.ndarray | None = None  # exploring systems: universe positions as served


def _ranks_alike(rec: Recommender, model: ActiveModel) -> tuple:
    """What a request and its product depend on besides the shared stream state: two members
    with equal keys rank every user identically (exploration only changes what is served)."""
    ranker = model.ranker
    return (model.version, id(model.params), id(model.space), id(ranker.index), id(ranker.popularity),
            id(ranker.head), astuple(ranker.weights), rec.config.repeats)


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
    sasrec: dict = field(default_factory=dict)  # evaluation.sasrec.SASRecBaseline arguments
    explore_share: float = 0.2  # streamrec-explore-*: share of each list given to exploration
    explore_epsilon: float = 0.1  # streamrec-explore-epsilon: chance a slot goes to a random candidate


def build_systems(names: Sequence[str], item_ids: Sequence[str], *, dim: int | None = None,
                  plan: ItemTextPlan | None = None, item_vecs: dict[str, np.ndarray] | None = None,
                  text_vecs: dict[str, np.ndarray] | None = None, cfg: EvalConfig | None = None,
                  retrain_hook: RetrainHook | None = None,
                  total_events: int | None = None) -> tuple[dict[str, System], dict[str, str]]:
    """Fresh systems by name. Returns ``(systems, skipped)``; ``skipped`` says why a system is
    not run (e.g. ``streamrec`` without a retrain hook is the same as ``streamrec-untrained``)."""
    cfg = cfg or EvalConfig()
    out: dict[str, System] = {}
    skipped: dict[str, str] = {}
    streams: list[StreamState | None] = [None]  # the streamrec systems' shared state (see StreamState)

    def shared(config: RecommenderConfig) -> StreamState:
        if streams[0] is None or not streams[0].applies_like(config):
            streams[0] = StreamState(item_ids, dim, item_vectors=item_vecs,
                                     history_items=plan.history if plan is not None else (), text_vecs=text_vecs,
                                     config=config)
        return streams[0]

    for name in names:
        if name in ABLATION_SYSTEMS:
            variant = getattr(retrain_hook, "variant", None)
            if variant is None:
                skipped[name] = ("an ablation of the sequence encoder's inputs needs the trainer's retrain hook "
                                 "(training.trainer.PeriodicRetrainer)")
                continue
            rc = _copy_config(cfg.recommender)
            out[name] = StreamrecSystem(
                item_ids, dim, name=name, item_vectors=item_vecs,
                history_items=plan.history if plan is not None else (), text_vecs=text_vecs,
                config=rc, retrain_hook=variant(**ABLATION_SYSTEMS[name]), streams=shared(rc))
            continue
        if name in ("streamrec", "streamrec-untrained"):
            if name == "streamrec" and retrain_hook is None:
                skipped[name] = RETRAINING_NOTE
                continue
            if dim is None:
                raise ValueError("streamrec systems need the encoder dimension (dim)")
            rc = _copy_config(cfg.recommender)
            out[name] = StreamrecSystem(
                item_ids, dim, name=name, item_vectors=item_vecs,
                history_items=plan.history if plan is not None else (), text_vecs=text_vecs,
                config=rc, retrain_hook=retrain_hook if name == "streamrec" else None, streams=shared(rc))
        elif name in EXPLORE_SYSTEMS:
            if dim is None:
                raise ValueError("streamrec systems need the encoder dimension (dim)")
            rc = _copy_config(cfg.recommender)
            rc.explore = ExploreConfig(share=cfg.explore_share, policy=name.rsplit("-", 1)[1],
                                       epsilon=cfg.explore_epsilon, seed=cfg.seed)
            out[name] = ExploringStreamrecSystem(
                item_ids, dim, name=name, item_vectors=item_vecs,
                history_items=plan.history if plan is not None else (), text_vecs=text_vecs, config=rc,
                streams=shared(rc))
        elif name == "popularity":
            out[name] = PopularityBaseline(item_ids, half_life_s=cfg.popularity_half_life_s)
        elif name == "cooccurrence-knn":
            try:
                out[name] = CooccurrenceKNN(item_ids, popularity_half_life_s=cfg.popularity_half_life_s, **cfg.knn)
            except MemoryError as exc:
                skipped[name] = str(exc)
        elif name == "als":
            out[name] = ALSBaseline(item_ids, popularity_half_life_s=cfg.popularity_half_life_s, **cfg.als)
        elif name == "sasrec":  # optional: the `baselines` extra (RecTools)
            from .sasrec import SASRecBaseline, unavailable_reason

            reason = unavailable_reason()
            if reason is not None:
                skipped[name] = reason
                continue
            out[name] = SASRecBaseline(item_ids, total_events=total_events, seed=cfg.seed,
                                       popularity_half_life_s=cfg.popularity_half_life_s, **cfg.sasrec)
        else:
            raise ValueError(f"unknown system {name!r}: choose from {', '.join(SYSTEMS + tuple(ABLATION_SYSTEMS))}")
    return out, skipped


def _copy_config(c: RecommenderConfig) -> RecommenderConfig:
    return replace(c, update=replace(c.update), weights=replace(c.weights))
