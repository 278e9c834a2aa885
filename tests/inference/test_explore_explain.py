"""Exploration policy and explanations, on small exact vector sets (fast, no model)."""
from __future__ import annotations

import numpy as np
import pytest

from inference.events import Event
from inference.explore import ExploreConfig, Explorer
from inference.index import ItemIndex
from inference.recommender import Recommender, RecommenderConfig
from inference.user import UpdateConfig, UserState, apply_event
from smallsets import click, random_index

DAY = 86400.0


def index(n: int = 300, dim: int = 24, seed: int = 0) -> tuple[ItemIndex, list[str]]:
    return random_index(n, dim, seed)


# -- user state weights ------------------------------------------------------------------------
def test_item_weights_rebuild_the_user_vector():
    idx, ids = index()
    cfg = UpdateConfig(half_life_s=10 * DAY)
    s = UserState.empty(idx.dim)
    for k, i in enumerate([ids[0], ids[1], ids[2], ids[1]]):  # ids[1] twice: its weights add up
        apply_event(s, item_id=i, event_id=f"e{k}", kind="click", event_time=k * DAY, item_vec=idx.vector(i),
                    config=cfg)
    apply_event(s, item_id=ids[3], event_id="late", kind="click", event_time=0.5 * DAY,
                item_vec=idx.vector(ids[3]), config=cfg)  # out of order: decayed itself
    w = s.item_weights()
    rebuilt = sum(a * idx.vector(i) for i, a in w.items())
    assert np.allclose(rebuilt, s.vector, atol=1e-5)
    assert w[ids[1]] > w[ids[2]] > w[ids[0]] and w[ids[3]] == pytest.approx(2 ** (-2.5 / 10))
    back = UserState.from_bytes(s.to_bytes())
    assert back.item_weights() == pytest.approx(w)


def test_a_one_star_review_has_a_negative_weight():
    idx, ids = index()
    s = UserState.empty(idx.dim)
    apply_event(s, item_id=ids[0], event_id="r", kind="review", event_time=0.0, item_vec=idx.vector(ids[0]),
                rating=1.0, config=UpdateConfig())
    assert s.item_weights()[ids[0]] == -UpdateConfig().review_weight


# -- explanations ------------------------------------------------------------------------------
def test_history_contributions_add_up_to_the_similarity_part():
    idx, ids = index()
    rec = Recommender(idx)
    s = rec.new_state()
    for k in range(6):
        rec.observe(s, click("u", ids[k], k * DAY, k))
    lst = rec.recommend(s, 8)
    for item, ex in zip(lst.items, rec.explain(s, lst, top=10)):
        assert ex["item_id"] == item.item_id and ex["parts"]["similarity"] == pytest.approx(item.parts["similarity"],
                                                                                             abs=1e-6)
        total = sum(h["contribution"] for h in ex["history"])  # top=10 > 6 items: all positive ones
        negatives = [c for c in _contributions(idx, s, item.item_id) if c <= 0]
        assert total + sum(negatives) == pytest.approx(item.parts["similarity"], abs=1e-4)
        assert abs(ex["similarity_other"]) < 1e-4
        assert [h["contribution"] for h in ex["history"]] == sorted([h["contribution"] for h in ex["history"]],
                                                                   reverse=True)


def _contributions(idx, s, item):
    v, norm = idx.vector(item), np.linalg.norm(s.vector)
    return [a * float(idx.vector(h) @ v) / norm for h, a in s.item_weights().items()]


def test_review_text_is_left_in_similarity_other_and_popularity_moves_items():
    idx, ids = index()
    rec = Recommender(idx)
    s = rec.new_state()
    rng = np.random.default_rng(5)
    rec.observe(s, Event("u", ids[0], "review", 0.0, event_id="r", rating=5.0), rng.standard_normal(idx.dim))
    target = rec.recommend(s, 30).item_ids[25]
    for k in range(30):  # others make the user's 26th item popular
        rec.observe(rec.new_state(), click(f"o{k}", target, float(k), k))
    lst = rec.recommend(s, 10)
    ex = {e["item_id"]: e for e in rec.explain(s, lst)}
    assert any(abs(e["similarity_other"]) > 1e-3 for e in ex.values())  # the text's share
    assert target in ex and ex[target]["moved"]["popularity"] > 5  # lifted by popularity
    assert ex[target]["rank"] + ex[target]["moved"]["popularity"] >= 26
    cold = rec.explain(None, rec.recommend(None, 3))
    assert cold[0]["item_id"] == target and "history" not in cold[0] and "moved" not in cold[0]


