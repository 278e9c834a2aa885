"""Context vectors: a user's recent items pull the user towards what people chose after them.

Unit-level (exact small vector sets) for the scoring rule and its explanation, and one
training run on the real encoder and real catalogue items for what only item identity can
tell apart: two near-identical items followed by different choices.
"""
from __future__ import annotations

import numpy as np
import pytest

from inference.events import Event
from inference.index import ItemIndex
from inference.model import ModelParams
from inference.recommender import Recommender
from smallsets import click, random_index
from training.trainer import TrainConfig, train_version

DAY = 86400.0


def test_context_vectors_round_trip_and_a_wrong_shape_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    params = ModelParams(4, np.eye(4, dtype=np.float32), ["a", "b"], rng.standard_normal((2, 4)).astype(np.float32),
                         context=rng.standard_normal((2, 4)).astype(np.float32))
    params.save(tmp_path / "model.npz")
    back = ModelParams.load(tmp_path / "model.npz")
    assert np.array_equal(back.context, params.context) and back.residual_ids == ["a", "b"]
    assert np.allclose(back.history_vector({"a": 2.0, "b": -1.0, "zzz": 5.0}),
                       (2 * params.context[0] - params.context[1]) / 3)

    bad = ModelParams(4, None, ["a", "b"], params.residuals, context=np.zeros((3, 4), np.float32))
    bad.save(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="context vectors are"):
        ModelParams.load(tmp_path / "bad.npz")


def test_history_pulls_the_user_towards_the_items_context():
    """Two users with the very same encoder-space vector, one with item A in their history
    whose context vector points at item B: only that one gets B first."""
    idx, ids = random_index()
    a, b = ids[0], ids[1]
    ctx = np.zeros((1, idx.dim), np.float32)
    ctx[0] = 5.0 * idx.vector(b)
    rec = Recommender(idx)
    rec.use_model(ModelParams(idx.dim, None, [a], np.zeros((1, idx.dim), np.float32), context=ctx), "v1")

    with_a = rec.new_state()
    rec.observe(with_a, click("u", a, 0.0, 0))
    no_hist = rec.new_state()
    no_hist.vector[:] = with_a.vector  # same direction, but no recent items

    assert rec.recommend(with_a).item_ids[0] == b
    assert rec.recommend(no_hist).item_ids[0] != b
    assert rec.recommend(with_a).model_version == "v1"


def test_explanations_split_a_trained_versions_score_exactly():
    """With an adapter and context vectors the history shares plus the rest still add up to
    the similarity part, and the explained list is the served one."""
    idx, ids = random_index()
    rng = np.random.default_rng(3)
    dim = idx.dim
    adapter = (np.eye(dim) + 0.3 * rng.standard_normal((dim, dim))).astype(np.float32)
    ctx_ids = ids[:10]
    params = ModelParams(dim, adapter, ctx_ids, 0.1 * rng.standard_normal((10, dim)).astype(np.float32),
                         context=rng.standard_normal((10, dim)).astype(np.float32))
    rec = Recommender(idx)
    rec.use_model(params, "v1")
    s = rec.new_state()
    for k in range(6):  # three items with context, three without
        rec.observe(s, click("u", ids[k * 3], k * DAY, k))
    lst = rec.recommend(s, 8)
    explained = rec.explain(s, lst, top=100)
    assert [e["item_id"] for e in explained] == lst.item_ids
    for item, ex in zip(lst.items, explained):
        assert ex["parts"]["similarity"] == pytest.approx(item.parts["similarity"], abs=1e-6)
        assert abs(ex["similarity_other"]) < 1e-4  # clicks only: the history explains it all


@pytest.fixture(scope="module")
def real_items(encoder, mi_dataset):
    ids = [i for i in sorted(mi_dataset.items) if mi_dataset.items[i].text().strip()][:300]
    vecs = encoder.encode([mi_dataset.items[i].text() for i in ids])
    return ids, vecs


