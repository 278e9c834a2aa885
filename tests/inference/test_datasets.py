"""Dataset readers on the real files (../shared/datasets, or the packaged Musical Instruments
copy) and on small hand-written files for each format's edge cases."""
from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from inference.data import MUSICAL_INSTRUMENTS
from inference.datasets import (
    Dataset,
    DatasetNotFound,
    dataset_names,
    detect_format,
    find_datasets_dir,
    load_dataset,
    read_catalogue,
)
from inference.events import Event, ItemRecord

SHARED = find_datasets_dir()
needs_shared = pytest.mark.skipif(SHARED is None or not (SHARED / "movielens_latest_small").is_dir(),
                                  reason="../shared/datasets not found (set STREAMREC_DATASETS)")


def assert_replay_order(ds: Dataset) -> None:
    times = [e.event_time for e in ds.events]
    assert times == sorted(times)


@pytest.fixture
def packaged_only(monkeypatch, tmp_path):
    """Force the packaged copy: $STREAMREC_DATASETS is authoritative, and it points nowhere."""
    monkeypatch.setenv("STREAMREC_DATASETS", str(tmp_path / "no-such-dir"))


# --- names ----------------------------------------------------------------------------------------

def test_dataset_names():
    assert dataset_names() == ["musical_instruments", "magazine_subscriptions", "movielens"]


def test_unknown_name_says_what_to_pass():
    with pytest.raises(DatasetNotFound, match="musical_instruments"):
        load_dataset("no_such_dataset")


@pytest.mark.parametrize("name", ["magazine_subscriptions", "movielens", "amazon2018_magazine_subscriptions"])
def test_unpackaged_datasets_need_the_shared_folder(packaged_only, name):
    with pytest.raises(DatasetNotFound, match="STREAMREC_DATASETS") as info:
        load_dataset(name)
    assert "pass the folder" in str(info.value)


# --- Musical Instruments: both resolution paths ------------------------------------------------

def check_musical_instruments(ds: Dataset) -> None:
    assert len(ds.events) == 10_261 and ds.stats["events"] == 10_261 and ds.stats["rows"] == 10_261
    assert ds.stats["users"] == 1_429 == len({e.user_id for e in ds.events})
    assert len(ds.items) == 900 == len({e.item_id for e in ds.events})
    assert ds.stats["duplicates"] == 0 and ds.stats["invalid"] == {}
    assert all(e.kind == "review" and e.rating in (1.0, 2.0, 3.0, 4.0, 5.0) for e in ds.events)
    assert all(e.text for e in ds.events)
    assert len({e.event_id for e in ds.events}) == 10_261
    assert_replay_order(ds)


def test_musical_instruments_packaged_copy(packaged_only):
    ds = load_dataset("musical_instruments")
    assert Path(ds.stats["source"]) == MUSICAL_INSTRUMENTS
    check_musical_instruments(ds)


@needs_shared
def test_musical_instruments_shared_copy(monkeypatch):
    monkeypatch.setenv("STREAMREC_DATASETS", str(SHARED))
    ds = load_dataset("amazon2014_musical_instruments_5core")
    assert Path(ds.stats["source"]).parent == SHARED / "amazon2014_musical_instruments_5core"
    assert ds.name == "musical_instruments"
    check_musical_instruments(ds)


def test_musical_instruments_item_text_comes_from_summaries(packaged_only):
    ds = load_dataset("musical_instruments")
    assert ds.stats["item_text"] == {"catalogue": 0, "summaries": 900, "review_text": 0, "none": 0}
    rows = [json.loads(line) for line in gzip.open(MUSICAL_INSTRUMENTS, "rt")]
    rows.sort(key=lambda r: r["unixReviewTime"])  # stable: replay order
    summaries = defaultdict(list)
    for row in rows:
        if row["summary"].strip() and row["summary"].strip().lower() not in ("five stars", "four stars"):
            summaries[row["asin"]].append(row["summary"].strip())
    for item_id, rec in ds.items.items():
        assert rec.item_id == item_id and rec.title == "" and rec.tags == ()
        assert 0 < len(rec.description) <= 400
        # earliest review first: the text leans on what a time-ordered split trains on
        assert rec.description.startswith(summaries[item_id][0]), item_id
        assert rec.text() == rec.description
    assert ds.items["1384719342"].description == (
        "Jake; It Does The Job Well; GOOD WINDSCREEN FOR THE MONEY; No more pops when I record my vocals.; good")


