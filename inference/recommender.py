"""One event in, one refreshed list out: the step shared by the workers and offline replay.

The stream workers call :meth:`Recommender.observe` then :meth:`Recommender.recommend`
for every accepted event; ``streamrec evaluate`` calls exactly the same two methods in
event-time order. What is measured offline is therefore what runs online.

Example::

    rec = Recommender(index, config=RecommenderConfig(top_n=5))
    state = UserState.empty(index.dim)
    rec.observe(state, event)                 # click: no text needed
    rec.recommend(state).item_ids             # up to 5 ids, seen ones excluded

Besides the per-event list, the same object answers the HTTP API (``streams.api``): a
natural-language request ranked alone or blended with a user's vector
(:meth:`Recommender.recommend_for_request`), items similar to an item
(:meth:`Recommender.similar`) and why an item is on a list (:meth:`Recommender.explain`).
All scoring goes through the active model version, so whatever the model applies at
scoring time applies to every one of them.

A trained version (:class:`inference.model.ModelParams`) is switched in with
:meth:`Recommender.prepare_model` (the slow part, safe on a worker thread) and
:meth:`Recommender.activate` (a reference swap, done between two events). User state is
model-independent (encoder space), so it stays valid across versions.

A stream worker applies a whole chunk of events first and ranks them together:
``requests.append(rec.request(state, model))`` after each ``observe``, then
``rec.recommend_many(requests, model)`` with the one ``model = rec.active`` of the chunk: the
same lists as ``recommend`` right after each event (each request keeps the user vector, seen
items and popularity of its moment), with one matrix product for the chunk instead of one per
event.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .cooccur import Cooccurrence
from .events import Event
from .explore import ExploreConfig, Explorer
from .index import ItemIndex
from .model import ModelParams, ModelSpace
from .ranking import LinearHead, Popularity, Ranker, Recommendation, ScoredItem, Weights
from .sequence import SequenceParams, encode_sequences, length_groups
from .user import Sequence as EventSequence
from .user import UpdateConfig, UserState, apply_event
from .vectors import as_unit


@dataclass
class RecommenderConfig:
    top_n: int = 10
    #: False (default): a list never holds an item its user interacted with (the state's
    #: seen-items set, :mod:`inference.seen`). True: seen items may come back, for
    #: repeat-consumption domains (groceries, music); only scores decide.
    repeats: bool = False
    popularity_half_life_s: float = 14 * 86400.0
    update: UpdateConfig = field(default_factory=UpdateConfig)
    weights: Weights = field(default_factory=Weights)
    #: Share of a text request in the query when it is blended with a user's vector
    #: (``POST /recommend`` with a user id): 1 = the text alone, 0 = the user alone.
    text_weight: float = 0.5
    explore: ExploreConfig = field(default_factory=ExploreConfig)  # off by default


@dataclass
class Query:
    """The unit vector a list is ranked by, and how much of it is the user and the text.

    ``vector = user_coef * user_unit + text_coef * text_unit`` (None: no signal, cold start).
    """

    vector: np.ndarray | None
    user_coef: float = 0.0
    text_coef: float = 0.0
    text: np.ndarray | None = None
    #: The user's recent items and signed weights (``UserState.item_weights``) when the user
    #: is part of the query: a trained version's context vectors apply to them.
    history: dict[str, float] | None = None


@dataclass(slots=True)
class RankRequest:
    """One user's moment to rank, copied out of the state (which later events change)."""

    user: np.ndarray | None  # the user's vector in the model's space then (None: cold start)
    exclude: np.ndarray | tuple  # keys of the items not to recommend then (``UserState.seen``), or ()
    popularity: np.ndarray  # normalised item popularity then (``Popularity.dense``), per index row
    layout: int  # ``ItemIndex.version`` of those rows: after a catalogue change, today's popularity is used
    version: str  # the model version ``user`` is in
    #: A sequence version: the user's text-rolling unit vector (its text part), and the user's
    #: recent events, encoded into ``user`` with the rest of the block when it is ranked.
    text: np.ndarray | None = None
    seq: EventSequence | None = None
    #: Where the version blends in item co-occurrence: the user's co-occurrence score per index
    #: row, taken when the request is made (later events must not leak into it).
    cooc: np.ndarray | None = None


