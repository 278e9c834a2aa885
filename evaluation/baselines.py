"""Baseline recommenders for ``streamrec evaluate``, behind one small interface.

Every system under evaluation (these baselines and the streamrec adapter in
:mod:`evaluation.evaluate`) ranks a fixed *universe* of item ids (the catalogue of the replayed
events) and exposes:

* ``observe(event)``: fold one event in (after it has been scored: test-then-train);
* ``scores(user_id) -> np.ndarray``: one float per universe item, ``-inf`` for items the
  system cannot rank yet (e.g. never seen); higher is better;
* ``excluded(user_id) -> np.ndarray``: universe indices left out of that user's list (the
  items the user has already interacted with);
* ``recommend(user_id, n, exclude=True) -> list[item_id]``: the Top-``n`` built from the two;
* ``retrain(events_so_far)``: called by the runner every ``retrain_every`` events when the
  system has ``needs_retraining = True`` (ALS); a no-op for incremental systems;
* ``request(user_id)`` / ``score_requests(requests)``: how the runner ranks a block of events
  at once (each request taken before its event is applied); the defaults build on ``scores``
  and ``excluded``, so a new system needs neither.

Ties are broken by lower universe index (:func:`inference.vectors.top_k`), the same rule the
streamrec ranker uses; the evaluator shuffles the universe once (fixed seed) so that this rule
carries no information about the data.

Example::

    pop = PopularityBaseline(["a", "b", "c"], half_life_s=86400)
    pop.observe(Event("u1", "b", "click", 0.0))
    pop.recommend("u2", 2)          # ["b"]: "a" and "c" were never seen, so cannot be ranked
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from inference.events import Event
from inference.vectors import top_k

log = logging.getLogger("streamrec.baselines")

__all__ = [
    "System",
    "PopularityBaseline",
    "CooccurrenceKNN",
    "ALSBaseline",
    "DecayedCounts",
]


class System:
    """Shared plumbing: universe index, per-user seen items, ``recommend`` from ``scores``."""

    name = "system"
    needs_retraining = False

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        self.pos: dict[str, int] = {i: k for k, i in enumerate(self.item_ids)}
        if len(self.pos) != len(self.item_ids):
            raise ValueError("item ids in the universe must be unique")
        self.n_items = len(self.item_ids)
        self.seen: dict[str, dict[int, None]] = {}  # user -> items in first-seen order (an ordered set)

    # -- the interface --------------------------------------------------------------------
    def observe(self, event: Event) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def scores(self, user_id: str) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def excluded(self, user_id: str) -> np.ndarray:
        seen = self.seen.get(user_id)
        if not seen:
            return np.empty(0, dtype=np.int64)
        return np.fromiter(seen, dtype=np.int64, count=len(seen))

    def retrain(self, events_so_far: Sequence[Event]) -> None:
        """Refit from every event so far (only systems with ``needs_retraining``)."""

    # -- ranking a block of events at once (evaluation.protocol.replay) -------------------
    def request(self, user_id: str):
        """What ranking ``user_id`` *now* takes, for :meth:`score_requests` later: the runner
        asks before it applies the event (test-then-train) and ranks a block of events together.
        By default the scores themselves, excluded items at -inf, so any system that only has
        :meth:`scores` works unchanged; a system that can defer the work (one matrix product for
        the block) returns a snapshot of what the scores depend on instead."""
        s = np.array(self.scores(user_id), dtype=np.float32, copy=True)
        drop = self.excluded(user_id)
        if drop.size:
            s[drop] = -np.inf
        return s

    def score_requests(self, requests: Sequence) -> np.ndarray:
        """``(len(requests), n_items)`` float32 scores, one row per :meth:`request` in order,
        each as :meth:`scores` gave it (excluded items at -inf) when the request was made."""
        if not len(requests):
            return np.zeros((0, self.n_items), np.float32)
        return np.stack(requests)

    def recommend(self, user_id: str, n: int = 10, exclude: bool = True) -> list[str]:
        s = np.array(self.scores(user_id), dtype=np.float32, copy=True)
        if exclude:
            drop = self.excluded(user_id)
            if drop.size:
                s[drop] = -np.inf
        best = top_k(s, min(n, self.n_items))
        return [self.item_ids[r] for r in best if np.isfinite(s[r])]

    def config(self) -> dict:
        """Hyper-parameters, for the result JSON."""
        return {}

    # -- helpers --------------------------------------------------------------------------
    def _remember(self, user_id: str, item: int) -> None:
        seen = self.seen.setdefault(user_id, {})
        seen.pop(item, None)
        seen[item] = None


class DecayedCounts:
    """Interaction counts per universe item, each weighted ``2 ** ((t - now) / half_life)``.

    Stored relative to a reference time and rebased before overflow (like
    :class:`inference.ranking.Popularity`), so an update is O(1). Items never seen are ``-inf``
    in :meth:`scores`: popularity knows nothing about them.
    """

    def __init__(self, n_items: int, half_life_s: float) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = float(half_life_s)
        self.values = np.full(n_items, -np.inf, dtype=np.float64)  # -inf: never seen
        self._ref: float | None = None
        self._top = 0.0

    @property
    def known(self) -> np.ndarray:
        return np.isfinite(self.values)

    def add(self, item: int, t: float, weight: float = 1.0) -> None:
        if self._ref is None:
            self._ref = t
        exponent = (t - self._ref) / self.half_life_s
        if exponent > 500:  # rebase: 2**500 is still far from float64 overflow
            shift = 0.5 ** exponent
            self.values *= shift
            self._top *= shift
            self._ref, exponent = t, 0.0
        v = self.values[item]
        v = (0.0 if v == -np.inf else v) + weight * 2.0 ** exponent
        self.values[item] = v
        self._top = max(self._top, v)

    def scores(self) -> np.ndarray:
        """Counts scaled to (0, 1] (1 = the most popular item now), ``-inf`` for unseen items."""
        if self._top <= 0:
            return self.values.astype(np.float32)
        return (self.values * (1.0 / self._top)).astype(np.float32)


class PopularityBaseline(System):
    """Recency-weighted popularity: the same list for everyone, seen items removed.

    Every interaction counts 1, decayed with ``half_life_s`` in event time; the default half-life
    is the streamrec worker's popularity half-life (14 days).
    """

    name = "popularity"

    def __init__(self, item_ids: Sequence[str], half_life_s: float = 14 * 86400.0) -> None:
        super().__init__(item_ids)
        self.counts = DecayedCounts(self.n_items, half_life_s)

    def observe(self, event: Event) -> None:
        item = self.pos.get(event.item_id)
        if item is None:
            return
        self.counts.add(item, event.event_time)
        self._remember(event.user_id, item)

    def scores(self, user_id: str) -> np.ndarray:
        return self.counts.scores()

    def config(self) -> dict:
        return {"half_life_days": self.counts.half_life_s / 86400.0}


class CooccurrenceKNN(System):
    """Incremental item-to-item kNN on co-occurrence counts.

    When a user interacts with item ``j``, ``C[i, j]`` and ``C[j, i]`` grow by one for each of
    the user's previous ``window`` distinct items ``i``. Similarity is cosine on those counts,
    ``C[i, j] / sqrt(n_i * n_j)`` (``n`` = interactions per item). A user's scores are the
    similarity to their last ``history`` items, the most recent weighted 1, the one before
    ``decay``, and so on; items with no co-occurrence fall back to (tiny-weighted) popularity so
    the list is never empty and ties are broken by what is popular now.

    Counts live in a dense ``float32`` matrix: ``max_items`` (default 16,000, about 1 GB) bounds
    it; past that the evaluator leaves this baseline out and says so.
    """

    name = "cooccurrence-knn"

    def __init__(self, item_ids: Sequence[str], *, window: int = 50, history: int = 20, decay: float = 0.9,
                 popularity_half_life_s: float = 14 * 86400.0, max_items: int = 16_000) -> None:
        super().__init__(item_ids)
        if self.n_items > max_items:
            raise MemoryError(f"cooccurrence-knn keeps a dense {self.n_items:,} x {self.n_items:,} matrix; "
                              f"that is over max_items={max_items:,}")
        self.window = window
        self.history = history
        self.decay = decay
        self.C = np.zeros((self.n_items, self.n_items), dtype=np.float32)
        self.n = np.zeros(self.n_items, dtype=np.float32)
        self.pop = DecayedCounts(self.n_items, popularity_half_life_s)
        self.recent: dict[str, list[int]] = {}  # user -> distinct items, most recent last
        self._weights = decay ** np.arange(history, dtype=np.float32)[::-1]  # oldest .. newest

    def observe(self, event: Event) -> None:
        j = self.pos.get(event.item_id)
        if j is None:
            return
        recent = self.recent.setdefault(event.user_id, [])
        if j in recent:
            recent.remove(j)
        prev = recent[-self.window:]
        if prev:
            idx = np.asarray(prev, dtype=np.int64)
            self.C[idx, j] += 1.0
            self.C[j, idx] += 1.0
        self.n[j] += 1.0
        recent.append(j)
        del recent[: max(0, len(recent) - self.window)]
        self.pop.add(j, event.event_time)
        self._remember(event.user_id, j)

    def similarity_to(self, items: Sequence[int], weights: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of every item to ``items``: shape (len(items), n_items), or the
        ``weights``-weighted sum over ``items`` (shape (n_items,)) when weights are given."""
        idx = np.asarray(items, dtype=np.int64)
        norm = np.sqrt(np.maximum(self.n, 1.0))
        if weights is None:
            return self.C[idx] / (norm[idx, None] * norm[None, :])
        return (np.asarray(weights, dtype=np.float32) / norm[idx]) @ self.C[idx] / norm

    def scores(self, user_id: str) -> np.ndarray:
        pop = self.pop.scores()
        recent = self.recent.get(user_id)
        if not recent:
            return pop
        last = recent[-self.history:]
        sim = self.similarity_to(last, self._weights[-len(last):])
        # popularity only orders items the neighbourhood says nothing about (it is < 1e-3 of one
        # co-occurrence); unknown items stay -inf
        pop *= 1e-4
        pop += sim
        return pop

    def config(self) -> dict:
        return {"window": self.window, "history": self.history, "decay": self.decay,
                "similarity": "cosine on co-occurrence counts", "fallback": "recency-weighted popularity",
                "popularity_half_life_days": self.pop.half_life_s / 86400.0}


