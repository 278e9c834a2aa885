"""The output and dead-letter records: part of the public contract (see README)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from typing import Any

import orjson

from inference.events import Event
from inference.ranking import Recommendation

#: Dead-letter records carry the original bytes up to this size; past it, a prefix plus
#: the size and SHA-256 (the source topic/partition/offset point at the full record).
DEAD_LETTER_MAX_VALUE = 256 * 1024
DEAD_LETTER_PREFIX = 4 * 1024
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: one call per published list, so it counts; the standard
    library for what orjson refuses, e.g. integers past 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def recommendation_record(
    event: Event,
    rec: Recommendation,
    *,
    model_version: str,
    source: dict,
    received_ts: float,
    explain: bool = False,
    explanations: list[dict] | None = None,
) -> dict:
    """The value published on the recommendations topic (key = user id).

    ``explain`` adds each item's ``driver`` and ``parts``; ``explanations`` (from
    :meth:`inference.recommender.Recommender.explain`, one per item) add ``history``,
    ``request``, ``similarity_other`` and ``moved`` as well.
    """
    now = time.time()
    items = []
    for pos, it in enumerate(rec.items):
        entry = {"item_id": it.item_id, "score": round(it.score, 6)}
        if it.explored:
            entry["explored"] = True
        if explain:
            entry["driver"] = it.driver
            entry["parts"] = {k: round(v, 6) for k, v in it.parts.items()}
        if explanations is not None:
            entry.update({key: v for key, v in explanations[pos].items()
                          if key in ("history", "request", "similarity_other", "moved")})
        items.append(entry)
    return {
        "user_id": event.user_id,
        "items": items,
        "model_version": model_version,
        "cold_start": rec.cold_start,
        "trigger": {
            "event_id": event.event_id,
            "type": event.kind,
            "item_id": event.item_id,
            **source,
        },
        "event_time": event.event_time,
        "published_at": round(now, 6),
        "latency_ms": round((now - received_ts) * 1000.0, 3),
        "worker": WORKER_ID,
    }


def dead_letter_record(reason: str, detail: str, *, source: dict, key: bytes | None, value: bytes | None,
                       field: str | None = None) -> dict:
    """The value published on the dead-letter topic (key = the original key)."""
    out: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "field": field,
        "source": source,
        "key_b64": base64.b64encode(key).decode() if key is not None else None,
        "worker": WORKER_ID,
        "rejected_at": round(time.time(), 6),
    }
    if value is None:
        out.update(value_b64=None, value_size=0, truncated=False)
    else:
        cut = len(value) > DEAD_LETTER_MAX_VALUE
        kept = value[:DEAD_LETTER_PREFIX] if cut else value
        out.update(
            value_b64=base64.b64encode(kept).decode(),
            value_size=len(value),
            truncated=cut,
            value_sha256=hashlib.sha256(value).hexdigest(),
        )
    return out