@dataclass
class ActiveModel:
    """Everything one model version scores with; swapped as a whole, never piecemeal."""

    version: str
    params: ModelParams | None  # None: the encoder alone
    space: ModelSpace | None
    ranker: Ranker
    #: What ranks a query vector that is not a user's (a text request, an item): the ranker,
    #: or for a sequence version (whose users are sequences) the encoder-space ranking.
    queries: Ranker | None = None

    def __post_init__(self) -> None:
        if self.queries is None:
            self.queries = self.ranker

    def to_space(self, vector: np.ndarray | None, history: dict[str, float] | None = None) -> np.ndarray | None:
        """An encoder-space query (unit vector), with the user's recent items and their signed
        weights when it is a user's, in this version's scoring space."""
        return self.params.user_vector(vector, history) if self.params is not None else vector

    @property
    def uses_history(self) -> bool:
        return self.params is not None and self.params.context is not None

    @property
    def sequence(self) -> SequenceParams | None:
        return self.params.sequence if self.params is not None else None

    def encode(self, requests: Sequence[RankRequest]) -> None:
        """Fill in ``user`` of the requests that still carry a sequence: one batched encoder call
        for all of them (items the version's index does not hold are left out of a sequence)."""
        todo = [r for r in requests if r.seq is not None]
        if not todo:
            return
        seq = self.sequence
        lookup = self.space.base.key_lookup()
        table = self.space.index.matrix
        rows = np.split(lookup.row_each(np.concatenate([r.seq.keys for r in todo])),  # one lookup for the chunk
                        np.cumsum([len(r.seq.keys) for r in todo])[:-1])
        x, neg, gap, mask = encode_sequences([(rw, r.seq.signs, r.seq.times) for rw, r in zip(rows, todo)],
                                             table, seq.max_len)
        for r in todo:
            r.seq = None
        for group, width in length_groups(mask):
            H = seq.user_vectors(x[group, -width:], neg[group, -width:], gap[group, -width:], mask[group, -width:])
            for j, i in enumerate(group.tolist()):
                todo[i].user = H[j]


