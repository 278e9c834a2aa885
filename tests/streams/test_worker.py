"""A real worker on a real broker: events in with kafka-python, recommendation records out."""
from __future__ import annotations

import base64
import hashlib
import json
import time

from kafkaio import for_user, read_all, send

T0 = 1_400_000_000  # event times in 2014, like the data


def click(user: str, item: str, t: float, event_id: str | None = None, **extra) -> dict:
    ev = {"user_id": user, "item_id": item, "event_time": t, **extra}
    if event_id:
        ev["event_id"] = event_id
    return ev


def string_items(ds) -> list[str]:
    return sorted(i for i, r in ds.items.items() if "string" in r.text().lower() and "strap" not in r.text().lower())


def test_event_in_recommendation_out(worker, mi_dataset):
    item = sorted(mi_dataset.items)[0]
    send(worker.kafka, worker.topics.clicks, [(b"alice", click("alice", item, T0, "a-1", context={"page": "home"}))])
    (rec,) = for_user(read_all(worker.kafka, worker.topics.recommendations,
                               until=lambda rs: bool(for_user(rs, "alice"))), "alice")
    assert rec["_key"] == b"alice"
    assert len(rec["items"]) == 10 and item not in [i["item_id"] for i in rec["items"]]  # seen: excluded
    assert all(set(i) >= {"item_id", "score"} for i in rec["items"])
    assert rec["trigger"]["event_id"] == "a-1" and rec["trigger"]["type"] == "click"
    assert rec["trigger"]["topic"] == worker.topics.clicks and rec["trigger"]["offset"] >= 0
    assert rec["event_time"] == T0 and rec["model_version"].startswith("all-MiniLM-L6-v2:int8")
    assert 0 <= rec["latency_ms"] < 60_000 and rec["cold_start"] is False


def test_string_clicks_put_string_items_first(worker, mi_dataset):
    strings = string_items(mi_dataset)
    assert len(strings) > 30
    send(worker.kafka, worker.topics.clicks,
         [(b"bob", click("bob", item, T0 + k, f"b-{k}")) for k, item in enumerate(strings[:5])])
    recs = for_user(read_all(worker.kafka, worker.topics.recommendations,
                             until=lambda rs: len(for_user(rs, "bob")) >= 5), "bob")
    top = [i["item_id"] for i in recs[-1]["items"]]
    assert sum(i in strings for i in top) >= 7, top
    base_rate = len(strings) / len(mi_dataset.items)
    assert base_rate < 0.5


def test_catalogue_delete_removes_item_from_later_lists(worker, mi_dataset):
    strings = string_items(mi_dataset)
    send(worker.kafka, worker.topics.clicks, [(b"carol", click("carol", strings[10], T0, "c-1"))])
    first = for_user(read_all(worker.kafka, worker.topics.recommendations,
                              until=lambda rs: len(for_user(rs, "carol")) >= 1), "carol")[-1]
    gone = first["items"][0]["item_id"]
    send(worker.kafka, worker.topics.items, [(gone.encode(), None)])  # tombstone
    deadline = time.monotonic() + 60  # the catalogue follower applies it within a poll or two
    while worker.metric('streamrec_catalogue_updates_total{op="delete"}') < 1:
        assert time.monotonic() < deadline, "the worker did not apply the delete"
        time.sleep(0.1)
    send(worker.kafka, worker.topics.clicks, [(b"carol", click("carol", strings[11], T0 + 1, "c-2"))])
    second = for_user(read_all(worker.kafka, worker.topics.recommendations,
                               until=lambda rs: len(for_user(rs, "carol")) >= 2), "carol")[-1]
    assert gone not in [i["item_id"] for i in second["items"]]
    # events about the deleted item are now dead-lettered as unknown
    send(worker.kafka, worker.topics.clicks, [(b"carol", click("carol", gone, T0 + 2, "c-3"))])
    dl = read_all(worker.kafka, worker.topics.dead_letters,
                  until=lambda rs: any(json.loads(base64.b64decode(r["value_b64"])).get("event_id") == "c-3"
                                       for r in rs if r.get("reason") == "unknown_item"))
    assert any(r["reason"] == "unknown_item" for r in dl)