def test_limit_reads_the_first_rows(packaged_only):
    ds = load_dataset("musical_instruments", limit=100)
    assert ds.stats["rows"] == 100 and len(ds.events) == 100
    assert set(ds.items) == {e.item_id for e in ds.events}
    assert_replay_order(ds)


# --- Magazine Subscriptions (2018 format, metadata) -------------------------------------------------

@needs_shared
def test_magazine_subscriptions():
    ds = load_dataset("magazine_subscriptions")
    st = ds.stats
    assert (st["rows"], st["duplicates"], st["events"]) == (2_375, 44, 2_331)
    assert len(ds.events) == 2_331 and len({e.event_id for e in ds.events}) == 2_331
    assert st["users"] == 348 and len(ds.items) == 157
    assert_replay_order(ds)
    # metadata covers 151 items; 145 of them have a real description (SOURCE.md's 146 counts one
    # item whose description is ["", "", "", ""]); the rest get text from their reviews
    assert st["items_with_catalogue"] == 151
    assert st["item_text"]["catalogue"] == 145
    assert sum(1 for r in ds.items.values() if r.description) >= 146
    assert all(r.text() for r in ds.items.values())
    # broken HTML titles are dropped, entities unescaped, brand/category become tags
    assert not any("<" in r.text() or "&amp;" in r.text() for r in ds.items.values())
    pc = ds.items["B00005N7P0"]
    assert pc.description.startswith("MAXIMUM PC is the ultimate upgrade") and "tips & techniques" in pc.description
    assert "Future US, Inc." in pc.tags and "Magazine Subscriptions" not in pc.tags
    assert ds.items["B00005N7SS"].title == "SmartMoney (1-year)"


@needs_shared
def test_magazine_all_items_keeps_the_whole_catalogue():
    ds = load_dataset("magazine_subscriptions", all_items=True)
    assert len(ds.items) > 2_000 and len(ds.events) == 2_331


# --- MovieLens ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def movielens():
    if SHARED is None or not (SHARED / "movielens_latest_small").is_dir():
        pytest.skip("../shared/datasets not found")
    return load_dataset(SHARED / "movielens_latest_small")


def test_movielens(movielens):
    ds = movielens
    assert ds.stats["format"] == "movielens" and ds.name == "movielens_latest_small"
    assert len(ds.events) == 100_836 and ds.stats["users"] == 610
    assert ds.stats["invalid"] == {} and ds.stats["duplicates"] == 0
    assert all(e.kind == "click" and e.rating is not None and e.text is None for e in ds.events)
    assert {e.rating for e in ds.events} == {x / 2 for x in range(1, 11)}
    assert_replay_order(ds)
    assert ds.stats["tag_rows"] == 3_683  # tags become item text, not events
    assert len(ds.items) == 9_724 and ds.stats["catalogue_items"] == 9_742
    toy = ds.items["1"]
    assert toy.title == "Toy Story (1995)"
    assert toy.tags[:5] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert "pixar" in [t.lower() for t in toy.tags]
    assert toy.text().startswith("Toy Story (1995). Adventure, Animation")


@needs_shared
def test_movielens_by_name_and_by_ratings_file():
    ds = load_dataset("movielens", limit=1_000)
    assert ds.name == "movielens" and len(ds.events) == 1_000
    assert detect_format(SHARED / "movielens_latest_small" / "ratings.csv")[0] == "movielens"


