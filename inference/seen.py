"""The items a user has interacted with, as a compact set of 32-bit item keys.

A list must never hold an item its user already interacted with, however long ago, so the
user state keeps one 4-byte key per item interacted with (``UserState.seen``, oldest first,
capped at ``UpdateConfig.seen_items``): 4 KB for a 1,000-item history, against ~12 bytes
per id for the ids themselves. A key is the first 4 bytes of the id's BLAKE2b digest, so
the set is exact for the items it holds (never a false negative) and an item the user never
touched shares a key with one of their ``m`` items with probability ``m / 2**32``
(2.3e-7 for a 1,000-item history): the only error is, rarely, one item too many left out.

Example::

    seen = add_key(np.zeros(0, KEY_DTYPE), item_key("b0001"), cap=10)
    lookup = KeyLookup(item_keys(["b0001", "b0002"]), np.array([0, 1]))
    lookup.rows_of(seen)      # array([0]): row 0 holds a seen item
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

KEY_DTYPE = np.dtype("<u4")


def item_key(item_id: str) -> int:
    """The 32-bit key of an item id (stable across processes and versions: it is persisted)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=4).digest(), "little")


def item_keys(item_ids: Iterable[str]) -> np.ndarray:
    return np.fromiter((item_key(i) for i in item_ids), dtype=KEY_DTYPE)


def add_key(seen: np.ndarray, key: int, cap: int) -> np.ndarray:
    """``seen`` with ``key`` appended (a new array; unchanged if already there), oldest dropped
    past ``cap``. The old array is never written to, so a snapshot of it stays valid."""
    if seen.size and bool((seen == key).any()):
        return seen
    out = np.append(seen, np.asarray([key], dtype=KEY_DTYPE))
    return out[out.size - cap:] if out.size > cap else out


class KeyLookup:
    """Item keys -> the rows holding them (every row whose key matches: colliding ids too)."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = np.asarray(keys, dtype=KEY_DTYPE)[order]
        self.rows = np.asarray(rows, dtype=np.int64)[order]

    def row_each(self, wanted: np.ndarray) -> np.ndarray:
        """Per wanted key, in order: the first row holding it, or -1 (a sequence's items -> rows)."""
        if not wanted.size or not self.keys.size:
            return np.full(wanted.size, -1, dtype=np.int64)
        lo = np.minimum(np.searchsorted(self.keys, wanted, "left"), self.keys.size - 1)
        return np.where(self.keys[lo] == wanted, self.rows[lo], -1)

    def rows_of(self, wanted: np.ndarray) -> np.ndarray:
        if not wanted.size or not self.keys.size:
            return np.empty(0, dtype=np.int64)
        lo = np.searchsorted(self.keys, wanted, "left")
        n = np.searchsorted(self.keys, wanted, "right") - lo
        if n.max() <= 1:
            return self.rows[lo[n == 1]]
        start = np.cumsum(n) - n  # all the matches of each wanted key: lo, lo + 1, ..., lo + n - 1
        return self.rows[np.repeat(lo, n) + np.arange(int(n.sum())) - np.repeat(start, n)]
