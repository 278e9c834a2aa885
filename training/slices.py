"""Replaying events with the workers' own update, and measuring versions on a slice of them.

* :func:`replay_events` / :func:`replay_marks` / :func:`training_pairs`: the events applied in order through
  :meth:`inference.recommender.Recommender.observe` (what the workers run), keeping the states,
  popularity and co-occurrence at chosen points (:class:`ReplayState`) so a later replay can
  start there;
* :func:`evaluate_slice`: NDCG@k / HR@k of one or more versions on held-out events,
  test-then-train after a context, ranked as the worker ranks a chunk: the acceptance test
  every version has to pass, and what the recipes pick their blend on.

Example::

    scores = evaluate_slice(train, held, item_ids, item_vecs, text_vecs, {"candidate": params, "current": None})
    scores["candidate"]["ndcg"]
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from inference.cooccur import Cooccurrence
from inference.events import Event
from inference.index import ItemIndex
from inference.model import ModelParams
from inference.ranking import Popularity, Weights
from inference.recommender import ActiveModel, Recommender, RecommenderConfig
from inference.user import UpdateConfig, UserState



def catalogue(item_ids: Sequence[str], item_vecs: np.ndarray) -> tuple[ItemIndex, list[str], np.ndarray]:
    """The index a worker would hold for these items, its ids in row order and their (unit)
    vectors in that order: what a recipe fits over."""
    index = build_index([str(i) for i in item_ids], np.asarray(item_vecs, np.float32))
    ids = index.ids()
    V = index.matrix[[index.row(i) for i in ids]].copy() if ids else np.zeros((0, index.dim), np.float32)
    return index, ids, V


def build_index(item_ids: Sequence[str], item_vecs: np.ndarray) -> ItemIndex:
    index = ItemIndex(item_vecs.shape[1], capacity=max(1024, len(item_ids)))
    keep = [k for k in range(len(item_ids)) if np.any(item_vecs[k])]
    if keep:
        index.upsert_many([item_ids[k] for k in keep], item_vecs[keep])
    return index


def replay_events(rec: Recommender, states: dict[str, UserState], events: Sequence[Event],
                  text_vecs: dict[str, np.ndarray],
                  on_event: Callable[[Event, UserState], None] | None = None) -> None:
    """Apply ``events`` in order with the workers' update (duplicates by event id skipped);
    ``on_event(event, state_before)`` is called first for each accepted event."""
    for ev in events:
        state = states.get(ev.user_id)
        if state is None:
            state = states[ev.user_id] = rec.new_state()
        if state.has_seen(ev.event_id):
            continue
        if on_event is not None:
            on_event(ev, state)
        tv = text_vecs.get(ev.event_id) if ev.event_id is not None else None
        rec.observe(state, ev, tv)


@dataclass
class ReplayState:
    """User states and item popularity after replaying some events with the workers' update
    (``update``, popularity half-life ``half_life_s``): a replay that needs them again starts
    from a copy (:meth:`restore`) instead of replaying the same events once more."""

    states: dict[str, UserState]
    popularity: Popularity
    update: UpdateConfig
    half_life_s: float
    cooccurrence: Cooccurrence | None = None
    #: the index the events were replayed over, and the ids and vectors it was built from
    index: ItemIndex | None = field(default=None, repr=False)
    item_ids: list[str] | None = field(default=None, repr=False)
    item_vecs: np.ndarray | None = field(default=None, repr=False)
    #: how many events were replayed, and the last of them (the very object): a later replay
    #: of a longer list that starts with the same events can go on from here (:meth:`covers`)
    upto: int = 0
    last: Event | None = field(default=None, repr=False, compare=False)
    first: Event | None = field(default=None, repr=False, compare=False)
    #: where the replay that made these states started (0: from nothing; else an earlier
    #: replay's ``upto`` it went on from)
    resumed_from: int = 0

    @classmethod
    def take(cls, rec: Recommender, states: dict[str, UserState], events: Sequence[Event] = (),
             upto: int = 0) -> ReplayState:
        return cls(copy.deepcopy(states), Popularity.from_state(rec.popularity.state()),
                   replace(rec.config.update), rec.popularity.half_life_s, rec.cooccurrence.copy(),
                   upto=upto, last=events[upto - 1] if upto else None, first=events[0] if upto else None)

    def covers(self, events: Sequence[Event]) -> bool:
        """Whether these states are those after ``events[:self.upto]``: the list is at least that
        long and holds the very event objects this replay started and ended with at those places
        (events are never changed once made; a caller that grows one list, such as the periodic
        retrainer, passes the same objects again)."""
        return (0 < self.upto <= len(events) and events[self.upto - 1] is self.last
                and events[0] is self.first)

    def fits(self, config: RecommenderConfig) -> bool:
        """Whether a replay under ``config`` would have built these very states."""
        return self.update == config.update and self.half_life_s == config.popularity_half_life_s

    def restore(self) -> tuple[dict[str, UserState], Popularity, Cooccurrence | None]:
        co = self.cooccurrence.copy() if self.cooccurrence is not None else None
        return copy.deepcopy(self.states), Popularity.from_state(self.popularity.state()), co

    def index_for(self, item_ids: list[str], item_vecs: np.ndarray) -> ItemIndex | None:
        """The replay's index if it holds exactly these items and vectors (nothing changes an
        index while a slice is replayed, so it can serve again), else None."""
        if self.index is None or self.item_ids != item_ids:
            return None
        same = self.item_vecs is item_vecs or (self.item_vecs.shape == item_vecs.shape
                                               and np.array_equal(self.item_vecs, item_vecs))
        return self.index if same else None


@dataclass
class Pairs:
    """Training pairs: the user just before each positive event, and the event's item."""

    users: np.ndarray  # (n, dim) encoder-space unit vectors
    items: list[str]
    where: np.ndarray  # (n,) the event's position in the events given
    histories: list[dict[str, float]]  # the user's recent items and signed weights then
    #: position in the events -> the states and popularity after replaying the events before it
    replayed: dict[int, ReplayState] = field(default_factory=dict)


