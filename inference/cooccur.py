"""Item-to-item co-occurrence, counted online from the events a worker applies.

When a user interacts with item ``j``, the pair of ``j`` and each of the user's previous
``window`` distinct items ``i`` (from the state's sequence, newest last) is counted, weighted by
how close the two are and in which order they came:

* closeness: the previous item just before ``j`` counts 1, the one before it ``proximity``, then
  ``proximity**2``, and so on (people choose in runs: the neighbour in the run says more than an
  item 40 choices back);
* order: ``C[i, j]`` ("``j`` came after ``i``") grows by the full weight and ``C[j, i]`` by
  ``backward`` (0.75) times it; two events of the same time have no order between them, so both grow by
  the mean of the two; a late event (a time earlier than items already in the sequence) counts
  as coming before those.

``n_j`` (interactions per item) grows by one. A user's co-occurrence score for item ``v`` is
``C[h, v] / (n_h**alpha * n_v**(1 - alpha))`` summed over the user's last ``history`` distinct
items ``h``, the newest weighted 1, the one before ``decay``, and so on: "people who chose what
you just chose chose this next", the collaborative signal text cannot see. ``alpha = 0.5`` is the
cosine of the counts; above it, popular candidates are divided down less. With ``proximity = 1,
backward = 1, alpha = 0.5`` this is exactly the co-occurrence kNN baseline of ``streamrec
evaluate`` (``tests/inference/test_cooccur.py``). It is a part of the ranking
(:class:`inference.ranking.Ranker`, weight ``Weights.cooccurrence``) that trained versions blend
in; the encoder alone (no version yet) does not use it.

The defaults (``proximity 0.95, backward 0.75, alpha 0.6``) come from a small grid on the three
shared datasets (closeness 0.9-0.97, backward 0.25-1, alpha 0.3-0.8), the co-occurrence part
scored alone, picked as the one that is at least level with the classic rule in both protocols on
all three sets (README "What happens to a user"): in-sample numbers, not a held-out result.

Like popularity, it lives in the worker's memory and counts the events that worker applies
(its partitions' users) since it started.

Storage is bounded: each index row keeps up to ``slots`` neighbours (row, count) in two
fixed-width arrays (8 bytes a slot: 160 MB for 10,000 items at 2,048 slots; past ``max_bytes``
the rows keep fewer, their largest counts); when a row is full a new neighbour takes the slot of
the smallest count. Scoring reads only the slots in use. On MovieLens (9,724 items, streaming
NDCG@10 of this part alone) 2,048 slots give 0.0659, 1,024 slots 0.0657 and 256 slots 0.0629
(the classic rule: 0.0532 with 2,048 slots, 0.0534 with the kNN baseline's exact counts). Updates and the
scoring of a whole chunk are a few vectorised numpy operations, no Python loop over neighbours.

Example::

    co = Cooccurrence(alpha=0.5)
    co.add(np.array([3, 5]), 7)             # a user who had rows 3 then 5 chose row 7
    co.scores([np.array([5])], n_rows=10)[0, 7]      # 1.0: the count over sqrt(n_5 * n_7)
    co.scores([np.array([7])], n_rows=10)[0, 5]      # 0.75: 5 came before 7, not after
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np


class Cooccurrence:
    """Bounded co-occurrence counts over index rows, updated per event."""

    def __init__(self, *, window: int = 50, history: int = 20, decay: float = 0.9, proximity: float = 0.95,
                 backward: float = 0.75, alpha: float = 0.6, slots: int = 2048, max_bytes: int = 256 * 2**20) -> None:
        if not (0.0 < proximity <= 1.0 and 0.0 <= backward <= 1.0 and 0.0 <= alpha <= 1.0):
            raise ValueError(f"co-occurrence needs 0 < proximity <= 1, 0 <= backward <= 1 and 0 <= alpha <= 1; "
                             f"got proximity={proximity}, backward={backward}, alpha={alpha}")
        self.window = window
        self.history = history
        self.decay = decay
        self.proximity = proximity
        self.backward = backward
        self.alpha = alpha
        self.slots = slots
        self.max_bytes = max_bytes  # the slots shrink (largest counts kept) as the catalogue grows past it
        self.n = np.zeros(0, np.float32)  # interactions per row
        self.nbr = np.full((0, slots), -1, np.int32)  # neighbour rows per row (-1: empty)
        self.cnt = np.zeros((0, slots), np.float32)  # their counts
        self.deg = np.zeros(0, np.int32)  # slots in use per row (always the first ones, all >= 0)
        #: max(n, 1) ** alpha and ** (1 - alpha) per row (a history row's and a candidate's
        #: divisor), set with ``n`` in :meth:`_count`
        self.row_norm = np.ones(0, np.float32)
        self.col_norm = np.ones(0, np.float32)
        self.owner = np.zeros(0, np.uint32)  # per row: the item key its counts belong to
        self._layout = -1  # the ItemIndex.version last followed
        self.evicted = 0  # neighbours dropped from a full row
        self.events = 0
        self._lock = threading.Lock()
        self._hist_w = (decay ** np.arange(history, dtype=np.float32))[::-1].copy()  # oldest .. newest
        self._near = (proximity ** np.arange(window, dtype=np.float64))[::-1].astype(np.float32)  # oldest .. newest
        self._after = np.array([backward, (1.0 + backward) / 2, 1.0], np.float32)  # by order -1, 0, 1

    def copy(self) -> Cooccurrence:
        """An independent copy (a replay that starts again from here)."""
        with self._lock:
            out = Cooccurrence(window=self.window, history=self.history, decay=self.decay, proximity=self.proximity,
                               backward=self.backward, alpha=self.alpha, slots=self.slots, max_bytes=self.max_bytes)
            out.n, out.nbr, out.cnt, out.deg = self.n.copy(), self.nbr.copy(), self.cnt.copy(), self.deg.copy()
            out.owner, out._layout = self.owner.copy(), self._layout
            out.row_norm, out.col_norm = self.row_norm.copy(), self.col_norm.copy()
            out.evicted, out.events = self.evicted, self.events
            return out

    def _grow(self, n_rows: int) -> None:
        if n_rows > len(self.n):
            add = max(n_rows - len(self.n), len(self.n), 1024)
            fit = max(64, self.max_bytes // (8 * (len(self.n) + add)))
            if fit < self.slots:  # within the memory budget: each row keeps its largest counts
                keep = np.argsort(-self.cnt, axis=1, kind="stable")[:, :fit]
                self.nbr = np.take_along_axis(self.nbr, keep, 1)
                self.cnt = np.take_along_axis(self.cnt, keep, 1)
                self.deg = np.minimum(self.deg, fit).astype(np.int32)
                self.slots = fit
            self.n = np.concatenate([self.n, np.zeros(add, np.float32)])
            self.nbr = np.concatenate([self.nbr, np.full((add, self.slots), -1, np.int32)])
            self.cnt = np.concatenate([self.cnt, np.zeros((add, self.slots), np.float32)])
            self.deg = np.concatenate([self.deg, np.zeros(add, np.int32)])
            self.row_norm = np.concatenate([self.row_norm, np.ones(add, np.float32)])
            self.col_norm = np.concatenate([self.col_norm, np.ones(add, np.float32)])
            self.owner = np.concatenate([self.owner, np.zeros(add, np.uint32)])

    def follow(self, index) -> None:
        """Clear the rows whose item left the catalogue or was replaced by another (a freed row
        is reused by the next new item): checked only after the catalogue's layout changed."""
        if index.version == self._layout:
            return
        with self._lock:
            top = len(index.alive)
            self._grow(top)
            keys = np.where(index.alive, index._keys[:top], 0).astype(np.uint32)
            stale = np.flatnonzero((self.owner[:top] != keys) & ((self.n[:top] > 0) | (self.deg[:top] > 0)))
            for row in stale.tolist():
                self._clear(row)
            self.owner[:top] = keys
            self._layout = index.version

    # -- counting -----------------------------------------------------------------------
    def add(self, previous: np.ndarray, row: int, order: np.ndarray | None = None) -> None:
        """A user whose previous distinct items (rows, oldest first; the last ``window`` count,
        -1 entries ignored) are ``previous`` chose ``row``. ``order``, per previous item: 1 it
        came before this event, 0 at the same time, -1 after it (this event is late); None: all
        before."""
        prev = np.asarray(previous, np.int64)
        keep = (prev >= 0) & (prev != row)
        prev = prev[keep][-self.window:]
        with self._lock:
            self._grow(int(max(row, prev.max() if prev.size else 0)) + 1)
            self._count(row, self.n[row] + 1.0)
            self.events += 1
            if prev.size:
                near = self._near[self.window - prev.size:]
                if order is None:
                    after, before = near, near * np.float32(self.backward)
                else:  # order -1, 0, 1 -> share of C[prev, row] (row came after prev) and of C[row, prev]
                    o = np.asarray(order)[keep][-self.window:].astype(np.int64) + 1
                    after, before = near * self._after[o], near * self._after[2 - o]
                self._bump_row(row, prev, before)
                self._bump_rows(prev, row, after)

    def _count(self, row: int, n: float) -> None:
        """Set a row's interaction count and the divisors scoring reads (caller holds the lock)."""
        self.n[row] = n
        m = max(n, 1.0)
        self.row_norm[row] = m ** self.alpha
        self.col_norm[row] = m ** (1.0 - self.alpha)

    def _bump_row(self, row: int, cols: np.ndarray, vals: np.ndarray) -> None:
        """``C[row, c] += v`` for each (distinct) ``c`` in ``cols`` and its ``v`` in ``vals``."""
        d = int(self.deg[row])
        new, new_vals = cols, vals
        if d:
            hit = self.nbr[row, :d][None, :] == cols[:, None]  # (len(cols), d)
            found = hit.any(axis=1)
            self.cnt[row, hit.argmax(axis=1)[found]] += vals[found]
            new, new_vals = cols[~found], vals[~found]
        if new.size:
            room = min(new.size, self.slots - d)
            self.nbr[row, d:d + room] = new[:room]
            self.cnt[row, d:d + room] = new_vals[:room]
            self.deg[row] = d + room
            over, over_vals = new[room:][-self.slots:], new_vals[room:][-self.slots:]  # (more than slots: the newest)
            if over.size:  # full: the smallest counts make way
                drop = np.argpartition(self.cnt[row], over.size - 1)[: over.size]
                self.nbr[row, drop] = over
                self.cnt[row, drop] = over_vals
                self.evicted += int(over.size)

    def _bump_rows(self, rows: np.ndarray, col: int, vals: np.ndarray) -> None:
        """``C[r, col] += v`` for each (distinct) ``r`` in ``rows`` and its ``v`` in ``vals``."""
        hit = self.nbr[rows] == col  # (len(rows), slots)
        found = hit.any(axis=1)
        self.cnt[rows[found], hit[found].argmax(axis=1)] += vals[found]
        rest, rest_vals = rows[~found], vals[~found]
        if rest.size:
            d = self.deg[rest]
            free = d < self.slots
            r = rest[free]
            self.nbr[r, d[free]] = col
            self.cnt[r, d[free]] = rest_vals[free]
            self.deg[r] += 1
            full = rest[~free]
            if full.size:
                slot = self.cnt[full].argmin(axis=1)
                self.nbr[full, slot] = col
                self.cnt[full, slot] = rest_vals[~free]
                self.evicted += int(full.size)

    def _clear(self, row: int) -> None:
        """Forget a row (caller holds the lock)."""
        if row < len(self.n):
            self._count(row, 0.0)
            self.nbr[row] = -1
            self.cnt[row] = 0.0
            self.deg[row] = 0
            self.cnt[self.nbr == row] = 0.0  # a hole in other rows' slots: it counts 0

    # -- scoring ------------------------------------------------------------------------
    def scores(self, histories: Sequence[np.ndarray], n_rows: int) -> np.ndarray:
        """``(len(histories), n_rows)``: each history's (rows of distinct items, oldest first; the
        last ``history`` count) weighted, normalised counts to every row. An empty history scores zeros.

        Each history row contributes only its slots in use (a ragged gather, not history x the
        widest row): per request, work in proportion to the neighbours actually counted."""
        b = len(histories)
        out = np.zeros((b, n_rows), np.float32)
        with self._lock:
            self._grow(n_rows)
            row_norm, col_norm = self.row_norm[:n_rows], self.col_norm[:n_rows]
            flat_nbr, flat_cnt = self.nbr.reshape(-1), self.cnt.reshape(-1)
            for u, h in enumerate(histories):
                h = np.asarray(h, np.int64)
                h = h[(h >= 0) & (h < n_rows)][-self.history:]
                if not h.size:
                    continue
                w = self._hist_w[self.history - h.size:] / row_norm[h]  # oldest .. newest
                d = self.deg[h].astype(np.int64)
                total = int(d.sum())
                if not total:
                    continue
                ends = np.cumsum(d)
                at = np.repeat(h * self.slots - (ends - d), d) + np.arange(total)  # each row's used slots
                cols = flat_nbr[at]  # slots in use hold rows (a cleared neighbour: count 0)
                vals = flat_cnt[at] * np.repeat(w, d)
                out[u] = np.bincount(cols, weights=vals, minlength=n_rows)[:n_rows]
            out /= col_norm[None, :]
        return out
