"""The sequence recipe end to end: trained by the trainer, served through ONNX by the
Recommender the workers run.

Synthetic data: two kinds of item ("a" and "b"), told apart by their text vectors. Users move
between the kinds in runs of six, so what a user gets next depends on their *recent* items: a
user whose last items are all "b" must get "b" items first, whatever came before.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from inference.events import Event
from inference.index import ItemIndex
from inference.model import ModelParams
from inference.recommender import Recommender
from inference.user import UpdateConfig, UserState, apply_event
from training.seqfit import fit_sequence
from training.seqmodel import ParityError, SequenceConfig, export_onnx, to_params
from training.trainer import TrainConfig, evaluate_slice, split_holdout, train_version

DIM = 16
N_PER_KIND = 30
T0 = 1_600_000_000.0

SEQ = SequenceConfig(d=16, heads=2, blocks=1, max_len=10, dropout=0.1, lr=1e-2, batch_size=32, max_epochs=10,
                     patience=10, warm_epochs=2, threads=1)
CFG = TrainConfig(sequence=SEQ, sequence_grid={}, min_pairs=50, threads=1)


def kind_vector(kind: str, rng: np.random.Generator) -> np.ndarray:
    base = np.zeros(DIM, np.float32)
    base[0 if kind == "a" else 1] = 1.0
    v = base + 0.3 * rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def synthetic(seed: int = 0, users: int = 100, length: int = 18):
    rng = np.random.default_rng(seed)
    items = {k: [f"{k}{i}" for i in range(N_PER_KIND)] for k in "ab"}
    text = {i: kind_vector(k, rng) for k in "ab" for i in items[k]}
    events = []
    for u in range(users):
        kind = "ab"[u % 2]
        seen: set[str] = set()
        for t in range(length):
            if t and t % 6 == 0:  # runs of six, then the other kind
                kind = "b" if kind == "a" else "a"
            item = str(rng.choice([i for i in items[kind] if i not in seen]))
            seen.add(item)
            events.append(Event(f"u{u}", item, "click", T0 + 3600.0 * (u + 1000 * t), event_id=f"u{u}-{t}"))
    events.sort(key=lambda e: e.event_time)
    return events, text, items


@pytest.fixture(scope="module")
def trained():
    events, text, items = synthetic()
    ids = sorted(text)
    vecs = np.stack([text[i] for i in ids])
    train, held = split_holdout(events, CFG)
    result = train_version(train, ids, vecs, {}, cfg=CFG)
    return result, events, text, items, ids, vecs


def serving(text: dict, params: ModelParams) -> Recommender:
    index = ItemIndex(DIM)
    index.upsert_many(list(text), np.stack(list(text.values())))
    rec = Recommender(index)
    rec.use_model(params, "v1")
    return rec


def user_with(rec: Recommender, item_ids: list[str], t0: float = T0 + 1e8) -> UserState:
    state = rec.new_state()
    for k, i in enumerate(item_ids):
        rec.observe(state, Event("x", i, "click", t0 + 60.0 * k, event_id=f"x-{k}"))
    return state


def test_a_user_whose_last_items_are_one_kind_gets_that_kind_first(trained):
    result, _, text, items, _, _ = trained
    params = result.params
    assert params.sequence is not None and result.validation["sequence_fit"]["best_epoch"] >= 1
    assert params.sequence.meta["parity_max_abs_diff"] <= 1e-4
    rec = serving(text, params)
    assert rec.model_version == "v1" and rec.active.sequence.session().get_providers()  # served by onnxruntime
    for before, last in (("a", "b"), ("b", "a")):
        state = user_with(rec, items[before][:5] + items[last][:5])
        top = rec.recommend(state, 5).item_ids
        assert len(top) == 5 and {i[0] for i in top} == {last}, (before, last, top)
        assert not set(top) & set(items[before][:5] + items[last][:5])  # nothing the user had


def test_the_trained_version_beats_the_text_encoder_alone_on_held_out_events(trained):
    result, events, _, _, ids, vecs = trained
    train, held = split_holdout(events, CFG)
    scores = evaluate_slice(train, held, ids, vecs, {}, {"sequence": result.params, "encoder": None},
                            start=result.replayed)
    assert scores["sequence"]["events"] > 50
    assert scores["sequence"]["ndcg"] > scores["encoder"]["ndcg"]


def test_a_version_whose_export_does_not_match_is_refused(trained):
    result, events, text, _, ids, vecs = trained
    fit = fit_sequence(events, ids, vecs, replace(SEQ, max_epochs=2))
    model = fit.model
    onnx = export_onnx(model)
    assert to_params(model, *fit.sample, onnx=onnx).meta["parity_max_abs_diff"] <= 1e-4  # the real export agrees
    with torch.no_grad():  # a graph that is not the trained model (as an exporter bug would give)
        model.blocks[0].ff2.weight.add_(0.05 * torch.randn_like(model.blocks[0].ff2.weight))
    with pytest.raises(ParityError, match="refused"):
        to_params(model, *fit.sample, onnx=onnx)
    # the trainer refuses such a version and keeps serving the current one
    strict = replace(CFG, parity_tolerance=-1.0)  # no export can be that close: always refused
    train, _ = split_holdout(events, CFG)
    refused = train_version(train, ids, vecs, {}, cfg=strict, parent=result.params)
    assert refused.validation["note"] == "parity check failed" and "refused" in refused.validation["error"]
    assert refused.params is result.params


def test_a_state_written_before_the_sequence_loads_and_is_ranked(trained):
    result, _, text, items, _, _ = trained
    rec = serving(text, result.params)
    cfg = UpdateConfig()
    state = UserState.empty(DIM)
    history = items["a"][:3] + items["b"][:6]
    for k, i in enumerate(history):
        apply_event(state, item_id=i, event_id=f"old-{k}", kind="click", event_time=T0 + 60.0 * k,
                    item_vec=text[i], config=cfg)
    raw = state.to_bytes()
    v3 = bytearray(raw[: -(2 + 13 * len(state.seq))])  # format 3: everything up to the sequence
    v3[2] = 3
    old = UserState.from_bytes(bytes(v3))
    assert old.recent_items == history and old.count == len(history)
    assert len(old.seq) == len(history) and np.isneginf(old.seq.times).all()  # its items, times unknown
    top = rec.recommend(old, 5)
    assert not top.cold_start and top.model_version == "v1"
    assert {i[0] for i in top.item_ids} == {"b"} and not set(top.item_ids) & set(history)


def test_a_catalogue_item_added_after_training_can_be_recommended(trained):
    result, _, text, items, _, _ = trained
    rec = serving(text, result.params)
    new_vec = kind_vector("b", np.random.default_rng(42))
    rec.index.upsert("b-new", new_vec)  # the catalogue topic delivers it after the version was trained
    assert "b-new" not in result.params.sequence.id_rows  # no id vector: read and scored through its text
    state = user_with(rec, items["a"][:3] + items["b"][:6])
    total, _ = rec.score_all(state)
    space = rec.active.ranker.index
    b_new = total[space.row("b-new")]
    a_rows = [space.row(i) for i in items["a"][3:]]  # the "a" items the user could be shown
    assert b_new > np.max(total[a_rows])  # ranks above every one of them for a user on a "b" run
    # a user who has had all but two of the known "b" items gets the new one among the "b" left
    fan = user_with(rec, items["a"][:3] + items["b"][:28])
    top = rec.recommend(fan, 3).item_ids
    assert set(top) == {"b-new", "b28", "b29"}


def test_a_chunk_ranked_together_gives_each_event_its_own_list(trained):
    result, _, text, items, _, _ = trained
    rec = serving(text, result.params)
    model = rec.active
    state = rec.new_state()
    requests, alone = [], []
    for k, i in enumerate(items["a"][:4] + items["b"][:4]):
        rec.observe(state, Event("y", i, "click", T0 + 60.0 * k, event_id=f"y-{k}"))
        requests.append(rec.request(state, model))
        alone.append(rec.recommend(state, 10).item_ids)
    together = [r.item_ids for r in rec.recommend_many(requests, model, 10)]  # one encoder call
    assert together == alone


def test_a_version_loaded_before_the_catalogue_follows_it(trained):
    """A (re)starting worker reads the control topic and the catalogue side by side: the version
    can arrive while the item index is still empty, and must then follow the items as they come."""
    result, _, text, items, _, _ = trained
    rec = Recommender(ItemIndex(DIM))
    rec.use_model(result.params, "v1")  # no item yet
    rec.index.upsert_many(list(text), np.stack(list(text.values())))
    state = user_with(rec, items["a"][:3] + items["b"][:6])
    top = rec.recommend(state, 5)
    assert top.model_version == "v1" and {i[0] for i in top.item_ids} == {"b"}