def replay_marks(events: Sequence[Event], item_ids: list[str], item_vecs: np.ndarray,
                 text_vecs: dict[str, np.ndarray], marks: Sequence[int], *, index: ItemIndex | None = None,
                 resume: ReplayState | None = None) -> dict[int, ReplayState]:
    """The states after ``events[:m]`` for each mark ``m``, replayed with the workers' default
    update over the index of ``item_ids``/``item_vecs`` (``index``, when the caller built it).

    ``resume``: an earlier replay's state to go on from instead of replaying its events again,
    used when it :meth:`~ReplayState.covers` a prefix of ``events`` over the same items and
    vectors and no mark comes before it (else the replay starts from nothing). The periodic
    retrainer's window only grows, so each retrain replays only what came since the last one;
    the states are the same either way (``tests/training/test_replay_resume.py``)."""
    config = RecommenderConfig()
    states: dict[str, UserState] = {}
    popularity = co = None
    done = 0
    if (resume is not None and resume.covers(events) and resume.fits(config)
            and all(m >= resume.upto for m in marks) and resume.index_for(item_ids, item_vecs) is not None):
        states, popularity, co = resume.restore()
        index, done = resume.index, resume.upto
    start = done
    index = index if index is not None else build_index(item_ids, item_vecs)
    rec = Recommender(index, config=config, popularity=popularity, cooccurrence=co)
    replayed, _ = _replay_to_marks(rec, states, events, text_vecs, marks, done)
    for r in replayed.values():
        r.index, r.item_ids, r.item_vecs, r.resumed_from = index, item_ids, item_vecs, start
    return replayed


def _replay_to_marks(rec: Recommender, states: dict[str, UserState], events: Sequence[Event],
                     text_vecs: dict[str, np.ndarray], marks: Sequence[int], done: int = 0,
                     on_event: Callable[[Event, UserState], None] | None = None,
                     ) -> tuple[dict[int, ReplayState], int]:
    """Replay ``events[done:]`` up to the last mark, keeping the state at each mark; returns
    them and where the replay stopped."""
    replayed: dict[int, ReplayState] = {}
    for mark in sorted({min(max(int(m), done), len(events)) for m in marks}):
        replay_events(rec, states, events[done:mark], text_vecs, on_event)
        replayed[mark], done = ReplayState.take(rec, states, events, mark), mark
    return replayed, done


def training_pairs(events: Sequence[Event], index: ItemIndex, text_vecs: dict[str, np.ndarray],
                   update=None, marks: Sequence[int] = ()) -> Pairs:
    """The pairs of ``events`` for users with history, replayed with the workers' update;
    ``marks``: positions at which to keep the replay's state (``Pairs.replayed``)."""
    rec = Recommender(index, config=RecommenderConfig(update=update) if update else None)
    users: list[np.ndarray] = []
    items: list[str] = []
    where: list[int] = []
    histories: list[dict[str, float]] = []
    position = {id(ev): k for k, ev in enumerate(events)}

    def take(ev: Event, state: UserState) -> None:
        if ev.item_id not in index or rec.config.update.sign(ev.rating) <= 0:
            return
        u = state.unit()
        if u is not None:
            users.append(u)
            items.append(ev.item_id)
            where.append(position[id(ev)])
            histories.append(state.item_weights())

    states: dict[str, UserState] = {}
    replayed, done = _replay_to_marks(rec, states, events, text_vecs, marks, on_event=take)
    replay_events(rec, states, events[done:], text_vecs, take)
    U = np.stack(users) if users else np.zeros((0, index.dim), np.float32)
    return Pairs(U, items, np.asarray(where, np.int64), histories, replayed)


#: Held-out events :func:`evaluate_slice` ranks in one matrix product (per model space)
SLICE_BLOCK = 128


