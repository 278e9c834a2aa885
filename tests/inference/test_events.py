"""The event contract: every bad input is rejected with its stable reason code."""
from __future__ import annotations

import json
import math
import re

import pytest

from inference.events import (
    DEFAULT_LIMITS,
    EVENT_KINDS,
    REASONS,
    Event,
    InvalidEvent,
    ItemRecord,
    Limits,
    decode_record,
    derive_event_id,
    parse_event,
    parse_item,
    parse_time,
    reasons_markdown,
)

NOW = 1_700_000_000.0  # 2023-11-14
T = 1393545600  # 2014-02-28T00:00:00Z


def ok(**fields) -> dict:
    base = {"user_id": "A2IBPI20UZIR0U", "item_id": "1384719342", "event_time": T}
    base.update(fields)
    return base


def reason_of(raw, *args, **kw) -> str:
    kw.setdefault("now", NOW)
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, *args, **kw)
    exc = info.value
    assert exc.reason in REASONS
    assert exc.detail and ":" in exc.detail, "detail says what happened: and what to do"
    return exc.reason


# --- reasons ----------------------------------------------------------------------------------

def test_reason_table_is_complete_and_stable():
    assert list(REASONS) == [
        "record_too_large", "invalid_utf8", "malformed_json", "not_an_object", "missing_field",
        "wrong_type", "text_too_large", "bad_timestamp", "timestamp_in_future", "rating_out_of_range",
        "key_mismatch", "context_too_large", "unknown_item", "duplicate", "processing_error",
    ]
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", r) for r in REASONS)
    assert all(m and "\n" not in m for m in REASONS.values())
    table = reasons_markdown()
    assert all(f"`{r}`" in table for r in REASONS)


def test_invalid_event_rejects_unknown_reason_and_is_a_value_error():
    with pytest.raises(ValueError):
        InvalidEvent("no_such_reason", "x")
    exc = InvalidEvent("duplicate", "seen before: drop it", "event_id")
    assert isinstance(exc, ValueError)
    assert str(exc) == "duplicate: seen before: drop it"
    assert exc.field == "event_id"


# --- parse_time -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (T, float(T)),
    (float(T) + 0.5, T + 0.5),
    (T * 1000, float(T)),                       # epoch milliseconds
    (T * 1000 + 250, T + 0.25),
    ("2014-02-28", float(T)),                   # date -> midnight UTC
    ("2014-02-28T00:00:00Z", float(T)),
    ("2014-02-28T00:00:00z", float(T)),
    ("2014-02-28T10:00:00+10:00", float(T)),    # offsets honoured
    ("2014-02-27T19:00:00-05:00", float(T)),
    ("2014-02-28T00:00:00.500Z", T + 0.5),
    ("2014-02-28 00:00:00", float(T)),          # naive -> UTC
    (" 1393545600 ", float(T)),                 # numeric strings (CSV cells)
    ("1393545600000", float(T)),
    (0, 0.0),
])
def test_parse_time_accepts(value, expected):
    assert parse_time(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [
    True, False, None, [T], {"t": T}, math.nan, math.inf, -math.inf, -1, "-5", "1960-01-01",
    "yesterday", "", "02 28, 2014", "nan", "Infinity", "2014-13-45", 10**400,
])
def test_parse_time_rejects(value):
    with pytest.raises(InvalidEvent) as info:
        parse_time(value)
    assert info.value.reason == "bad_timestamp"


# --- valid events -----------------------------------------------------------------------------

def test_minimal_click_and_wire_round_trip():
    ev = parse_event(json.dumps(ok()).encode(), now=NOW)
    assert ev == Event("A2IBPI20UZIR0U", "1384719342", "click", float(T))
    full = parse_event(ok(event_id="e-1", rating=5, text="Does what it should.",
                          context={"device": "ios", "page": 2}), now=NOW)
    assert full.kind == "review" and full.rating == 5.0 and full.context == {"device": "ios", "page": 2}
    for e in (ev, full):
        wire = e.to_json()
        assert parse_event(wire, now=NOW) == e
        assert parse_event(json.dumps(wire), now=NOW) == e
    assert full.to_json()["event_time"] == T and isinstance(full.to_json()["event_time"], int)
    hash(full)  # usable as a dict key / set member despite the context dict


