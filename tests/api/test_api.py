"""The HTTP API over real HTTP: two workers in one group on the embedded broker, every route.

One module-scoped pair of workers (A, B) with the API token set and ``--explain`` on: A is
started first and polled while it loads (503), B joins the group, the partitions split
between them. Users whose partition B owns are then asked through A (routing).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest
from harness import RunningWorker, fresh_topics, start_worker, stop_worker, wait_ready
from kafkaio import for_user, read_all, send

from streams.replay import producer, publish_catalogue
from streams.settings import KafkaConfig
from streams.topics import Topics

T0 = 1_400_000_000
TOKEN = f"tok-{uuid.uuid4().hex}"


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict


def call(w: RunningWorker, method: str, path: str, body: bytes | dict | None = None, *,
         token: str | None = TOKEN, headers: dict | None = None) -> Reply:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{w.web_port}{path}", data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Reply(r.status, json.loads(r.read()), dict(r.headers))
    except urllib.error.HTTPError as e:
        raw = e.read()
        return Reply(e.code, json.loads(raw) if raw else {}, dict(e.headers))


def url(w: RunningWorker) -> str:
    return f"http://127.0.0.1:{w.web_port}"


@dataclass
class Pair:
    a: RunningWorker
    b: RunningWorker
    kafka: KafkaConfig
    topics: Topics
    items: list[str]
    startup: list[Reply]
    owners: dict[str, str]  # user -> canonical URL of the worker that owns them


@pytest.fixture(scope="module")
def pair(broker, model_dir, mi_dataset, tmp_path_factory):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka)
    items = sorted(mi_dataset.items)[::6]  # 150 real items: quick to encode at start-up
    prod = producer(kafka)
    publish_catalogue(prod, topics, [mi_dataset.items[i] for i in items])
    prod.close()
    tmp = tmp_path_factory.mktemp("api")
    app_id = f"api-{uuid.uuid4().hex[:8]}"
    env = {"STREAMREC_API_TOKEN": TOKEN}
    a = start_worker(kafka, topics, model_dir, tmp / "a", "--explain", app_id=app_id, wait=False, env=env)
    b = None
    try:
        startup: list[Reply] = []  # what A answers while it loads its catalogue
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and a.proc.poll() is None:
            try:
                startup.append(call(a, "GET", "/users/probe/recommendations"))
                if startup[-1].status == 200:
                    break
            except OSError:
                pass  # web server not up yet
            time.sleep(0.2)
        wait_ready(a)
        b = start_worker(kafka, topics, model_dir, tmp / "b", "--explain", app_id=app_id, env=env)
        owners = _wait_for_two_owners(a, b, app_id)
        yield Pair(a, b, kafka, topics, items, startup, owners)
    finally:
        stop_worker(a)
        if b is not None:
            stop_worker(b)


def _wait_for_two_owners(a: RunningWorker, b: RunningWorker, app_id: str, timeout_s: float = 120) -> dict:
    """Until both workers agree on an assignment that gives each some partitions and both answer."""
    deadline = time.monotonic() + timeout_s
    topic = f"{app_id}-users-changelog"
    while time.monotonic() < deadline:
        views = [call(w, "GET", "/router/users/").body for w in (a, b)]
        hosts = {h: v.get(topic, []) for h, v in views[0].items()}
        if views[0] == views[1] and set(hosts) == {url(a), url(b)} and all(hosts.values()):
            if all(call(w, "GET", "/users/probe/recommendations").status == 200 for w in (a, b)):
                return hosts
        time.sleep(0.5)
    raise TimeoutError(f"the two workers never split the partitions: {views}")


def users_on(p: Pair, w: RunningWorker, want: int = 2) -> list[str]:
    """Users whose state lives on worker ``w`` (asked through the other worker: routed)."""
    other = p.b if w is p.a else p.a
    found = []
    for k in range(64):
        u = f"user-{k}"
        if call(other, "GET", f"/users/{u}/recommendations?n=1").body["served_by"] == url(w):
            found.append(u)
            if len(found) == want:
                return found
    raise AssertionError(f"no user hashes to {url(w)}'s partitions among 64")


def clicks(user: str, items: list[str], t0: float, tag: str) -> list[tuple[bytes, dict]]:
    return [(user.encode(), {"user_id": user, "item_id": i, "event_time": t0 + k, "event_id": f"{tag}-{user}-{k}"})
            for k, i in enumerate(items)]


def strings(mi_dataset, items: list[str]) -> list[str]:
    return [i for i in items if "string" in mi_dataset.items[i].text().lower()]


# -- loading ---------------------------------------------------------------------------------
def test_a_loading_worker_answers_503_as_json_then_200(pair):
    first = pair.startup[0]
    assert first.status == 503 and first.body["error"] == "not_ready" and first.body["status"] == 503
    assert first.headers.get("Retry-After") == "1" and "retry" in first.body["detail"]
    assert pair.startup[-1].status == 200  # and serves once the catalogue is in


# -- GET /users/{id}/recommendations -----------------------------------------------------------
def test_any_worker_answers_for_a_user_owned_by_the_other(pair, mi_dataset):
    """Asked through A, a user B owns is answered by B, with the list B last published."""
    for owner, asked in ((pair.b, pair.a), (pair.a, pair.b)):
        user = users_on(pair, owner, 1)[0]
        history = strings(mi_dataset, pair.items)[:4]
        send(pair.kafka, pair.topics.clicks, clicks(user, history, T0, "route"))
        out = read_all(pair.kafka, pair.topics.recommendations,
                       until=lambda rs: len(for_user(rs, user)) == len(history))
        last = for_user(out, user)[-1]
        # no other event reached the owner since: its popularity, hence the list, is unchanged
        via_other = call(asked, "GET", f"/users/{user}/recommendations")
        direct = call(owner, "GET", f"/users/{user}/recommendations")
        assert via_other.status == direct.status == 200
        assert via_other.body["served_by"] == direct.body["served_by"] == url(owner)
        got = via_other.body
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in last["items"]]
        assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in last["items"]], abs=1e-5)
        assert got["model_version"] == last["model_version"] and got["cold_start"] is False
        assert got["known_user"] is True and got["freshness"]["events"] == len(history)
        assert got["freshness"]["last_event_time"] == T0 + len(history) - 1
        assert got["freshness"]["age_s"] > 0 and not set(history) & {i["item_id"] for i in got["items"]}
        assert via_other.headers["Content-Type"].startswith("application/json")
        # the worker that answered is the one that consumed the user's events
        assignment = call(asked, "GET", "/router/topics").body[url(owner)]
        assert last["trigger"]["partition"] in assignment[pair.topics.clicks]


def test_a_user_never_seen_gets_the_cold_start_list(pair):
    for w in (pair.a, pair.b):
        r = call(w, "GET", f"/users/nobody-{uuid.uuid4().hex[:6]}/recommendations?n=5")
        assert r.status == 200 and r.body["cold_start"] is True and r.body["known_user"] is False
        assert r.body["freshness"] is None and len(r.body["items"]) == 5


def test_explanations_split_each_score(pair, mi_dataset):
    user = users_on(pair, pair.b, 2)[1]
    history = strings(mi_dataset, pair.items)[4:7]
    send(pair.kafka, pair.topics.clicks, clicks(user, history, T0, "explain"))
    out = read_all(pair.kafka, pair.topics.recommendations, until=lambda rs: len(for_user(rs, user)) == 3)
    r = call(pair.a, "GET", f"/users/{user}/recommendations?n=5&explain=1")
    assert r.status == 200 and len(r.body["items"]) == 5
    for rank, item in enumerate(r.body["items"], start=1):
        ex = item["explanation"]
        assert ex["rank"] == rank and set(ex["parts"]) == {"similarity", "popularity"}
        assert sum(ex["parts"].values()) == pytest.approx(item["score"], abs=1e-5)
        assert ex["history"] and {h["item_id"] for h in ex["history"]} <= set(history)
        assert all(h["weight"] > 0 and h["contribution"] > 0 for h in ex["history"])
        # clicks only, all in the window: the history explains the whole similarity part
        assert sum(h["contribution"] for h in ex["history"]) == pytest.approx(ex["parts"]["similarity"], abs=1e-4)
        assert abs(ex["similarity_other"]) < 1e-4 and isinstance(ex["moved"]["popularity"], int)
    # the output records (--explain) carry the same kind of explanation
    rec_items = for_user(out, user)[-1]["items"]
    assert all({"driver", "parts", "history", "similarity_other", "moved"} <= set(i) for i in rec_items)
    assert {h["item_id"] for i in rec_items for h in i["history"]} <= set(history)
    plain = call(pair.a, "GET", f"/users/{user}/recommendations?n=5")
    assert all("explanation" not in i for i in plain.body["items"])


# -- POST /recommend -------------------------------------------------------------------------
def test_text_requests_rank_by_meaning(pair, mi_dataset):
    # base rates in the 150 items: "guitar" 48 (32%), "string" 19 (13%); popularity is blended in too
    for text, word, at_least in (("a warm acoustic guitar for a beginner", "guitar", 7), ("guitar strings", "string", 6)):
        r = call(pair.a, "POST", "/recommend", {"text": text, "explain": 1})
        assert r.status == 200 and r.body["user_id"] is None and r.body["text_weight"] == 1.0
        hits = [word in mi_dataset.items[i["item_id"]].text().lower() for i in r.body["items"]]
        assert sum(hits) >= at_least, (text, hits)
        ex = r.body["items"][0]["explanation"]
        assert ex["request"] == pytest.approx(ex["parts"]["similarity"], abs=1e-5) and "history" not in ex
    zh = call(pair.b, "POST", "/recommend", {"text": "我想买一台笔记本"})  # any language is encoded and ranked
    assert zh.status == 200 and len(zh.body["items"]) == 10


def test_text_request_with_a_user_blends_on_the_owner(pair, mi_dataset):
    user = users_on(pair, pair.b, 3)[2]  # a user no other test sends events for
    history = strings(mi_dataset, pair.items)[8:10]
    send(pair.kafka, pair.topics.clicks, clicks(user, history, T0 + 100, "blend"))
    read_all(pair.kafka, pair.topics.recommendations,
             until=lambda rs: any(r["trigger"]["event_id"] == f"blend-{user}-1" for r in rs))
    own = call(pair.a, "GET", f"/users/{user}/recommendations").body
    text = "microphone cable"
    as_user = call(pair.a, "POST", "/recommend", {"text": text, "user_id": user, "text_weight": 0})
    as_text = call(pair.a, "POST", "/recommend", {"text": text, "user_id": user, "text_weight": 1})
    alone = call(pair.b, "POST", "/recommend", {"text": text, "n": 30})  # B's popularity: B answers the others
    blend = call(pair.a, "POST", "/recommend", {"text": text, "user_id": user, "explain": True})
    for r in (as_user, as_text, blend):
        assert r.status == 200 and r.body["served_by"] == url(pair.b) and r.body["known_user"] is True
    ids = lambda r: [i["item_id"] for i in r.body["items"]]  # noqa: E731
    assert ids(as_user) == [i["item_id"] for i in own["items"]]  # weight 0: the user's own list
    assert ids(as_text) == [i for i in ids(alone) if i not in history][:10]  # weight 1: the text, minus seen
    assert blend.body["text_weight"] == 0.5 and ids(blend) not in (ids(as_user), ids(as_text))
    ex = blend.body["items"][0]["explanation"]
    assert ex["request"] > 0 and ex["history"]  # both the request and the history pulled it up


# -- GET /items/{id}/similar --------------------------------------------------------------------
def test_similar_items(pair, mi_dataset):
    item = strings(mi_dataset, pair.items)[0]
    r = call(pair.b, "GET", f"/items/{item}/similar?n=5")
    assert r.status == 200 and r.body["item_id"] == item and len(r.body["items"]) == 5
    scores = [i["score"] for i in r.body["items"]]
    assert scores == sorted(scores, reverse=True) and item not in [i["item_id"] for i in r.body["items"]]
    assert sum("string" in mi_dataset.items[i["item_id"]].text().lower() for i in r.body["items"]) >= 3
    missing = call(pair.a, "GET", "/items/no-such-item/similar")
    assert missing.status == 404 and missing.body["error"] == "unknown_item"


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path,body", [
    ("GET", "/users/u/recommendations?n=0", None),
    ("GET", "/users/u/recommendations?n=abc", None),
    ("GET", "/users/u/recommendations?n=1000", None),
    ("GET", "/users/u/recommendations?explain=maybe", None),
    ("GET", "/items/x/similar?n=-1", None),
    ("POST", "/recommend", b"{not json"),
    ("POST", "/recommend", b"[1, 2]"),
    ("POST", "/recommend", {"n": 3}),
    ("POST", "/recommend", {"text": "   "}),
    ("POST", "/recommend", {"text": "strings", "text_weight": 2}),
    ("POST", "/recommend", {"text": "strings", "user_id": ["a"]}),
    ("POST", "/recommend", {"text": "strings", "n": "many"}),
])
def test_bad_requests_are_400_json(pair, method, path, body):
    r = call(pair.a, method, path, body)
    assert r.status == 400 and r.body["error"] == "bad_request" and r.body["detail"], r.body


def test_too_large_body_is_413(pair):
    r = call(pair.a, "POST", "/recommend", {"text": "strings " * 9000})  # ~72 KB
    assert r.status == 413 and r.body["error"] == "too_large"
    ok = call(pair.a, "POST", "/recommend", {"text": "strings " * 7000})  # ~56 KB: allowed, truncated by the encoder
    assert ok.status == 200


def test_token_is_required_except_for_health_and_metrics(pair):
    for token in (None, "wrong"):
        for method, path, body in (("GET", "/users/u/recommendations", None), ("POST", "/recommend", {"text": "x"}),
                                   ("GET", "/items/x/similar", None), ("GET", "/router/users/", None)):
            r = call(pair.a, method, path, body, token=token)
            assert r.status == 401 and r.body["error"] == "unauthorized" and "Bearer" in r.headers["WWW-Authenticate"]
    assert call(pair.a, "GET", "/health", token=None).status == 200
    with urllib.request.urlopen(f"{url(pair.a)}/metrics", timeout=10) as m:
        assert m.status == 200
    assert TOKEN not in pair.a.log() and TOKEN not in pair.b.log()


def test_unknown_route_and_wrong_method_are_json(pair):
    r = call(pair.a, "GET", "/nope")
    assert r.status == 404 and r.body["error"] == "not_found"
    r = call(pair.a, "DELETE", "/recommend")
    assert r.status == 405 and r.body["error"] == "method_not_allowed" and "POST" in r.headers["Allow"]


def test_a_forwarded_request_is_never_forwarded_again(pair):
    """A worker that gets a forwarded request for a user it does not own (the assignment moved)
    answers 503 instead of bouncing it back: no forwarding loops between two workers."""
    user = users_on(pair, pair.b, 1)[0]
    r = call(pair.a, "GET", f"/users/{user}/recommendations", headers={"X-Streamrec-Hop": url(pair.b)})
    assert r.status == 503 and r.body["error"] == "not_ready" and r.headers["Retry-After"] == "1"
    r = call(pair.a, "POST", "/recommend", {"text": "strings", "user_id": user}, headers={"X-Streamrec-Hop": "x"})
    assert r.status == 503
    mine = users_on(pair, pair.a, 1)[0]  # the owner itself answers a forwarded request
    assert call(pair.a, "GET", f"/users/{mine}/recommendations", headers={"X-Streamrec-Hop": "x"}).status == 200