def evaluate_slice(context: Sequence[Event], held_out: Sequence[Event], item_ids: Sequence[str],
                   item_vecs: np.ndarray, text_vecs: dict[str, np.ndarray],
                   models: dict[str, ModelParams | None], *, k: int = 10,
                   config: RecommenderConfig | None = None, start: ReplayState | None = None,
                   collect: Callable[[ActiveModel, list, np.ndarray], None] | None = None,
                   score_if: Callable[[Event], bool] | None = None) -> dict[str, dict]:
    """NDCG@k / HR@k of each model on ``held_out``, test-then-train, after ``context``.

    User state and popularity are model-independent, so one replay serves every model: for
    each held-out event each model ranks all items (the user's seen items excluded, as
    the worker does), then the event is applied. Repeats (an item the user already
    interacted with) are not scored, as in ``streamrec evaluate``.

    Ranked as the worker ranks a chunk: a :meth:`Recommender.request` per event (the user,
    exclusions and popularity of that moment), then :meth:`Recommender.score_requests`-style
    matrices for a block of events at once. Models that differ only in their blend weights
    (the trainer's weight grid) share one scoring space and one product. ``start``: the
    states and popularity after ``context`` (:class:`ReplayState`), when the caller has them.
    ``collect(model, requests, target_rows)``: called for each block instead of ranking it (the
    sequence recipe fits its blend on the parts of each request). ``score_if(event)``: score only
    the held-out events it accepts (all are applied).
    """
    ids, vecs = [str(i) for i in item_ids], np.asarray(item_vecs, np.float32)
    config = config or RecommenderConfig()
    states: dict[str, UserState] = {}
    popularity = index = co = None
    if start is not None and start.fits(config):
        index = start.index_for(ids, vecs)
        if index is not None:
            states, popularity, co = start.restore()
    if index is None:
        index = build_index(ids, vecs)
    rec = Recommender(index, config=config, popularity=popularity, cooccurrence=co)
    groups = _share_spaces(rec, models)
    if popularity is None:
        replay_events(rec, states, context, text_vecs)
    sums = {name: [0.0, 0.0] for name in models}
    scored = 0
    pending: list[tuple[int, list]] = []  # (target row, one request per group)

    def rank_block() -> None:
        targets = np.asarray([t for t, _ in pending], np.int64)
        at = np.arange(len(pending))
        for g, (model, members) in enumerate(groups):
            reqs = [r[g] for _, r in pending]
            layout = model.ranker.index.version
            model.encode(reqs)  # a sequence version: one encoder call for the block
            if collect is not None:
                collect(model, reqs, targets)
                continue
            totals = model.ranker.score_matrix(
                [r.user for r in reqs], excludes=[r.exclude for r in reqs],
                popularity=[r.popularity if r.layout == layout else None for r in reqs],
                weights=[w for _, w in members], texts=[r.text for r in reqs], cooc=[r.cooc for r in reqs])
            for (name, _), total in zip(members, totals):
                t = total[at, targets][:, None]
                higher = np.count_nonzero(total > t, axis=1)
                equal = np.count_nonzero(total == t, axis=1)
                for h, e in zip(higher.tolist(), equal.tolist()):
                    rank = 1.0 + float(h) + (float(e) - 1.0) / 2.0  # ties: mean rank
                    if rank <= k:
                        sums[name][0] += 1.0 / math.log2(rank + 1)
                        sums[name][1] += 1.0
        pending.clear()

    def score(ev: Event, state: UserState) -> None:
        nonlocal scored
        if ev.item_id not in index or state.has_interacted(ev.item_id) or (score_if is not None and not score_if(ev)):
            return
        scored += 1
        user = state if state.count else None
        reqs = [rec.request(user, model) for model, _ in groups]
        for r, (model, members) in zip(reqs, groups):  # co-occurrence for every member that blends it in
            if r.cooc is None and any(w.cooccurrence for _, w in members):
                r.cooc = rec._cooc(user, model, force=True)
        pending.append((index.row(ev.item_id), reqs))
        if len(pending) >= SLICE_BLOCK:
            rank_block()

    replay_events(rec, states, held_out, text_vecs, score)
    if pending:
        rank_block()
    for model, _ in groups:
        if model.space is not None:
            model.space.close()
    return {name: {"ndcg": round(s[0] / scored, 5) if scored else 0.0,
                   "hit_rate": round(s[1] / scored, 5) if scored else 0.0, "events": scored}
            for name, s in sums.items()}


def _share_spaces(rec: Recommender, models: dict[str, ModelParams | None],
                  ) -> list[tuple[ActiveModel, list[tuple[str, Weights]]]]:
    """Models grouped by everything but their blend weights: one prepared model (scoring
    space) per group, with each member's name and weights."""
    groups: dict[tuple, tuple[ActiveModel, list[tuple[str, Weights]]]] = {}
    for name, p in models.items():
        if p is None:
            key: tuple = ("encoder",)
            weights = rec.config.weights
        else:
            space = None if p.is_identity else (id(p.adapter), id(p.residuals), id(p.context), id(p.residual_ids),
                                                 id(p.sequence))
            key = (space, id(p.head_w), float(p.head_b))
            weights = p.weights
        if key not in groups:
            groups[key] = (rec.prepare_model(p, name), [])
        groups[key][1].append((name, weights))
    return list(groups.values())

