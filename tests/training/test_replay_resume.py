"""The trainer replays the events with the workers' update before each fit; the periodic
retrainer's window only grows, so a retrain goes on from the last one's states instead of
replaying everything again. Going on must give exactly what a full replay gives.

Synthetic data: clicks, reviews with text vectors and ratings (low ones too), and re-sent
events (duplicates the update skips), over two kinds of item.
"""
from __future__ import annotations

import numpy as np

from inference.events import Event
from inference.recommender import Recommender
from training.seqmodel import SequenceConfig
from training.slices import ReplayState, build_index, replay_marks
from training.trainer import PeriodicRetrainer, TrainConfig

DIM = 16
T0 = 1_600_000_000.0


def stream(seed: int = 0, users: int = 60, length: int = 16):
    """Events in time order, item ids and vectors, and text vectors of the reviews."""
    rng = np.random.default_rng(seed)
    ids = [f"{k}{i}" for k in "ab" for i in range(25)]
    vecs = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    vecs[:25, 0] += 3.0
    vecs[25:, 1] += 3.0
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    events, text = [], {}
    for u in range(users):
        for t in range(length):
            item = ids[(u % 2) * 25 + int(rng.integers(25))]
            eid = f"u{u}-{t}"
            when = T0 + 600.0 * (u + 100 * t)
            if t % 4 == 3:  # a review: its own text vector, a rating from 1 to 5
                events.append(Event(f"u{u}", item, "review", when, event_id=eid, rating=float(rng.integers(1, 6)),
                                    text="words"))
                v = rng.standard_normal(DIM).astype(np.float32)
                text[eid] = v / np.linalg.norm(v)
            else:
                events.append(Event(f"u{u}", item, "click", when, event_id=eid))
            if t % 7 == 6:  # the same event sent again
                events.append(Event(f"u{u}", item, "click", when + 1.0, event_id=eid))
    events.sort(key=lambda e: e.event_time)
    return events, ids, vecs, text


def same_states(a: ReplayState, b: ReplayState) -> None:
    assert a.upto == b.upto
    assert sorted(a.states) == sorted(b.states)
    for user in a.states:
        assert a.states[user].to_bytes() == b.states[user].to_bytes(), user
    assert a.popularity.state() == b.popularity.state()
    for name in ("n", "nbr", "cnt", "deg", "row_norm", "col_norm", "owner"):
        assert np.array_equal(getattr(a.cooccurrence, name), getattr(b.cooccurrence, name)), name


def test_a_replay_that_goes_on_from_an_earlier_one_ends_in_the_same_states():
    events, ids, vecs, text = stream()
    n = len(events)
    full = replay_marks(events, ids, vecs, text, (n - 200, n))
    first = replay_marks(events[: n // 2], ids, vecs, text, (n // 2,))[n // 2]
    went_on = replay_marks(events, ids, vecs, text, (n - 200, n), resume=first)
    assert went_on[n].resumed_from == n // 2 and full[n].resumed_from == 0
    for mark in (n - 200, n):
        same_states(full[mark], went_on[mark])


def test_a_replay_starts_again_when_the_earlier_one_is_not_its_beginning():
    """Other events at the resumed place, another catalogue, or a mark before the resumed point:
    nothing is taken over."""
    events, ids, vecs, text = stream()
    n = len(events)
    first = replay_marks(events[: n // 2], ids, vecs, text, (n // 2,))[n // 2]
    other_events = events[:10] + events[11:]  # one event less: another event sits at n // 2 - 1
    assert replay_marks(other_events, ids, vecs, text, (len(other_events),), resume=first)[
        len(other_events)].resumed_from == 0
    moved = vecs.copy()
    moved[0] = -moved[0]
    assert replay_marks(events, ids, moved, text, (n,), resume=first)[n].resumed_from == 0
    assert replay_marks(events, ids, vecs, text, (n // 4, n), resume=first)[n].resumed_from == 0
    assert replay_marks(events, ids, vecs, text, (n,), resume=first)[n].resumed_from == n // 2


def test_the_periodic_retrainer_trains_the_same_versions_going_on_as_replaying_all():
    events, ids, vecs, text = stream(seed=1)
    cfg = TrainConfig(sequence=SequenceConfig(d=16, heads=2, blocks=1, max_len=10, max_epochs=3, patience=3,
                                              warm_epochs=1, threads=1),
                      sequence_grid={}, min_pairs=50, threads=1)

    def run(resume: bool) -> PeriodicRetrainer:
        hook = PeriodicRetrainer(cfg, window=10**6, every=300)
        rec = Recommender(build_index(ids, vecs))
        for n in range(300, len(events) + 1, 300):
            if not resume:
                hook._replayed = None  # what a retrainer without the saved states would do
            hook(rec, events[:n], text)
        return hook

    going_on, from_scratch = run(True), run(False)
    assert len(going_on.history) >= 3
    assert [h["replay_resumed_at"] > 0 for h in going_on.history] == [False] + [True] * (len(going_on.history) - 1)
    assert all(h["replay_resumed_at"] == 0 for h in from_scratch.history)
    for a, b in zip(going_on.history, from_scratch.history, strict=True):
        assert (a["version"], a["candidate"], a["current"], a["weights"]) == \
               (b["version"], b["candidate"], b["current"], b["weights"])
