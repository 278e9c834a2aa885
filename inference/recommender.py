"""One event in, one refreshed list out: the step shared by the workers and offline replay.

The stream workers call :meth:`Recommender.observe` then :meth:`Recommender.recommend`
for every accepted event; ``streamrec evaluate`` calls exactly the same two methods in
event-time order. What is measured offline is therefore what runs online.

Example::

    rec = Recommender(index, config=RecommenderConfig(top_n=5))
    state = UserState.empty(index.dim)
    rec.observe(state, event)                 # click: no text needed
    rec.recommend(state).item_ids             # up to 5 ids, seen ones excluded
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .events import Event
from .index import ItemIndex
from .ranking import LinearHead, Popularity, Ranker, Recommendation, Weights
from .user import UpdateConfig, UserState, apply_event


@dataclass
class RecommenderConfig:
    top_n: int = 10
    exclude_seen: bool = True
    popularity_half_life_s: float = 14 * 86400.0
    update: UpdateConfig = field(default_factory=UpdateConfig)
    weights: Weights = field(default_factory=Weights)


class Recommender:
    """Index + popularity + ranking + the user update rule, behind two calls."""

    def __init__(self, index: ItemIndex, *, config: RecommenderConfig | None = None,
                 head: LinearHead | None = None, popularity: Popularity | None = None) -> None:
        self.index = index
        self.config = config or RecommenderConfig()
        self.popularity = popularity or Popularity(self.config.popularity_half_life_s)
        self.ranker = Ranker(index, self.popularity, head=head, weights=self.config.weights)

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
        user = state.unit() if state is not None else None
        exclude = state.recent_items if (state is not None and self.config.exclude_seen) else ()
        return self.ranker.recommend(user, n or self.config.top_n, exclude=exclude)
