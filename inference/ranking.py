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
from .vectors import sigmoid, top_k_rows

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

    def scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """One user (dim,) against every item: (items,); a batch (b, dim): (b, items)."""
        return sigmoid((users * self.w) @ items.T + self.b)


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


@dataclass
class _Products:
    """What :meth:`Ranker._products` computed for a block of users (see there)."""

    n: int
    n_rows: int
    live: list[int]  # the users with a vector
    live_set: set[int]
    sims: np.ndarray | None  # (len(live), n_rows) similarities, unweighted
    head: np.ndarray | None  # (len(live), n_rows) head outputs, unweighted (None: not needed)
    popularity: Sequence[np.ndarray | None] | None  # per user: its popularity row (None: today's)
    shared: np.ndarray | None = None  # today's popularity, once a user needed it


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

        ``popularity[i]``, when given, is the normalised popularity (``Popularity.dense``) user
        ``i`` is ranked with: the worker ranks each event with the popularity as it was right
        after that event.
        """
        total, parts, present = self._score_block(users, popularity)
        return [(total[i], {name: parts[name][i] for name in present[i]}) for i in range(len(users))]

    def _score_block(self, users: Sequence[np.ndarray | None], popularity: Sequence[np.ndarray | None] | None,
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[str, ...]]]:
        """Scores as matrices: ``total`` (users x index rows, dead rows at -inf), each weighted
        part (zero where a user lacks it) and the parts each user has.

        Scoring one user reads the whole item matrix for a single dot product per item; a
        chunk of users reads it once (measured on the 2-core bench box, 10k x 384: 0.47 ms
        per user one at a time, 0.10 ms each in a product of 64).
        """
        w = self.weights
        return self._blend(self._products(users, popularity, self._uses_head(w)), w, own=True)

    def _uses_head(self, w: Weights) -> bool:
        return self.head is not None and bool(w.head)

    def _products(self, users: Sequence[np.ndarray | None], popularity: Sequence[np.ndarray | None] | None,
                  head: bool) -> _Products:
        """The weight-free part of :meth:`_score_block`: the similarity (and head) products
        for the users with a vector, and the popularity row each user is ranked with."""
        n_rows = len(self.index.alive)
        live = [i for i, u in enumerate(users) if u is not None]
        sims = head_scores = None
        if live:
            U = np.stack([users[i] for i in live]).astype(np.float32, copy=False)
            if len(live) >= MIN_BATCH:
                sims = self.index.scores(U)
            else:  # a product of very few rows is slower than as many single ones
                sims = np.stack([self.index.scores(u) for u in U]) if n_rows else np.zeros((len(live), 0), np.float32)
            if head and n_rows:  # sigmoid(w . (u * v) + b) for every item v: one more product
                head_scores = self.head.scores(U, self.index.matrix)
        return _Products(len(users), n_rows, live, set(live), sims, head_scores, popularity)

    def _blend(self, p: _Products, w: Weights, *, own: bool = False,
               ) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[str, ...]]]:
        """``(total, parts, present)`` of :meth:`_score_block` for the products ``p`` under the
        weights ``w`` (``own``: ``p`` is not used again, so its arrays may be scaled in place)."""
        b, n_rows, live = p.n, p.n_rows, p.live
        parts: dict[str, np.ndarray] = {}
        names: list[list[str]] = [[] for _ in range(b)]
        if live:
            sims = p.sims
            if own:
                sims *= np.float32(w.similarity)
            else:
                sims = sims * np.float32(w.similarity)
            use_head = self._uses_head(w)
            if len(live) == b:
                parts["similarity"] = sims
            else:
                parts["similarity"] = np.zeros((b, n_rows), np.float32)
                parts["similarity"][live] = sims
            if use_head:
                parts["head"] = np.zeros((b, n_rows), np.float32)
                if n_rows:
                    parts["head"][live] = w.head * p.head
            for i in live:
                names[i] += ["similarity", "head"] if use_head else ["similarity"]
        pop_rows = [i for i in range(b) if w.popularity or i not in p.live_set]
        if pop_rows:
            pop = np.zeros((b, n_rows), np.float32)
            for i in pop_rows:
                row = p.popularity[i] if p.popularity is not None else None
                if row is None:
                    if p.shared is None:
                        p.shared = self.popularity.dense(self.index)
                    row = p.shared
                pop[i] = (w.popularity or 1.0) * row
                names[i].append("popularity")
            parts["popularity"] = pop
        total = np.zeros((b, n_rows), np.float32)
        for arr in parts.values():
            total += arr
        alive = self.index.alive
        if not alive.all():
            total[:, ~alive] = -np.inf
        return total, parts, [tuple(n) for n in names]

    def _drop(self, total: np.ndarray, excludes: Sequence[Iterable[str] | np.ndarray] | None) -> None:
        """Set each user's excluded rows to -inf (in place)."""
        if excludes is None:
            return
        drops = [self.index.mask_rows(ex) for ex in excludes]
        cols = [d for d in drops if d.size]
        if cols:
            total[np.repeat(np.arange(len(drops)), [d.size for d in drops]), np.concatenate(cols)] = -np.inf

    def score_matrix(self, users: Sequence[np.ndarray | None], *,
                     excludes: Sequence[Iterable[str] | np.ndarray] | None = None,
                     popularity: Sequence[np.ndarray | None] | None = None,
                     weights: Sequence[Weights] | None = None) -> list[np.ndarray]:
        """The matrices :meth:`recommend_many` picks its lists from (users x index rows; dead
        rows and each user's ``excludes`` at -inf), one per weight set in ``weights`` (default:
        this ranker's own), all from one similarity (and head) product: what an evaluation
        ranks a held-out item in, and how several blends of one model are compared."""
        sets = list(weights) if weights is not None else [self.weights]
        if not users:
            return [np.zeros((0, len(self.index.alive)), np.float32) for _ in sets]
        for user in users:
            if user is not None and not np.all(np.isfinite(user)):
                raise ValueError("user vector contains NaN or infinite values; reset this user's state")
        p = self._products(users, popularity, any(self._uses_head(w) for w in sets))
        out = []
        for k, w in enumerate(sets):
            total, _, _ = self._blend(p, w, own=k == len(sets) - 1)
            self._drop(total, excludes)
            out.append(total)
        return out

    def recommend(self, user: np.ndarray | None, n: int = 10, *, exclude: Iterable[str] = ()) -> Recommendation:
        """Top-``n`` for one user's unit vector (None = cold start), skipping ``exclude``."""
        return self.recommend_many([user], n, excludes=[exclude])[0]

    def recommend_many(self, users: Sequence[np.ndarray | None], n: int = 10, *,
                       excludes: Sequence[Iterable[str]] | None = None,
                       popularity: Sequence[np.ndarray | None] | None = None) -> list[Recommendation]:
        """:meth:`recommend` for several users (one list each, in order), scored together
        (:meth:`score_many`) and picked together (one top-k over the users x items matrix).
        ``excludes[i]`` are the ids user ``i`` must not get."""
        for user in users:
            if user is not None and not np.all(np.isfinite(user)):
                raise ValueError("user vector contains NaN or infinite values; reset this user's state")
        if not users:
            return []
        total, parts, present = self._score_block(users, popularity)
        self._drop(total, excludes)
        best = top_k_rows(total, min(n, len(self.index)))
        # whole-matrix gathers, then plain Python floats: not a numpy scalar per item and part
        scores = np.take_along_axis(total, best, 1).tolist()
        columns = {name: np.take_along_axis(arr, best, 1).tolist() for name, arr in parts.items()}
        id_at, out = self.index.id_at, []
        for i, rows in enumerate(best.tolist()):
            items = []
            for k, row in enumerate(rows):
                score = scores[i][k]
                if not math.isfinite(score):
                    continue
                row_parts = {name: columns[name][i][k] for name in present[i]}
                driver = max(row_parts, key=lambda name: abs(row_parts[name]))
                items.append(ScoredItem(id_at(row), score, row_parts, driver))
            out.append(Recommendation(items, cold_start=users[i] is None))
        return out
