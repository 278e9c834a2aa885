"""Reading dataset files: format detection, line and CSV-row readers that reject what the
worker would reject, and Amazon metadata (catalogue) files with their HTML cleaned.

:mod:`inference.datasets` builds datasets from these; ``read_catalogue`` is public on its own
(evaluation reads catalogue text without the reviews).
"""
from __future__ import annotations

import ast
import csv
import gzip
import html
import io
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inference.events import (
    DEFAULT_LIMITS,
    INVALID_UTF8,
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    InvalidEvent,
    ItemRecord,
    Limits,
    decode_record,
    parse_item,
)

# Metadata descriptions are capped (the encoder reads ~256 tokens, about 1,000 chars).
META_DESCRIPTION_CHARS = 2000


class DatasetNotFound(FileNotFoundError):
    """A dataset name or path that cannot be resolved; the message says what to pass."""


_JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")
_CSV_SUFFIXES = (".csv", ".csv.gz")


def _first_line(path: Path) -> bytes:
    for line in _iter_lines(path):
        return line
    return b""


def detect_format(path: Path) -> tuple[str, Path]:
    """``("amazon" | "movielens" | "simple", events file)`` for a file or folder."""
    path = Path(path)
    if path.is_dir():
        if (path / "ratings.csv").is_file():
            return "movielens", path / "ratings.csv"
        for stem in ("events",):
            for suf in (*_JSON_SUFFIXES, *_CSV_SUFFIXES):
                if (path / (stem + suf)).is_file():
                    return detect_format(path / (stem + suf))
        data = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_JSON_SUFFIXES + _CSV_SUFFIXES)
                      and not p.name.startswith(("meta_", "items.")))
        reviews = [p for p in data if p.name.startswith("reviews_") or "_5.json" in p.name]
        if len(reviews) == 1:
            return "amazon", reviews[0]
        if len(data) == 1:
            return detect_format(data[0])
        raise DatasetNotFound(
            f"cannot tell which file in {path} holds the events ({', '.join(p.name for p in data) or 'none found'}): "
            "pass the events file itself, or name it events.jsonl / events.csv")
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        header = _first_line(path).decode("utf-8", "replace")
        cols = {c.strip().strip('"') for c in header.split(",")}
        if {"userId", "movieId", "rating"} <= cols:
            return "movielens", path
        return "simple", path
    try:
        row = decode_record(_first_line(path))
    except InvalidEvent:
        row = None
    if isinstance(row, dict) and ("reviewerID" in row or "asin" in row):
        return "amazon", path
    return "simple", path


# --------------------------------------------------------------------------------------------
# shared machinery


