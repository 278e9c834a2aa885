"""``streamrec evaluate``: metric functions on hand-computed cases, each baseline's defining
behaviour, the test-then-train protocol, and one real run (a prefix of Magazine Subscriptions,
the real exported encoder) checked for its JSON contract and for beating random."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference.ranking import Weights

from inference.datasets import find_datasets_dir, load_dataset
from inference.events import Event
from inference.vectors import top_k
from evaluation.baselines import ALSBaseline, CooccurrenceKNN, PopularityBaseline, System
from evaluation.evaluate import evaluate, main
from evaluation.metrics import (average_precision_at_k, f1_at_k, hit_at_k, ndcg_at_k, precision_at_k, rank_metrics,
                                rank_of, recall_at_k, reciprocal_rank)
from evaluation.protocol import leave_last_out, replay
from evaluation.report import write_results
from evaluation.systems import EXPLORE_SYSTEMS, SYSTEMS, EvalConfig, StreamrecSystem, build_systems
from evaluation.text import plan_item_text

SHARED = find_datasets_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None or not (SHARED / "amazon2018_magazine_subscriptions").is_dir(),
    reason="../shared/datasets not found (set STREAMREC_DATASETS)")

DAY = 86400.0
LIMIT = 600  # Magazine prefix: ~600 review texts to encode (cached after the first run)


def ev(user: str, item: str, t: float, **kw) -> Event:
    return Event(user, item, kw.pop("kind", "click"), t, kw.pop("event_id", f"{user}-{item}-{t}"), **kw)


# ------------------------------------------------------------------------------------------
# metrics


def test_rank_metrics_hand_computed():
    assert hit_at_k(10, 10) == 1.0 and hit_at_k(11, 10) == 0.0 and hit_at_k(math.inf, 10) == 0.0
    assert ndcg_at_k(1, 10) == 1.0
    assert ndcg_at_k(3, 10) == pytest.approx(0.5)  # 1 / log2(4)
    assert ndcg_at_k(7, 10) == pytest.approx(1 / 3)  # 1 / log2(8)
    assert ndcg_at_k(11, 10) == 0.0
    assert reciprocal_rank(4) == 0.25 and reciprocal_rank(math.inf) == 0.0
    # MRR is over the full ranking: rank 20 still counts, unlike the @10 metrics
    m = rank_metrics(20, 10)
    assert m["mrr"] == 0.05 and m["hr@10"] == 0.0 and m["map@10"] == 0.0 and m["f1@10"] == 0.0


def test_list_metrics_hand_computed():
    ranked = ["a", "b", "c", "d"]
    rel = {"b", "d", "x"}
    assert precision_at_k(ranked, rel, 4) == 0.5
    assert recall_at_k(ranked, rel, 4) == pytest.approx(2 / 3)
    assert f1_at_k(ranked, rel, 4) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert f1_at_k(ranked, rel, 4) == pytest.approx(4 / 7)
    # hits at 2 and 4: (1/2 + 2/4) / min(3, 4)
    assert average_precision_at_k(ranked, rel, 4) == pytest.approx(1 / 3)
    assert average_precision_at_k(ranked, rel, 1) == 0.0
    assert precision_at_k(ranked, rel, 2) == 0.5 and recall_at_k(ranked, set(), 2) == 0.0


def test_rank_metrics_match_list_metrics_for_one_relevant_item():
    for rank in (1, 2, 5, 10):
        ranked = [f"x{i}" for i in range(1, rank)] + ["t"] + [f"y{i}" for i in range(20)]
        m = rank_metrics(rank, 10)
        assert m["precision@10"] == pytest.approx(precision_at_k(ranked, {"t"}, 10))
        assert m["recall@10"] == pytest.approx(recall_at_k(ranked, {"t"}, 10))
        assert m["f1@10"] == pytest.approx(f1_at_k(ranked, {"t"}, 10))
        assert m["map@10"] == pytest.approx(average_precision_at_k(ranked, {"t"}, 10))
        assert m["hr@10"] == 1.0 and m["ndcg@10"] == pytest.approx(1 / math.log2(rank + 1))


def test_rank_of_ties_exclusion_and_unrankable():
    s = np.array([0.5, 0.9, 0.5, -np.inf, 0.1], dtype=np.float32)
    assert rank_of(s, 1) == 1
    assert rank_of(s, 0) == 2  # the tie at index 2 comes after it
    assert rank_of(s, 2) == 3  # ... and index 0 before it: the order top_k lists them in
    assert rank_of(s, 4) == 4
    assert rank_of(s, 3) == math.inf
    assert rank_of(s, 2, np.array([1])) == 2
    assert rank_of(s, 1, np.array([1])) == math.inf  # an excluded item is never a hit
    assert s[1] == np.float32(0.9)  # exclusion works on a copy


# ------------------------------------------------------------------------------------------
# baselines


def test_popularity_ranks_recent_popular_first():
    pop = PopularityBaseline(["old", "new", "rare", "never"], half_life_s=7 * DAY)
    for i in range(3):
        pop.observe(ev(f"a{i}", "old", 0.0 + i))
    for i in range(3):
        pop.observe(ev(f"b{i}", "new", 30 * DAY + i))  # as many interactions, a month later
    pop.observe(ev("c", "rare", 30 * DAY))
    assert pop.recommend("someone", 4) == ["new", "rare", "old"]  # "never" cannot be ranked
    assert pop.recommend("b0", 4) == ["rare", "old"]  # seen items are excluded
    assert pop.recommend("b0", 4, exclude=False)[0] == "new"


def test_cooccurrence_knn_recommends_item_co_consumed_with_last_item():
    items = ["guitar", "strings", "picks", "drum", "sticks", "popular"]
    knn = CooccurrenceKNN(items)
    t = 0.0
    for u in ("u1", "u2"):
        for it in ("guitar", "strings"):
            knn.observe(ev(u, it, t)); t += 1
    knn.observe(ev("u3", "drum", t)); t += 1
    knn.observe(ev("u3", "sticks", t)); t += 1
    for i in range(10):  # the most popular item, never consumed together with a guitar
        knn.observe(ev(f"p{i}", "popular", t)); t += 1
    knn.observe(ev("me", "drum", t)); t += 1
    knn.observe(ev("me", "guitar", t)); t += 1  # the last item: guitar
    recs = knn.recommend("me", 3)
    assert recs[0] == "strings"
    assert "sticks" in recs and recs.index("sticks") < recs.index("popular")  # older neighbour, still before
    assert "guitar" not in recs and "drum" not in recs
    # a user with no history gets the popularity fallback
    assert knn.recommend("newcomer", 1) == ["popular"]


def test_als_fits_and_recommends():
    rng = np.random.default_rng(0)
    a = [f"a{i}" for i in range(10)]
    b = [f"b{i}" for i in range(10)]
    als = ALSBaseline(a + b, factors=4, regularization=0.1, iterations=20)
    events, t = [], 0.0
    for u in range(40):  # two groups of users, each consuming one half of the catalogue
        group = a if u % 2 == 0 else b
        for it in rng.choice(group, size=6, replace=False):
            events.append(ev(f"u{u}", str(it), t)); t += 1
    events += [ev(f"fan{i}", "b0", t + i) for i in range(30)]  # b0 is by far the most popular
    for e in events:
        als.observe(e)
    assert als.recommend("fresh", 1) == ["b0"]  # before the first fit: popularity
    als.retrain(events)
    assert als.fits == 1 and als.item_factors.shape == (20, 4)
    als.observe(ev("fresh", "a0", t + 100))
    als.observe(ev("fresh", "a1", t + 101))
    recs = als.recommend("fresh", 5)
    assert set(recs) <= set(a) - {"a0", "a1"}  # folded in from its new items, no refit needed
    assert len(recs) == 5


# ------------------------------------------------------------------------------------------
# protocol


class Spy(System):
    """Records what it has observed; scores items by a fixed order."""

    name = "spy"
    needs_retraining = True

    def __init__(self, items):
        super().__init__(items)
        self.observed: list[str] = []
        self.retrained_at: list[int] = []

    def observe(self, event):
        self.observed.append(event.event_id)
        self._remember(event.user_id, self.pos[event.item_id])

    def scores(self, user_id):
        return np.arange(self.n_items, 0, -1, dtype=np.float32)

    def retrain(self, events_so_far):
        self.retrained_at.append(len(events_so_far))


def test_replay_scores_before_it_trains_and_refits_on_schedule():
    events = [ev(f"u{i % 3}", f"i{i % 7}", float(i)) for i in range(40)]
    events.insert(5, events[4])  # a re-delivered event: dropped, not scored
    items = [f"i{j}" for j in range(7)]
    spy = Spy(items)
    checked = []

    def on_score(step, event, systems):
        assert systems["spy"].observed == [e.event_id for e in replayed[:step]]
        assert event.event_id not in systems["spy"].observed
        checked.append(step)

    replayed = [e for i, e in enumerate(events) if i != 5]
    run = replay(events, items, {"spy": spy}, k=3, cold_window=5, retrain_every=10, on_score=on_score)
    assert run.duplicates == 1 and run.replayed == 40
    assert spy.retrained_at == [10, 20, 30, 40] and run.retrain_points == [10, 20, 30, 40]
    assert len(checked) == len(run.scored) == 40 - run.repeats
    assert run.repeats > 0  # u0 meets i0 again: applied, not scored
    assert run.seen_in_top_k["spy"] == 0
    # the first event of each item is cold, and so is anything within 5 events of it
    assert run.cold[0] and run.cold.sum() >= 7


def test_leave_last_out_split():
    events = [ev("u1", "a", 1), ev("u1", "b", 2), ev("u2", "a", 3), ev("u1", "c", 4),
              ev("u3", "a", 5), ev("u3", "a", 6, event_id="again")]
    train, test, skipped = leave_last_out(events)
    assert [e.item_id for e in test] == ["c"]  # u1's last; u2 has one event; u3 repeats "a"
    assert skipped == {"single_event_users": 1, "repeat_test_item": 1}
    assert [(e.user_id, e.item_id) for e in train] == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u3", "a")]


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["--dataset", "no_such_dataset", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no_such_dataset" in err and "musical_instruments" in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main(["--dataset", "magazine_subscriptions", "--systems", "streamrec,bogus", "--out", str(tmp_path)])


@needs_shared
def test_item_text_plan_states_leakage():
    mi = load_dataset("musical_instruments", limit=300)
    items = list(mi.items)
    cat = plan_item_text(mi, items, "catalogue")
    assert cat.source["leakage"] and len(cat.catalogue) == len(items)
    auto = plan_item_text(mi, items, "auto")  # no catalogue file: every vector from review history
    assert not auto.catalogue and auto.history == set(items) and auto.source["leakage"] is None
    mag = load_dataset("magazine_subscriptions")
    auto = plan_item_text(mag, list(mag.items), "auto")
    assert 140 <= len(auto.catalogue) < len(mag.items) and auto.history  # catalogue text where there is some
    # items whose description load_dataset filled from reviews keep only their own catalogue text
    assert sum(mag.items[i].text() != text for i, text in auto.catalogue.items()) >= 1
    assert all(mag.items[i].title in text for i, text in auto.catalogue.items())


# ------------------------------------------------------------------------------------------
# one real run: Magazine Subscriptions prefix, real encoder


@pytest.fixture(scope="module")
def magazine_run(encoder):
    if SHARED is None or not (SHARED / "amazon2018_magazine_subscriptions").is_dir():
        pytest.skip("../shared/datasets not found")
    keep: dict = {}
    cfg = EvalConfig(limit=LIMIT, retrain_every=200, cold_window=200)
    res = evaluate("magazine_subscriptions", encoder=encoder, cfg=cfg, keep=keep)
    return res, keep


@needs_shared
def test_result_json_has_exactly_the_documented_keys(magazine_run, tmp_path):
    res, keep = magazine_run
    assert set(res) == {"dataset", "protocol", "events", "systems", "offline"}
    assert res["dataset"] == "magazine_subscriptions"
    assert list(res["systems"]) == list(SYSTEMS)
    for m in res["systems"].values():
        assert set(m) == {"hr@10", "ndcg@10", "mrr", "coverage", "cold_hit@10"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in m.values())
    off = res["offline"]
    assert set(off["systems"]) == set(SYSTEMS) - set(EXPLORE_SYSTEMS)  # exploration: streaming only
    assert set(off["not_run"]) == set(EXPLORE_SYSTEMS)
    for m in off["systems"].values():
        assert set(m) == {"hr@10", "ndcg@10", "mrr", "precision@10", "recall@10", "f1@10", "map@10"}
    p = res["protocol"]
    assert p["retraining"] is False and "no retrain hook" in p["retraining_note"]
    assert res["systems"]["streamrec"] == res["systems"]["streamrec-untrained"]
    assert p["systems"]["streamrec-untrained"]["config"]["worker_defaults"] is True
    assert p["limit"] == LIMIT and p["prefix"] is True
    assert p["retrain_points"] == [200, 400, 600] and p["systems"]["als"]["fits"] == 3
    assert p["item_text_source"]["mode"] == "auto"
    paths = write_results(res, tmp_path, run=keep["run"])
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(res))
    assert paths["png"].stat().st_size > 10_000 and "| streamrec-untrained |" in paths["md"].read_text()


@needs_shared
def test_magazine_duplicates_are_counted(magazine_run):
    res, _ = magazine_run
    ev_ = res["events"]
    assert ev_["duplicates"] == 44  # exact duplicate rows in the dump, dropped as the worker drops them
    assert ev_["rows"] == 2375 and ev_["loaded"] == 2331 and ev_["invalid"] == {}
    assert ev_["replayed"] == LIMIT and ev_["scored"] + ev_["repeats"] == LIMIT


@needs_shared
def test_no_seen_item_is_recommended_with_exclusion_on(magazine_run):
    res, keep = magazine_run
    assert all(keep["run"].seen_in_top_k[n] == 0 for n in keep["systems"])
    assert all(res["protocol"]["systems"][n]["seen_in_top_k"] == 0 for n in keep["systems"])


@needs_shared
def test_streamrec_untrained_beats_random(magazine_run):
    res, keep = magazine_run
    n_items = res["events"]["items"]
    random_hr = 10 / n_items
    assert res["protocol"]["random_hr@k"] == pytest.approx(random_hr, abs=1e-6)
    assert res["systems"]["streamrec-untrained"]["hr@10"] > 2.0 * random_hr
    assert res["offline"]["systems"]["streamrec-untrained"]["hr@10"] > 2.0 * random_hr


@needs_shared
def test_streamrec_adapter_is_the_worker_step(magazine_run):
    """Before each event: the user's state does not hold it yet (a first event is scored as cold
    start), and the runner's Top-10 is exactly what Recommender.recommend publishes."""
    _, keep = magazine_run
    events, items = keep["events"][:300], keep["items"]
    systems, skipped = build_systems(["streamrec", "streamrec-untrained"], items, dim=keep["dim"], plan=keep["plan"],
                                     item_vecs=keep["item_vecs"], text_vecs=keep["text_vecs"])
    assert "streamrec" in skipped and list(systems) == ["streamrec-untrained"]
    prior, counts = [], {}
    for e in events:  # how many of this user's events come before it
        prior.append(counts.get(e.user_id, 0))
        counts[e.user_id] = prior[-1] + 1
    firsts, ties = [], []

    def on_score(step, event, systems):
        s: StreamrecSystem = systems["streamrec-untrained"]
        state = s.states.get(event.user_id)
        assert (state.count if state else 0) == prior[step]
        assert state is None or not state.has_seen(event.event_id)
        if prior[step] == 0:
            assert s.is_cold(event.user_id)  # the first event is scored against the cold-start list
            firsts.append(step)
        scores = s.scores(event.user_id)
        scores[s.excluded(event.user_id)] = -np.inf
        mine = [items[r] for r in top_k(scores, 10)]
        worker = s.recommend_worker(event.user_id, 10)
        # the same scores in the same order; items may differ only by how exact ties are broken
        # (the index's row order vs the universe order: e.g. all-zero popularity at the very start)
        assert [scores[s.pos[i]] for i in mine] == [scores[s.pos[i]] for i in worker]
        tenth = scores[s.pos[mine[-1]]]
        if np.count_nonzero(scores == tenth) == 1:
            assert mine == worker
        else:
            ties.append(step)

    run = replay(events, items, systems, on_score=on_score, k=10)
    assert len(firsts) > 50 and len(run.scored) > 250
    # exact ties happen in cold-start lists (day-precision timestamps: equal popularity), not often
    assert len(ties) < len(run.scored) // 4


