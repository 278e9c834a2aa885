"""The inference core on the real model and the real Musical Instruments catalogue."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from inference.batcher import MicroBatcher
from inference.datasets import load_dataset
from inference.events import Event
from inference.index import ItemIndex
from inference.model import ModelParams
from inference.ranking import LinearHead, Popularity, Ranker, Weights
from inference.recommender import Recommender, RecommenderConfig
from inference.user import UpdateConfig, UserState, apply_event


@pytest.fixture(scope="module")
def catalogue(encoder):
    """The real Musical Instruments items, encoded from their text by the real model."""
    ds = load_dataset("musical_instruments")
    ids = sorted(ds.items)
    vecs = encoder.encode([ds.items[i].text() for i in ids])
    index = ItemIndex(encoder.dim)
    index.upsert_many(ids, vecs)
    return ds, index


def _is_strings(text: str) -> bool:
    t = text.lower()
    return "string" in t and "strap" not in t


def _is_unrelated(text: str) -> bool:
    t = text.lower()
    return "string" not in t and any(w in t for w in ("mic ", "microphone", "cable", "pedal", "stand"))


# -- encoder -------------------------------------------------------------------------------
def test_encoder_returns_unit_vectors_and_picks_int8_on_cpu(encoder):
    vecs = encoder.encode(["bright phosphor bronze acoustic strings", "a sturdy microphone stand"])
    assert vecs.dtype == np.float32 and vecs.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert encoder.info.variant == "int8" and encoder.info.provider == "CPUExecutionProvider"


def test_encoder_length_grouping_does_not_change_results(model_dir, encoder):
    from inference.encoder import Encoder

    texts = ["short", "a much longer review text about nickel wound electric guitar strings " * 5, "medium text here"]
    fp32 = Encoder(model_dir, variant="fp32", device="cpu")
    together = fp32.encode(texts)
    alone = np.stack([fp32.encode([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-4)  # padding is masked out exactly
    # INT8 quantizes activations per call, so batch-mates shift results a little, never much
    cos = np.sum(encoder.encode(texts) * np.stack([encoder.encode([t])[0] for t in texts]), axis=1)
    assert cos.min() > 0.97


def test_encoder_lanes_give_the_single_session_results(model_dir):
    """Several calls of one encode run side by side on single-threaded sessions; FP32 makes the
    comparison exact up to float rounding."""
    from inference.encoder import Encoder

    texts = [("fine strings " * (5 + 7 * k)).strip() for k in range(12)] + ["", "ok"]
    one = Encoder(model_dir, variant="fp32", device="cpu", threads=1)
    lanes = Encoder(model_dir, variant="fp32", device="cpu", threads=2, max_batch_tokens=128)
    assert one.lanes == 0 and lanes.lanes == 2
    a, b = one.encode(texts), lanes.encode(texts)
    assert np.allclose(a, b, atol=1e-4) and not b[-2].any()


def test_encoder_semantics_on_real_words(encoder):
    a, b, c = encoder.encode(["new guitar strings", "replacement strings for my acoustic guitar", "XLR microphone cable"])
    assert a @ b > a @ c + 0.2


def test_empty_huge_and_bad_inputs(encoder):
    vecs = encoder.encode(["", "   ", "ok"])
    assert not vecs[0].any() and not vecs[1].any()  # defined result: "no text signal"
    assert np.isclose(np.linalg.norm(vecs[2]), 1.0, atol=1e-4)
    huge = "great strings " * 80_000  # ~1 MB
    (vec,) = encoder.encode([huge])
    same = encoder.encode(["great strings " * 200])[0]  # both truncated at max_tokens
    assert np.isclose(vec @ same, 1.0, atol=1e-3)
    with pytest.raises(TypeError, match="decode bytes"):
        encoder.encode([b"\xff\xfe invalid utf-8"])


def test_encoder_fp32_on_request(model_dir):
    from inference.encoder import Encoder

    enc = Encoder(model_dir, variant="fp32", device="cpu")
    assert enc.info.variant == "fp32"
    assert np.isclose(np.linalg.norm(enc.encode(["hello"])[0]), 1.0, atol=1e-4)


# -- micro-batcher -------------------------------------------------------------------------
def test_batcher_groups_concurrent_requests_off_the_event_loop(model_dir):
    from inference.encoder import Encoder

    encoder = Encoder(model_dir, variant="fp32", device="cpu")  # exact, so rows can be compared
    threads: set[str] = set()
    sizes: list[int] = []

    def fn(texts):
        threads.add(threading.current_thread().name)
        return encoder.encode(texts)

    async def main():
        b = MicroBatcher(fn, max_batch=16, max_wait_ms=20, on_batch=lambda n, s: sizes.append(n))
        loop_thread = threading.current_thread().name
        texts = [f"review number {i} about strings" for i in range(40)]
        vecs = await asyncio.gather(*(b.encode(t) for t in texts))
        await b.close()
        return loop_thread, texts, vecs

    loop_thread, texts, vecs = asyncio.run(main())
    assert loop_thread not in threads and all(t.startswith("streamrec-encoder") for t in threads)
    assert sum(sizes) == 40 and max(sizes) == 16 and len(sizes) <= 4  # batched, not 40 calls
    assert np.allclose(np.stack(vecs), encoder.encode(texts), atol=1e-4)  # each caller gets its own row


def test_batcher_queue_is_bounded_and_applies_backpressure():
    release = threading.Event()

    def slow(texts):
        release.wait(5)
        return np.ones((len(texts), 2), np.float32)

    async def main():
        b = MicroBatcher(slow, max_batch=2, max_wait_ms=1, max_queue=4)
        tasks = [asyncio.create_task(b.encode(str(i))) for i in range(20)]
        await asyncio.sleep(0.2)
        pending_while_blocked = b.pending
        release.set()
        await asyncio.gather(*tasks)
        await b.close()
        return pending_while_blocked

    assert asyncio.run(main()) <= 4  # never more than max_queue waiting: callers were held back


def test_batcher_isolates_a_failing_text():
    def fn(texts):
        if "bad" in texts:
            raise ValueError("cannot encode 'bad'")
        return np.ones((len(texts), 2), np.float32)

    async def main():
        b = MicroBatcher(fn, max_batch=8, max_wait_ms=20)
        results = await asyncio.gather(b.encode("good"), b.encode("bad"), b.encode("fine"), return_exceptions=True)
        await b.close()
        return results

    good, bad, fine = asyncio.run(main())
    assert isinstance(bad, ValueError) and good.shape == (2,) and fine.shape == (2,)


# -- item index ----------------------------------------------------------------------------
def test_index_add_replace_remove_at_run_time():
    index = ItemIndex(dim=3, capacity=2)
    index.upsert_many(["a", "b", "c"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # grows past capacity
    assert index.search([1, 0, 0], n=1)[0][0][0] == "a"
    assert index.remove("a") and "a" not in index and len(index) == 2
    assert "a" not in [i for i, _ in index.search([1, 0, 0], n=3)[0]]
    index.upsert("d", [0.9, 0.1, 0])  # reuses a's row
    assert index.search([1, 0, 0], n=1)[0][0][0] == "d"
    index.upsert("b", [1, 0, 0.01])  # replace
    assert index.search([1, 0, 0], n=1)[0][0][0] == "b"
    assert not index.remove("zzz")


def test_index_excludes_and_batches():
    index = ItemIndex(dim=2)
    index.upsert_many(["x", "y", "z"], [[1, 0], [0.8, 0.6], [0, 1]])
    one = index.search([1, 0], n=2, exclude={"x"})[0]
    assert [i for i, _ in one] == ["y", "z"]
    both = index.search(np.array([[1, 0], [0, 1]], np.float32), n=1, exclude=[{"x"}, {"z"}])
    assert [r[0][0] for r in both] == ["y", "y"]


def test_index_rejects_nan_and_zero_vectors():
    index = ItemIndex(dim=2)
    with pytest.raises(ValueError, match="NaN"):
        index.upsert("n", [np.nan, 1.0])
    with pytest.raises(ValueError, match="all zeros"):
        index.upsert("z", [0.0, 0.0])
    assert len(index) == 0


def test_ivf_past_exact_limit_finds_the_nearest_items():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, 32)).astype(np.float32)
    vecs = centers[rng.integers(0, 50, 5000)] + 0.1 * rng.standard_normal((5000, 32)).astype(np.float32)
    index = ItemIndex(dim=32, exact_limit=1000, nprobe=8)
    index.upsert_many([str(i) for i in range(5000)], vecs)
    q = vecs[17] / np.linalg.norm(vecs[17])
    exact = np.argsort(-(vecs / np.linalg.norm(vecs, axis=1, keepdims=True)) @ q)[:10]
    got = [int(i) for i, _ in index.search(q, n=10)[0]]
    assert len(set(got) & set(exact.tolist())) >= 8  # IVF recall@10 on clustered data
    index.upsert("new", q)  # added after the IVF was built: still found
    assert index.search(q, n=1)[0][0][0] == "new"


# -- user state ----------------------------------------------------------------------------
def _click(state, vec, t, cfg, item="i", eid=None):
    return apply_event(state, item_id=item, event_id=eid, kind="click", event_time=t,
                       item_vec=np.asarray(vec, np.float32), config=cfg)


def test_one_half_life_halves_an_old_events_weight():
    cfg = UpdateConfig(half_life_s=100.0)
    s = UserState.empty(2)
    _click(s, [1, 0], 0.0, cfg)
    _click(s, [0, 1], 100.0, cfg)  # one half-life later
    assert np.allclose(s.vector, [0.5, 1.0])
    # out-of-order: an event one half-life older than the state counts half, state untouched
    _click(s, [0, 1], 0.0, cfg)
    assert np.allclose(s.vector, [0.5, 1.5])


def test_decay_uses_event_time_not_wall_time():
    cfg = UpdateConfig(half_life_s=10.0)
    a, b = UserState.empty(2), UserState.empty(2)
    _click(a, [1, 0], 1000.0, cfg)
    time.sleep(0.05)
    _click(b, [1, 0], 1000.0, cfg)
    _click(a, [0, 1], 1010.0, cfg)
    _click(b, [0, 1], 1010.0, cfg)
    assert np.array_equal(a.vector, b.vector)


def test_review_is_signed_by_rating_and_mixes_text():
    cfg = UpdateConfig(text_mix=0.5)
    item, text = np.array([1, 0], np.float32), np.array([0, 1], np.float32)
    s = apply_event(UserState.empty(2), item_id="i", event_id="e", kind="review", event_time=0.0,
                    item_vec=item, text_vec=text, rating=1.0, config=cfg)
    assert s.vector[0] < 0 and s.vector[1] < 0  # 1 star: pushed away from the item (and its text)
    s5 = apply_event(UserState.empty(2), item_id="i", event_id="e", kind="review", event_time=0.0,
                     item_vec=item, text_vec=text, rating=5.0, config=cfg)
    assert np.allclose(s5.vector, [cfg.review_weight * 0.5, cfg.review_weight * 0.5])


def test_state_bytes_round_trip_and_reject_garbage():
    s = UserState.empty(384)
    for i in range(130):
        _click(s, np.random.default_rng(i).standard_normal(384), float(i), UpdateConfig(), item=f"item-{i}",
               eid=f"evt-ü-{i}")
    raw = s.to_bytes()
    back = UserState.from_bytes(raw)
    assert np.array_equal(back.vector, s.vector) and back.count == 130 and back.last_time == 129.0
    assert back.recent_items == s.recent_items and len(back.recent_items) == UpdateConfig().recent_items
    assert back.recent_events == s.recent_events and back.has_seen("evt-ü-129")
    assert np.allclose(back.recent_weights, s.recent_weights) and len(back.recent_weights) == 100
    assert len(back.seq) == 50 and np.array_equal(back.seq.keys, s.seq.keys)
    assert np.array_equal(back.seq.times, np.arange(80.0, 130.0)) and (back.seq.signs == 1).all()
    tail = (2 + 4 * 100) + (4 + 4 * 130) + (2 + 13 * 50)  # item weights, seen keys, sequence
    assert len(raw) < 384 * 4 + 100 * (12 + 4) + 130 * 14 + tail + 64  # compact: float32, not JSON
    # a format-1 state (no item weights) from an older build still reads; its weights are unknown
    v1 = bytearray(raw[: -tail])
    v1[2] = 1
    old = UserState.from_bytes(bytes(v1))
    assert old.recent_items == s.recent_items and np.array_equal(old.vector, s.vector)
    assert all(np.isnan(w) for w in old.recent_weights)
    assert len(old.seq) == 50 and np.isneginf(old.seq.times).all()  # its recent items, times unknown
    with pytest.raises(ValueError, match="not a streamrec user state"):
        UserState.from_bytes(b"\x00" * 64)
    bad_version = bytearray(raw)
    bad_version[2] = 99
    with pytest.raises(ValueError, match="format 99"):
        UserState.from_bytes(bytes(bad_version))


def test_nan_event_vector_is_a_clear_error():
    with pytest.raises(ValueError, match="NaN"):
        _click(UserState.empty(2), [np.nan, 0], 0.0, UpdateConfig())


# -- ranking on the real catalogue ----------------------------------------------------------
def test_string_fan_gets_string_items_first(catalogue, encoder):
    ds, index = catalogue
    texts = {i: ds.items[i].text() for i in index.ids()}
    strings = [i for i, t in texts.items() if _is_strings(t)]
    unrelated = [i for i, t in texts.items() if _is_unrelated(t)]
    assert len(strings) > 20 and len(unrelated) > 20
    rec = Recommender(index, config=RecommenderConfig(top_n=len(index), weights=Weights(popularity=0.0)))
    state = rec.new_state()
    for k, item in enumerate(strings[:4]):
        rec.observe(state, Event("u", item, "click", 1_400_000_000.0 + k, event_id=f"e{k}"))
    ranked = rec.recommend(state).item_ids
    pos = {item: r for r, item in enumerate(ranked)}
    others_strings = [pos[i] for i in strings[4:]]
    unrelated_ranks = [pos[i] for i in unrelated]
    assert np.median(others_strings) < np.median(unrelated_ranks) / 3
    top10 = ranked[:10]
    assert sum(i in strings for i in top10) >= 7
    assert not set(strings[:4]) & set(ranked)  # seen items are excluded


def test_one_star_review_lowers_that_items_score(catalogue, encoder):
    ds, index = catalogue
    target = sorted(index.ids())[10]
    other = sorted(index.ids())[20]
    rec = Recommender(index, config=RecommenderConfig(top_n=len(index), repeats=True,
                                                      weights=Weights(popularity=0.0)))
    base = rec.new_state()
    rec.observe(base, Event("u", other, "click", 1.0, event_id="c1"))
    before = {i.item_id: i.score for i in rec.recommend(base).items}[target]
    text = "Terrible. Broke after one day, cheap junk, do not buy."
    rec.observe(base, Event("u", target, "review", 2.0, event_id="r1", rating=1.0, text=text),
                encoder.encode([text])[0])
    after = {i.item_id: i.score for i in rec.recommend(base).items}[target]
    assert after < before - 0.1


def test_cold_start_gets_popularity_and_parts_say_why():
    index = ItemIndex(dim=2)
    index.upsert_many(["old-hit", "new-hit", "quiet"], [[1, 0], [0, 1], [0.7, 0.7]])
    pop = Popularity(half_life_s=10.0)
    for t in range(5):
        pop.add("old-hit", float(t), index=index)
    for t in range(3):
        pop.add("new-hit", 100.0 + t, index=index)  # fewer, but recent: 5 events 10 half-lives ago weigh ~0
    cold = Ranker(index, pop).recommend(None, n=3)
    assert cold.cold_start and cold.item_ids[0] == "new-hit"
    assert all(i.driver == "popularity" for i in cold.items)
    warm = Ranker(index, pop, weights=Weights(similarity=1.0, popularity=0.01)).recommend(
        np.array([1, 0], np.float32), n=1)
    assert warm.items[0].item_id == "old-hit" and warm.items[0].driver == "similarity"


def test_learned_head_can_reorder():
    index = ItemIndex(dim=2)
    index.upsert_many(["a", "b"], [[1, 0], [0, 1]])
    user = np.array([0.8, 0.6], np.float32)
    plain = Ranker(index, Popularity(), weights=Weights(popularity=0.0)).recommend(user, n=2)
    assert plain.item_ids == ["a", "b"]
    head = LinearHead(w=np.array([-5.0, 5.0], np.float32), b=0.0)
    learned = Ranker(index, Popularity(), head=head, weights=Weights(similarity=0.1, popularity=0.0, head=1.0))
    top = learned.recommend(user, n=2)
    assert top.item_ids == ["b", "a"] and top.items[0].driver == "head"


def test_nan_user_vector_is_a_clear_error():
    index = ItemIndex(dim=2)
    index.upsert("a", [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        Ranker(index).recommend(np.array([np.nan, 0], np.float32))


def _trained(index: ItemIndex, seed: int = 11) -> ModelParams:
    """A version as training leaves one: an adapter far from the identity, residuals and
    context vectors (a user's history pulls them) on some items, a head and its own blend
    weights."""
    rng = np.random.default_rng(seed)
    dim = index.dim
    adapter = (np.eye(dim) + rng.normal(0.0, 0.05, (dim, dim))).astype(np.float32)
    ids = sorted(index.ids())[:40]
    residuals = rng.normal(0.0, 0.1, (len(ids), dim)).astype(np.float32)
    context = rng.normal(0.0, 0.1, (len(ids), dim)).astype(np.float32)
    return ModelParams(dim, adapter, ids, residuals, head_w=rng.normal(1.0, 0.5, dim).astype(np.float32),
                       head_b=-0.2, weights=Weights(popularity=0.5, head=0.3), context=context)


@pytest.mark.parametrize("version", ["v0", "trained"])
def test_chunk_ranked_together_equals_each_event_ranked_alone(catalogue, encoder, version):
    """What a worker publishes for a chunk (observe all, then one recommend_many) is what
    observe + recommend after every event gives: repeated users, popularity moving with
    each click, a cold-start user (a 3-star review carries no signal) and a learned head;
    under the encoder alone and under a trained version (adapter, residuals, context)."""
    ds, index = catalogue
    ids = sorted(index.ids())
    rng = np.random.default_rng(3)
    head = LinearHead(w=rng.normal(1.0, 0.5, index.dim).astype(np.float32), b=-0.2)
    text = "Warm tone, the strings stay in tune for weeks."
    text_vec = encoder.encode([text])[0]
    events = [Event("cold", ids[5], "review", 1_400_000_000.0, event_id="c0", rating=3.0, text=text)]
    for k in range(40):
        user = f"u{rng.integers(4)}"
        events.append(Event(user, ids[int(rng.integers(60))], "click", 1_400_000_001.0 + k, event_id=f"e{k}"))
    cfg = dict(config=RecommenderConfig(top_n=15, weights=Weights(popularity=0.5, head=0.3)), head=head)
    alone, together = Recommender(index, **cfg), Recommender(index, **cfg)
    if version == "trained":
        alone.use_model(_trained(index), "v7")
        together.use_model(_trained(index), "v7")
    # the same head, weights and popularity in the encoder's space: what the version changes
    plain = Ranker(index, alone.popularity, head=alone.ranker.head, weights=alone.ranker.weights)
    model = together.active
    states_a: dict[str, UserState] = {}
    states_b: dict[str, UserState] = {}
    expected, requests, base = [], [], []
    for ev in events:
        vec = text_vec if ev.text else None
        sa = states_a.setdefault(ev.user_id, alone.new_state())
        alone.observe(sa, ev, vec)
        expected.append(alone.recommend(sa))
        base.append(plain.recommend(sa.unit(), 15, exclude=sa.recent_items))
        sb = states_b.setdefault(ev.user_id, together.new_state())
        together.observe(sb, ev, vec)
        requests.append(together.request(sb, model))
    got = together.recommend_many(requests, model)
    assert got[0].cold_start and not got[1].cold_start
    assert len({r.popularity.tobytes() for r in requests}) > 30  # popularity did move between events
    want_version = "v7" if version == "trained" else "v0"
    differ = sum(a.item_ids != b.item_ids for a, b in zip(expected, base))
    assert differ > 20 if version == "trained" else differ == 0  # the version's space ranks its own way
    for want, have in zip(expected, got):
        assert want.model_version == have.model_version == want_version
        assert have.cold_start == want.cold_start
        assert have.item_ids == want.item_ids
        assert np.allclose([i.score for i in have.items], [i.score for i in want.items], atol=1e-5)
        assert [i.driver for i in have.items] == [i.driver for i in want.items]


def test_ranking_requests_survive_a_catalogue_change():
    index = ItemIndex(dim=2)
    index.upsert_many(["a", "b"], [[1, 0], [0, 1]])
    rec = Recommender(index)
    state = rec.new_state()
    rec.observe(state, Event("u", "a", "click", 1.0, event_id="e1"))
    request = rec.request(state)
    index.upsert("c", [0.9, 0.1])  # a new row: the request's popularity is one row short
    (top,) = rec.recommend_many([request])
    assert top.item_ids[0] == "c" and "a" not in top.item_ids
    with pytest.raises(ValueError, match="NaN"):
        rec.ranker.recommend_many([np.array([1, 0], np.float32), np.array([np.nan, 0], np.float32)])
    rec.use_model(ModelParams(2, np.array([[0, 1], [1, 0]], np.float32)), "v1")
    with pytest.raises(ValueError, match="made for model v0"):  # its vector is in the encoder's space
        rec.recommend_many([request])


def test_top_k_of_many_rows_is_top_k_of_each_row():
    """The chunk's top-k (one argpartition over users x items) picks what each row alone
    picks, ties broken towards the lower index, and a k past the row length gives every row."""
    from inference.vectors import top_k, top_k_rows

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, (30, 50)).astype(np.float32)  # many ties
    scores[3, 7] = -np.inf
    for k in (1, 10, 50, 80):
        got = top_k_rows(scores, k)
        assert got.shape == (30, min(k, 50))
        assert all(list(got[i]) == list(top_k(scores[i], k)) for i in range(30))