def test_training_learns_what_text_cannot_tell_apart(real_items):
    """Real catalogue items: two listings with the same description (the closest pair, given
    one text) are followed by different items. Only the items' identity separates them: with
    context vectors each leads to its own partner; without, the two users get the same list."""
    ids, vecs = real_items
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -1)
    i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
    vecs = vecs.copy()
    vecs[j] = vecs[i]
    a1, a2 = ids[i], ids[j]
    far = [k for k in np.argsort(sims[i] + sims[j]) if k not in (i, j)]  # unrelated to both by text
    b1, b2 = ids[far[0]], ids[far[1]]
    events = []
    t = 0.0
    for k in range(240):
        first, then = (a1, b1) if k % 2 else (a2, b2)
        for step, item in enumerate((first, then)):
            t += 60.0
            events.append(Event(f"u{k}", item, "click", t, event_id=f"u{k}-{step}"))

    def ranks(params: ModelParams) -> dict[str, dict[str, int]]:
        """Where b1 and b2 are on the list of a user who just clicked a1, and of one after a2."""
        index = ItemIndex(vecs.shape[1])
        index.upsert_many(ids, vecs)
        rec = Recommender(index)
        rec.use_model(params, "v1")
        out = {}
        for name, item in (("after_a1", a1), ("after_a2", a2)):
            s = rec.new_state()
            rec.observe(s, click(name, item, t + DAY, 0))
            served = rec.recommend(s, len(ids)).item_ids
            out[name] = {"b1": served.index(b1), "b2": served.index(b2)}
        return out

    with_context = ranks(train_version(events, ids, vecs, {}, cfg=TrainConfig(recipe="adapter", epochs=8, patience=8, min_pairs=10)).params)
    assert with_context["after_a1"]["b1"] < 3 and with_context["after_a2"]["b2"] < 3
    assert with_context["after_a1"]["b1"] < with_context["after_a1"]["b2"]
    assert with_context["after_a2"]["b2"] < with_context["after_a2"]["b1"]

    without = ranks(train_version(events, ids, vecs, {}, cfg=TrainConfig(recipe="adapter", epochs=15, patience=15, batch_size=32, context=False, min_pairs=10)).params)
    # the same text: without item identity the two users get the very same list
    assert without["after_a1"] == without["after_a2"]


def test_periodic_retrainer_trains_only_every_n_events():
    """``streamrec evaluate --train-every``: calls in between leave the version as it is."""
    from training.trainer import PeriodicRetrainer

    idx, ids = random_index()
    rec = Recommender(idx)
    events = [click(f"u{k % 40}", ids[(k * 7) % 50], k * 60.0, k) for k in range(800)]
    hook = PeriodicRetrainer(TrainConfig(recipe="adapter", epochs=1, min_pairs=10), every=400)
    hook(rec, events[:400])
    hook(rec, events[:500])  # only 100 new events: skipped
    assert [h["at_event"] for h in hook.history] == [400]
    hook(rec, events)
    assert [h["at_event"] for h in hook.history] == [400, 800]


def test_periodic_retrainer_can_train_a_first_version_early():
    """``streamrec evaluate --train-first``: the first training comes sooner, the next ones each
    time the events have doubled, until every N is the shorter wait."""
    from training.trainer import PeriodicRetrainer

    idx, ids = random_index()
    events = [click(f"u{k % 40}", ids[(k * 7) % 50], k * 60.0, k) for k in range(2200)]
    hook = PeriodicRetrainer(TrainConfig(recipe="adapter", epochs=1, min_pairs=10), every=600, first=200)
    rec = Recommender(idx)
    for n in range(100, 2201, 100):
        hook(rec, events[:n])
    assert [h["at_event"] for h in hook.history] == [200, 400, 800, 1400, 2000]


def test_periodic_retrainer_waits_for_enough_training_pairs():
    """Below ``min_pairs`` nothing is fitted or measured: the encoder alone keeps serving, and
    the point is listed as skipped, not as a rejected version."""
    from training.trainer import PeriodicRetrainer

    idx, ids = random_index()
    rec = Recommender(idx)
    events = [click(f"u{k % 40}", ids[(k * 7) % 50], k * 60.0, k) for k in range(800)]
    hook = PeriodicRetrainer(TrainConfig(recipe="adapter", epochs=1, min_pairs=400))
    hook(rec, events[:400])
    assert rec.params is None and rec.model_version == "v0" and hook.history == []
    assert hook.skipped[0]["at_event"] == 400 and 10 < hook.skipped[0]["pairs"] < 400
    hook(rec, events)  # 800 events: enough pairs
    assert [h["at_event"] for h in hook.history] == [800] and len(hook.skipped) == 1
    assert hook.history[0]["pairs"] >= 400


def test_periodic_retrainer_trains_again_for_a_new_replay():
    """The evaluation replays the stream, then the offline protocol's shorter training part:
    the second replay must train although fewer events came than at the last training."""
    from training.trainer import PeriodicRetrainer

    idx, ids = random_index()
    events = [click(f"u{k % 40}", ids[(k * 7) % 50], k * 60.0, k) for k in range(800)]
    hook = PeriodicRetrainer(TrainConfig(recipe="adapter", epochs=1, min_pairs=10), every=400)
    hook(Recommender(idx), events)
    hook(Recommender(idx), events[:700])  # the offline protocol's training part
    assert [h["at_event"] for h in hook.history] == [800, 700]
    # the offline part can also be longer than where the stream last trained: the stream trained
    # at 400 and skipped 600 as too soon; held-out events taken out all along leave 760 others
    hook = PeriodicRetrainer(TrainConfig(recipe="adapter", epochs=1, min_pairs=10), every=400)
    hook(Recommender(idx), events[:400])
    hook(Recommender(idx), events[:600])
    hook(Recommender(idx), [e for k, e in enumerate(events) if k % 20 != 19])
    assert [h["at_event"] for h in hook.history] == [400, 760]