def test_integer_ids_are_normalised_to_strings():
    ev = parse_event({"user_id": 42, "item_id": 318, "event_time": 964982703, "rating": 4.5}, now=NOW)
    assert (ev.user_id, ev.item_id, ev.rating, ev.kind) == ("42", "318", 4.5, "click")
    assert parse_event(ok(event_id=7), now=NOW).event_id == "7"


def test_kind_resolution_order():
    # text without a type -> review; no text -> click
    assert parse_event(ok(text="great"), now=NOW).kind == "review"
    assert parse_event(ok(), now=NOW).kind == "click"
    # "type" field
    assert parse_event(ok(type="review", rating=4), now=NOW).kind == "review"
    # topic (kind argument) wins over the record's type; a click's text is dropped
    ev = parse_event(ok(type="review", text="great", rating=4), "click", now=NOW)
    assert ev.kind == "click" and ev.text is None and ev.rating == 4.0
    with pytest.raises(ValueError):
        parse_event(ok(), "purchase", now=NOW)


def test_review_text_rules():
    one_star = parse_event(ok(rating=1, text="Broke after a day."), "review", now=NOW)
    assert one_star.rating == 1.0 and one_star.text == "Broke after a day."
    assert parse_event(ok(rating=4, text=""), "review", now=NOW).text is None
    assert parse_event(ok(rating=4, text="   "), "review", now=NOW).text is None
    assert parse_event(ok(text="  padded  "), "review", now=NOW).text == "padded"
    assert reason_of(ok(text=""), "review") == "missing_field"
    assert reason_of(ok(type="review")) == "missing_field"


def test_unknown_fields_are_ignored():
    ev = parse_event(ok(future_field={"x": [1, 2]}, verified=True), now=NOW)
    assert ev == parse_event(ok(), now=NOW)


def test_key_fallback_and_mismatch():
    body = {"item_id": "i1", "event_time": T}
    assert parse_event(json.dumps(body).encode(), key=b"user-7", now=NOW).user_id == "user-7"
    assert parse_event(body, key="user-7", now=NOW).user_id == "user-7"
    assert parse_event({**body, "user_id": "user-7"}, key=b"user-7", now=NOW).user_id == "user-7"
    assert parse_event({**body, "user_id": 42}, key=b"42", now=NOW).user_id == "42"
    assert reason_of({**body, "user_id": "user-8"}, key=b"user-7") == "key_mismatch"
    assert reason_of(body, key=b"\xff\xfe") == "invalid_utf8"
    assert reason_of(body) == "missing_field"
    assert reason_of(body, key=b"") == "missing_field"


def test_time_forms_and_future():
    assert parse_event(ok(event_time="2014-02-28T00:00:00Z"), now=NOW).event_time == T
    assert parse_event(ok(event_time=T * 1000), now=NOW).event_time == T
    # a little clock skew is fine, a week is not
    assert parse_event(ok(event_time=NOW + 3600), now=NOW).event_time == NOW + 3600
    assert reason_of(ok(event_time=NOW + 8 * 86400)) == "timestamp_in_future"
    assert reason_of(ok(event_time=32503680000)) == "timestamp_in_future"        # year 3000, seconds
    assert reason_of(ok(event_time="3000-01-01T00:00:00Z")) == "timestamp_in_future"
    assert reason_of(ok(event_time=T * 1_000_000)) == "timestamp_in_future"     # microseconds
    assert reason_of(ok(event_time=None)) == "missing_field"
    assert reason_of({"user_id": "u", "item_id": "i"}) == "missing_field"
    assert reason_of(ok(event_time="last tuesday")) == "bad_timestamp"
    assert reason_of(ok(event_time=-1)) == "bad_timestamp"
    assert reason_of(ok(event_time=True)) == "bad_timestamp"
    strict = Limits(min_time=1e9)
    assert reason_of(ok(event_time=5), limits=strict) == "bad_timestamp"


def test_default_now_is_the_wall_clock():
    assert parse_event(ok()).event_time == T
    with pytest.raises(InvalidEvent):
        parse_event(ok(event_time=32503680000))


