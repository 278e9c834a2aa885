"""Dataset readers: files -> a time-ordered list of :class:`~inference.events.Event` plus a
catalogue of :class:`~inference.events.ItemRecord`, for the offline replay and evaluation.

Every row goes through the same :func:`~inference.events.parse_event` the stream workers use,
so a row the workers would reject is rejected here too, with the same reason code (counted in
``Dataset.stats["invalid"]``); exact duplicate rows are dropped like the worker drops a
re-delivered event id.

Formats (detected from the path; see :func:`load_dataset`):

1. **Amazon review dumps** as published (JSON lines, gzipped or not), 2014 field names
   (``reviewerID, asin, overall, reviewText, summary, unixReviewTime, reviewTime``) or 2018
   ones (the same plus ``verified, vote, style``...). Each row is a review. Item metadata is read
   from ``meta_<Category>.json[.gz]`` beside the reviews when present (2018 JSON or 2014
   python-literal rows).
2. **MovieLens** CSV folders (``ratings.csv``, ``movies.csv``, ``tags.csv``): a rating is a
   click with a rating; movies are items (title + genres + the most frequent user tags).
3. **Simple format**, for your own data: JSON lines or CSV with ``user_id, item_id,
   event_time`` (or ``timestamp`` / ``time``) and optional ``rating, text, event_id, type,
   context`` -- i.e. the wire format of :mod:`inference.events`. Catalogue: ``items.jsonl`` /
   ``items.csv`` beside it (or ``items=``) with ``item_id, title, description, tags``
   (``tags`` a list, or ``|``-separated in CSV).

Every item an event refers to gets an :class:`ItemRecord`; items missing from the catalogue get
text built from their reviews (summaries first), so the encoder always has something to read.
"""
from __future__ import annotations

import csv
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inference.data import MUSICAL_INSTRUMENTS
from inference.datafiles import (
    _CSV_SUFFIXES,
    _WS,
    DatasetNotFound,
    _bad_csv_row,
    _cut,
    _find_meta,
    _iter_lines,
    _open_text,
    _row_object,
    detect_format,
    read_catalogue,
)
from inference.events import (
    DEFAULT_LIMITS,
    MALFORMED_JSON,
    Event,
    InvalidEvent,
    ItemRecord,
    Limits,
    decode_record,
    derive_event_id,
    parse_event,
)

__all__ = [
    "Dataset",
    "DatasetNotFound",
    "dataset_names",
    "detect_format",
    "find_datasets_dir",
    "load_dataset",
    "read_amazon",
    "read_movielens",
    "read_simple",
    "read_catalogue",
]

ENV_DATASETS = "STREAMREC_DATASETS"

# canonical name -> (folder under shared/datasets, packaged fallback or None)
_NAMED: dict[str, tuple[str, Path | None]] = {
    "musical_instruments": ("amazon2014_musical_instruments_5core", MUSICAL_INSTRUMENTS),
    "magazine_subscriptions": ("amazon2018_magazine_subscriptions", None),
    "movielens": ("movielens_latest_small", None),
}
_ALIASES = {folder: name for name, (folder, _) in _NAMED.items()} | {"ml_latest_small": "movielens"}

# Item text built from reviews is capped: it stands in for a product description.
REVIEW_TEXT_CHARS = 400
# MovieLens: keep the most frequent user tags per movie.
MOVIELENS_MAX_TAGS = 20


@dataclass
class Dataset:
    """Events in replay order (``event_time``, then file order), the catalogue, and counts.

    ``stats`` keys: ``format, source, rows`` (rows read), ``events`` (kept), ``duplicates``
    (exact duplicate rows dropped), ``invalid`` (``{reason: count}``), ``users, items,
    time_range, items_with_catalogue, item_text`` (``{"catalogue" | "summaries" |
    "review_text" | "none": count}``: where each item's description came from) and
    format-specific extras.
    """

    name: str
    events: list[Event] = field(repr=False)
    items: dict[str, ItemRecord] = field(repr=False)
    stats: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, events={len(self.events):,}, users={self.stats.get('users', 0):,}, "
                f"items={len(self.items):,})")



# --------------------------------------------------------------------------------------------
# name resolution


def dataset_names() -> list[str]:
    """Names :func:`load_dataset` accepts besides paths (aliases: the shared folder names)."""
    return list(_NAMED)