def test_bad_records_are_dead_lettered_and_the_next_valid_event_is_processed(worker, mi_dataset):
    item = sorted(mi_dataset.items)[5]
    huge = json.dumps(click("dave", item, T0, "d-huge", text="x" * 1_000_000)).encode()
    bad = [
        (b"dave", b'{"user_id": "dave", "item_id": ', "malformed_json"),
        (b"dave", json.dumps({"item_id": item, "event_time": T0, "rating": 4}).encode(), None),  # key = user
        (None, json.dumps({"item_id": item, "event_time": T0}).encode(), "missing_field"),  # no user at all
        (b"dave", json.dumps(click("dave", item, "yesterday-ish")).encode(), "bad_timestamp"),
        (b"dave", json.dumps({"user_id": "dave", "item_id": ["a"], "event_time": T0}).encode(), "wrong_type"),
        (b"dave", json.dumps(click("dave", "no-such-item", T0, rating=4)).encode(), "unknown_item"),
        (b"dave", huge, "record_too_large"),
        (b"dave", b'{"user_id": "dave", "text": "\xff\xfe"}', "invalid_utf8"),
        (b"dave", json.dumps(click("dave", item, 32_503_680_000)).encode(), "timestamp_in_future"),  # year 3000
        (b"dave", json.dumps({**click("dave", item, T0), "rating": 99, "text": "wow"}).encode(),
         "rating_out_of_range"),
    ]
    send(worker.kafka, worker.topics.reviews, [(k, v) for k, v, _ in bad])
    send(worker.kafka, worker.topics.clicks, [(b"dave", click("dave", item, T0 + 5, "d-valid"))])
    expected = [r for _, _, r in bad if r]
    dl = read_all(worker.kafka, worker.topics.dead_letters,
                  until=lambda rs: len([r for r in rs if r["source"]["topic"] == worker.topics.reviews]) >= len(expected))
    mine = [r for r in dl if r["source"]["topic"] == worker.topics.reviews]
    assert sorted(r["reason"] for r in mine) == sorted(expected), [(r["reason"], r["detail"][:80]) for r in mine]
    for r in mine:
        assert r["detail"] and r["source"]["partition"] >= 0 and r["source"]["offset"] >= 0
        original = [v for k, v, reason in bad if reason == r["reason"]][0]
        if r["truncated"]:
            assert r["value_size"] == len(original) and r["value_sha256"] == hashlib.sha256(original).hexdigest()
        else:
            assert base64.b64decode(r["value_b64"]) == original  # the original bytes, untouched
    recs = for_user(read_all(worker.kafka, worker.topics.recommendations,
                             until=lambda rs: any(r["trigger"]["event_id"] == "d-valid" for r in for_user(rs, "dave"))),
                    "dave")
    assert any(r["trigger"]["event_id"] == "d-valid" for r in recs)
    assert worker.metric("streamrec_dead_letters_total") >= len(expected)
    assert worker.proc.poll() is None  # still running


def test_same_event_twice_updates_once(worker, mi_dataset):
    a, b = sorted(mi_dataset.items)[100:102]
    before = worker.metric("streamrec_duplicates_total")
    send(worker.kafka, worker.topics.clicks, [
        (b"erin", click("erin", a, T0, "e-1")),
        (b"erin", click("erin", a, T0, "e-1")),  # redelivered / sent twice
        (b"erin", click("erin", b, T0 + 1, "e-2")),
    ])
    recs = for_user(read_all(worker.kafka, worker.topics.recommendations, settle_s=1.5,
                             until=lambda rs: any(r["trigger"]["event_id"] == "e-2" for r in for_user(rs, "erin"))),
                    "erin")
    assert [r["trigger"]["event_id"] for r in recs] == ["e-1", "e-2"]
    assert worker.metric("streamrec_duplicates_total") == before + 1