@needs_shared
def test_retrain_hook_is_called_on_schedule(encoder):
    mag = load_dataset("magazine_subscriptions")
    calls = []

    def hook(recommender, events_so_far):
        calls.append(len(events_so_far))
        recommender.config.weights.popularity = Weights().popularity * 4  # a "trained" change that must not leak into the other system

    res = evaluate(mag, encoder=encoder, retrain_hook=hook,
                   cfg=EvalConfig(limit=LIMIT, retrain_every=250, systems=("streamrec", "streamrec-untrained"),
                                  offline=False))
    assert calls == [250, 500]
    assert res["protocol"]["retraining"] is True and res["offline"] is None
    assert res["protocol"]["systems"]["streamrec"]["retrains"] == 2
    assert res["protocol"]["systems"]["streamrec-untrained"]["config"]["recommender"]["weights"]["popularity"] == Weights().popularity
    assert res["systems"]["streamrec"] != res["systems"]["streamrec-untrained"]



@needs_shared
def test_periodic_retrainer_trains_checks_and_switches_versions(encoder):
    """The trainer's own code as the evaluation's hook: each retrain is measured on the newest
    events it held back, and the recommender only switches to versions that passed."""
    from training.seqmodel import SequenceConfig
    from training.trainer import PeriodicRetrainer, TrainConfig

    mi = load_dataset("musical_instruments")
    quick = SequenceConfig(d=32, blocks=1, max_epochs=4, warm_epochs=2, threads=1)
    hook = PeriodicRetrainer(TrainConfig(sequence=quick, sequence_grid={}, min_holdout=30, min_pairs=50),
                             window=2000, replay_sample=500)
    res = evaluate(mi, encoder=encoder, retrain_hook=hook,
                   cfg=EvalConfig(limit=1500, retrain_every=500, systems=("streamrec", "streamrec-untrained"),
                                  offline=False))
    history = res["protocol"]["systems"]["streamrec"]["retrain_history"]
    assert [h["at_event"] for h in history] == [500, 1000, 1500]
    for h in history:
        assert h["candidate"]["events"] == h["current"]["events"] > 0
        assert h["accepted"] == (h["candidate"]["ndcg"] >= h["current"]["ndcg"])
    accepted = [h["version"] for h in history if h["accepted"]]
    assert accepted == [f"v{k + 1}" for k in range(len(accepted))]
    if accepted and history[-1]["at_event"] < 1500:
        assert res["systems"]["streamrec"] != res["systems"]["streamrec-untrained"]