def find_datasets_dir() -> Path | None:
    """The ``shared/datasets`` folder: ``$STREAMREC_DATASETS`` if set (authoritative: a missing
    folder there means "none", which is how tests force the packaged copy), else the first
    ``shared/datasets`` found walking up from the current directory, then from this repo."""
    env = os.environ.get(ENV_DATASETS)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parents[1]]
    for start in starts:
        for base in (start, *start.parents):
            cand = base / "shared" / "datasets"
            if cand.is_dir():
                return cand
    return None


def _canonical(name: str) -> str | None:
    key = name.strip().lower().replace("-", "_")
    return key if key in _NAMED else _ALIASES.get(key)


def _resolve_name(name: str) -> tuple[str, Path]:
    folder, packaged = _NAMED[name]
    root = find_datasets_dir()
    if root is not None and (root / folder).is_dir():
        return name, root / folder
    if packaged is not None and packaged.exists():
        return name, packaged
    where = f"{ENV_DATASETS}={os.environ[ENV_DATASETS]!r} has no {folder}/" if os.environ.get(ENV_DATASETS) \
        else "no shared/datasets folder was found above the current directory or the repository"
    raise DatasetNotFound(
        f"dataset {name!r} is not packaged and {where}: set {ENV_DATASETS}=/path/to/shared/datasets "
        f"(the folder holding {folder}/) or pass the folder itself, "
        f"e.g. load_dataset('/path/to/shared/datasets/{folder}')")


# --------------------------------------------------------------------------------------------
# entry point