# --- simple format --------------------------------------------------------------------------------

EVENTS = [
    Event("u1", "i1", "click", 1_500_000_000.0),
    Event("u2", "i1", "review", 1_400_000_000.0, "e-2", 4.0, "Solid and cheap."),
    Event("u1", "i2", "click", 1_500_000_000.0, "e-3", 3.5),                 # same time as the first
    Event("u3", "i3", "review", 1_450_000_000.5, None, 1.0, "Broke after a day.", {"device": "ios"}),
]
ITEMS = [ItemRecord("i1", "Pop filter", "Double screen.", ("studio", "vocals")),
         ItemRecord("i2", "Guitar strap")]


def strip_derived_ids(events):
    return [e if e.event_id and e.event_id.startswith("e-") else
            Event(e.user_id, e.item_id, e.kind, e.event_time, None, e.rating, e.text, e.context) for e in events]


def expected_order():
    return sorted(EVENTS, key=lambda e: e.event_time)  # stable: ties keep file order


def test_simple_jsonl_round_trip(tmp_path):
    lines = [json.dumps(e.to_json()) for e in EVENTS]
    lines += [
        json.dumps(EVENTS[0].to_json()),                                    # exact duplicate row
        '{"user_id": "u9", "item_id": "i1", "event_time": 32503680000}',    # year 3000
        '{"user_id": "u9", "item_id": "i1", "event_time": 1, "rating": 99}',
        '{"user_id": "u9", "item_id": "i1"',                                # truncated
        '[1, 2]',
        '',
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r.to_json()) for r in ITEMS) + "\n")
    ds = load_dataset(tmp_path)
    assert ds.stats["format"] == "simple_jsonl"
    assert strip_derived_ids(ds.events) == expected_order()
    assert ds.stats["rows"] == 9 and ds.stats["duplicates"] == 1
    assert ds.stats["invalid"] == {"malformed_json": 1, "not_an_object": 1, "rating_out_of_range": 1,
                                   "timestamp_in_future": 1}
    assert ds.items["i1"] == ITEMS[0] and ds.items["i2"] == ITEMS[1]
    # i3 is not in the catalogue: text from its review
    assert ds.items["i3"].description == "Broke after a day."
    assert ds.stats["item_text"] == {"catalogue": 2, "summaries": 0, "review_text": 1, "none": 0}
    # loading the file directly, with the catalogue passed explicitly, gives the same result
    ds2 = load_dataset(tmp_path / "events.jsonl", items=tmp_path / "items.jsonl")
    assert ds2.events == ds.events and ds2.items == ds.items


def test_simple_csv_round_trip(tmp_path):
    with open(tmp_path / "clicks.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "timestamp", "rating", "text", "event_id", "type", "context"])
        for e in EVENTS:
            w.writerow([e.user_id, e.item_id, repr(e.event_time) if e.event_time % 1 else int(e.event_time),
                        "" if e.rating is None else e.rating, e.text or "", e.event_id or "", e.kind,
                        json.dumps(e.context) if e.context else ""])
        w.writerow(["u9", "i1", "2014-02-28T00:00:00Z", "five", "", "", "", ""])  # rating not a number
        w.writerow(["", "i1", "1400000000", "", "", "", "", ""])                   # no user
    with open(tmp_path / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "description", "tags"])
        for r in ITEMS:
            w.writerow([r.item_id, r.title, r.description, "|".join(r.tags)])
    ds = load_dataset(tmp_path / "clicks.csv")
    assert ds.stats["format"] == "simple_csv"
    assert strip_derived_ids(ds.events) == expected_order()
    assert ds.stats["invalid"] == {"missing_field": 1, "wrong_type": 1}
    assert ds.items["i1"] == ITEMS[0] and ds.items["i2"] == ITEMS[1]


