"""Ranking: similarity, blended with recency-weighted popularity and a learned head.

``score = w_sim * <u, v> + w_text * <t, v_text> + w_pop * pop(v) + w_head * sigmoid(w . (u * v) + b)``

* similarity: the user's vector against each item's in the model's space (the text signal
  for the encoder alone; a trained sequence version's user and item vectors otherwise);
* text: for a sequence version, the user's text-rolling unit vector ``t`` against each
  item's encoder vector (``text_index``), so the version blends both (absent otherwise);
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
    text: float = 0.0  # a sequence version's text-rolling part (a trained blend weight)
    cooccurrence: float = 0.0  # item co-occurrence with the user's recent items (a trained blend weight)


@dataclass
class ScoredItem:
    item_id: str
    score: float
    parts: dict[str, float]
    driver: str  # the part that contributed most: similarity | text | cooccurrence | popularity | head
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
    live_text: list[int] = field(default_factory=list)  # the users with a text vector (text part)
    text: np.ndarray | None = None  # (len(live_text), n_rows) text similarities, unweighted
    live_co: list[int] = field(default_factory=list)  # the users with co-occurrence scores
    co: np.ndarray | None = None  # (len(live_co), n_rows) co-occurrence scores, unweighted


class Ranker:
    """Top-N lists for users from an :class:`ItemIndex`, popularity and an optional head."""

    def __init__(
        self,
        index: ItemIndex,
        popularity: Popularity | None = None,
        *,
        head: LinearHead | None = None,
        weights: Weights | None = None,
        text_index: ItemIndex | None = None,
        cooccurrence=None,
    ) -> None:
        self.index = index
        self.popularity = popularity or Popularity()
        self.head = head
        self.weights = weights or Weights()
        #: Encoder-space item vectors, row for row as ``index`` (the base index a model space
        #: follows), for the text part; None: no text part.
        self.text_index = text_index
        #: :class:`inference.cooccur.Cooccurrence` over the same rows (a user's co-occurrence
        #: scores, ``cooc``, are taken from it when the user's request is made); None: no
        #: co-occurrence part.
        self.cooccurrence = cooccurrence

    def score_all(self, user: np.ndarray | None, text: np.ndarray | None = None, cooc_row: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Blended scores for every index row, and each weighted part (dead rows at -inf)."""
        return self.score_many([user], texts=[text], cooc=[cooc_row])[0]

    def score_many(self, users: Sequence[np.ndarray | None],
                   popularity: Sequence[np.ndarray | None] | None = None, *,
                   texts: Sequence[np.ndarray | None] | None = None,
                   cooc: Sequence[np.ndarray | None] | None = None,
                   ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """:meth:`score_all` for several users at once: one matrix product for all similarities.

        ``popularity[i]``, when given, is the normalised popularity (``Popularity.dense``) user
        ``i`` is ranked with: the worker ranks each event with the popularity as it was right
        after that event.
        """
        total, parts, present = self._score_block(users, popularity, texts, cooc)
        return [(total[i], {name: parts[name][i] for name in present[i]}) for i in range(len(users))]

    def _score_block(self, users: Sequence[np.ndarray | None], popularity: Sequence[np.ndarray | None] | None,
                     texts: Sequence[np.ndarray | None] | None = None,
                     cooc: Sequence[np.ndarray | None] | None = None,
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[str, ...]]]:
        """Scores as matrices: ``total`` (users x index rows, dead rows at -inf), each weighted
        part (zero where a user lacks it) and the parts each user has.

        Scoring one user reads the whole item matrix for a single dot product per item; a
        chunk of users reads it once (measured on the 2-core bench box, 10k x 384: 0.47 ms
        per user one at a time, 0.10 ms each in a product of 64).
        """
        w = self.weights
        return self._blend(self._products(users, popularity, self._uses_head(w), texts if self._uses_text(w) else None,
                                          cooc if self._uses_co(w) else None), w, own=True)

    def _uses_head(self, w: Weights) -> bool:
        return self.head is not None and bool(w.head)

    def _uses_text(self, w: Weights) -> bool:
        return self.text_index is not None and bool(w.text)

    def _uses_co(self, w: Weights) -> bool:
        return self.cooccurrence is not None and bool(w.cooccurrence)

    def _products(self, users: Sequence[np.ndarray | None], popularity: Sequence[np.ndarray | None] | None,
                  head: bool, texts: Sequence[np.ndarray | None] | None = None,
                  cooc: Sequence[np.ndarray | None] | None = None) -> _Products:
        """The weight-free part of :meth:`_score_block`: the similarity (and head, and text)
        products for the users with a vector, and the popularity row each user is ranked with."""
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
        p = _Products(len(users), n_rows, live, set(live), sims, head_scores, popularity)
        if texts is not None and self.text_index is not None:
            p.live_text = [i for i, t in enumerate(texts) if t is not None]
            if p.live_text:
                T = np.stack([texts[i] for i in p.live_text]).astype(np.float32, copy=False)
                p.text = self.text_index.scores(T)[:, :n_rows] if n_rows else np.zeros((len(T), 0), np.float32)
        if cooc is not None and self.cooccurrence is not None:
            p.live_co = [i for i, h in enumerate(cooc) if h is not None]
            if p.live_co:
                p.co = np.zeros((len(p.live_co), n_rows), np.float32)
                for j, i in enumerate(p.live_co):  # a row made before the catalogue grew: new items 0
                    h = cooc[i][:n_rows]
                    p.co[j, : len(h)] = h
        return p

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
        warm = set(p.live_set)
        for name, rows, mat, on in (("text", p.live_text, p.text, self._uses_text(w)),
                                    ("cooccurrence", p.live_co, p.co, self._uses_co(w))):
            if not (rows and on):
                continue
            if own and len(rows) == b:  # every user has it, and p is not used again: scaled in place
                mat *= np.float32(getattr(w, name))
                parts[name] = mat
            else:  # a part some users lack: zero for them
                parts[name] = np.zeros((b, n_rows), np.float32)
                parts[name][rows] = np.float32(getattr(w, name)) * mat
            for i in rows:
                names[i].append(name)
            warm.update(rows)
        pop_rows = [i for i in range(b) if w.popularity or i not in warm]
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
        arrays = list(parts.values())
        total = arrays[0].copy() if arrays else np.zeros((b, n_rows), np.float32)
        for arr in arrays[1:]:
            total += arr
        alive = self.index.alive
        if not alive.all():
            total[:, ~alive] = -np.inf
        return total, parts, [tuple(n) for n in names]

    def part_matrices(self, users: Sequence[np.ndarray | None], *,
                      popularity: Sequence[np.ndarray | None] | None = None,
                      texts: Sequence[np.ndarray | None] | None = None,
                      cooc: Sequence[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
        """Every part this ranker can blend, unweighted (users x index rows; 0 where a user lacks
        a part): what a trainer fits the blend weights on."""
        p = self._products(users, popularity, self.head is not None, texts, cooc)
        b, n_rows = p.n, p.n_rows
        out: dict[str, np.ndarray] = {}
        for name, rows, mat in (("similarity", p.live, p.sims), ("head", p.live, p.head),
                                ("text", p.live_text, p.text), ("cooccurrence", p.live_co, p.co)):
            if mat is not None:
                out[name] = np.zeros((b, n_rows), np.float32)
                out[name][rows] = mat
        pop = np.zeros((b, n_rows), np.float32)
        for i in range(b):
            row = p.popularity[i] if p.popularity is not None else None
            if row is None:
                if p.shared is None:
                    p.shared = self.popularity.dense(self.index)
                row = p.shared
            pop[i] = row
        out["popularity"] = pop
        return out

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
                     weights: Sequence[Weights] | None = None,
                     texts: Sequence[np.ndarray | None] | None = None,
                     cooc: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
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
        p = self._products(users, popularity, any(self._uses_head(w) for w in sets),
                           texts if any(self._uses_text(w) for w in sets) else None,
                           cooc if any(self._uses_co(w) for w in sets) else None)
        out = []
        for k, w in enumerate(sets):
            total, _, _ = self._blend(p, w, own=k == len(sets) - 1)
            self._drop(total, excludes)
            out.append(total)
        return out

    def recommend(self, user: np.ndarray | None, n: int = 10, *, exclude: Iterable[str] = (),
                  text: np.ndarray | None = None, cooc_row: np.ndarray | None = None) -> Recommendation:
        """Top-``n`` for one user's vector (None = cold start), skipping ``exclude``."""
        return self.recommend_many([user], n, excludes=[exclude], texts=[text], cooc=[cooc_row])[0]

    def recommend_many(self, users: Sequence[np.ndarray | None], n: int = 10, *,
                       excludes: Sequence[Iterable[str]] | None = None,
                       popularity: Sequence[np.ndarray | None] | None = None,
                       texts: Sequence[np.ndarray | None] | None = None,
                       cooc: Sequence[np.ndarray | None] | None = None) -> list[Recommendation]:
        """:meth:`recommend` for several users (one list each, in order), scored together
        (:meth:`score_many`) and picked together (one top-k over the users x items matrix).
        ``excludes[i]`` are the ids user ``i`` must not get."""
        for user in users:
            if user is not None and not np.all(np.isfinite(user)):
                raise ValueError("user vector contains NaN or infinite values; reset this user's state")
        if not users:
            return []
        total, parts, present = self._score_block(users, popularity, texts, cooc)
        self._drop(total, excludes)
        best = top_k_rows(total, min(n, len(self.index)))
        # whole-matrix gathers, then plain Python floats: not a numpy scalar per item and part
        scores = np.take_along_axis(total, best, 1).tolist()
        picked = {name: np.take_along_axis(arr, best, 1) for name, arr in parts.items()}
        drivers = _drivers(picked, present)
        names = list(picked)
        columns = {name: arr.tolist() for name, arr in picked.items()}
        id_at, out = self.index.id_at, []
        for i, rows in enumerate(best.tolist()):
            items = []
            for k, row in enumerate(rows):
                score = scores[i][k]
                if not math.isfinite(score):
                    continue
                row_parts = {name: columns[name][i][k] for name in present[i]}
                items.append(ScoredItem(id_at(row), score, row_parts, names[drivers[i][k]]))
            out.append(Recommendation(items, cold_start=present[i] == ("popularity",)))
        return out


def _drivers(picked: dict[str, np.ndarray], present: Sequence[tuple[str, ...]]) -> list[list[int]]:
    """Per user and listed item, the position in ``picked`` of the part with the largest absolute
    value among the parts that user has (the first on a tie): every list's drivers in one pass."""
    names = list(picked)
    if not names:
        return [[] for _ in present]
    size = np.abs(np.stack(list(picked.values())))  # (parts, users, k)
    for i, have in enumerate(present):
        if len(have) != len(names):
            for j, name in enumerate(names):
                if name not in have:
                    size[j, i] = -1.0
    return size.argmax(axis=0).tolist()
