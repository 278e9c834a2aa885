"""Small vector helpers shared by the encoder, the index, user state and ranking."""
from __future__ import annotations

import numpy as np


def as_unit(vectors: np.ndarray, *, what: str = "vector") -> np.ndarray:
    """Return float32 copies of ``vectors`` (1-D or 2-D) scaled to unit L2 norm.

    Raises ``ValueError`` for NaN/inf entries or all-zero rows: those cannot be ranked,
    and letting them in silently would poison every score they touch.
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite values; re-encode the text or drop the item")
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what} is all zeros and has no direction; give the item some text")
    return (arr / norms).astype(np.float32, copy=False)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of a 1-D array, best first (ties: lower index first)."""
    return top_k_rows(np.asarray(scores)[None, :], k)[0]


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_k` for each row of a 2-D array at once: ``(rows, k)`` column indices."""
    b, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.empty((b, 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (b, 1))
    order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=-1)
    return np.take_along_axis(part, order, 1)
