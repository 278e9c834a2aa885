"""The event contract: what a click, review or catalogue record looks like on the wire, and
how a bad one is rejected.

The stream workers (``streams/``) and the offline replay (``inference.datasets``) both go
through :func:`parse_event` / :func:`parse_item`, so a bad row is treated the same way online
and offline: an evaluation number never silently includes rows that production would drop.

Wire format (one JSON object per Kafka message value, UTF-8)::

    {"user_id": "A2IBPI20UZIR0U",            # string or integer (MovieLens ids are ints)
     "item_id": "1384719342",                 # string or integer
     "event_time": 1393545600,                # epoch s, epoch ms, or ISO-8601 "2014-02-28T00:00:00Z"
     "type": "review",                        # optional: "click" | "review"
     "event_id": "optional-string",           # optional; used for de-duplication
     "rating": 5,                             # optional; 0.5..5.0
     "text": "...",                           # reviews only; ignored on clicks
     "context": {"device": "ios"}}            # optional, small (<= 4 KiB), passed through

* The kind of an event is, in order: the ``kind`` argument (the topic the message came
  from: a message on the clicks topic is a click), then the ``"type"`` field, then "review"
  if the record carries text, else "click".
* ``user_id`` may be left out when the Kafka key is set (events are keyed by user id); when
  both are present they must agree.
* Unknown fields are ignored, so producers can add fields before consumers know them.
* A review needs non-empty text or a rating. A rating may also ride on a click (MovieLens
  ratings are interactions without text).

Catalogue records (the items topic, keyed by item id)::

    {"item_id": "B00005N7P0", "title": "Maximum PC", "description": "...",
     "tags": ["Computers", "Technology"]}

Every rejection is an :class:`InvalidEvent` whose ``reason`` is one of :data:`REASONS`
(stable codes, used as metric labels) and whose ``detail`` says what is wrong and what to do.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "EVENT_KINDS",
    "REASONS",
    "Event",
    "ItemRecord",
    "InvalidEvent",
    "Limits",
    "DEFAULT_LIMITS",
    "parse_event",
    "parse_item",
    "parse_time",
    "decode_record",
    "derive_event_id",
    "reasons_markdown",
]

EVENT_KINDS: tuple[str, ...] = ("click", "review")

# Reason codes. Stable: they are metric labels (``events_rejected_total{reason=...}``) and part
# of the public contract; add new ones at the end, never rename.
RECORD_TOO_LARGE = "record_too_large"
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
TEXT_TOO_LARGE = "text_too_large"
BAD_TIMESTAMP = "bad_timestamp"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
RATING_OUT_OF_RANGE = "rating_out_of_range"
KEY_MISMATCH = "key_mismatch"
CONTEXT_TOO_LARGE = "context_too_large"
UNKNOWN_ITEM = "unknown_item"
DUPLICATE = "duplicate"
PROCESSING_ERROR = "processing_error"

REASONS: dict[str, str] = {
    RECORD_TOO_LARGE: "the raw message is larger than Limits.max_record_bytes (256 KiB)",
    INVALID_UTF8: "the message (or its key) is not valid UTF-8",
    MALFORMED_JSON: "the message is not parseable JSON (in CSV dataset files: not a parseable CSV row)",
    NOT_AN_OBJECT: "the message is valid JSON but not a JSON object (e.g. an array or a number)",
    MISSING_FIELD: "a required field (user_id, item_id, event_time; text or rating on a review) is absent, null or empty",
    WRONG_TYPE: "a field has the wrong type or form (e.g. a bool or float as an id, NaN, a string rating, an over-long id)",
    TEXT_TOO_LARGE: "review or catalogue text is longer than Limits.max_text_chars (20,000 characters)",
    BAD_TIMESTAMP: "event_time is not epoch seconds/ms or ISO-8601, or is negative, NaN or infinite",
    TIMESTAMP_IN_FUTURE: "event_time is more than Limits.max_future_s (7 days) ahead of the wall clock",
    RATING_OUT_OF_RANGE: "rating is outside Limits.rating_min..rating_max (0.5..5.0)",
    KEY_MISMATCH: "the Kafka key and the user_id (item_id on the catalogue topic) in the value differ",
    CONTEXT_TOO_LARGE: "the context object serialises to more than Limits.max_context_bytes (4 KiB)",
    UNKNOWN_ITEM: "the event's item is not in the catalogue (raised by the worker)",
    DUPLICATE: "an event with this event_id was already processed (raised by the worker)",
    PROCESSING_ERROR: "a valid event failed inside the worker (a bug or a corrupt state): the detail has the error",
}


class InvalidEvent(ValueError):
    """A record that breaks the contract. Catch it, count ``reason``, log ``detail``, move on:
    one bad message must never stop a worker."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        if reason not in REASONS:  # a typo here would create a new metric label silently
            raise ValueError(f"unknown InvalidEvent reason {reason!r}; add it to REASONS first")
        super().__init__(reason, detail, field)
        self.reason = reason
        self.detail = detail
        self.field = field

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one bad producer from hurting a worker (memory, latency, the index).

    Over-long text is rejected rather than truncated: the encoder truncates tokens anyway, so
    a megabyte of text is a client bug worth surfacing, not data worth keeping.
    """

    max_record_bytes: int = 256 * 1024
    max_text_chars: int = 20_000
    max_id_chars: int = 256
    max_context_bytes: int = 4096
    min_time: float = 0.0
    max_future_s: float = 7 * 86400
    rating_min: float = 0.5
    rating_max: float = 5.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Event:
    """One user interaction, validated and normalised (ids are strings, time is epoch s UTC)."""

    user_id: str
    item_id: str
    kind: str
    event_time: float
    event_id: str | None = None
    rating: float | None = None
    text: str | None = None
    # Free-form and passed through; excluded from the hash because dicts are unhashable.
    context: dict | None = field(default=None, hash=False)

    def to_json(self) -> dict:
        """The wire form; ``parse_event(e.to_json()) == e``."""
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.kind,
            "event_time": _num(self.event_time),
        }
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.rating is not None:
            out["rating"] = _num(self.rating)
        if self.text is not None:
            out["text"] = self.text
        if self.context is not None:
            out["context"] = self.context
        return out


_END_PUNCT = tuple(".!?:;")


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """A catalogue entry; :meth:`text` is what the encoder embeds for the item."""

    item_id: str
    title: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()

    def text(self) -> str:
        """``"title. description. tag, tag"``; empty parts are left out."""
        parts = [p for p in (self.title.strip(), self.description.strip(), ", ".join(self.tags)) if p]
        out = ""
        for p in parts:
            if out:
                out += " " if out.endswith(_END_PUNCT) else ". "
            out += p
        return out

    def to_json(self) -> dict:
        """The catalogue topic's wire form; ``parse_item(r.to_json()) == r``."""
        return {"item_id": self.item_id, "title": self.title,
                "description": self.description, "tags": list(self.tags)}