@needs_shared
def test_exploration_rows_are_measured_on_the_served_lists(magazine_run):
    res, _ = magazine_run
    base = res["systems"]["streamrec-untrained"]
    for name in EXPLORE_SYSTEMS:
        m, info = res["systems"][name], res["protocol"]["systems"][name]
        assert info["config"]["recommender"]["explore"]["share"] == EvalConfig().explore_share
        assert info["config"]["exploration"]["explored_slots"] > 0
        assert m["coverage"] >= base["coverage"]  # exploration shows items the ranking alone would not
        assert m != base
    assert res["protocol"]["exploration"]["systems"] == list(EXPLORE_SYSTEMS)


def test_exploring_system_rank_is_the_position_in_the_served_list():
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(40)]
    vecs = {i: v for i, v in zip(items, rng.standard_normal((40, 8)).astype(np.float32))}
    events = [ev(f"u{k % 7}", items[int(rng.integers(40))], float(k)) for k in range(300)]
    cfg = EvalConfig(explore_share=0.3, seed=1)
    systems, _ = build_systems(["streamrec-explore-thompson"], items, dim=8, item_vecs=vecs, cfg=cfg)
    sys_ = systems["streamrec-explore-thompson"]
    shown = []  # the lists as served, from the block's requests once ranked
    score_requests = sys_.score_requests
    sys_.score_requests = lambda requests: (score_requests(requests), shown.extend(t.served for t in requests))[0]
    run = replay(events, items, systems, k=5)
    targets = [items.index(events[i].item_id) for i in run.scored]
    assert len(shown) == len(targets) > 100
    for rank, lst, t in zip(run.ranks["streamrec-explore-thompson"], shown, targets):
        assert len(lst) == 5
        if t in lst:
            assert rank == list(lst).index(t) + 1
        else:
            assert rank > 5
    assert sys_.rec.explorer.explored == 2 * len(shown)  # round(0.3 * 5) = 2 slots per list
    assert sys_.rec.explorer.rewarded == sum(r <= 5 for r in run.ranks["streamrec-explore-thompson"])


