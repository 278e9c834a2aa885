"""A user's state does not depend on the order its events arrive in (beyond float rounding).

Clicks and reviews travel on two topics, so a worker may apply a user's click and review in
either order; the fault tests compare a worker's state with a single in-order pass and need
this to hold. It did not while an event that adds nothing (a 3-star review) moved the
state's time forward without decaying its vector.
"""
from __future__ import annotations

import numpy as np

from inference.user import UpdateConfig, UserState, apply_event

DAY = 86400.0


def _state(events, vecs, cfg) -> UserState:
    s = UserState.empty(8)
    for k in events:
        t, kind, rating = EVENTS[k]
        apply_event(s, item_id=f"i{k}", event_id=f"e{k}", kind=kind, event_time=t, item_vec=vecs[k],
                    text_vec=vecs[k] if kind == "review" else None, rating=rating, config=cfg)
    return s


# time, kind, rating: clicks, a 3-star review (weight 0), a pan, equal times, a big gap
EVENTS = [(0.0, "click", None), (3 * DAY, "review", 3.0), (3 * DAY, "click", None), (10 * DAY, "review", 1.0),
          (11 * DAY, "click", None), (90 * DAY, "review", 5.0), (40 * DAY, "review", 3.0)]


def test_every_arrival_order_gives_the_same_state():
    cfg = UpdateConfig()
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(len(EVENTS), 8)).astype(np.float32)
    in_order = _state(sorted(range(len(EVENTS)), key=lambda k: EVENTS[k][0]), vecs, cfg)
    for _ in range(200):
        s = _state(rng.permutation(len(EVENTS)), vecs, cfg)
        assert s.count == in_order.count and s.last_time == in_order.last_time == 90 * DAY
        assert abs(s.weight - in_order.weight) < 1e-9
        np.testing.assert_allclose(s.vector, in_order.vector, atol=1e-5)


def test_a_zero_weight_event_still_ages_the_vector():
    cfg = UpdateConfig(half_life_s=10 * DAY)
    v = np.ones(8, np.float32)
    s = UserState.empty(8)
    apply_event(s, item_id="a", event_id="1", kind="click", event_time=0.0, item_vec=v, config=cfg)
    apply_event(s, item_id="b", event_id="2", kind="review", event_time=10 * DAY, item_vec=v, text_vec=v,
                rating=3.0, config=cfg)  # neutral: adds nothing, but one half-life has passed
    assert s.weight == 0.5 and np.allclose(s.vector, 0.5)