class ALSBaseline(System):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the ``implicit`` library.

    Refitted from scratch on every event so far each time the runner calls :meth:`retrain`
    (every ``--retrain-every`` events). Between fits, a user's factor is recomputed from their
    *current* interactions with the fitted item factors (the exact least-squares fold-in that
    ``implicit``'s ``recalculate_user`` does), so new users and new interactions count at once.
    Items first seen after the last fit cannot be ranked (``-inf``). Before the first fit, and
    for users with no interaction on a fitted item, it ranks by recency-weighted popularity.

    Confidence is ``alpha * (number of interactions)``, as in ``implicit``.
    """

    name = "als"
    needs_retraining = True
    retrains_in_background = True  # the fit is native code: the runner may overlap it with other refits

    def __init__(self, item_ids: Sequence[str], *, factors: int = 32, regularization: float = 1.0,
                 alpha: float = 10.0, iterations: int = 15, seed: int = 0, threads: int = 0,
                 popularity_half_life_s: float = 14 * 86400.0) -> None:
        super().__init__(item_ids)
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.threads = threads
        self.pop = DecayedCounts(self.n_items, popularity_half_life_s)
        self.counts: dict[str, dict[int, float]] = {}  # user -> item -> interactions
        self.item_factors: np.ndarray | None = None
        self.fitted_items: np.ndarray | None = None  # bool per universe item: had data at the last fit
        self._Y64: np.ndarray | None = None
        self._YtY: np.ndarray | None = None  # Y^T Y + reg * I
        self._normal: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # user -> (sum (c-1) y y^T, sum c y)
        self.fits = 0
        self.fit_seconds = 0.0
        self._read: tuple[int, Event | None] = (0, None)  # events read into the lists below, and the last one
        self._users: dict[str, int] = {}
        self._rows: list[int] = []
        self._cols: list[int] = []

    def observe(self, event: Event) -> None:
        item = self.pos.get(event.item_id)
        if item is None:
            return
        row = self.counts.setdefault(event.user_id, {})
        before = row.get(item, 0.0)
        row[item] = before + 1.0
        self.pop.add(item, event.event_time)
        self._remember(event.user_id, item)
        cached = self._normal.get(event.user_id)
        if cached is not None and self.fitted_items[item]:
            # keep the user's normal equations current: O(factors^2) instead of a full rebuild
            A, b = cached
            y = self._Y64[item]
            dc = self.alpha  # confidence grows by alpha per interaction
            A += (dc - 1.0 if before == 0.0 else dc) * np.outer(y, y)
            b += dc * y

    def retrain(self, events_so_far: Sequence[Event]) -> None:
        import time

        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares

        t0 = time.perf_counter()
        # The runner passes every event so far, the last call's events first: only the new
        # ones are read (the same matrix as reading them all).
        n_done, last = self._read
        if not (0 < n_done <= len(events_so_far) and events_so_far[n_done - 1] is last):
            self._users, self._rows, self._cols, n_done = {}, [], [], 0
        users, rows, cols = self._users, self._rows, self._cols
        for ev in events_so_far[n_done:]:
            item = self.pos.get(ev.item_id)
            if item is None:
                continue
            rows.append(users.setdefault(ev.user_id, len(users)))
            cols.append(item)
        self._read = (len(events_so_far), events_so_far[-1] if len(events_so_far) else None)
        if not rows:
            return
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (np.asarray(rows), np.asarray(cols))),
                          shape=(len(users), self.n_items))
        m.sum_duplicates()
        with _single_blas_thread():
            model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                            alpha=self.alpha, iterations=self.iterations,
                                            random_state=self.seed, num_threads=self.threads)
            model.fit(m, show_progress=False)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        self.fitted_items = np.asarray(m.getnnz(axis=0) > 0)
        self._unfitted = np.flatnonzero(~self.fitted_items)
        self._Y64 = self.item_factors.astype(np.float64)
        self._YtY = self._Y64.T @ self._Y64 + self.regularization * np.eye(self.item_factors.shape[1])
        self._normal = {}
        self.fits += 1
        self.fit_seconds += time.perf_counter() - t0

    def user_factor(self, user_id: str) -> np.ndarray | None:
        """The least-squares user factor for the user's current items (None: nothing to go on).

        Solves ``(YtY + reg*I + sum_i (c_i - 1) y_i y_i^T) x = sum_i c_i y_i`` over the user's
        items that had data at the last fit, ``c_i = alpha * interactions`` -- what ``implicit``'s
        ``recalculate_user`` computes; the per-user sums are kept up to date between fits.
        """
        if self.item_factors is None:
            return None
        cached = self._normal.get(user_id)
        if cached is None:
            row = self.counts.get(user_id)
            if not row:
                return None
            items = np.fromiter(row.keys(), dtype=np.int64, count=len(row))
            conf = self.alpha * np.fromiter(row.values(), dtype=np.float64, count=len(row))
            keep = self.fitted_items[items]
            items, conf = items[keep], conf[keep]
            Yu = self._Y64[items]
            A = Yu.T @ ((conf - 1.0)[:, None] * Yu)
            b = Yu.T @ conf
            cached = self._normal[user_id] = (A, b)
        A, b = cached
        if not b.any():
            return None
        return np.linalg.solve(self._YtY + A, b).astype(np.float32)

    def scores(self, user_id: str) -> np.ndarray:
        x = self.user_factor(user_id)
        if x is None:
            return self.pop.scores()
        s = self.item_factors @ x
        s[self._unfitted] = -np.inf
        return s

    def config(self) -> dict:
        return {"library": "implicit", "factors": self.factors, "regularization": self.regularization,
                "alpha": self.alpha, "iterations": self.iterations, "seed": self.seed,
                "fold_in": "least-squares user factor from current interactions",
                "before_first_fit": "recency-weighted popularity"}


def _single_blas_thread():
    """implicit runs its own threads; a multi-threaded BLAS underneath only oversubscribes."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, "blas")
    except ImportError:  # threadpoolctl is optional
        import contextlib

        return contextlib.nullcontext()