# ------------------------------------------------------------------------------------------
# ranking a block of events at once


def _one_at_a_time(events, items, systems, k, retrain_every):
    """The protocol's definition, spelled out: per event, each system's full score vector
    (excluded items at -inf) and the true item's rank, then the event applied everywhere."""
    pos = {i: p for p, i in enumerate(items)}
    ranks = {n: [] for n in systems}
    mine, seen_ids, so_far = {}, set(), []
    for e in events:
        if e.event_id in seen_ids:
            continue
        seen_ids.add(e.event_id)
        target = pos[e.item_id]
        if target not in mine.setdefault(e.user_id, set()):
            for name, s in systems.items():
                if getattr(s, "served", None) is not None:
                    scores = s.scores(e.user_id)
                    scores[s.excluded(e.user_id)] = -np.inf
                    best = s.served(e.user_id, k)
                    hit = np.flatnonzero(best == target)
                    rest = scores.copy()
                    rest[best] = -np.inf
                    ranks[name].append(float(hit[0] + 1) if hit.size else len(best) + rank_of(rest, target))
                else:
                    ranks[name].append(rank_of(s.scores(e.user_id), target, s.excluded(e.user_id)))
        for s in systems.values():
            s.observe(e)
        mine[e.user_id].add(target)
        so_far.append(e)
        if len(so_far) % retrain_every == 0:
            for s in systems.values():
                if s.needs_retraining:
                    s.retrain(list(so_far))
    return {n: np.asarray(r) for n, r in ranks.items()}