# --- bad inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, reason", [
    (b'{"user_id": "u", "item_id": ', "malformed_json"),
    (b"", "malformed_json"),
    ("not json at all", "malformed_json"),
    (b"[" * 100_000, "malformed_json"),                                  # nesting bomb
    (b"{}", "missing_field"),
    (b"[]", "not_an_object"),
    (b'[{"user_id": "u", "item_id": "i", "event_time": 1}]', "not_an_object"),
    (b"42", "not_an_object"),
    (b'"a string"', "not_an_object"),
    (b"null", "not_an_object"),
    (b'{"user_id": "u", "item_id": "i", "event_time": 1393545600, "text": "caf\xe9"}', "invalid_utf8"),
    (b"\xff\xfe{\x00}\x00", "invalid_utf8"),
    ('{"user_id": "\\ud800", "item_id": "i", "event_time": 1}', "invalid_utf8"),  # lone surrogate
    (b'{"user_id": "u", "item_id": "i", "event_time": NaN}', "bad_timestamp"),
    (b'{"user_id": "u", "item_id": "i", "event_time": Infinity}', "bad_timestamp"),
    (b'{"user_id": "u", "item_id": "i", "event_time": 1, "rating": NaN}', "wrong_type"),
    (b'{"user_id": "u", "item_id": "i", "event_time": 1, "rating": -Infinity}', "wrong_type"),
    (b'{"user_id": "u", "item_id": "i", "event_time": 1, "context": {"x": NaN}}', "wrong_type"),
])
def test_raw_bad_inputs(raw, reason):
    assert reason_of(raw) == reason


@pytest.mark.parametrize("fields, reason", [
    ({"user_id": None}, "missing_field"),
    ({"user_id": ""}, "missing_field"),
    ({"user_id": "   "}, "missing_field"),
    ({"item_id": None}, "missing_field"),
    ({"item_id": ""}, "missing_field"),
    ({"user_id": True}, "wrong_type"),
    ({"item_id": False}, "wrong_type"),
    ({"user_id": 1.5}, "wrong_type"),
    ({"user_id": 42.0}, "wrong_type"),
    ({"item_id": ["a"]}, "wrong_type"),
    ({"item_id": {"id": "a"}}, "wrong_type"),
    ({"user_id": "u" * 257}, "wrong_type"),
    ({"event_id": 1.5}, "wrong_type"),
    ({"event_id": "e" * 257}, "wrong_type"),
    ({"rating": "5"}, "wrong_type"),
    ({"rating": True}, "wrong_type"),
    ({"rating": [5]}, "wrong_type"),
    ({"rating": 99}, "rating_out_of_range"),
    ({"rating": 0}, "rating_out_of_range"),
    ({"rating": -3}, "rating_out_of_range"),
    ({"rating": 5.5}, "rating_out_of_range"),
    ({"text": 12, "type": "review", "rating": 5}, "wrong_type"),
    ({"text": ["a"], "type": "review", "rating": 5}, "wrong_type"),
    ({"type": "purchase"}, "wrong_type"),
    ({"type": 1}, "wrong_type"),
    ({"context": "ios"}, "wrong_type"),
    ({"context": ["ios"]}, "wrong_type"),
    ({"context": {"blob": "x" * 5000}}, "context_too_large"),
    ({"text": "x" * 20_001}, "text_too_large"),
])
def test_field_bad_inputs(fields, reason):
    assert reason_of(ok(**fields)) == reason
    assert reason_of(json.dumps(ok(**fields)).encode()) == reason  # same verdict from bytes


def test_half_point_ratings_are_accepted():
    assert parse_event(ok(rating=0.5), now=NOW).rating == 0.5
    assert parse_event(ok(rating=5), now=NOW).rating == 5.0


def test_rating_detail_says_what_to_do():
    with pytest.raises(InvalidEvent) as info:
        parse_event(ok(rating=99), now=NOW)
    assert info.value.detail == "field 'rating' is 99, outside 0.5..5.0: send the star rating on the 1-5 scale"
    assert info.value.field == "rating"


