"""Item co-occurrence, counted online: the co-occurrence kNN baseline's rule made order- and
distance-aware, in bounded memory, following the catalogue, and never ahead of the moment a list
was asked for."""
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


def test_without_order_and_distance_it_is_the_knn_baseline():
    events = stream()
    items = sorted({e.item_id for e in events})
    row = {i: k for k, i in enumerate(items)}
    knn, co = CooccurrenceKNN(items), Cooccurrence(proximity=1.0, backward=1.0, alpha=0.5)
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


def dense_rule(events: list[Event], items: list[str], *, window=50, history=20, decay=0.9, proximity=0.95,
               backward=0.75, alpha=0.6, sequence_items=50) -> dict[str, np.ndarray]:
    """The counting rule of ``inference.cooccur`` written out plainly over a dense matrix: each
    user's scores after the stream. A user's items are the distinct ones among their last
    ``sequence_items`` events in time order (``UserState.seq``), each at its latest place."""
    row = {i: k for k, i in enumerate(items)}
    C, n = np.zeros((len(items), len(items))), np.zeros(len(items))
    seqs: dict[str, list[tuple[float, int]]] = {}  # user -> (time, row) of the last events, time order

    def distinct(seq: list[tuple[float, int]]) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        for t, i in reversed(seq):
            if i not in [r for r, _ in out]:
                out.append((i, t))
        return out[::-1]  # oldest first

    for e in events:
        j, seq = row[e.item_id], seqs.setdefault(e.user_id, [])
        prev = [(i, t) for i, t in distinct(seq) if i != j][-window:]
        for dist, (i, t) in enumerate(reversed(prev)):
            w = proximity ** dist
            after = 1.0 if t < e.event_time else backward if t > e.event_time else (1 + backward) / 2
            C[i, j] += w * after
            C[j, i] += w * (1 + backward - after)
        n[j] += 1
        seq.insert(sum(t <= e.event_time for t, _ in seq), (e.event_time, j))  # after the same time's events
        del seq[:-sequence_items]
    m = np.maximum(n, 1.0)
    out = {}
    for u, seq in seqs.items():
        h = [i for i, _ in distinct(seq)][-history:]
        wts = decay ** np.arange(len(h))[::-1]
        out[u] = sum(w * C[i] / m[i] ** alpha for w, i in zip(wts, h)) / m ** (1 - alpha)
    return out


def test_scores_follow_order_distance_and_simultaneity():
    """A stream with many events of the same time and some late ones: the worker's counts are
    the rule written out (``dense_rule``)."""
    rng = np.random.default_rng(1)
    events = [Event(f"u{rng.integers(30)}", f"i{int(rng.zipf(1.3)) % 50}", "click",
                    float(t // 3 - 4 * (rng.random() < 0.1)), event_id=f"e{t}") for t in range(2000)]
    items = sorted({e.item_id for e in events})
    index = ItemIndex(4)
    index.upsert_many(items, np.random.default_rng(0).standard_normal((len(items), 4)).astype(np.float32))
    rec = Recommender(index, config=RecommenderConfig())
    states: dict[str, object] = {}
    for e in events:
        rec.observe(states.setdefault(e.user_id, rec.new_state()), e)
    want = dense_rule(events, items)
    for u, state in states.items():
        got = rec.cooccurrence.scores([rec.history_rows(state)], len(items))[0]
        np.testing.assert_allclose(got, want[u], rtol=1e-4, atol=1e-6)


def test_what_came_next_counts_more_than_what_came_before():
    co = Cooccurrence()
    for _ in range(5):  # people chose 0, then 1, then 2
        co.add(np.array([], np.int64), 0)
        co.add(np.array([0]), 1)
        co.add(np.array([0, 1]), 2)
    after_1 = co.scores([np.array([1])], 3)[0]
    after_2 = co.scores([np.array([2])], 3)[0]
    assert np.isclose(after_2[1], co.backward * after_1[2])  # 2 followed 1; 1 only preceded 2
    assert co.backward < 1
    assert after_1[2] > after_1[0]
    after_0 = co.scores([np.array([0])], 3)[0]
    assert np.isclose(after_0[2], 0.95 * after_0[1])  # 2 came two steps after 0, 1 one: proximity 0.95


def test_events_of_the_same_time_count_both_ways_and_late_ones_in_time_order():
    """Order comes from event time, not arrival: the same choices sent out of order, or at one
    time, give the scores their times say."""
    def scores(sent: list[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        index = ItemIndex(2)
        index.upsert_many(["a", "b"], np.eye(2, dtype=np.float32))
        rec = Recommender(index)
        for k in range(4):
            s = rec.new_state()
            for item, t in sent:
                rec.observe(s, Event(f"u{k}", item, "click", t, event_id=f"{k}{item}"))
        co = rec.cooccurrence
        return co.scores([np.array([index.row("a")])], 2)[0], co.scores([np.array([index.row("b")])], 2)[0]

    a_then_b = scores([("a", 1.0), ("b", 2.0)])
    late = scores([("b", 2.0), ("a", 1.0)])  # b arrives first, but a happened first
    np.testing.assert_allclose(late[0], a_then_b[0])
    np.testing.assert_allclose(late[1], a_then_b[1])
    backward = Cooccurrence().backward
    assert np.isclose(a_then_b[1][0], backward * a_then_b[0][1])  # after a comes b; before b came a
    together = scores([("a", 5.0), ("b", 5.0)])
    assert np.isclose(together[0][1], together[1][0])
    assert np.isclose(together[0][1], (1 + backward) / 2 * a_then_b[0][1])  # no order: the mean of both ways


def test_a_full_row_keeps_its_largest_counts():
    co = Cooccurrence(slots=4, proximity=1.0, backward=1.0)
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
