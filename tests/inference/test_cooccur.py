"""Item co-occurrence, counted online: what the co-occurrence kNN baseline computes, in bounded
memory, following the catalogue, and never ahead of the moment a list was asked for."""
from __future__ import annotations

import numpy as np

from evaluation.baselines import CooccurrenceKNN
from inference.cooccur import Cooccurrence
from inference.events import Event
from inference.index import ItemIndex
from inference.model import ModelParams
from inference.ranking import Weights
from inference.recommender import Recommender, RecommenderConfig


def stream(n_events: int = 3000, n_items: int = 60, n_users: int = 40, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [Event(f"u{rng.integers(n_users)}", f"i{int(rng.zipf(1.3)) % n_items}", "click", float(t),
                  event_id=f"e{t}") for t in range(n_events)]


def test_scores_are_the_knn_baselines_cosine_sums():
    events = stream()
    items = sorted({e.item_id for e in events})
    row = {i: k for k, i in enumerate(items)}
    knn, co = CooccurrenceKNN(items), Cooccurrence()
    recent: dict[str, list[int]] = {}
    for e in events:
        knn.observe(e)
        mine = recent.setdefault(e.user_id, [])
        co.add(np.asarray(mine, np.int64), row[e.item_id])
        if row[e.item_id] in mine:
            mine.remove(row[e.item_id])
        mine.append(row[e.item_id])
    users = sorted(recent)
    got = co.scores([np.asarray(recent[u]) for u in users], len(items))
    for u, s in zip(users, got):
        last = knn.recent[u][-20:]
        want = knn.similarity_to(last, knn._weights[-len(last):])
        np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-6)
    assert co.evicted == 0


def test_a_full_row_keeps_its_largest_counts():
    co = Cooccurrence(slots=4)
    for _ in range(3):
        co.add(np.array([1, 2]), 0)  # 0 with 1 and 2: three times each
    for j in (3, 4, 5, 6):
        co.add(np.array([j]), 0)  # then four neighbours seen once: the row holds four
    assert co.deg[0] == 4 and co.evicted == 2
    kept = {int(c): float(n) for c, n in zip(co.nbr[0], co.cnt[0])}
    assert kept[1] == 3.0 and kept[2] == 3.0  # the frequent pairs survive
    s = co.scores([np.array([0])], 8)[0]
    assert s[1] > 0 and s[2] > 0 and np.count_nonzero(s) == 4


def test_memory_is_bounded_as_the_catalogue_grows():
    budget = 8 * 256 * 6000  # 256 slots for 6,000 rows
    co = Cooccurrence(slots=1024, max_bytes=budget)
    co.add(np.array([0, 1]), 2)
    assert co.slots == 1024  # a small catalogue: every slot
    co.add(np.array([5000]), 4000)  # the catalogue grew to thousands of rows: fewer slots each
    assert co.slots < 1024 and co.nbr.nbytes + co.cnt.nbytes <= budget
    assert co.scores([np.array([2])], 6000)[0][0] > 0  # what was counted is still there


def test_a_deleted_items_row_starts_empty_when_reused():
    index = ItemIndex(4)
    vecs = np.eye(4, dtype=np.float32)
    index.upsert_many(["a", "b", "c"], vecs[:3])
    co = Cooccurrence()
    co.follow(index)
    co.add(np.array([index.row("a")]), index.row("b"))
    old_row = index.row("b")
    index.remove("b")
    index.upsert("d", vecs[3])  # takes b's freed row
    assert index.row("d") == old_row
    co.follow(index)
    s = co.scores([np.array([index.row("a")])], len(index.alive))[0]
    assert s[index.row("d")] == 0.0  # d does not inherit b's co-occurrence
    assert co.n[index.row("d")] == 0.0


def test_a_list_asked_for_before_later_events_does_not_see_them():
    """A request is a snapshot: events applied after it (the event it is scored against, in
    ``streamrec evaluate``; the rest of the chunk, in the worker) must not reach its
    co-occurrence part."""
    items = [f"i{k}" for k in range(10)]
    index = ItemIndex(4)
    index.upsert_many(items, np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    rec = Recommender(index, config=RecommenderConfig())
    rec.use_model(ModelParams.identity(4, Weights(similarity=0.0, popularity=0.0, cooccurrence=1.0)), "v1")
    for k, u in enumerate(("x", "y", "z")):  # others chose i1 then i2
        s = rec.new_state()
        rec.observe(s, Event(u, "i1", "click", float(k), event_id=f"{u}1"))
        rec.observe(s, Event(u, "i2", "click", float(k), event_id=f"{u}2"))
    me = rec.new_state()
    rec.observe(me, Event("me", "i1", "click", 10.0, event_id="m1"))
    req = rec.request(me)
    before = rec.recommend_many([req])[0].item_ids
    for k in range(5):  # then many users choose i1 and i3: i3 becomes i1's strongest partner
        s = rec.new_state()
        rec.observe(s, Event(f"w{k}", "i1", "click", 20.0 + k, event_id=f"w{k}1"))
        rec.observe(s, Event(f"w{k}", "i3", "click", 20.0 + k, event_id=f"w{k}3"))
    assert rec.recommend_many([req])[0].item_ids == before and before[0] == "i2"
    assert rec.recommend(me).item_ids[0] == "i3"  # a list asked for now sees them