def test_simple_format_iso_times_and_aliases(tmp_path):
    (tmp_path / "log.jsonl").write_text(
        '{"user_id": 7, "item_id": 70, "time": "2014-02-28T00:00:00Z"}\n'
        '{"user_id": 7, "item_id": 71, "timestamp": 1393545600000}\n')
    ds = load_dataset(tmp_path / "log.jsonl")
    assert [(e.user_id, e.item_id, e.event_time) for e in ds.events] == [("7", "70", 1393545600.0),
                                                                        ("7", "71", 1393545600.0)]
    assert ds.stats["item_text"]["none"] == 2  # no catalogue and no text
    assert set(ds.items) == {"70", "71"}


# --- Amazon format edge cases ---------------------------------------------------------------------------

def test_amazon_rows_meta_and_bad_lines(tmp_path):
    rows = [
        {"reviewerID": "A1", "asin": "X1", "overall": 5.0, "reviewText": "Great strings.", "summary": "Great",
         "unixReviewTime": 1393545600, "reviewTime": "02 28, 2014"},
        {"reviewerID": "A2", "asin": "X1", "overall": 4.0, "reviewText": "", "summary": "Good enough",
         "reviewTime": "03 01, 2014"},                                             # no unix time, empty text
        {"reviewerID": "A3", "asin": "X2", "overall": 3.0, "reviewText": "Meh.", "summary": "Five Stars",
         "unixReviewTime": 1393545600},
        {"reviewerID": "A4", "asin": "X2", "overall": 99, "reviewText": "x", "unixReviewTime": 1393545600},
        {"reviewerID": True, "asin": "X2", "overall": 5, "reviewText": "x", "unixReviewTime": 1393545600},
        {"asin": "X2", "overall": 5, "reviewText": "x", "unixReviewTime": 1393545600},
    ]
    lines = [json.dumps(r).encode() for r in rows] + [json.dumps(rows[0]).encode(), b'{"reviewerID": "A5", "as',
                                                      b'{"reviewerID": "A\xff", "asin": "X1"}']
    with gzip.open(tmp_path / "reviews_Strings_5.json.gz", "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    meta = [  # 2014 metadata: python literals
        "{'asin': 'X1', 'title': 'Elixir Strings &amp; Co', 'categories': [['Musical Instruments', 'Strings']],"
        " 'brand': 'Elixir'}",
        "{'asin': 'X2', 'title': '<span class=\"a-size-medium a-color-secondary\"', 'description': '<b>Bold</b> pick'}",
        "{'asin': 'X9', 'title': 'not reviewed'}",
    ]
    with gzip.open(tmp_path / "meta_Strings.json.gz", "wt") as fh:
        fh.write("\n".join(meta) + "\n")
    ds = load_dataset(tmp_path)
    st = ds.stats
    assert st["format"] == "amazon" and st["rows"] == 9 and st["duplicates"] == 1
    assert st["invalid"] == {"invalid_utf8": 1, "malformed_json": 1, "missing_field": 1,
                             "rating_out_of_range": 1, "wrong_type": 1}
    assert [(e.user_id, e.text) for e in ds.events] == [("A1", "Great strings."), ("A3", "Meh."),
                                                       ("A2", "Good enough")]
    assert ds.events[-1].event_time == 1393632000.0  # from reviewTime
    assert st["text_from_summary"] == 1
    assert ds.items["X1"].title == "Elixir Strings & Co" and ds.items["X1"].tags == ("Elixir", "Strings")
    # X1 has metadata but no description: summaries fill it (Amazon only)
    assert ds.items["X1"].description == "Great; Good enough"
    assert ds.items["X2"].title == "" and ds.items["X2"].description == "Bold pick"
    assert "X9" not in ds.items
    assert st["item_text"] == {"catalogue": 1, "summaries": 1, "review_text": 0, "none": 0}
    recs, _ = read_catalogue(tmp_path / "meta_Strings.json.gz")
    assert set(recs) == {"X1", "X2", "X9"}


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFound, match="neither a dataset name"):
        load_dataset(tmp_path / "nope.jsonl")
