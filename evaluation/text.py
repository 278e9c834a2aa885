"""Where item vectors come from in an evaluation (catalogue text, or review text seen so far),
and encoding texts once with an on-disk cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.datasets import Dataset, DatasetNotFound, read_catalogue

from .progress import _bar

log = logging.getLogger("streamrec.evaluate")
DEFAULT_CACHE = "~/.cache/streamrec/eval"  # $STREAMREC_EVAL_CACHE overrides it

@dataclass
class ItemTextPlan:
    """Which items get a vector from catalogue text up front, and which from reviews as they arrive.

    ``catalogue``: ``{item_id: text}`` encoded once before the replay (the worker's catalogue
    topic). ``history``: items whose vector is the running mean of the review-text vectors seen
    *so far* (added to the index at their first review with text; updated with each one), the
    honest online variant when there is no catalogue text.
    """

    mode: str
    catalogue: dict[str, str]
    history: set[str]
    source: dict[str, Any]


def _catalogue_only_text(ds: Dataset, items: Sequence[str]) -> dict[str, str]:
    """Item text that does not come from the reviews (title, catalogue description, tags)."""
    how = ds.stats.get("item_text") or {}
    if not (how.get("summaries", 0) or how.get("review_text", 0)):
        return {i: ds.items[i].text() for i in items if i in ds.items and ds.items[i].text().strip()}
    path = ds.stats.get("catalogue_file")
    if not path:
        return {}
    try:
        raw, _ = read_catalogue(path, wanted=set(items))
    except DatasetNotFound:
        return {}
    return {i: raw[i].text() for i in items if i in raw and raw[i].text().strip()}


def plan_item_text(ds: Dataset, items: Sequence[str], mode: str = "auto") -> ItemTextPlan:
    """Decide where item vectors come from.

    * ``catalogue``: the text :func:`load_dataset` built for every item -- for items without a
      catalogue description that is a digest of the item's reviews over the *whole file*, which
      leaks future reviews into the prequential protocol (said in ``source.leakage``);
    * ``history``: review text seen so far only (no catalogue text at all);
    * ``auto`` (default): catalogue text where the catalogue has some (title, description, tags;
      never review-derived), review history for the rest.
    """
    if mode not in ("auto", "catalogue", "history"):
        raise ValueError(f"item text mode must be auto, catalogue or history, not {mode!r}")
    how = dict(ds.stats.get("item_text") or {})
    from_reviews = how.get("summaries", 0) + how.get("review_text", 0)
    if mode == "catalogue":
        cat = {i: ds.items[i].text() for i in items if i in ds.items and ds.items[i].text().strip()}
        leak = (f"{from_reviews} of {len(ds.items)} items have text built by load_dataset from their reviews "
                "over the whole file (summaries first): those item vectors know reviews that come later in the "
                "replay, which flatters every streamrec figure (future information). Use --item-text history "
                "or auto for the honest online variant.") if from_reviews else None
        source = {"mode": "catalogue", "items_from_catalogue_text": len(cat), "items_from_review_history": 0,
                  "load_dataset_item_text": how, "leakage": leak}
        return ItemTextPlan("catalogue", cat, set(), source)
    cat = {} if mode == "history" else _catalogue_only_text(ds, items)
    hist = {i for i in items if i not in cat}
    leak = None
    if ds.stats.get("format") == "movielens" and cat:
        leak = ("MovieLens item text includes the most frequent user tags from tags.csv over the whole file "
                "(tags are time-stamped; a few were written after some of the replayed ratings). Title and "
                "genres are catalogue data.")
    source = {"mode": mode, "items_from_catalogue_text": len(cat), "items_from_review_history": len(hist),
              "load_dataset_item_text": how, "leakage": leak,
              "history_rule": "vector = mean of the item's review-text vectors seen so far; the item joins the "
                              "index at its first review with text, after that review has been scored"}
    return ItemTextPlan(mode, cat, hist, source)


# ============================================================================================
# encoding, cached
# ============================================================================================


def default_cache_dir() -> str:
    return os.environ.get("STREAMREC_EVAL_CACHE") or DEFAULT_CACHE


def encode_cached(encoder, texts: Sequence[str], cache_dir: str | Path | None = "default", *,
                  progress: bool = False, desc: str = "encoding", chunk: int = 256,
                  stats: dict | None = None) -> np.ndarray:
    """``encoder.encode(texts)`` in length-sorted chunks, cached as ``.npy`` keyed by a hash of the
    model (manifest, variant, max tokens) and the texts, so re-runs skip the encoder.
    ``cache_dir`` "default" is ``$STREAMREC_EVAL_CACHE`` or ``~/.cache/streamrec/eval``; None: no cache."""
    texts = list(texts)
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    dim = int(encoder.dim)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        h.update(json.dumps(getattr(encoder, "manifest", {}), sort_keys=True, default=str).encode())
        info = getattr(encoder, "info", None)
        h.update(f"|{getattr(info, 'variant', '')}|{getattr(encoder, 'max_tokens', '')}|{len(texts)}|".encode())
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
        path = Path(cache_dir).expanduser() / f"{h.hexdigest()[:32]}.npy"
        if path.is_file():
            try:
                arr = np.load(path)
                if arr.shape == (len(texts), dim):
                    if stats is not None:
                        stats["cached"] = stats.get("cached", 0) + len(texts)
                    return arr
            except (OSError, ValueError):
                pass
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), dim), dtype=np.float32)
    bar = _bar(total=len(texts), desc=desc, unit="text", enabled=progress)
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        out[idx] = encoder.encode([texts[i] for i in idx])
        bar.update(len(idx))
    bar.close()
    if stats is not None:
        stats["encoded"] = stats.get("encoded", 0) + len(texts)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, out)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not cache encodings at %s: %s", path, exc)
    return out


