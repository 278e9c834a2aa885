"""Small exact vector sets for fast tests without the model (imported as ``smallsets``)."""
from __future__ import annotations

import numpy as np

from inference.events import Event
from inference.index import ItemIndex


def random_index(n: int = 300, dim: int = 24, seed: int = 0) -> tuple[ItemIndex, list[str]]:
    """``n`` items ``i0``.. with random unit vectors."""
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(n)]
    idx = ItemIndex(dim)
    idx.upsert_many(ids, rng.standard_normal((n, dim)))
    return idx, ids


def click(user: str, item: str, t: float, k: int) -> Event:
    return Event(user, item, "click", t, event_id=f"{user}-{k}")