def test_unkeyed_events_are_repartitioned_by_user(worker, mi_dataset):
    item = sorted(mi_dataset.items)[200]
    send(worker.kafka, worker.topics.clicks, [(None, click("frank", item, T0, "f-1"))])
    recs = for_user(read_all(worker.kafka, worker.topics.recommendations,
                             until=lambda rs: bool(for_user(rs, "frank"))), "frank")
    assert recs[0]["_key"] == b"frank" and recs[0]["trigger"]["topic"] == worker.topics.rekeyed
    assert worker.metric("streamrec_rekeyed_total") >= 1


def test_metrics_endpoint_has_the_documented_series(worker):
    names = set(k.split("{")[0] for k in worker.metrics())
    for name in ["streamrec_events_total", "streamrec_dead_letters_total", "streamrec_duplicates_total",
                 "streamrec_latency_seconds_bucket", "streamrec_encoder_batch_size_bucket", "streamrec_model_info",
                 "streamrec_recommendations_total", "streamrec_catalogue_items"]:
        assert name in names, name
    assert worker.metric("streamrec_catalogue_items") > 800


def test_replay_and_tail_commands_on_users_own_files(worker, mi_dataset, tmp_path):
    import subprocess
    import sys

    items = sorted(mi_dataset.items)[300:303]
    data = tmp_path / "my-events.jsonl"
    data.write_text("\n".join(json.dumps({"user_id": "gina", "item_id": i, "event_time": T0 + k, "rating": 5,
                                          "text": "lovely tone, great for practice"})
                              for k, i in enumerate(items)) + "\n")
    common = ["--broker", worker.kafka.bootstrap, "--prefix", worker.topics.prefix]
    replay = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--dataset", str(data), "--no-catalogue",
                             *common], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 3 events" in replay.stdout
    tail = subprocess.run([sys.executable, "-m", "streams.cli", "tail", "--from-beginning", "--user", "gina",
                           "--max", "3", "--timeout", "60", *common], capture_output=True, text=True, timeout=120)
    assert tail.returncode == 0, tail.stderr
    lines = [ln for ln in tail.stdout.splitlines() if ln.startswith("gina:")]
    assert len(lines) == 3 and all("after review of" in ln for ln in lines)


def test_broker_command_starts_answers_and_stops_on_ctrl_c():
    import signal
    import subprocess
    import sys

    from streams.broker import free_port, wait_until_answers

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()  # printed once the broker answers
        assert f"127.0.0.1:{port}" in banner
        wait_until_answers(f"127.0.0.1:{port}", timeout_s=30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0  # generous: a loaded 2-core CI box can be slow to tear down
        import socket

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # the broker process is gone
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_user_with_500_clicks_never_gets_one_of_them_back(worker, mi_dataset):
    items = sorted(mi_dataset.items)[100:600]  # 500 of the 900 items; more than the 100 recent items
    # a user of its own: the module's other tests send to dave over the same worker
    send(worker.kafka, worker.topics.clicks,
         [(b"seen-500", click("seen-500", item, T0 + k, f"s-{k}")) for k, item in enumerate(items)])
    recs = for_user(read_all(worker.kafka, worker.topics.recommendations, timeout_s=120,
                             until=lambda rs: len({r["trigger"]["event_id"] for r in for_user(rs, "seen-500")}) >= 500),
                    "seen-500")
    # at least once: a list re-published after a re-read is fine, a missing one is not
    assert {r["trigger"]["event_id"] for r in recs} == {f"s-{k}" for k in range(500)}
    for rec in recs:
        k = int(rec["trigger"]["event_id"].split("-")[1])
        listed = {i["item_id"] for i in rec["items"]}
        assert len(listed) == 10 and not listed & set(items[: k + 1]), f"list after click {k} holds a seen item"
