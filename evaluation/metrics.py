"""Ranking metrics: the rank of the true item and what HR, NDCG, MRR, precision, recall, F1
and MAP at K make of it (one definition for every protocol and system)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

# ============================================================================================
# metrics
# ============================================================================================


def hit_at_k(rank: float, k: int) -> float:
    """1 if the relevant item is ranked in the top ``k`` (ranks start at 1), else 0."""
    return 1.0 if rank <= k else 0.0


def ndcg_at_k(rank: float, k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 1)`` inside the top ``k``, else 0."""
    return 1.0 / math.log2(rank + 1.0) if rank <= k else 0.0


def reciprocal_rank(rank: float) -> float:
    """``1 / rank`` over the full ranking (0 when the item cannot be ranked: rank = inf)."""
    return 0.0 if not math.isfinite(rank) else 1.0 / rank


def precision_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """Share of the first ``k`` slots holding a relevant item (the denominator is ``k``)."""
    rel = set(relevant)
    return sum(1 for x in list(ranked)[:k] if x in rel) / k


def recall_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """Share of the relevant items found in the first ``k`` (0 when nothing is relevant)."""
    rel = set(relevant)
    if not rel:
        return 0.0
    return sum(1 for x in list(ranked)[:k] if x in rel) / len(rel)


def f1_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """Harmonic mean of :func:`precision_at_k` and :func:`recall_at_k` (0 when both are 0)."""
    rel = set(relevant)
    p, r = precision_at_k(ranked, rel, k), recall_at_k(ranked, rel, k)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def average_precision_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    """AP@k: mean of precision@i at each relevant position i <= k, over ``min(|relevant|, k)``."""
    rel = set(relevant)
    if not rel:
        return 0.0
    hits, total = 0, 0.0
    for i, x in enumerate(list(ranked)[:k], start=1):
        if x in rel:
            hits += 1
            total += hits / i
    return total / min(len(rel), k)


def rank_metrics(rank: float, k: int) -> dict[str, float]:
    """All offline metrics for one user with one relevant item at ``rank`` (inf: unranked).

    Equal to the list functions above for a list holding the item at that position.
    """
    hit = hit_at_k(rank, k)
    p, r = hit / k, hit
    return {
        f"hr@{k}": hit,
        f"ndcg@{k}": ndcg_at_k(rank, k),
        "mrr": reciprocal_rank(rank),
        f"precision@{k}": p,
        f"recall@{k}": r,
        f"f1@{k}": 0.0 if p + r == 0 else 2 * p * r / (p + r),
        f"map@{k}": 1.0 / rank if hit else 0.0,
    }


def rank_of(scores: np.ndarray, target: int, exclude: np.ndarray | None = None) -> float:
    """1-based rank of ``scores[target]`` with ``exclude`` removed, ties to the lower index first
    (the order :func:`inference.vectors.top_k` lists them in); ``inf`` when it cannot be ranked."""
    s = scores
    if exclude is not None and len(exclude):
        s = np.array(scores, copy=True)
        s[exclude] = -np.inf
    t = s[target]
    if not np.isfinite(t):
        return math.inf
    return float(1 + np.count_nonzero(s > t) + np.count_nonzero(s[:target] == t))


# ============================================================================================
# item text: where each item's vector comes from
# ============================================================================================