def load_dataset(name_or_path: str | Path, *, items: str | Path | None = None, limit: int | None = None,
                 all_items: bool = False, limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """Load a dataset by name (see :func:`dataset_names`) or path (file or folder).

    ``items`` overrides the catalogue file (Amazon ``meta_*`` file, MovieLens ``movies.csv``,
    or a simple ``items.jsonl``/``items.csv``). ``limit`` reads only the first N event rows of
    the file (file order, before validation). ``all_items`` keeps every catalogue record, not
    only items that occur in the events (useful for cold-start experiments).
    """
    name: str | None = None
    path: Path
    canon = _canonical(str(name_or_path)) if isinstance(name_or_path, str) else None
    if canon is not None and not Path(name_or_path).exists():
        name, path = _resolve_name(canon)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise DatasetNotFound(
                f"{str(name_or_path)!r} is neither a dataset name ({', '.join(dataset_names())}) nor an "
                "existing file or folder: pass one of those names or a path to your data")
    fmt, events_path = detect_format(path)
    if name is None:
        name = _default_name(path)
    kw = dict(items=Path(items) if items is not None else None, limit=limit, all_items=all_items,
              name=name, limits=limits)
    if fmt == "amazon":
        return read_amazon(events_path, **kw)
    if fmt == "movielens":
        return read_movielens(events_path, **kw)
    return read_simple(events_path, **kw)


def _default_name(path: Path) -> str:
    p = path if path.is_dir() else path.parent if path.name.startswith(("ratings.", "events.")) else path
    n = p.name
    for suf in (".gz", ".json", ".jsonl", ".csv"):
        n = n.removesuffix(suf)
    return n



class _Collector:
    """Validated events in file order, with de-duplication and rejection counts."""

    __slots__ = ("rows", "events", "extras", "seen", "duplicates", "invalid")

    def __init__(self) -> None:
        self.rows = 0
        self.events: list[Event] = []
        self.extras: list[Any] = []
        self.seen: set[str] = set()
        self.duplicates = 0
        self.invalid: Counter[str] = Counter()

    def add(self, ev: Event, extra: Any = None) -> None:
        eid = ev.event_id
        if eid is None:
            eid = derive_event_id(ev.user_id, ev.item_id, ev.event_time, ev.text)
            ev = Event(ev.user_id, ev.item_id, ev.kind, ev.event_time, eid, ev.rating, ev.text, ev.context)
        if eid in self.seen:
            self.duplicates += 1
            return
        self.seen.add(eid)
        self.events.append(ev)
        self.extras.append(extra)

    def sorted(self) -> tuple[list[Event], list[Any]]:
        """Stable sort by event_time: ties keep file order (Amazon times have day precision)."""
        evs, ext = self.events, self.extras
        order = sorted(range(len(evs)), key=lambda i: evs[i].event_time)
        return [evs[i] for i in order], [ext[i] for i in order]


def _finish(name: str, fmt: str, source: Path, col: _Collector, catalogue: dict[str, ItemRecord],
            *, all_items: bool, fill_empty_description: bool, t0: float, extra_stats: dict) -> Dataset:
    events, extras = col.sorted()
    items, item_text = _build_items(events, extras, catalogue, all_items=all_items,
                                    fill_empty_description=fill_empty_description)
    used = {e.item_id for e in events}
    stats = {
        "format": fmt,
        "source": str(source),
        "rows": col.rows,
        "events": len(events),
        "duplicates": col.duplicates,
        "invalid": dict(sorted(col.invalid.items())),
        "users": len({e.user_id for e in events}),
        "items": len(items),
        "time_range": (events[0].event_time, events[-1].event_time) if events else None,
        "catalogue_items": len(catalogue),
        "items_with_catalogue": sum(1 for i in used if i in catalogue),
        "item_text": item_text,
        **extra_stats,
    }
    stats["load_seconds"] = round(time.perf_counter() - t0, 3)
    return Dataset(name, events, items, stats)


_STAR_SUMMARY = re.compile(r"(?i)(one|two|three|four|five|[1-5]) stars?\.?")


def _build_items(events: list[Event], extras: list[Any], catalogue: dict[str, ItemRecord], *,
                 all_items: bool, fill_empty_description: bool) -> tuple[dict[str, ItemRecord], dict]:
    """One record per item in the events (and the whole catalogue with ``all_items``).

    Items with no catalogue record -- or, with ``fill_empty_description`` (Amazon), a record
    without a description -- get a description built from their earliest reviews: distinct
    summaries (placeholder "Five Stars" ones skipped), else review texts, capped at
    REVIEW_TEXT_CHARS. Earliest first, so the text leans on reviews a time-ordered split puts
    in the training part.
    """
    counts = {"catalogue": 0, "summaries": 0, "review_text": 0, "none": 0}
    need: dict[str, ItemRecord | None] = {}
    items: dict[str, ItemRecord] = {}
    for ev in events:
        iid = ev.item_id
        if iid in items or iid in need:
            continue
        rec = catalogue.get(iid)
        if rec is not None and (rec.description or not fill_empty_description):
            items[iid] = rec
        else:
            need[iid] = rec
    if need:
        summaries: dict[str, list[str]] = {i: [] for i in need}
        texts: dict[str, list[str]] = {i: [] for i in need}
        for ev, extra in zip(events, extras):
            if ev.item_id in need:
                if isinstance(extra, str) and extra.strip() and not _STAR_SUMMARY.fullmatch(extra.strip()):
                    summaries[ev.item_id].append(extra.strip())
                if ev.text:
                    texts[ev.item_id].append(ev.text)
        for iid, rec in need.items():
            desc = _join_capped(summaries[iid], "; ", REVIEW_TEXT_CHARS)
            how = "summaries"
            if not desc:
                desc = _join_capped(texts[iid], " ", REVIEW_TEXT_CHARS)
                how = "review_text"
            if not desc:
                how = "none"
            base = rec or ItemRecord(iid)
            items[iid] = ItemRecord(iid, base.title, desc, base.tags)
            counts[how] += 1
    counts["catalogue"] = len(items) - len(need)
    if all_items:
        for iid, rec in catalogue.items():
            if iid not in items:
                items[iid] = rec
                counts["catalogue"] += 1
    return items, counts


def _join_capped(parts: list[str], sep: str, cap: int) -> str:
    out: list[str] = []
    seen: set[str] = set()
    n = 0
    for p in parts:
        k = p.lower()
        if k in seen:
            continue
        seen.add(k)
        add = len(p) + (len(sep) if out else 0)
        if n + add > cap:
            room = cap - n - (len(sep) if out else 0)
            if room >= 40 or not out:  # the start of a long review: cut at a word boundary
                out.append(_cut(p, room))
            break
        out.append(p)
        n += add
    return sep.join(out)



# --------------------------------------------------------------------------------------------
# readers


def _review_time(row: dict) -> Any:
    t = row.get("unixReviewTime")
    if t is None and isinstance(row.get("reviewTime"), str):  # "02 28, 2014"
        try:
            return datetime.strptime(row["reviewTime"], "%m %d, %Y").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return row["reviewTime"]  # parse_event rejects it as bad_timestamp
    return t


def read_amazon(path: str | Path, *, items: str | Path | None = None, limit: int | None = None,
                all_items: bool = False, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """An Amazon review dump (2014 or 2018 field names) as review events.

    ``text`` is ``reviewText`` (the ``summary`` when the review text is empty), ``rating`` is
    ``overall``, ``event_id`` a hash of (user, item, time, text), so exact duplicate rows are
    dropped. Catalogue: ``items`` or the ``meta_*`` file beside the reviews, if any.
    """
    t0 = time.perf_counter()
    path = Path(path)
    now = time.time()  # historic rows are all in the past; the future check stays meaningful
    col = _Collector()
    text_from_summary = 0
    for line in _iter_lines(path):
        if limit is not None and col.rows >= limit:
            break
        col.rows += 1
        try:
            row = _row_object(line, limits)
            text = row.get("reviewText")
            summary = row.get("summary")
            if (text is None or (isinstance(text, str) and not text.strip())) and isinstance(summary, str) \
                    and summary.strip():
                text = summary
                text_from_summary += 1
            ev = parse_event({"user_id": row.get("reviewerID"), "item_id": row.get("asin"),
                              "event_time": _review_time(row), "rating": row.get("overall"), "text": text},
                             "review", limits=limits, now=now)
        except InvalidEvent as exc:
            col.invalid[exc.reason] += 1
            continue
        col.add(ev, summary)
    meta = Path(items) if items is not None else _find_meta(path)
    catalogue: dict[str, ItemRecord] = {}
    extra: dict[str, Any] = {"text_from_summary": text_from_summary, "catalogue_file": str(meta) if meta else None}
    if meta is not None:
        wanted = None if all_items else {e.item_id for e in col.events}
        catalogue, cst = read_catalogue(meta, wanted=wanted, limits=limits)
        extra["catalogue_rows"] = cst.get("rows", 0)
    return _finish(name or _default_name(path), "amazon", path, col, catalogue, all_items=all_items,
                   fill_empty_description=True, t0=t0, extra_stats=extra)


def _csv_rows(path: Path, col: _Collector, limit: int | None) -> Iterator[tuple[list[str], list[str]]]:
    """(header, row) pairs; a row the csv module cannot parse is counted as malformed."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except StopIteration:
            return
        while True:
            if limit is not None and col.rows >= limit:
                return
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                col.rows += 1
                col.invalid[MALFORMED_JSON] += 1
                continue
            if not row:
                continue
            col.rows += 1
            yield header, row


def _num_or_str(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s  # parse_event rejects it as wrong_type


def read_movielens(path: str | Path, *, items: str | Path | None = None, limit: int | None = None,
                   all_items: bool = False, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """A MovieLens folder (or its ``ratings.csv``): each rating is a click carrying the rating.

    Items come from ``movies.csv`` (title, genres) plus the ``MOVIELENS_MAX_TAGS`` most frequent
    free-text tags from ``tags.csv``; tags are item text, not events.
    """
    t0 = time.perf_counter()
    path = Path(path)
    folder, ratings = (path, path / "ratings.csv") if path.is_dir() else (path.parent, path)
    now = time.time()
    col = _Collector()
    for header, row in _csv_rows(ratings, col, limit):
        try:
            _bad_csv_row(row)
            d = dict(zip(header, row))
            r = d.get("rating") or None
            ts = d.get("timestamp") or None
            ev = parse_event({"user_id": d.get("userId"), "item_id": d.get("movieId"),
                              "event_time": int(ts) if ts is not None and ts.isdigit() else ts,
                              "rating": _num_or_str(r) if r is not None else None},
                             "click", limits=limits, now=now)
        except InvalidEvent as exc:
            col.invalid[exc.reason] += 1
            continue
        col.add(ev)
    movies = Path(items) if items is not None else folder / "movies.csv"
    catalogue: dict[str, ItemRecord] = {}
    extra: dict[str, Any] = {}
    if movies.is_file():
        catalogue, cst = read_catalogue(movies, limits=limits)
        extra["catalogue_rows"] = cst.get("rows", 0)
    tags_path = folder / "tags.csv"
    if tags_path.is_file():
        tags, n = _movielens_tags(tags_path)
        extra["tag_rows"] = n
        for mid, extra_tags in tags.items():
            rec = catalogue.get(mid)
            if rec is not None:
                merged = rec.tags + tuple(t for t in extra_tags if t.lower() not in {x.lower() for x in rec.tags})
                catalogue[mid] = ItemRecord(mid, rec.title, rec.description, merged)
    return _finish(name or _default_name(folder), "movielens", folder, col, catalogue, all_items=all_items,
                   fill_empty_description=False, t0=t0, extra_stats=extra)


def _movielens_tags(path: Path) -> tuple[dict[str, list[str]], int]:
    counts: dict[str, Counter[str]] = {}
    shown: dict[str, dict[str, str]] = {}
    n = 0
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        try:
            mi, ti = header.index("movieId"), header.index("tag")
        except ValueError:
            return {}, 0
        for row in reader:
            n += 1
            if len(row) <= max(mi, ti):
                continue
            tag = _WS.sub(" ", row[ti]).strip()
            if not tag or len(tag) > 100:
                continue
            k = tag.lower()
            c = counts.setdefault(row[mi], Counter())
            c[k] += 1
            shown.setdefault(row[mi], {}).setdefault(k, tag)
    out = {}
    for mid, c in counts.items():
        # most frequent first; Counter.most_common keeps first-seen order among ties
        out[mid] = [shown[mid][k] for k, _ in c.most_common(MOVIELENS_MAX_TAGS)]
    return out, n


_TIME_ALIASES = ("timestamp", "time")


def read_simple(path: str | Path, *, items: str | Path | None = None, limit: int | None = None,
                all_items: bool = False, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """The simple format: the wire format as JSON lines, or the same fields as CSV columns.

    ``event_time`` may be called ``timestamp`` or ``time``; the kind comes from ``type`` (or is
    "review" when there is text); rows without ``event_id`` get a content hash, so exact
    duplicate rows are dropped. CSV cells: numbers for ``rating``, ``|``-separated ``tags``, a
    JSON object for ``context``. Catalogue: ``items`` or ``items.jsonl``/``items.csv`` beside.
    """
    t0 = time.perf_counter()
    path = Path(path)
    now = time.time()
    col = _Collector()
    if path.name.lower().endswith(_CSV_SUFFIXES):
        fmt = "simple_csv"
        for header, row in _csv_rows(path, col, limit):
            try:
                _bad_csv_row(row)
                d: dict[str, Any] = {k.strip().lower(): v for k, v in zip(header, row) if v != ""}
                if "rating" in d:
                    d["rating"] = _num_or_str(d["rating"])
                if "context" in d:
                    try:
                        d["context"] = decode_record(d["context"], limits, "context cell")
                    except InvalidEvent:
                        pass  # left a string: parse_event says wrong_type
                ev = parse_event(_alias_time(d), limits=limits, now=now)
            except InvalidEvent as exc:
                col.invalid[exc.reason] += 1
                continue
            col.add(ev)
    else:
        fmt = "simple_jsonl"
        for line in _iter_lines(path):
            if limit is not None and col.rows >= limit:
                break
            col.rows += 1
            try:
                ev = parse_event(_alias_time(_row_object(line, limits)), limits=limits, now=now)
            except InvalidEvent as exc:
                col.invalid[exc.reason] += 1
                continue
            col.add(ev)
    cat_path = Path(items) if items is not None else None
    if cat_path is None:
        for cand in ("items.jsonl", "items.json", "items.csv", "items.jsonl.gz", "items.json.gz", "items.csv.gz"):
            if (path.parent / cand).is_file():
                cat_path = path.parent / cand
                break
    catalogue: dict[str, ItemRecord] = {}
    extra: dict[str, Any] = {"catalogue_file": str(cat_path) if cat_path else None}
    if cat_path is not None:
        catalogue, cst = read_catalogue(cat_path, limits=limits)
        extra["catalogue_rows"] = cst.get("rows", 0)
        extra["catalogue_invalid"] = {k.removeprefix("invalid_"): v for k, v in cst.items() if k.startswith("invalid_")}
    return _finish(name or _default_name(path), fmt, path, col, catalogue, all_items=all_items,
                   fill_empty_description=False, t0=t0, extra_stats=extra)


def _alias_time(d: dict) -> dict:
    if "event_time" not in d:
        for k in _TIME_ALIASES:
            if k in d:
                d = dict(d)
                d["event_time"] = d[k]
                break
    return d
