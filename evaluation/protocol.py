"""The two protocols: streaming (prequential, test-then-train) and offline leave-last-out."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inference.events import Event
from inference.vectors import top_k

from .baselines import System
from .metrics import rank_metrics, rank_of
from .progress import _bar


@dataclass
class StreamRun:
    """What :func:`replay` measured. Per-system arrays are aligned with ``scored`` (the indices,
    into the replayed events, of the events that were scored)."""

    k: int
    n_items: int
    scored: np.ndarray
    cold: np.ndarray
    ranks: dict[str, np.ndarray]
    covered: dict[str, np.ndarray]
    seen_in_top_k: dict[str, int]
    seconds: dict[str, float]
    retrain_points: list[int]
    replayed: int
    repeats: int
    duplicates: int

    def metrics(self, name: str) -> dict[str, float | None]:
        k = self.k
        r = self.ranks[name]
        hits = r <= k
        with np.errstate(divide="ignore"):
            ndcg = np.where(hits, 1.0 / np.log2(r + 1.0), 0.0)
            rr = np.where(np.isfinite(r), 1.0 / r, 0.0)
        cold = self.cold
        return {
            f"hr@{k}": _mean(hits),
            f"ndcg@{k}": _mean(ndcg),
            "mrr": _mean(rr),
            "coverage": round(float(self.covered[name].mean()), 6) if self.n_items else None,
            f"cold_hit@{k}": _mean(hits[cold]) if cold.any() else None,
        }


def _mean(a: np.ndarray) -> float | None:
    return round(float(np.mean(a)), 6) if len(a) else None


def replay(events: Sequence[Event], item_ids: Sequence[str], systems: dict[str, System], *, k: int = 10,
           cold_window: int = 1000, retrain_every: int | None = None, progress: bool = False,
           on_score: Callable[[int, Event, dict[str, System]], None] | None = None,
           desc: str = "replay") -> StreamRun:
    """Test-then-train over ``events`` (already in replay order).

    For each event: skip it if its id was already replayed (duplicate); unless the user has
    interacted with the item before (a repeat), let every system score it (``on_score`` is called
    first, with the systems as they are *before* the event) and record the true item's rank and
    the Top-``k``; then ``observe`` it everywhere. After every ``retrain_every`` replayed events,
    systems with ``needs_retraining`` are refitted on all events so far.
    """
    pos = {i: p for p, i in enumerate(item_ids)}
    n_items = len(item_ids)
    names = list(systems)
    ranks: dict[str, list[float]] = {n: [] for n in names}
    covered = {n: np.zeros(n_items, dtype=bool) for n in names}
    seen_in = {n: 0 for n in names}
    secs = {n: 0.0 for n in names}
    scored: list[int] = []
    cold: list[bool] = []
    first_seen: dict[str, int] = {}
    user_items: dict[str, set[int]] = {}
    seen_ids: set[str] = set()
    so_far: list[Event] = []
    retrain_points: list[int] = []
    repeats = duplicates = 0
    bar = _bar(total=len(events), desc=desc, unit="ev", enabled=progress)
    for i, ev in enumerate(events):
        if ev.event_id is not None:
            if ev.event_id in seen_ids:
                duplicates += 1
                bar.update(1)
                continue
            seen_ids.add(ev.event_id)
        step = len(so_far)
        target = pos.get(ev.item_id)
        mine = user_items.setdefault(ev.user_id, set())
        if target is not None and target in mine:
            repeats += 1
        elif target is not None:
            if on_score is not None:
                on_score(step, ev, systems)
            first = first_seen.get(ev.item_id)
            cold.append(first is None or step - first < cold_window)
            scored.append(step)
            for name in names:
                t0 = time.perf_counter()
                sys_ = systems[name]
                s = np.asarray(sys_.scores(ev.user_id), dtype=np.float32)
                drop = sys_.excluded(ev.user_id)
                if drop.size:
                    s = s.copy()
                    s[drop] = -np.inf
                served = getattr(sys_, "served", None)
                if served is not None:  # exploration: the list as served, then the rest by score
                    best = served(ev.user_id, min(k, n_items))
                    hit = np.flatnonzero(best == target)
                    if hit.size:
                        ranks[name].append(float(hit[0] + 1))
                    else:
                        rest = s.copy()
                        rest[best] = -np.inf
                        ranks[name].append(len(best) + rank_of(rest, target))
                else:
                    ranks[name].append(rank_of(s, target))
                    best = top_k(s, min(k, n_items))
                    best = best[np.isfinite(s[best])]
                covered[name][best] = True
                if mine and any(int(b) in mine for b in best):
                    seen_in[name] += 1
                secs[name] += time.perf_counter() - t0
        for name in names:
            t0 = time.perf_counter()
            systems[name].observe(ev)
            secs[name] += time.perf_counter() - t0
        if target is not None:
            mine.add(target)
        first_seen.setdefault(ev.item_id, step)
        so_far.append(ev)
        if retrain_every and len(so_far) % retrain_every == 0:
            refit = [n for n in names if systems[n].needs_retraining]
            if refit:
                retrain_points.append(len(so_far))
            for name in refit:
                t0 = time.perf_counter()
                systems[name].retrain(list(so_far))  # a snapshot: hooks may keep it
                secs[name] += time.perf_counter() - t0
        bar.update(1)
        if progress and len(scored) and len(scored) % 500 == 0 and names:
            bar.set_postfix_str(" ".join(f"{n[:10]}={np.mean(np.asarray(ranks[n]) <= k):.3f}" for n in names[:3]))
    bar.close()
    return StreamRun(k=k, n_items=n_items, scored=np.asarray(scored, dtype=np.int64),
                     cold=np.asarray(cold, dtype=bool),
                     ranks={n: np.asarray(r, dtype=np.float64) for n, r in ranks.items()},
                     covered=covered, seen_in_top_k=seen_in, seconds=secs, retrain_points=retrain_points,
                     replayed=len(so_far), repeats=repeats, duplicates=duplicates)


# ============================================================================================
# the offline (leave-last-out) protocol
# ============================================================================================


def leave_last_out(events: Sequence[Event]) -> tuple[list[Event], list[Event], dict[str, int]]:
    """``(train, test, skipped)``: each user's last event (in replay order) is their test event;
    users with one event are skipped, as are users whose last item is already among their
    training items (a repeat: excluded from the ranking by definition, so unwinnable)."""
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    for i, ev in enumerate(events):
        last[ev.user_id] = i
        count[ev.user_id] = count.get(ev.user_id, 0) + 1
    test_idx = {i for u, i in last.items() if count[u] >= 2}
    train = [ev for i, ev in enumerate(events) if i not in test_idx]
    train_items: dict[str, set[str]] = {}
    for ev in train:
        train_items.setdefault(ev.user_id, set()).add(ev.item_id)
    test, repeat = [], 0
    for i in sorted(test_idx):
        ev = events[i]
        if ev.item_id in train_items.get(ev.user_id, ()):
            repeat += 1
        else:
            test.append(ev)
    # single-event users have nothing to test, but their event still trains (usual leave-one-out)
    single = sum(1 for u in count if count[u] < 2)
    return train, test, {"single_event_users": single, "repeat_test_item": repeat}


def evaluate_offline(train: Sequence[Event], test: Sequence[Event], item_ids: Sequence[str],
                     systems: dict[str, System], *, k: int = 10, progress: bool = False) -> dict[str, dict]:
    """Fit each system on ``train`` (replayed in order, then one refit for those that need it),
    rank each test item among all items minus the user's training items, average the metrics."""
    pos = {i: p for p, i in enumerate(item_ids)}
    train_items: dict[str, list[int]] = {}
    for ev in train:
        p = pos.get(ev.item_id)
        if p is not None:
            train_items.setdefault(ev.user_id, []).append(p)
    out: dict[str, dict] = {}
    for name, sys_ in systems.items():
        t0 = time.perf_counter()
        bar = _bar(total=len(train) + len(test), desc=f"offline {name}", unit="ev", enabled=progress)
        for ev in train:
            sys_.observe(ev)
            bar.update(1)
        if sys_.needs_retraining:
            sys_.retrain(train)
        sums: dict[str, float] = {}
        for ev in test:
            s = np.array(sys_.scores(ev.user_id), dtype=np.float32, copy=True)
            drop = train_items.get(ev.user_id)
            if drop:
                s[np.asarray(drop, dtype=np.int64)] = -np.inf
            r = rank_of(s, pos[ev.item_id])
            for key, v in rank_metrics(r, k).items():
                sums[key] = sums.get(key, 0.0) + v
            bar.update(1)
        bar.close()
        n = max(1, len(test))
        out[name] = {key: round(v / n, 6) for key, v in sums.items()} if test else {}
        out[name]["_seconds"] = round(time.perf_counter() - t0, 2)
    return out


# ============================================================================================
