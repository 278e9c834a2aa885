"""Seen items: a list never holds an item its user interacted with, however long the history,
unless repeats are on; the same rule in the recommender, the chunked worker path and
``streamrec evaluate``; old states load."""
from __future__ import annotations

import struct

import numpy as np
from smallsets import click, random_index

from evaluation.protocol import replay
from evaluation.systems import StreamrecSystem
from inference.recommender import Recommender, RecommenderConfig
from inference.seen import KEY_DTYPE, KeyLookup, add_key, item_key, item_keys
from inference.user import UpdateConfig, UserState

T0 = 1_400_000_000


def long_history(rec: Recommender, ids: list[str], n: int = 500) -> tuple[UserState, list[list[str]]]:
    """One user clicks ``n`` items; returns the state and the list served after each click."""
    state = rec.new_state()
    lists = []
    for k, item in enumerate(ids[:n]):
        rec.observe(state, click("u", item, T0 + k, k))
        lists.append(rec.recommend(state).item_ids)
    return state, lists


def test_a_user_with_500_interactions_never_gets_one_of_them():
    index, ids = random_index(n=600, dim=16)
    rec = Recommender(index, config=RecommenderConfig(top_n=20))
    assert rec.config.update.recent_items < 500  # the old rule (recent items only) would fail here
    state, lists = long_history(rec, ids)
    for k, items in enumerate(lists):
        assert len(items) == 20
        assert not set(items) & set(ids[: k + 1]), f"list after event {k} holds a seen item"
    assert len(state.seen) == 500 and all(state.has_interacted(i) for i in ids[:500])
    # the worker's chunk path (request now, rank later) excludes the same items
    (batched,) = rec.recommend_many([rec.request(state)])
    assert batched.item_ids == lists[-1]


def test_with_repeats_on_seen_items_come_back():
    index, ids = random_index(n=600, dim=16)
    rec = Recommender(index, config=RecommenderConfig(top_n=20, repeats=True))
    _, lists = long_history(rec, ids)
    assert any(set(items) & set(ids[: k + 1]) for k, items in enumerate(lists))
    assert set(lists[-1]) & set(ids[:500])  # 500 of 600 items seen: most of the top is seen


def test_evaluate_excludes_the_whole_history_and_repeats_lift_it():
    index, ids = random_index(n=600, dim=16)
    vecs = {i: index.vector(i) for i in ids}
    events = [click("u", item, T0 + k, k) for k, item in enumerate(ids[:500])]
    runs = {}
    for repeats in (False, True):
        cfg = RecommenderConfig(repeats=repeats)
        system = StreamrecSystem(ids, 16, item_vectors=vecs, config=cfg)
        runs[repeats] = replay(events, ids, {"streamrec": system}, k=10)
        # what evaluate excludes is what the worker's own recommend leaves out
        listed = system.recommend_worker("u", 10)
        assert bool(set(listed) & set(ids[:500])) is repeats
    assert runs[False].seen_in_top_k["streamrec"] == 0
    assert runs[True].seen_in_top_k["streamrec"] > 0


def test_seen_set_is_compact_bounded_and_survives_the_wire():
    state = UserState.empty(384)
    cfg = UpdateConfig()
    from inference.user import apply_event

    for k in range(1000):
        apply_event(state, item_id=f"B{k:09d}", event_id=f"e{k}", kind="click", event_time=T0 + k,
                    item_vec=None, config=cfg)
    raw = state.to_bytes()
    back = UserState.from_bytes(raw)
    assert np.array_equal(back.seen, state.seen) and len(back.seen) == 1000
    # 4 bytes an item: the 384-d vector, 100 recent ids with weights, 200 event ids and the
    # 1,000 keys stay under 10 KB (README: 8.4 KB)
    assert len(state.seen) * KEY_DTYPE.itemsize == 4000 and len(raw) < 10_000
    capped = np.zeros(0, KEY_DTYPE)
    for k in range(30):
        capped = add_key(capped, item_key(f"x{k}"), cap=25)
    assert len(capped) == 25 and capped[0] == item_key("x5")  # the oldest are forgotten first


def test_a_format_2_state_loads_with_its_recent_items_as_seen():
    state = UserState.empty(8)
    from inference.user import apply_event

    for k, item in enumerate(["a", "b", "c"]):
        apply_event(state, item_id=item, event_id=f"e{k}", kind="click", event_time=T0 + k,
                    item_vec=np.eye(8, dtype=np.float32)[k], config=UpdateConfig())
    raw = state.to_bytes()
    # format 2 is format 3 without the trailing seen-keys block, and format byte 2
    v2 = bytearray(raw[: len(raw) - 4 - 4 * len(state.seen)])
    struct.pack_into("<B", v2, 2, 2)
    old = UserState.from_bytes(bytes(v2))
    assert old.recent_items == ["a", "b", "c"] and np.allclose(old.vector, state.vector)
    assert np.array_equal(np.sort(old.seen), np.sort(item_keys(["a", "b", "c"])))


def test_key_lookup_finds_every_row_of_a_colliding_key():
    keys = np.asarray([7, 3, 7, 9], dtype=KEY_DTYPE)  # rows 0 and 2 share key 7
    lookup = KeyLookup(keys, np.arange(4))
    assert sorted(lookup.rows_of(np.asarray([7, 9], KEY_DTYPE)).tolist()) == [0, 2, 3]
    assert lookup.rows_of(np.asarray([5], KEY_DTYPE)).size == 0
