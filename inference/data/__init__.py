"""Data shipped inside the package so the demo runs on a fresh clone.

Only the Amazon 2014 Musical Instruments 5-core reviews (2.4 MB, research use; see
``SOURCE.md`` beside this file) are shipped. Larger datasets are read from a path.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
MUSICAL_INSTRUMENTS = DATA_DIR / "reviews_Musical_Instruments_5.json.gz"


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield one dict per line of a JSON-lines file, gzipped (``.gz``) or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield json.loads(line)


def review_sentences(limit: int = 200, path: str | Path = MUSICAL_INSTRUMENTS) -> list[str]:
    """Real review texts (deduplicated, non-empty, in file order) for checks and benchmarks."""
    out: list[str] = []
    seen: set[str] = set()
    for row in iter_jsonl(path):
        text = (row.get("reviewText") or "").strip()
        if text and text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) >= limit:
                break
    return out
