"""One event in, one refreshed list out: the step shared by the workers and offline replay.

The stream workers call :meth:`Recommender.observe` then :meth:`Recommender.recommend`
for every accepted event; ``streamrec evaluate`` calls exactly the same two methods in
event-time order. What is measured offline is therefore what runs online.

Example::

    rec = Recommender(index, config=RecommenderConfig(top_n=5))
    state = UserState.empty(index.dim)
    rec.observe(state, event)                 # click: no text needed
    rec.recommend(state).item_ids             # up to 5 ids, seen ones excluded

A trained version (:class:`inference.model.ModelParams`) is switched in with
:meth:`Recommender.prepare_model` (the slow part, safe on a worker thread) and
:meth:`Recommender.activate` (a reference swap, done between two events). User state is
model-independent, so it stays valid across versions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .events import Event
from .index import ItemIndex
from .model import ModelParams, ModelSpace
from .ranking import LinearHead, Popularity, Ranker, Recommendation, Weights
from .user import UpdateConfig, UserState, apply_event


@dataclass
class RecommenderConfig:
    top_n: int = 10
    exclude_seen: bool = True
    popularity_half_life_s: float = 14 * 86400.0
    update: UpdateConfig = field(default_factory=UpdateConfig)
    weights: Weights = field(default_factory=Weights)


@dataclass
class ActiveModel:
    """Everything one model version scores with; swapped as a whole, never piecemeal."""

    version: str
    params: ModelParams | None  # None: the encoder alone
    space: ModelSpace | None
    ranker: Ranker


class Recommender:
    """Index + popularity + ranking + the user update rule, behind two calls."""

    def __init__(self, index: ItemIndex, *, config: RecommenderConfig | None = None,
                 head: LinearHead | None = None, popularity: Popularity | None = None,
                 version: str = "v0") -> None:
        self.index = index
        self.config = config or RecommenderConfig()
        self.popularity = popularity or Popularity(self.config.popularity_half_life_s)
        self.active = ActiveModel(version, None, None,
                                  Ranker(index, self.popularity, head=head, weights=self.config.weights))

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
            return ActiveModel(version, params, None, Ranker(self.index, self.popularity, head=head, weights=weights))
        space = ModelSpace(self.index, params)
        return ActiveModel(version, params, space,
                           Ranker(space.index, self.popularity, head=params.head(), weights=params.weights))

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
        user = state.unit() if state is not None else None
        return model.params.user_vector(user) if model.params is not None else user

    def score_all(self, state: UserState | None, model: ActiveModel | None = None):
        """``(total, parts)`` over every index row for a user, as :meth:`recommend` ranks them."""
        model = model or self.active
        return model.ranker.score_all(self.user_vector(state, model))

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
        sign = self.config.update.sign(event.rating)
        if sign > 0:  # a pan is an interaction, but not a vote for popularity
            self.popularity.add(event.item_id, event.event_time, sign, self.index)
        return state

    def recommend(self, state: UserState | None, n: int | None = None) -> Recommendation:
        """Top-N for a user (None or no history: the popularity list, marked cold start)."""
        model = self.active  # one version for the whole list, even if a swap lands meanwhile
        user = self.user_vector(state, model)
        exclude = state.recent_items if (state is not None and self.config.exclude_seen) else ()
        rec = model.ranker.recommend(user, n or self.config.top_n, exclude=exclude)
        rec.model_version = model.version
        return rec