def test_text_request_blend_and_its_explanation():
    idx, ids = index()
    rec = Recommender(idx, config=RecommenderConfig(text_weight=0.5))
    s = rec.new_state()
    for k in range(3):
        rec.observe(s, click("u", ids[k], k * DAY, k))
    text = idx.vector(ids[200]) + 0.1 * idx.vector(ids[201])
    alone = rec.recommend_for_request(None, text, 5)
    assert alone.item_ids[0] == ids[200] and not alone.cold_start
    assert rec.recommend_for_request(s, text, 5, text_weight=0.0).item_ids == rec.recommend(s, 5).item_ids
    blend = rec.recommend_for_request(s, text, 5)
    q = rec.query(s, text)
    assert q.user_coef > 0 and q.text_coef > 0
    for e in rec.explain(s, blend, text_vec=text):
        every = sum(q.user_coef * c for c in _contributions(idx, s, e["item_id"]))  # negatives too
        assert e["request"] + every + e["similarity_other"] == pytest.approx(e["parts"]["similarity"], abs=1e-5)
        assert abs(e["similarity_other"]) < 1e-4
    with pytest.raises(ValueError, match="0..1"):
        rec.query(s, text, 1.5)


def test_similar_items_leave_the_item_out():
    idx, ids = index()
    rec = Recommender(idx)
    near = rec.similar(ids[7], 5)
    assert len(near) == 5 and ids[7] not in [i.item_id for i in near]
    assert [i.score for i in near] == sorted([i.score for i in near], reverse=True)
    with pytest.raises(KeyError):
        rec.similar("nope")


# -- exploration -------------------------------------------------------------------------------
def test_explorer_counts_impressions_and_one_click_per_list():
    ex = Explorer(ExploreConfig(share=0.2, seed=1, remember_users=2))
    assert ex.slots(10) == 2 and ex.slots(3) == 1 and Explorer(ExploreConfig()).slots(10) == 0
    ex.shown("u1", ["a", "b"])
    assert ex.clicked("u1", "a") and not ex.clicked("u1", "a")  # once per list
    assert not ex.clicked("u1", "zzz") and not ex.clicked("nobody", "a")
    assert ex.stats("a") == (1, 1) and ex.stats("b") == (1, 0)
    ex.shown("u2", ["c"])
    ex.shown("u3", ["c"])  # u1's list is forgotten (LRU of 2)
    assert not ex.clicked("u1", "b")


def test_thompson_tries_what_it_knows_little_about_epsilon_follows_clicks():
    ts = Explorer(ExploreConfig(share=0.1, policy="thompson", seed=3))
    for _ in range(40):
        ts.shown(None, ["known"])  # 40 impressions, no click
    picks = [ts.pick(["known", "new"], 1)[0] for _ in range(200)]
    assert picks.count("new") > 180  # Beta(1, 41) rarely beats Beta(1, 1)
    greedy = Explorer(ExploreConfig(share=0.1, policy="epsilon", epsilon=0.0, seed=3))
    for _ in range(10):
        greedy.shown("u", ["good", "bad"])
        greedy.clicked("u", "good")
        greedy.shown(None, ["bad"])
    assert all(greedy.pick(["bad", "good"], 1) == ["good"] for _ in range(20))
    rnd = Explorer(ExploreConfig(share=0.1, policy="epsilon", epsilon=1.0, seed=3))
    assert {rnd.pick(["a", "b", "c"], 1)[0] for _ in range(60)} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="policy"):
        ExploreConfig(share=0.1, policy="ucb")


def test_recommender_with_exploration_fills_the_last_slots_and_learns_from_clicks():
    idx, ids = index()
    plain = Recommender(idx)
    rec = Recommender(idx, config=RecommenderConfig(explore=ExploreConfig(share=0.3, pool=50, seed=7)))
    s, s2 = plain.new_state(), rec.new_state()
    for k in range(4):
        plain.observe(s, click("u", ids[k], float(k), k))
        rec.observe(s2, click("u", ids[k], float(k), k))
    base = plain.recommend(s, 10)
    got = rec.recommend(s2, 10, user_id="u")
    assert got.item_ids[:7] == base.item_ids[:7] and not any(i.explored for i in got.items[:7])
    explored = [i for i in got.items[7:] if i.explored]
    assert len(explored) == 3 and len(set(got.item_ids)) == 10 and not set(got.item_ids) & set(ids[:4])
    wide = plain.recommend(s, 7 + 50).item_ids[7:]
    assert all(i.item_id in wide for i in explored)  # candidates: the pool just below the list
    rec.observe(s2, click("u", explored[0].item_id, 10.0, 99))  # the user clicks an explored item
    assert rec.explorer.stats(explored[0].item_id) == (1, 1) and rec.explorer.rewarded == 1