def _open_text(path: Path):
    """Text handle for CSV; bad UTF-8 is kept as surrogates so the row (not the file) fails."""
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _iter_lines(path: Path) -> Iterator[bytes]:
    """Non-empty raw lines (bytes) of a JSON-lines file, gzipped or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield line


def _row_object(line: bytes, limits: Limits) -> dict:
    obj = decode_record(line, limits, "row")
    if not isinstance(obj, dict):
        raise InvalidEvent(NOT_AN_OBJECT, "the row is not a JSON object: write one object per line")
    return obj


def _bad_csv_row(row: list[str]) -> None:
    try:
        "".join(row).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(INVALID_UTF8, "the CSV row is not valid UTF-8: save the file as UTF-8") from None


def _cut(s: str, cap: int) -> str:
    if len(s) <= cap:
        return s
    cut = s[:cap]
    sp = cut.rfind(" ")
    return (cut[:sp] if sp > cap // 2 else cut).rstrip()


# --------------------------------------------------------------------------------------------
# catalogues


_TAG = re.compile(r"<[^<>]*>")
_OPEN_TAG_TAIL = re.compile(r"<[^<>]*$")
_WS = re.compile(r"\s+")
_MARKUP = re.compile(r'[<>]|="|/>')


def _clean_html(s: Any) -> str:
    """Plain text from the broken HTML fragments in Amazon metadata; "" if markup remains."""
    if not isinstance(s, str) or not s:
        return ""
    s = _OPEN_TAG_TAIL.sub(" ", _TAG.sub(" ", s))
    s = _WS.sub(" ", html.unescape(s)).strip()
    return "" if _MARKUP.search(s) else s


def _amazon_meta_record(row: dict) -> ItemRecord | None:
    asin = row.get("asin")
    if not isinstance(asin, str) or not asin.strip():
        return None
    title = _clean_html(row.get("title"))
    desc = row.get("description")
    paras = desc if isinstance(desc, list) else [desc]
    description = _cut(" ".join(p for p in map(_clean_html, paras) if p), META_DESCRIPTION_CHARS)
    tags: list[str] = []
    brand = _clean_html(row.get("brand"))
    if brand:
        tags.append(brand)
    cats = row.get("category")  # 2018: one path; 2014: "categories", a list of paths
    paths = [cats] if isinstance(cats, list) else (row.get("categories") or [])
    for path in paths:
        if isinstance(path, list):
            # the first element is the whole dump's category ("Magazine Subscriptions"): no signal
            for c in path[1:] if len(path) > 1 else path:
                c = _clean_html(c)
                if c and c not in tags:
                    tags.append(c)
    return ItemRecord(asin, title, description, tuple(tags))


def _merge(a: ItemRecord, b: ItemRecord) -> ItemRecord:
    """Metadata dumps repeat items; first non-empty field wins, tags are united."""
    tags = a.tags + tuple(t for t in b.tags if t not in a.tags)
    return ItemRecord(a.item_id, a.title or b.title, a.description or b.description, tags)


def read_catalogue(path: str | Path, *, wanted: set[str] | None = None,
                   limits: Limits = DEFAULT_LIMITS) -> tuple[dict[str, ItemRecord], dict]:
    """Item records from a catalogue file: Amazon metadata (2018 JSON or 2014 python-literal
    lines, recognised by ``asin``), MovieLens ``movies.csv``, or simple ``items.jsonl`` /
    ``items.csv`` (validated by :func:`parse_item`). Returns ``(records, stats)``.
    ``wanted`` skips (cheaply) items not in the set."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFound(f"catalogue file {path} does not exist: pass an existing items/metadata file")
    out: dict[str, ItemRecord] = {}
    st: Counter[str] = Counter()
    if path.name.lower().endswith(_CSV_SUFFIXES):
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            movielens = "movieId" in header
            for row in reader:
                st["rows"] += 1
                if not row:
                    continue
                try:
                    _bad_csv_row(row)
                    d = {k: v for k, v in zip(header, row) if v != ""}
                    if movielens:
                        genres = [g for g in (d.get("genres") or "").split("|")
                                  if g and g != "(no genres listed)"]
                        d = {"item_id": d.get("movieId"), "title": d.get("title"), "tags": genres}
                    if wanted is not None and d.get("item_id") not in wanted:
                        continue
                    rec = parse_item(d, limits=limits)
                except InvalidEvent as exc:
                    st["invalid_" + exc.reason] += 1
                    continue
                out[rec.item_id] = _merge(out[rec.item_id], rec) if rec.item_id in out else rec
        return out, dict(st)
    for line in _iter_lines(path):
        st["rows"] += 1
        if wanted is not None:  # cheap pre-filter: metadata dumps are much larger than the 5-cores
            m = _ASIN_IN_LINE.search(line)
            if m is not None and m.group(1).decode("utf-8", "replace") not in wanted:
                continue
        try:
            try:
                row = _row_object(line, limits)
            except InvalidEvent as exc:
                if exc.reason != MALFORMED_JSON:
                    raise
                try:  # 2014 metadata rows are python dict literals
                    row = ast.literal_eval(line.decode("utf-8"))
                except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
                    raise exc from None
                if not isinstance(row, dict):
                    raise InvalidEvent(NOT_AN_OBJECT, "the row is not an object: write one object per line") from None
            if "asin" in row:
                rec = _amazon_meta_record(row)
                if rec is None:
                    raise InvalidEvent("missing_field", "metadata row without 'asin'")
            else:
                rec = parse_item(row, limits=limits)
        except InvalidEvent as exc:
            st["invalid_" + exc.reason] += 1
            continue
        if wanted is not None and rec.item_id not in wanted:
            continue
        out[rec.item_id] = _merge(out[rec.item_id], rec) if rec.item_id in out else rec
    return out, dict(st)


_ASIN_IN_LINE = re.compile(rb"""["']asin["']\s*:\s*["']([^"'\\]+)["']""")


def _find_meta(reviews: Path) -> Path | None:
    """``meta_<Category>.json[.gz]`` beside ``reviews_<Category>_5.json.gz`` / ``<Category>_5.json.gz``."""
    stem = reviews.name
    for suf in (".gz", ".json", ".jsonl"):
        stem = stem.removesuffix(suf)
    stem = stem.removeprefix("reviews_").removesuffix("_5")
    for suf in (".json.gz", ".json", ".jsonl.gz", ".jsonl"):
        cand = reviews.parent / f"meta_{stem}{suf}"
        if cand.is_file():
            return cand
    return None