def test_ranking_a_block_at_once_gives_the_ranks_of_one_event_at_a_time():
    """Test-then-train in blocks: every event is still ranked against the state just before it
    (users with several events in one block, popularity moving inside the block, an item
    joining the index mid-block, a new version at each retrain point, exploration) -- exactly
    the ranks of scoring each event alone."""
    from evaluation.text import ItemTextPlan
    from inference.model import ModelParams

    rng = np.random.default_rng(3)
    dim, items = 8, [f"i{k}" for k in range(60)]
    vecs = {i: v for i, v in zip(items[:50], rng.standard_normal((50, dim)).astype(np.float32))}
    later = set(items[50:])  # no catalogue vector: they join the index at their first review with text
    events, text_vecs = [], {}
    for k in range(400):
        user = f"u{int(rng.integers(6))}" if k % 5 else "u0"  # u0: several events in every block
        e = ev(user, items[int(rng.integers(60))], 1000.0 * k, kind="review", rating=float(rng.integers(1, 6)))
        events.append(e)
        if e.item_id in later or k % 3 == 0:
            text_vecs[e.event_id] = rng.standard_normal(dim).astype(np.float32)
    events.insert(150, events[149])  # a re-delivered event
    plan = ItemTextPlan("auto", {i: i for i in vecs}, later, {})

    def hook(rec, so_far):  # a new version at each retrain point, the same in every run
        g = np.random.default_rng(len(so_far))
        ids = rec.index.ids()[:30]
        rec.use_model(ModelParams(dim, (np.eye(dim) + 0.3 * g.standard_normal((dim, dim))).astype(np.float32), ids,
                                  0.3 * g.standard_normal((len(ids), dim)).astype(np.float32),
                                  g.standard_normal(dim).astype(np.float32), 0.1, Weights(popularity=0.3, head=0.5),
                                  0.3 * g.standard_normal((len(ids), dim)).astype(np.float32)), f"v{len(so_far)}")

    names = ["streamrec", "streamrec-untrained", "popularity", "cooccurrence-knn", "als",
             "streamrec-explore-epsilon", "spy"]

    def fresh():
        systems, _ = build_systems([n for n in names if n != "spy"], items, dim=dim, plan=plan, item_vecs=vecs,
                                   text_vecs=text_vecs, cfg=EvalConfig(explore_share=0.3, als={"factors": 4}),
                                   retrain_hook=hook)
        systems["spy"] = Spy(items)  # only scores(): the default request / score_requests
        return systems

    alone = _one_at_a_time(events, items, fresh(), k=10, retrain_every=70)
    for block in (1, 64, 1000):
        run = replay(events, items, fresh(), k=10, retrain_every=70, block=block)
        assert run.retrain_points == [70, 140, 210, 280, 350]  # blocks end there: 64 < 70, 1000 > 400
        for n in names:
            np.testing.assert_array_equal(run.ranks[n], alone[n], err_msg=f"{n}, block {block}")
        assert run.split["streamrec"]["retrain"] >= 0 and set(run.split["als"]) == {"score", "observe", "retrain"}
    assert len(alone["streamrec"]) > 200
    assert np.isinf(alone["streamrec"]).any()  # an item scored before its first review put it in the index

