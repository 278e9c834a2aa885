"""The SASRec baseline (RecTools) on a toy sequence world: users walk a->b->c->a... or
d->e->f->d...; after one fit the next item of the walk ranks first, a new event moves a user's
scores without a refit (fold-in), and the refit schedule is the documented one. Without RecTools
the system says why (that test runs everywhere; the others skip)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from inference.events import Event

ITEMS = list("abcdefghij")
CYCLES = (ITEMS[:5], ITEMS[5:])  # a->b->c->d->e->a..., f->g->h->i->j->f...
# a tiny, fast grid: the toy world is learnt in a few dozen passes
FAST = {"n_factors": 16, "n_heads": 1, "session_max_len": 8, "loss": "softmax", "lr": 0.01,
        "dropout_grid": (0.1,), "epoch_grid": (15, 30), "batch_size": 32, "seed": 0}


def _walks(n_users: int = 60, length: int = 4) -> list[Event]:
    """Each user walks ``length`` steps of one cycle from his own start (no repeats)."""
    events, t = [], 0.0
    for step in range(length):  # interleaved in time, as a stream would be
        for u in range(n_users):
            cycle = CYCLES[u % 2]
            t += 1.0
            events.append(Event(f"u{u}", cycle[(u // 2 + step) % 5], "click", t))
    return events


def _fitted(**kw):
    pytest.importorskip("rectools")
    from evaluation.sasrec import SASRecBaseline

    events = _walks()
    sas = SASRecBaseline(ITEMS, **{**FAST, **kw})
    for ev in events:
        sas.observe(ev)
    sas.retrain(events)
    return sas, events


def test_next_item_first_and_fold_in_without_refit():
    sas, events = _fitted()
    assert sas.fits == 1 and sas.chosen["epochs"] in FAST["epoch_grid"]
    t = events[-1].event_time
    sas.observe(Event("new", "a", "click", t + 1))
    sas.observe(Event("new", "b", "click", t + 2))
    s = sas.scores("new")
    assert s.shape == (len(ITEMS),) and s.dtype == np.float32
    assert ITEMS[int(np.argmax(s))] == "c"  # last item b: the walk goes on to c
    assert sas.recommend("new", 1) == ["c"]
    sas.observe(Event("new", "c", "click", t + 3))  # fold-in: no retrain in between
    s2 = sas.scores("new")
    assert sas.fits == 1 and not np.array_equal(s, s2)
    assert ITEMS[int(np.argmax(s2))] == "d"
    walker = sas.seqs["u1"]  # an f..j walker: his next item is the next one on his cycle
    nxt = CYCLES[1][(CYCLES[1].index(ITEMS[walker[-1]]) + 1) % 5]
    assert sas.recommend("u1", 1) == [nxt]
    cfg = sas.config()
    assert cfg["library"] == "rectools" and cfg["chosen"] == sas.chosen
    assert [r["epochs"] for r in cfg["grid"]["results"]] == [15, 30] and cfg["chosen"]["validation_users"] == 60


def test_deterministic():
    a, _ = _fitted(epoch_grid=(3,))
    b, _ = _fitted(epoch_grid=(3,))
    np.testing.assert_array_equal(a.scores("u0"), b.scores("u0"))


def test_refit_schedule_and_popularity_before_first_fit():
    pytest.importorskip("rectools")
    from evaluation.sasrec import SASRecBaseline

    events = _walks()
    sas = SASRecBaseline(ITEMS, total_events=len(events), refit_every_share=0.5, **FAST)
    half = len(events) // 2
    for ev in events[: half // 2]:
        sas.observe(ev)
    sas.retrain(events[: half // 2])  # a quarter of the stream: not due yet
    assert sas.fits == 0
    pop = sas.scores("u0")
    assert np.array_equal(pop, sas.pop.scores())  # popularity until the first fit
    assert sas.refit_every == half


def test_unavailable_is_reported(monkeypatch):
    from evaluation import sasrec

    monkeypatch.setitem(sys.modules, "rectools", None)  # import rectools -> ImportError
    monkeypatch.setitem(sys.modules, "rectools.models", None)
    reason = sasrec.unavailable_reason()
    assert reason is not None and "rectools" in reason.lower() and "--no-deps" in reason
    with pytest.raises(ImportError, match="RecTools"):
        sasrec.SASRecBaseline(ITEMS)