def test_one_megabyte_text_is_rejected_by_size_before_parsing():
    raw = json.dumps(ok(text="x" * 1_000_000, rating=5))
    assert reason_of(raw.encode()) == "record_too_large"
    assert reason_of(raw) == "record_too_large"
    # multi-byte characters count as bytes, not characters
    assert reason_of(json.dumps(ok(text="é" * 140_000), ensure_ascii=False).encode()) == "record_too_large"
    # under the record limit but over the text limit: text_too_large, not truncated
    assert reason_of(json.dumps(ok(text="x" * 30_000)).encode()) == "text_too_large"
    exactly = "x" * DEFAULT_LIMITS.max_text_chars
    assert parse_event(ok(text=exactly), now=NOW).text == exactly


def test_custom_limits():
    small = Limits(max_record_bytes=100, max_text_chars=10, max_id_chars=4, rating_min=1, rating_max=10)
    assert reason_of(json.dumps(ok(text="x" * 200)).encode(), limits=small) == "record_too_large"
    assert reason_of({"user_id": "u", "item_id": "i", "event_time": 1, "text": "x" * 11},
                     limits=small) == "text_too_large"
    assert reason_of({"user_id": "user5", "item_id": "i", "event_time": 1}, limits=small) == "wrong_type"
    assert parse_event({"user_id": "u", "item_id": "i", "event_time": 1, "rating": 9},
                       limits=small, now=NOW).rating == 9.0


def test_decode_record_strips_bom():
    assert decode_record(b"\xef\xbb\xbf" + b'{"a": 1}') == {"a": 1}


def test_derive_event_id_is_stable_and_content_sensitive():
    a = derive_event_id("u", "i", 1393545600.0, "text")
    assert a == derive_event_id("u", "i", 1393545600, "text")
    assert len({a, derive_event_id("u", "i", 1393545601, "text"), derive_event_id("u", "i", 1393545600, "t"),
                derive_event_id("v", "i", 1393545600, "text"), derive_event_id("u", "j", 1393545600, "text")}) == 5
    assert derive_event_id("u", "i", 1.0) == derive_event_id("u", "i", 1.0, None)


def test_event_kinds_constant():
    assert EVENT_KINDS == ("click", "review")


# --- catalogue records ------------------------------------------------------------------------------

def test_parse_item_and_text():
    rec = parse_item(b'{"item_id": "B00005N7P0", "title": "Maximum PC", '
                     b'"description": ["For PC hobbyists.", "", "Monthly."], "tags": ["Computers", "Tech"]}')
    assert rec == ItemRecord("B00005N7P0", "Maximum PC", "For PC hobbyists. Monthly.", ("Computers", "Tech"))
    assert rec.text() == "Maximum PC. For PC hobbyists. Monthly. Computers, Tech"
    assert parse_item(rec.to_json()) == rec
    assert parse_item({"item_id": 1, "title": "Toy Story (1995)", "tags": "Animation|Comedy"}).tags == \
        ("Animation", "Comedy")
    assert ItemRecord("x", "Title!", "", ("a",)).text() == "Title! a"
    assert ItemRecord("x", "", "Only a description", ()).text() == "Only a description"
    assert ItemRecord("x").text() == ""


def test_parse_item_tombstone_key_and_errors():
    assert parse_item(None) is None
    assert parse_item({"title": "T"}, key=b"i9").item_id == "i9"

    def why(raw, **kw):
        with pytest.raises(InvalidEvent) as info:
            parse_item(raw, **kw)
        return info.value.reason

    assert why({"item_id": "i1", "title": "T"}, key="i2") == "key_mismatch"
    assert why({"title": "T"}) == "missing_field"
    assert why({"item_id": "i1"}) == "missing_field"            # no text to encode
    assert why({"item_id": "i1", "title": 5}) == "wrong_type"
    assert why({"item_id": "i1", "title": "T", "tags": [1, 2]}) == "wrong_type"
    assert why({"item_id": "i1", "description": "x" * 20_001}) == "text_too_large"
    assert why(b"[1]") == "not_an_object"
    assert why(b"{") == "malformed_json"
    assert why(b'{"item_id": "\xff"}') == "invalid_utf8"
