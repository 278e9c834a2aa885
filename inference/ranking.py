"""Ranking: similarity, blended with recency-weighted popularity and a learned head.

``score = w_sim * <u, v> + w_pop * pop(v) + w_head * sigmoid(w . (u * v) + b)``

* similarity: the user's unit vector against each item's (the text signal);
* popularity: recency-weighted interaction counts, scaled to [0, 1]; it is also the whole
  list for a user with no history (cold start);
* head: ``sigmoid(w^T (u ⊙ v) + b)``, a per-dimension reweighting that training fits;
  untrained it is absent (weight 0).

Each returned item says which part contributed most to its score (``driver``).

Example::

    index = ItemIndex(dim=2); index.upsert_many(["a", "b"], [[1, 0], [0, 1]])
    ranker = Ranker(index, Popularity(half_life_s=86400))
    ranker.recommend(np.array([1, 0], np.float32), n=1).items[0].item_id   # "a"
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .index import ItemIndex
from .vectors import sigmoid, top_k

#: Fewest users :meth:`Ranker.score_many` scores in one matrix product; below it, one product
#: per user (OpenBLAS on the 2-core bench box, 10k x 384: 2 rows in one product took 2x as
#: long as two single products; from ~8 rows on the product is ahead, 64 rows ~4x).
MIN_BATCH = 8

class Popularity:
    """Recency-weighted interaction counts per item, decayed in event time.

    Values are stored relative to a reference time and rebased before they overflow,
    so an update is O(1) and nothing decays on a timer.
    """

    def __init__(self, half_life_s: float = 7 * 86400.0) -> None:
        self.half_life_s = half_life_s
        self._ref: float | None = None
        self._values: dict[str, float] = {}
        self._dense: np.ndarray | None = None
        self._dense_version = -1
        self._max = 0.0

    def add(self, item_id: str, event_time: float, weight: float = 1.0, index: ItemIndex | None = None) -> None:
        if self._ref is None:
            self._ref = event_time
        exponent = (event_time - self._ref) / self.half_life_s
        if exponent > 60:  # rebase: keep numbers far from overflow
            shift = 0.5 ** exponent
            self._values = {k: v * shift for k, v in self._values.items()}
            self._max *= shift
            if self._dense is not None:
                self._dense *= shift
            self._ref, exponent = event_time, 0.0
        value = self._values.get(item_id, 0.0) + weight * 2.0 ** exponent
        self._values[item_id] = value
        self._max = max(self._max, value)
        if self._dense is not None and index is not None and self._dense_version == index.version:
            row = index._row.get(item_id)
            if row is not None:
                self._dense[row] = value

    def value(self, item_id: str) -> float:
        """Relative popularity in [0, 1] (1 = the most popular item now)."""
        return self._values.get(item_id, 0.0) / self._max if self._max > 0 else 0.0

    def dense(self, index: ItemIndex) -> np.ndarray:
        """Popularity per index row in [0, 1]; rebuilt only when the catalogue changed."""
        if self._dense is None or self._dense_version != index.version or len(self._dense) != len(index.matrix):
            dense = np.zeros(len(index.matrix), dtype=np.float32)
            for item_id, value in self._values.items():
                row = index._row.get(item_id)
                if row is not None:
                    dense[row] = value
            self._dense, self._dense_version = dense, index.version
        if self._max <= 0:
            return np.zeros_like(self._dense)
        return self._dense / np.float32(self._max)

    def state(self) -> dict:
        return {"half_life_s": self.half_life_s, "ref": self._ref, "values": dict(self._values)}

    @classmethod
    def from_state(cls, state: dict) -> Popularity:
        pop = cls(state["half_life_s"])
        pop._ref = state["ref"]
        pop._values = dict(state["values"])
        pop._max = max(pop._values.values(), default=0.0)
        return pop


@dataclass
class LinearHead:
    """``sigmoid(w^T (u ⊙ v) + b)``: fitted by training, identity-like when w is all ones."""

    w: np.ndarray
    b: float = 0.0

    def scores(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        return sigmoid(items @ (user * self.w) + self.b)


@dataclass
class Weights:
    """How the parts of a score are blended."""

    similarity: float = 1.0
    popularity: float = 0.5  # picked on the streaming evaluation (README "Accuracy")
    head: float = 0.0


@dataclass
class ScoredItem:
    item_id: str
    score: float
    parts: dict[str, float]
    driver: str  # the part that contributed most: similarity | popularity | head
    explored: bool = False  # placed by the exploration policy (inference.explore), not by its score

    def to_json(self) -> dict:
        out = {"item_id": self.item_id, "score": round(self.score, 6), "driver": self.driver,
               "parts": {k: round(v, 6) for k, v in self.parts.items()}}
        if self.explored:
            out["explored"] = True
        return out


@dataclass
class Recommendation:
    items: list[ScoredItem] = field(default_factory=list)
    cold_start: bool = False
    model_version: str | None = None  # set by Recommender.recommend

    @property
    def item_ids(self) -> list[str]:
        return [i.item_id for i in self.items]


class Ranker:
    """Top-N lists for users from an :class:`ItemIndex`, popularity and an optional head."""

    def __init__(
        self,
        index: ItemIndex,
        popularity: Popularity | None = None,
        *,
        head: LinearHead | None = None,
        weights: Weights | None = None,
    ) -> None:
        self.index = index
        self.popularity = popularity or Popularity()
        self.head = head
        self.weights = weights or Weights()

    def score_all(self, user: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Blended scores for every index row, and each weighted part (dead rows at -inf)."""
        return self.score_many([user])[0]

    def score_many(self, users: Sequence[np.ndarray | None],
                   popularity: Sequence[np.ndarray | None] | None = None,
                   ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """:meth:`score_all` for several users at once: one matrix product for all similarities.

        Scoring one user reads the whole item matrix for a single dot product per item; a
        chunk of users reads it once (measured on the 2-core bench box, 10k x 384: 0.47 ms
        per user one at a time, 0.10 ms each in a product of 64). ``popularity[i]``, when
        given, is the normalised popularity (``Popularity.dense``) user ``i`` is ranked with:
        the worker ranks each event with the popularity as it was right after that event.
        """
        w = self.weights
        live = [i for i, u in enumerate(users) if u is not None]
        if len(live) >= MIN_BATCH:
            sims = self.index.scores(np.stack([users[i] for i in live]))
        else:  # a product of very few rows is slower than as many single ones
            sims = [self.index.scores(users[i]) for i in live]
        sim_of = {i: k for k, i in enumerate(live)}
        alive = self.index.alive
        dead = ~alive if not alive.all() else None
        shared_pop = None
        out = []
        for i, user in enumerate(users):
            parts: dict[str, np.ndarray] = {}
            if user is not None:
                parts["similarity"] = w.similarity * sims[sim_of[i]]
                if self.head is not None and w.head:
                    parts["head"] = w.head * self.head.scores(user, self.index.matrix)
            if w.popularity or user is None:
                pop = popularity[i] if popularity is not None else None
                if pop is None:
                    if shared_pop is None:
                        shared_pop = self.popularity.dense(self.index)
                    pop = shared_pop
                parts["popularity"] = (w.popularity or 1.0) * pop
            total = np.zeros(len(alive), dtype=np.float32)
            for arr in parts.values():
                total += arr
            if dead is not None:
                total[dead] = -np.inf
            out.append((total, parts))
        return out

    def recommend(self, user: np.ndarray | None, n: int = 10, *, exclude: Iterable[str] = ()) -> Recommendation:
        """Top-``n`` for one user's unit vector (None = cold start), skipping ``exclude``."""
        return self.recommend_many([user], n, excludes=[exclude])[0]

    def recommend_many(self, users: Sequence[np.ndarray | None], n: int = 10, *,
                       excludes: Sequence[Iterable[str]] | None = None,
                       popularity: Sequence[np.ndarray | None] | None = None) -> list[Recommendation]:
        """:meth:`recommend` for several users (one list each, in order), scored together
        (:meth:`score_many`). ``excludes[i]`` are the ids user ``i`` must not get."""
        for user in users:
            if user is not None and not np.all(np.isfinite(user)):
                raise ValueError("user vector contains NaN or infinite values; reset this user's state")
        scored = self.score_many(users, popularity)
        return [self._pick(total, parts, n, excludes[i] if excludes is not None else (), cold_start=users[i] is None)
                for i, (total, parts) in enumerate(scored)]

    def _pick(self, total: np.ndarray, parts: dict[str, np.ndarray], n: int, exclude: Iterable[str],
              cold_start: bool) -> Recommendation:
        """The best ``n`` rows of ``total`` (modified: ``exclude`` set to -inf) as a list."""
        drop = self.index.mask_rows(exclude)
        if drop.size:
            total[drop] = -np.inf
        best = top_k(total, min(n, len(self.index)))
        # whole-array gathers, not a numpy scalar per item and part (a third of ranking's Python time)
        scores = total[best].tolist()
        names = list(parts)
        columns = [parts[name][best].tolist() for name in names]
        items = []
        for k, row in enumerate(best.tolist()):
            score = scores[k]
            if not math.isfinite(score):
                continue
            row_parts = {name: col[k] for name, col in zip(names, columns)}
            driver = max(row_parts, key=lambda name: abs(row_parts[name]))
            items.append(ScoredItem(self.index.id_at(row), score, row_parts, driver))
        return Recommendation(items, cold_start=cold_start)