class Recommender:
    """Index + popularity + ranking + the user update rule, behind two calls."""

    def __init__(self, index: ItemIndex, *, config: RecommenderConfig | None = None,
                 head: LinearHead | None = None, popularity: Popularity | None = None,
                 version: str = "v0", cooccurrence: Cooccurrence | None = None) -> None:
        self.index = index
        self.config = config or RecommenderConfig()
        self.popularity = popularity or Popularity(self.config.popularity_half_life_s)
        #: Item co-occurrence in users' recent items, counted from the events observed (as
        #: popularity is); trained versions blend it in (``Weights.cooccurrence``).
        self.cooccurrence = cooccurrence or Cooccurrence()
        self.active = ActiveModel(version, None, None, Ranker(index, self.popularity, head=head,
                                                              weights=self.config.weights, cooccurrence=self.cooccurrence))
        self.explorer = Explorer(self.config.explore) if self.config.explore.enabled else None

    # -- model versions ------------------------------------------------------------------
    @property
    def ranker(self) -> Ranker:
        return self.active.ranker

    @property
    def model_version(self) -> str:
        return self.active.version

    @property
    def params(self) -> ModelParams | None:
        return self.active.params

    def prepare_model(self, params: ModelParams | None, version: str) -> ActiveModel:
        """Build a version's scoring space (item vectors through the adapter). Thread-safe and
        side-effect free for scoring: nothing changes until :meth:`activate`."""
        if params is None or params.is_identity:
            weights = params.weights if params is not None else self.config.weights
            head = params.head() if params is not None else None
            return ActiveModel(version, params, None, Ranker(self.index, self.popularity, head=head, weights=weights,
                                                             cooccurrence=self.cooccurrence))
        space = ModelSpace(self.index, params)
        if params.sequence is not None:
            params.sequence.session()  # made here (a worker thread), not on the first event
        ranker = Ranker(space.index, self.popularity, head=params.head(), weights=params.weights,
                        text_index=self.index if params.sequence is not None else None, cooccurrence=self.cooccurrence)
        queries = Ranker(self.index, self.popularity, weights=self.config.weights) if params.sequence is not None else None
        return ActiveModel(version, params, space, ranker, queries)

    def activate(self, model: ActiveModel) -> None:
        """Switch to a prepared version in one assignment (call between two events)."""
        old, self.active = self.active, model
        if old.space is not None and old is not model:
            old.space.close()

    def use_model(self, params: ModelParams | None, version: str) -> None:
        """Prepare and activate in one go (offline replay, tests)."""
        self.activate(self.prepare_model(params, version))

    def user_vector(self, state: UserState | None, model: ActiveModel | None = None) -> np.ndarray | None:
        """The user's vector in the scoring space of ``model`` (default: the active one)."""
        model = model or self.active
        if state is None:
            return model.to_space(None)
        if model.sequence is not None:
            r = self.request(state, model)
            model.encode([r])
            return r.user
        return model.to_space(state.unit(), state.item_weights() if model.uses_history else None)

    def _text(self, state: UserState | None, model: ActiveModel) -> np.ndarray | None:
        """The user's text-rolling vector where ``model`` has a text part (a sequence version)."""
        return state.unit() if state is not None and model.sequence is not None else None

    def score_all(self, state: UserState | None, model: ActiveModel | None = None):
        """``(total, parts)`` over every index row for a user, as :meth:`recommend` ranks them."""
        model = model or self.active
        return model.ranker.score_all(self.user_vector(state, model), self._text(state, model),
                                      self._cooc(state, model))

    @property
    def dim(self) -> int:
        return self.index.dim

    def new_state(self) -> UserState:
        return UserState.empty(self.index.dim)

    def observe(self, state: UserState, event: Event, text_vec: np.ndarray | None = None) -> UserState:
        """Fold ``event`` into ``state`` (in place) and into item popularity.

        ``text_vec`` is the encoded review text (None for clicks or text-less reviews).
        An item missing from the index contributes only its text; the caller decides
        beforehand whether unknown items are accepted at all.
        """
        item_vec = self.index.get(event.item_id)
        row = self.index._row.get(event.item_id)
        previous, times = self._history_times(state) if row is not None else (None, None)
        apply_event(
            state,
            item_id=event.item_id,
            event_id=event.event_id,
            kind=event.kind,
            event_time=event.event_time,
            item_vec=item_vec,
            text_vec=text_vec,
            rating=event.rating,
            config=self.config.update,
        )
        if row is not None:
            self.cooccurrence.follow(self.index)
            self.cooccurrence.add(previous, row, np.sign(event.event_time - times))
        sign = self.config.update.sign(event.rating)
        if sign > 0:  # a pan is an interaction, but not a vote for popularity
            self.popularity.add(event.item_id, event.event_time, sign, self.index)
        if self.explorer is not None:
            self.explorer.clicked(event.user_id, event.item_id)  # the reward for a list served earlier
        return state

    def history_rows(self, state: UserState | None) -> np.ndarray:
        """The index rows of the user's recent distinct items (the state's sequence), oldest
        first, each at its latest position: what the co-occurrence part reads."""
        return self._history_times(state)[0]

    def _history_times(self, state: UserState | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`history_rows` and the event time of each (-inf: a state from before times were kept)."""
        if state is None or not len(state.seq):
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        rows = self.index.key_lookup().row_each(state.seq.keys)
        live = rows >= 0
        rev, times = rows[live][::-1], state.seq.times[live][::-1]
        _, first = np.unique(rev, return_index=True)
        at = np.sort(first)[::-1]
        return rev[at].copy(), times[at].copy()

    def _cooc(self, state: UserState | None, model: ActiveModel, force: bool = False) -> np.ndarray | None:
        """The user's co-occurrence scores per index row now, where ``model`` blends them in (or
        ``force``); None: not needed, or nothing to go on."""
        if state is None or not (force or model.ranker.weights.cooccurrence):
            return None
        self.cooccurrence.follow(self.index)
        rows = self.history_rows(state)
        if not rows.size:
            return None
        return self.cooccurrence.scores([rows], len(self.index.alive))[0]

    def recommend(self, state: UserState | None, n: int | None = None, *,
                  user_id: str | None = None) -> Recommendation:
        """Top-N for a user (None or no history: the popularity list, marked cold start).

        With exploration on (``config.explore.share > 0``) the last slots go to the policy's
        picks (``ScoredItem.explored``) and the list counts as served to ``user_id``: a later
        event of that user on one of its items is the policy's reward.
        """
        n = n or self.config.top_n
        model = self.active  # one version for the whole list, even if a swap lands meanwhile
        user, text, hist = self.user_vector(state, model), self._text(state, model), self._cooc(state, model)
        exclude = self.exclusion(state)
        k = self.explorer.slots(n) if self.explorer is not None else 0
        if not k:
            rec = model.ranker.recommend(user, n, exclude=exclude, text=text, cooc_row=hist)
            rec.model_version = model.version
            return rec
        wide = model.ranker.recommend(user, self.wide_length(n), exclude=exclude, text=text, cooc_row=hist)
        picked = self._explore([it.item_id for it in wide.items], n, k, user_id)[1]
        by_id = {it.item_id: it for it in wide.items[n - k:]}
        explored = [ScoredItem(i, by_id[i].score, by_id[i].parts, by_id[i].driver, explored=True) for i in picked]
        return Recommendation(wide.items[: n - k] + explored, cold_start=wide.cold_start, model_version=model.version)

    def wide_length(self, n: int | None = None) -> int:
        """How many ranked candidates a list of ``n`` is made from: ``n`` itself, or with
        exploration on the ``n - slots`` kept plus the policy's pool to pick the slots from."""
        n = n or self.config.top_n
        k = self.explorer.slots(n) if self.explorer is not None else 0
        return n - k + self.config.explore.pool if k else n

    def serve(self, ranked_ids: Sequence[str], n: int | None = None, *, user_id: str | None = None) -> list[str]:
        """The ids :meth:`recommend` serves from its ranked candidates ``ranked_ids`` (best
        first, :meth:`wide_length` of them where there are that many): the first ``n``, or
        with exploration on the first ``n - slots`` then the policy's picks, counted as shown
        to ``user_id``. How an evaluation that ranks a block of users at once serves each."""
        n = n or self.config.top_n
        k = self.explorer.slots(n) if self.explorer is not None else 0
        if not k:
            return list(ranked_ids[:n])
        keep, picked = self._explore(list(ranked_ids), n, k, user_id)
        return keep + picked

    def _explore(self, ids: list[str], n: int, k: int, user_id: str | None) -> tuple[list[str], list[str]]:
        """Keep the first ``n - k`` of ``ids``, let the policy pick ``k`` of the rest; shown."""
        keep, picked = ids[: n - k], self.explorer.pick(ids[n - k:], k)
        self.explorer.explored += len(picked)
        self.explorer.shown(user_id, keep + picked)
        return keep, picked

    def request(self, state: UserState | None, model: ActiveModel | None = None) -> RankRequest:
        """What :meth:`recommend` would rank for ``state`` now under ``model`` (default: the
        active version), for :meth:`recommend_many` later. No exploration.

        Raises ``ValueError`` at once for a user vector with NaN or infinite values, so one
        corrupt user fails alone, never the chunk ranked with it.
        """
        model = model or self.active
        index = model.ranker.index
        if model.sequence is not None:  # the sequence is encoded with the rest of the block
            text = state.unit() if state is not None else None
            if text is not None and not np.all(np.isfinite(text)):
                raise ValueError("user vector contains NaN or infinite values; reset this user's state")
            seq = state.seq if state is not None and len(state.seq) else None
            return RankRequest(None, self.exclusion(state), model.ranker.popularity.dense(index), index.version,
                               model.version, text, seq, self._cooc(state, model))
        user = self.user_vector(state, model)
        if user is not None and not np.all(np.isfinite(user)):
            raise ValueError("user vector contains NaN or infinite values; reset this user's state")
        return RankRequest(user, self.exclusion(state), model.ranker.popularity.dense(index), index.version,
                           model.version, cooc=self._cooc(state, model))

    def recommend_many(self, requests: Sequence[RankRequest], model: ActiveModel | None = None,
                       n: int | None = None) -> list[Recommendation]:
        """One Top-N per request, in order, each as :meth:`recommend` gave it when requested;
        ``model`` must be the version the requests were made for."""
        if not requests:
            return []
        model = model or self.active
        stale = next((r.version for r in requests if r.version != model.version), None)
        if stale is not None:
            raise ValueError(f"a request made for model {stale} cannot be ranked by {model.version}")
        layout = model.ranker.index.version
        model.encode(requests)
        recs = model.ranker.recommend_many([r.user for r in requests], n or self.config.top_n,
                                           excludes=[r.exclude for r in requests],
                                           popularity=[r.popularity if r.layout == layout else None for r in requests],
                                           texts=[r.text for r in requests], cooc=[r.cooc for r in requests])
        for rec in recs:
            rec.model_version = model.version
        return recs

    def score_requests(self, requests: Sequence[RankRequest], model: ActiveModel | None = None) -> np.ndarray:
        """The scores :meth:`recommend_many` picks each request's list from, as one matrix
        (requests x index rows; dead rows and each request's excluded items at -inf): how the
        evaluation ranks the item a user chose next among everything the list could hold."""
        model = model or self.active
        stale = next((r.version for r in requests if r.version != model.version), None)
        if stale is not None:
            raise ValueError(f"a request made for model {stale} cannot be ranked by {model.version}")
        layout = model.ranker.index.version
        model.encode(requests)
        (total,) = model.ranker.score_matrix([r.user for r in requests], excludes=[r.exclude for r in requests],
                                             popularity=[r.popularity if r.layout == layout else None
                                                         for r in requests], texts=[r.text for r in requests],
                                             cooc=[r.cooc for r in requests])
        return total

    # -- requests from the API -----------------------------------------------------------
    def query(self, state: UserState | None, text_vec: np.ndarray | None = None,
              text_weight: float | None = None) -> Query:
        """What a request is ranked by: the user's vector, the text's, or their blend.

        The blend is ``(1 - w) * user + w * text`` (both unit vectors), renormalised; ``w``
        is ``text_weight`` or ``config.text_weight``. A user and a text that cancel out
        exactly leave the text alone.
        """
        user = state.unit() if state is not None else None
        if text_vec is None or not np.any(text_vec):
            return Query(user, 1.0 if user is not None else 0.0, history=self._history(state))
        text = as_unit(np.asarray(text_vec, dtype=np.float32), what="request text vector")
        w = self.config.text_weight if text_weight is None else float(text_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"text weight must be within 0..1, not {w}")
        if user is None or w >= 1.0:
            return Query(text, 0.0, 1.0, text)
        q = (1.0 - w) * user + w * text
        norm = float(np.linalg.norm(q))
        if norm < 1e-6:
            return Query(text, 0.0, 1.0, text)
        return Query((q / norm).astype(np.float32), (1.0 - w) / norm, w / norm, text, self._history(state))

    def recommend_for_vector(self, vector: np.ndarray | None, n: int | None = None, *,
                             exclude: Iterable[str] = ()) -> Recommendation:
        """Top-N for any query vector in encoder space (None: the cold-start list). No exploration."""
        model = self.active
        rec = model.queries.recommend(model.to_space(vector), n or self.config.top_n, exclude=exclude)
        rec.model_version = model.version
        return rec

    def recommend_for_request(self, state: UserState | None, text_vec: np.ndarray | None,
                              n: int | None = None, *, text_weight: float | None = None) -> Recommendation:
        """A natural-language request, alone (``state`` None) or blended with a user's vector;
        the user's seen items are excluded as in their own list. (A sequence version ranks the
        blend in encoder space: its users are sequences, a request is text.)"""
        q = self.query(state, text_vec, text_weight)
        model = self.active
        rec = model.queries.recommend(model.to_space(q.vector, q.history), n or self.config.top_n,
                                      exclude=self.exclusion(state))
        rec.model_version = model.version
        return rec

    def similar(self, item_id: str, n: int | None = None) -> list[ScoredItem]:
        """The ``n`` items nearest to ``item_id`` (``KeyError`` if it is not in the catalogue)."""
        index = self.active.ranker.index  # the active version's item space
        vec = index.vector(item_id)
        hits = index.search(vec, n or self.config.top_n, exclude=[item_id])[0]
        return [ScoredItem(i, s, {"similarity": s}, "similarity") for i, s in hits]

    def explain(self, state: UserState | None, rec: Recommendation, *, text_vec: np.ndarray | None = None,
                text_weight: float | None = None, top: int = 3) -> list[dict]:
        """Why each item of ``rec`` is there, one dict per item in list order.

        * ``history``: the user's recent items that added most to the item's similarity
          part, by their share of the dot product: for history item ``h`` with signed,
          decayed weight ``a_h`` (``UserState.recent_weights``) the share is
          ``w_sim * c_user * a_h * <v_h, v_item> / |user vector|``. Approximation: a review
          event added a mix of its text and the item's vector; the text is not kept, so
          the item's vector stands in for the whole event. With a trained version that has
          context vectors, item ``h``'s context pull on the item is added to its share;
        * ``request``: the text request's share (``w_sim * c_text * <t, v_item>``);
        * ``similarity_other``: what is left of the similarity part: review texts, events
          older than the recent-items window, catalogue vectors that changed since;
        * ``moved``: places each non-similarity part (popularity, head, text, co-occurrence)
          moved the item up (negative: down) compared to the ranking without that part.

        Must be called with the same state and request as the list (the ranking is
        recomputed here, so it costs one more scoring pass). A sequence version's own lists are
        explained by :meth:`_explain_sequence`.
        """
        model = self.active
        if model.sequence is not None and (text_vec is None or not np.any(text_vec)):
            return self._explain_sequence(state, rec, model, top)
        q = self.query(state, text_vec, text_weight)
        adapter = model.params.adapter if model.params is not None else None

        def lin(x: np.ndarray) -> np.ndarray:  # encoder space -> the version's space (before normalising)
            return x @ adapter if adapter is not None else x
        # qv = s * lin(q.vector) + s_ctx * history context: the exact split of the query
        qv, s, s_ctx, ctx = q.vector, 1.0, 0.0, None
        if qv is not None and (adapter is not None or model.uses_history):
            raw = lin(qv)
            s = 1.0 / max(float(np.linalg.norm(raw)), 1e-12)
            ctx = model.params.history_vector(q.history) if model.uses_history else None
            if ctx is not None:
                full = raw * s + ctx
                s_ctx = 1.0 / max(float(np.linalg.norm(full)), 1e-12)
                s *= s_ctx
            qv = (raw * s + (ctx * s_ctx if ctx is not None else 0.0)).astype(np.float32)
        total, parts = model.queries.score_all(qv)
        space = model.queries.index  # same rows as self.index
        eligible = np.isfinite(total)
        drop = self.index.mask_rows(self.exclusion(state))
        if drop.size:
            eligible[drop] = False
        hist_ids: list[str] = []
        hist_w: list[float] = []
        hist_rows: list[int] = []
        norm = float(np.linalg.norm(state.vector)) if state is not None else 0.0
        if state is not None and q.user_coef and norm > 0:
            for h, a in state.item_weights().items():
                row = self.index._row.get(h)
                if row is not None and math.isfinite(a) and a != 0.0:
                    hist_ids.append(h)
                    hist_w.append(a)
                    hist_rows.append(row)
        w_sim = model.queries.weights.similarity
        scale = np.asarray(hist_w, dtype=np.float32) * np.float32(w_sim * s * q.user_coef / norm) if hist_ids else None
        hist_vecs = lin(self.index.matrix[hist_rows]) if hist_ids else None
        ctx_vecs = ctx_scale = None
        if hist_ids and ctx is not None:  # each item's context pull: w_sim * s_ctx * a_h * c_h / sum |a|
            rows = model.params.context_rows
            total_w = sum(abs(a) for h, a in q.history.items() if h in rows and a == a)
            ctx_vecs = np.zeros_like(hist_vecs)
            for j, h in enumerate(hist_ids):
                if h in rows:
                    ctx_vecs[j] = model.params.context[rows[h]]
            ctx_scale = np.asarray(hist_w, np.float32) * np.float32(w_sim * s_ctx / max(total_w, 1e-30))
        out = []
        for pos, it in enumerate(rec.items, start=1):
            entry, row = self._entry(pos, it)
            if row is None:  # removed from the catalogue since the list was made
                out.append(entry)
                continue
            v = space.matrix[row]
            explained = 0.0
            if scale is not None:
                contrib = scale * (hist_vecs @ v)
                if ctx_vecs is not None:
                    contrib = contrib + ctx_scale * (ctx_vecs @ v)
                explained += float(contrib.sum())
                best = [j for j in np.argsort(-contrib, kind="stable")[:top] if contrib[j] > 0]
                entry["history"] = [{"item_id": hist_ids[j], "weight": round(hist_w[j], 6),
                                     "contribution": round(float(contrib[j]), 6)} for j in best]
            if q.text is not None and q.text_coef:
                request = float(w_sim * s * q.text_coef * (lin(q.text) @ v))
                entry["request"] = round(request, 6)
                explained += request
            if "similarity" in parts:
                entry["similarity_other"] = round(float(parts["similarity"][row]) - explained, 6)
            if q.vector is not None:
                _add_moved(entry, total, parts, eligible, row)
            out.append(entry)
        return out

    def _explain_sequence(self, state: UserState | None, rec: Recommendation, model: ActiveModel,
                          top: int) -> list[dict]:
        """:meth:`explain` for a sequence version's list. The encoder is not linear in the user's
        items, so ``history`` is an approximation: the user's readable recent items that are
        closest to the item in the version's item space (``<e_h, e_item>``), each credited
        ``w_sim * <e_h, e_item> / n`` of the similarity part (``n`` the items read); the rest is
        ``similarity_other``. ``moved`` is exact, as for any version."""
        total, parts = self.score_all(state, model)
        eligible = np.isfinite(total)
        drop = self.index.mask_rows(self.exclusion(state))
        if drop.size:
            eligible[drop] = False
        hist_rows: list[int] = []
        if state is not None and len(state.seq):
            rows = self.index.key_lookup().row_each(state.seq.keys)
            hist_rows = list(dict.fromkeys(r for r in rows[::-1].tolist() if r >= 0))[: model.sequence.max_len]
        E = model.ranker.index.matrix
        w_sim = model.ranker.weights.similarity
        out = []
        for pos, it in enumerate(rec.items, start=1):
            entry, row = self._entry(pos, it)
            if row is None:
                out.append(entry)
                continue
            if hist_rows and "similarity" in parts:
                contrib = (E[hist_rows] @ E[row]) * np.float32(w_sim / len(hist_rows))
                best = [j for j in np.argsort(-contrib, kind="stable")[:top] if contrib[j] > 0]
                entry["history"] = [{"item_id": self.index.id_at(hist_rows[j]), "weight": None,
                                     "contribution": round(float(contrib[j]), 6)} for j in best]
                entry["similarity_other"] = round(float(parts["similarity"][row] - contrib[best].sum()), 6)
            _add_moved(entry, total, parts, eligible, row)
            out.append(entry)
        return out

    def _entry(self, pos: int, it: ScoredItem) -> tuple[dict, int | None]:
        """An explanation's fields every version gives, and the item's index row (None: gone)."""
        entry: dict = {"item_id": it.item_id, "rank": pos, "score": round(it.score, 6), "driver": it.driver,
                       "parts": {k: round(v, 6) for k, v in it.parts.items()}}
        if it.explored:
            entry["explored"] = True
        return entry, self.index._row.get(it.item_id)

    def _history(self, state: UserState | None) -> dict[str, float] | None:
        return state.item_weights() if state is not None and self.active.uses_history else None

    def exclusion(self, state: UserState | None) -> np.ndarray | tuple:
        """What a list for ``state`` must leave out: the keys of every item the user interacted
        with (``UserState.seen``; an array the state replaces, never changes, on each event)."""
        return state.seen if (state is not None and not self.config.repeats) else ()


def _add_moved(entry: dict, total: np.ndarray, parts: dict[str, np.ndarray], eligible: np.ndarray, row: int) -> None:
    """``entry["moved"]``: places each part but similarity moved the item at ``row`` up (negative:
    down) against the ranking without that part, among the ``eligible`` rows."""
    moved, mine = {}, total[row]
    rank_with = int(np.count_nonzero(total[eligible] > mine))
    for name in ("popularity", "head", "text", "cooccurrence"):
        if name in parts:
            without = (total - parts[name])[eligible]
            moved[name] = int(np.count_nonzero(without > mine - parts[name][row])) - rank_with
    if moved:
        entry["moved"] = moved
