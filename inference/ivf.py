"""Inverted-file search for catalogues past the index's exact limit.

Items are bucketed by spherical k-means (about ``sqrt(N)`` buckets); a query scores
the centroids, then only the rows of its ``nprobe`` best buckets. Recall is traded for
speed in a way that ``streamrec bench scoring`` measures; below the exact limit the index
never uses this.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vectors import top_k


@dataclass
class IVF:
    centroids: np.ndarray  # (lists, dim) unit vectors
    lists: list[np.ndarray]  # row ids per bucket


def build_ivf(matrix: np.ndarray, alive: np.ndarray, *, n_lists: int | None = None,
              iters: int = 6, sample: int = 32_768, seed: int = 0) -> IVF:
    """Spherical k-means on a sample of live rows, then assign every live row to a bucket."""
    rows = np.flatnonzero(alive)
    n_lists = n_lists or max(1, min(len(rows), int(np.sqrt(len(rows)))))
    rng = np.random.default_rng(seed)
    train = matrix[rng.choice(rows, size=min(sample, len(rows)), replace=False)]
    cent = train[rng.choice(len(train), size=n_lists, replace=False)].copy()
    for _ in range(iters):
        assign = np.argmax(train @ cent.T, axis=1)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, train)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        sums[empty] = cent[empty]
        cent = sums / np.maximum(norms, 1e-12)
    assign = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), 65_536):
        chunk = rows[start : start + 65_536]
        assign[start : start + len(chunk)] = np.argmax(matrix[chunk] @ cent.T, axis=1)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(n_lists + 1))
    lists = [rows[order[bounds[i] : bounds[i + 1]]] for i in range(n_lists)]
    return IVF(cent.astype(np.float32), lists)


def search_ivf(ivf: IVF, matrix: np.ndarray, alive: np.ndarray, query: np.ndarray, n: int,
               nprobe: int, extra_rows: np.ndarray, drop_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` rows and scores for one query over the probed buckets plus ``extra_rows``."""
    probe = top_k(ivf.centroids @ query, min(nprobe, len(ivf.lists)))
    cand = np.unique(np.concatenate([ivf.lists[p] for p in probe] + [extra_rows]))
    cand = cand[alive[cand]]
    if drop_rows.size:
        cand = np.setdiff1d(cand, drop_rows, assume_unique=False)
    scores = matrix[cand] @ query
    best = top_k(scores, min(n, len(cand)))
    return cand[best], scores[best]