# --------------------------------------------------------------------------------------------
# helpers


def _num(x: float) -> float | int:
    """Integral floats as ints on the wire (``1393545600`` rather than ``1393545600.0``)."""
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else x


def _show(value: Any, n: int = 60) -> str:
    """A short repr of a bad value for error details (never echo 1 MB back into a log)."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def decode_record(raw: bytes | bytearray | memoryview | str, limits: Limits = DEFAULT_LIMITS,
                  what: str = "message") -> Any:
    """Size check, UTF-8 decode and JSON parse of one raw message, cheapest check first.

    Returns the parsed JSON value (not necessarily an object: callers check that). Also used
    by the dataset readers on each file line so that file rows meet the same checks.
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if len(raw) > limits.max_record_bytes:
            raise InvalidEvent(RECORD_TOO_LARGE,
                               f"the {what} is {len(raw):,} bytes, over the {limits.max_record_bytes:,}-byte "
                               "limit: send one event per message and keep review text under "
                               f"{limits.max_text_chars:,} characters")
        try:
            s = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent(INVALID_UTF8,
                               f"the {what} is not valid UTF-8 (bad byte at offset {exc.start}): "
                               "encode the JSON as UTF-8") from None
    elif isinstance(raw, str):
        s = raw
        # Exact byte count only when it could matter (a char is 1..4 UTF-8 bytes).
        if len(s) * 4 > limits.max_record_bytes:
            size = len(s) if len(s) > limits.max_record_bytes else len(s.encode("utf-8", "surrogatepass"))
            if size > limits.max_record_bytes:
                raise InvalidEvent(RECORD_TOO_LARGE,
                                   f"the {what} is at least {size:,} bytes, over the "
                                   f"{limits.max_record_bytes:,}-byte limit: send one event per message "
                                   f"and keep review text under {limits.max_text_chars:,} characters")
    else:
        raise TypeError(f"expected bytes or str, got {type(raw).__name__}")
    if s.startswith("\ufeff"):
        s = s[1:]
    try:
        value = json.loads(s)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(MALFORMED_JSON,
                           f"the {what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                           "send one JSON object per message") from None
    except RecursionError:
        raise InvalidEvent(MALFORMED_JSON,
                           f"the {what} nests JSON too deeply to parse: send a flat JSON object") from None
    # "\ud800" escapes are valid JSON but yield strings that cannot be encoded again (a Kafka
    # key or the tokenizer would fail later, poisoning the worker). Rare, so checked lazily.
    if "\\ud" in s or "\\uD" in s:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(INVALID_UTF8,
                               f"the {what} contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff): "
                               "escape non-BMP characters as surrogate pairs or send them as UTF-8") from None
    return value


_NUMERIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_MS_THRESHOLD = 1e11  # 1e11 s is the year 5138; anything larger is epoch milliseconds


def parse_time(value: Any) -> float:
    """Epoch seconds (UTC) from epoch seconds, epoch milliseconds (values > 1e11) or ISO-8601.

    ISO strings may be dates (``"2014-02-28"``, midnight UTC), datetimes with ``Z`` or an
    offset (``"2014-02-28T10:00:00+02:00"``), or naive datetimes (taken as UTC). Numeric
    strings (CSV cells) are read as numbers. Bools, NaN, infinities, negative times and
    anything else raise :class:`InvalidEvent` with reason ``bad_timestamp``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidEvent(BAD_TIMESTAMP,
                           f"field 'event_time' is {_type_name(value)} ({_show(value)}): send epoch seconds "
                           "as a number or an ISO-8601 string such as \"2014-02-28T10:00:00Z\"",
                           "event_time")
    if isinstance(value, str):
        s = value.strip()
        if _NUMERIC.fullmatch(s):
            t = float(s)
        else:
            try:
                dt = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "zZ" and s else s)
            except ValueError:
                raise InvalidEvent(BAD_TIMESTAMP,
                                   f"field 'event_time' is {_show(value)}, which is neither a number nor "
                                   "ISO-8601: send epoch seconds or a string such as \"2014-02-28T10:00:00Z\"",
                                   "event_time") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            t = dt.timestamp()
    else:
        try:
            t = float(value)
        except OverflowError:  # an int with hundreds of digits
            t = math.inf
    if not math.isfinite(t):
        raise InvalidEvent(BAD_TIMESTAMP,
                           f"field 'event_time' is {_show(value)}: send a finite epoch time in seconds",
                           "event_time")
    if t < 0:
        raise InvalidEvent(BAD_TIMESTAMP,
                           f"field 'event_time' is {_show(value)}, before 1970: send epoch seconds (UTC)",
                           "event_time")
    if t > _MS_THRESHOLD:
        t /= 1000.0
    return float(t)


def _parse_id(value: Any, name: str, limits: Limits) -> str | None:
    """An id as a string, or None when absent/null/empty (the caller decides if that is fatal)."""
    if isinstance(value, str):
        if not value.strip():
            return None
        s = value
    elif type(value) is int:
        s = str(value)
    elif value is None:
        return None
    else:
        raise InvalidEvent(WRONG_TYPE,
                           f"field '{name}' is {_type_name(value)} ({_show(value)}): send the id as a JSON "
                           "string (or an integer)", name)
    if len(s) > limits.max_id_chars:
        raise InvalidEvent(WRONG_TYPE,
                           f"field '{name}' is {len(s):,} characters, over the {limits.max_id_chars}-character "
                           "id limit: send the id, not a payload", name)
    return s


def _parse_key(key: Any) -> str | None:
    if key is None:
        return None
    if isinstance(key, (bytes, bytearray, memoryview)):
        try:
            key = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(INVALID_UTF8, "the Kafka key is not valid UTF-8: key events by the UTF-8 user id",
                               "key") from None
    elif type(key) is int:
        key = str(key)
    elif not isinstance(key, str):
        raise TypeError(f"key must be bytes, str or None, not {type(key).__name__}")
    return key or None


def _as_object(raw: Any, limits: Limits, what: str) -> dict:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        value = decode_record(raw, limits, what)
    else:
        value = raw
    if not isinstance(value, dict):
        raise InvalidEvent(NOT_AN_OBJECT,
                           f"the {what} is {_type_name(value)}, not a JSON object: send one object per "
                           "message, e.g. {\"user_id\": ..., \"item_id\": ..., \"event_time\": ...}")
    return value


def parse_event(raw: bytes | str | dict, kind: str | None = None, *, key: bytes | str | None = None,
                limits: Limits = DEFAULT_LIMITS, now: float | None = None) -> Event:
    """Validate one click/review message and return the normalised :class:`Event`.

    ``raw`` is the message value (bytes as read from Kafka, a str, or an already-parsed dict;
    a dict skips the byte-level checks: size, UTF-8, JSON). ``kind`` is set by the topic the
    message came from and wins over the record's ``"type"``. ``key`` is the Kafka key (the user
    id). ``now`` is the wall clock used for the future-timestamp check (default: ``time.time()``).
    Raises :class:`InvalidEvent`.
    """
    if kind is not None and kind not in EVENT_KINDS:
        raise ValueError(f"kind must be one of {EVENT_KINDS}, not {kind!r}")
    obj = _as_object(raw, limits, "message")
    get = obj.get

    # ids -------------------------------------------------------------------------------
    user_id = _parse_id(get("user_id"), "user_id", limits)
    key_s = _parse_key(key)
    if key_s is not None:
        if user_id is None:
            if len(key_s) > limits.max_id_chars:
                raise InvalidEvent(WRONG_TYPE,
                                   f"the Kafka key is {len(key_s):,} characters, over the "
                                   f"{limits.max_id_chars}-character id limit: key events by the user id", "key")
            user_id = key_s
        elif user_id != key_s:
            raise InvalidEvent(KEY_MISMATCH,
                               f"the Kafka key is {_show(key_s)} but field 'user_id' is {_show(user_id)}: key "
                               "each event by its user id (or leave user_id out)", "user_id")
    if user_id is None:
        raise InvalidEvent(MISSING_FIELD,
                           "field 'user_id' is missing or empty: send the user id (or set the Kafka key to it)",
                           "user_id")
    item_id = _parse_id(get("item_id"), "item_id", limits)
    if item_id is None:
        raise InvalidEvent(MISSING_FIELD, "field 'item_id' is missing or empty: send the id of the item "
                           "the user interacted with", "item_id")
    event_id = _parse_id(get("event_id"), "event_id", limits)

    # time ------------------------------------------------------------------------------
    t_raw = get("event_time")
    if t_raw is None:
        raise InvalidEvent(MISSING_FIELD, "field 'event_time' is missing: send when the event happened, "
                           "as epoch seconds or ISO-8601", "event_time")
    t = parse_time(t_raw)
    if t < limits.min_time:
        raise InvalidEvent(BAD_TIMESTAMP,
                           f"field 'event_time' is {_show(t_raw)}, before the earliest accepted time "
                           f"{limits.min_time:.0f}: send epoch seconds (UTC)", "event_time")
    if now is None:
        now = time.time()
    if t > now + limits.max_future_s:
        when = datetime.fromtimestamp(min(t, 253402300799), timezone.utc).strftime("%Y-%m-%d")
        raise InvalidEvent(TIMESTAMP_IN_FUTURE,
                           f"field 'event_time' is {_show(t_raw)} ({when}), more than "
                           f"{limits.max_future_s / 86400:g} days in the future: send epoch seconds (not "
                           "micro/nanoseconds) from a synchronised clock", "event_time")

    # rating ----------------------------------------------------------------------------
    rating = get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            raise InvalidEvent(WRONG_TYPE,
                               f"field 'rating' is {_type_name(rating)} ({_show(rating)}): send the star "
                               "rating as a JSON number", "rating")
        if not math.isfinite(rating):
            raise InvalidEvent(WRONG_TYPE, f"field 'rating' is {_show(rating)}: send a finite number", "rating")
        if not limits.rating_min <= rating <= limits.rating_max:
            raise InvalidEvent(RATING_OUT_OF_RANGE,
                               f"field 'rating' is {_show(rating)}, outside {float(limits.rating_min)!r}.."
                               f"{float(limits.rating_max)!r}: send the star rating on the 1-5 scale", "rating")
        rating = float(rating)

    # kind and text ---------------------------------------------------------------------
    text = get("text")
    if kind is None:
        typ = get("type")
        if typ is not None:
            if typ not in EVENT_KINDS:
                raise InvalidEvent(WRONG_TYPE,
                                   f"field 'type' is {_show(typ)}: send one of {', '.join(EVENT_KINDS)} "
                                   "(or leave it out)", "type")
            kind = typ
        else:
            kind = "review" if isinstance(text, str) and text.strip() else "click"
    if kind == "review":
        if text is not None:
            if not isinstance(text, str):
                raise InvalidEvent(WRONG_TYPE,
                                   f"field 'text' is {_type_name(text)}: send the review text as a string",
                                   "text")
            if len(text) > limits.max_text_chars:
                raise InvalidEvent(TEXT_TOO_LARGE,
                                   f"field 'text' is {len(text):,} characters, over the {limits.max_text_chars:,} "
                                   "limit: send the review itself, not a document", "text")
            text = text.strip() or None
        if text is None and rating is None:
            raise InvalidEvent(MISSING_FIELD,
                               "a review needs non-empty 'text' or a 'rating': send at least one (or send "
                               "the event as a click)", "text")
    else:
        text = None  # text on a click is ignored, like an unknown field

    # context ---------------------------------------------------------------------------
    context = get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise InvalidEvent(WRONG_TYPE,
                               f"field 'context' is {_type_name(context)}: send a small JSON object "
                               "(e.g. {\"device\": \"ios\"}) or leave it out", "context")
        try:
            size = len(json.dumps(context, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
                       .encode("utf-8"))
        except (ValueError, TypeError, UnicodeEncodeError):
            raise InvalidEvent(WRONG_TYPE, "field 'context' holds values JSON cannot carry (NaN, "
                               "Infinity): send plain JSON values", "context") from None
        if size > limits.max_context_bytes:
            raise InvalidEvent(CONTEXT_TOO_LARGE,
                               f"field 'context' is {size:,} bytes, over the {limits.max_context_bytes:,}-byte "
                               "limit: send a few small attributes (device, page), not payloads", "context")
        if not context:
            context = None

    return Event(user_id, item_id, kind, t, event_id, rating, text, context)


def _parse_text_field(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(v.strip() for v in value if v.strip())  # 2018 Amazon metadata: paragraphs
    raise InvalidEvent(WRONG_TYPE, f"field '{name}' is {_type_name(value)}: send a string", name)


def parse_item(raw: bytes | str | dict | None, *, key: bytes | str | None = None,
               limits: Limits = DEFAULT_LIMITS) -> ItemRecord | None:
    """Validate one catalogue record. ``None`` (a tombstone: the item was deleted) is returned
    as ``None``; deleting the item is the caller's job.

    ``tags`` may be a list of strings or one ``|``-separated string; ``description`` may be a
    string or a list of paragraphs. The item needs some text (title, description or tags),
    because its vector is the encoding of that text.
    """
    if raw is None:
        return None
    obj = _as_object(raw, limits, "catalogue record")
    item_id = _parse_id(obj.get("item_id"), "item_id", limits)
    key_s = _parse_key(key)
    if key_s is not None:
        if item_id is None:
            item_id = key_s if len(key_s) <= limits.max_id_chars else None
        elif item_id != key_s:
            raise InvalidEvent(KEY_MISMATCH,
                               f"the Kafka key is {_show(key_s)} but field 'item_id' is {_show(item_id)}: key "
                               "catalogue records by their item id", "item_id")
    if item_id is None:
        raise InvalidEvent(MISSING_FIELD, "field 'item_id' is missing or empty: send the item's id "
                           "(or set the Kafka key to it)", "item_id")
    title = _parse_text_field(obj.get("title"), "title")
    description = _parse_text_field(obj.get("description"), "description")
    tags_raw = obj.get("tags")
    if tags_raw is None:
        tags: tuple[str, ...] = ()
    elif isinstance(tags_raw, str):
        tags = tuple(t.strip() for t in tags_raw.split("|") if t.strip())
    elif isinstance(tags_raw, list) and all(isinstance(t, str) for t in tags_raw):
        tags = tuple(t.strip() for t in tags_raw if t.strip())
    else:
        raise InvalidEvent(WRONG_TYPE, f"field 'tags' is {_type_name(tags_raw)}: send a list of strings", "tags")
    rec = ItemRecord(item_id, title, description, tags)
    n = len(title) + len(description) + sum(len(t) + 2 for t in tags)
    if n > limits.max_text_chars:
        raise InvalidEvent(TEXT_TOO_LARGE,
                           f"the catalogue text (title + description + tags) is {n:,} characters, over the "
                           f"{limits.max_text_chars:,} limit: send a summary; the encoder reads only the start",
                           "description")
    if not n:
        raise InvalidEvent(MISSING_FIELD, "the catalogue record has no 'title', 'description' or 'tags': "
                           "send some text, the item's vector is computed from it", "title")
    return rec


def derive_event_id(user_id: str, item_id: str, event_time: float, text: str | None = None) -> str:
    """A stable id from an event's content, for sources that carry none (dataset rows).

    Identical (user, item, time, text) always give the same id, so exact duplicates collide and
    are dropped by the same ``duplicate`` logic the worker applies to re-delivered messages.
    """
    h = hashlib.blake2b(digest_size=10)
    h.update(f"{user_id}\x1f{item_id}\x1f{_num(event_time)!r}\x1f{text or ''}".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def reasons_markdown() -> str:
    """The README's rejection-reason table, generated from :data:`REASONS`."""
    rows = ["| reason | meaning |", "| --- | --- |"]
    rows += [f"| `{r}` | {m} |" for r, m in REASONS.items()]
    return "\n".join(rows)
