"""The two protocols: streaming (prequential, test-then-train) and offline leave-last-out."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from inference.events import Event
from inference.vectors import top_k_rows

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
    #: per system: seconds spent scoring (requests and ranking), observing and retraining
    split: dict[str, dict[str, float]] = field(default_factory=dict)
    #: wall seconds at the retrain points (less than the systems' retrain seconds added up when
    #: a refit ran in the background)
    retrain_seconds: float = 0.0

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


#: Events :func:`replay` ranks together (one request per event and system, then one
#: ``score_requests`` per system): on MovieLens (9.7k items) the streamrec product costs
#: ~0.1 ms a user in a block of 256 against ~0.5 ms one at a time.
BLOCK = 256


def replay(events: Sequence[Event], item_ids: Sequence[str], systems: dict[str, System], *, k: int = 10,
           cold_window: int = 1000, retrain_every: int | None = None, progress: bool = False,
           on_score: Callable[[int, Event, dict[str, System]], None] | None = None,
           desc: str = "replay", block: int = BLOCK) -> StreamRun:
    """Test-then-train over ``events`` (already in replay order).

    For each event: skip it if its id was already replayed (duplicate); unless the user has
    interacted with the item before (a repeat), let every system score it (``on_score`` is called
    first, with the systems as they are *before* the event) and record the true item's rank and
    the Top-``k``; then ``observe`` it everywhere. After every ``retrain_every`` replayed events,
    systems with ``needs_retraining`` are refitted on all events so far.

    Scoring is done a block of up to ``block`` events at a time, as the worker ranks a chunk:
    each system's :meth:`System.request` is taken for the event before it is applied (so every
    event is scored against the state just before it, whoever the users are), and the block
    is ranked at once with :meth:`System.score_requests`. A block ends at each retrain point.
    ``block=1`` ranks every event alone.
    """
    pos = {i: p for p, i in enumerate(item_ids)}
    n_items = len(item_ids)
    kk = min(k, n_items)
    names = list(systems)
    serving = {n for n in names if getattr(systems[n], "served", None) is not None}
    ranks: dict[str, list[float]] = {n: [] for n in names}
    covered = {n: np.zeros(n_items, dtype=bool) for n in names}
    seen_in = {n: 0 for n in names}
    split = {n: {"score": 0.0, "observe": 0.0, "retrain": 0.0} for n in names}
    scored: list[int] = []
    cold: list[bool] = []
    first_seen: dict[str, int] = {}
    user_items: dict[str, dict[int, int]] = {}  # user -> universe position -> step of the first interaction
    seen_ids: set[str] = set()
    so_far: list[Event] = []
    retrain_points: list[int] = []
    repeats = duplicates = 0
    retrain_wall = 0.0
    pending: list[tuple[int, int, dict[int, int]]] = []  # (step, target, the user's items) per scored event
    requests: dict[str, list] = {n: [] for n in names}
    bar = _bar(total=len(events), desc=desc, unit="ev", enabled=progress)

    def rank_block() -> None:
        if not pending:
            return
        targets = np.asarray([p[1] for p in pending], np.int64)
        for name in names:
            t0 = time.perf_counter()
            sys_ = systems[name]
            reqs = requests[name]
            if reqs and isinstance(reqs[0], _ServedNow):
                S = np.stack([q.scores for q in reqs])
            else:
                S = np.asarray(sys_.score_requests(reqs), dtype=np.float32)
            if name in serving:  # exploration: the list as served, then the rest by score
                best_rows = [q.served for q in reqs]
                r = _served_ranks(S, targets, best_rows)
                for b in best_rows:
                    covered[name][b] = True
            else:
                r = _block_ranks(S, targets)
                best = top_k_rows(S, kk)
                finite = np.isfinite(np.take_along_axis(S, best, 1))
                covered[name][best[finite]] = True
                best_rows = [b[f] for b, f in zip(best, finite)]
            ranks[name].extend(r.tolist())
            for (step, _, mine), b in zip(pending, best_rows):
                if mine and any(mine.get(x, step) < step for x in b.tolist()):
                    seen_in[name] += 1
            requests[name] = []
            split[name]["score"] += time.perf_counter() - t0
        pending.clear()

    for i, ev in enumerate(events):
        if ev.event_id is not None:
            if ev.event_id in seen_ids:
                duplicates += 1
                bar.update(1)
                continue
            seen_ids.add(ev.event_id)
        step = len(so_far)
        target = pos.get(ev.item_id)
        mine = user_items.setdefault(ev.user_id, {})
        if target is not None and target in mine:
            repeats += 1
        elif target is not None:
            if on_score is not None:
                on_score(step, ev, systems)
            first = first_seen.get(ev.item_id)
            cold.append(first is None or step - first < cold_window)
            scored.append(step)
            pending.append((step, target, mine))
            for name in names:
                t0 = time.perf_counter()
                sys_ = systems[name]
                if name not in serving:
                    requests[name].append(sys_.request(ev.user_id))
                elif getattr(sys_, "serves_in_blocks", False):  # request(user, n); its ``served`` once ranked
                    requests[name].append(sys_.request(ev.user_id, n=kk))
                else:  # the list as served, now
                    requests[name].append(_ServedNow(System.request(sys_, ev.user_id), sys_.served(ev.user_id, kk)))
                split[name]["score"] += time.perf_counter() - t0
        for name in names:
            t0 = time.perf_counter()
            systems[name].observe(ev)
            split[name]["observe"] += time.perf_counter() - t0
        if target is not None:
            mine.setdefault(target, step)
        first_seen.setdefault(ev.item_id, step)
        so_far.append(ev)
        retrain_now = bool(retrain_every) and len(so_far) % retrain_every == 0
        if len(pending) >= block or retrain_now:
            rank_block()
        if retrain_now:
            t_refit = time.perf_counter()
            refit = [n for n in names if systems[n].needs_retraining]
            if refit:
                retrain_points.append(len(so_far))
                bar.set_postfix_str(f"retraining {', '.join(refit)} at event {len(so_far):,}")
            # systems that say so refit on a second thread while the others refit here (ALS's fit
            # runs in native code, so it overlaps the trainer); all are done before the next event
            behind = {n: _in_background(systems[n], list(so_far)) for n in refit
                      if getattr(systems[n], "retrains_in_background", False)}
            for name in refit:
                if name not in behind:
                    t0 = time.perf_counter()
                    systems[name].retrain(list(so_far))  # a snapshot: hooks may keep it
                    split[name]["retrain"] += time.perf_counter() - t0
            for name, job in behind.items():
                split[name]["retrain"] += job.result()
            retrain_wall += time.perf_counter() - t_refit
        bar.update(1)
        if progress and len(scored) and len(scored) % 500 == 0 and names and ranks[names[0]]:
            bar.set_postfix_str(" ".join(f"{n[:10]}={np.mean(np.asarray(ranks[n]) <= k):.3f}" for n in names[:3]))
    rank_block()
    bar.close()
    return StreamRun(k=k, n_items=n_items, scored=np.asarray(scored, dtype=np.int64),
                     cold=np.asarray(cold, dtype=bool),
                     ranks={n: np.asarray(r, dtype=np.float64) for n, r in ranks.items()},
                     covered=covered, seen_in_top_k=seen_in,
                     seconds={n: sum(s.values()) for n, s in split.items()},
                     retrain_points=retrain_points, replayed=len(so_far), repeats=repeats, duplicates=duplicates,
                     split={n: {part: round(v, 2) for part, v in s.items()} for n, s in split.items()},
                     retrain_seconds=round(retrain_wall, 2))


class _in_background:
    """``system.retrain(events)`` on its own thread; :meth:`result` waits and gives its seconds."""

    def __init__(self, system: System, events: list[Event]) -> None:
        import threading

        self._error: BaseException | None = None
        self._seconds = 0.0

        def run() -> None:
            t0 = time.perf_counter()
            try:
                system.retrain(events)
            except BaseException as exc:  # noqa: BLE001 - raised again in result()
                self._error = exc
            self._seconds = time.perf_counter() - t0

        self._thread = threading.Thread(target=run, name=f"retrain-{getattr(system, 'name', 'system')}", daemon=True)
        self._thread.start()

    def result(self) -> float:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._seconds


@dataclass
class _ServedNow:
    """A served list taken at once (a system with ``served`` that cannot wait for the block)."""

    scores: np.ndarray  # universe scores, excluded items at -inf
    served: np.ndarray  # universe positions, in list order


def _block_ranks(S: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """:func:`rank_of` for every row of ``S`` (row ``i``'s true item at ``targets[i]``):
    1 + items scored higher + items scored equal at a lower position; inf when unrankable."""
    at = np.arange(len(S))
    t = S[at, targets][:, None]
    higher = np.count_nonzero(S > t, axis=1)
    before = np.zeros(len(S), dtype=np.int64)
    tied = np.flatnonzero(np.count_nonzero(S == t, axis=1) > 1)  # rows where another item ties the true one
    if tied.size:
        St = S[tied]
        before[tied] = np.count_nonzero((St == t[tied]) & (np.arange(S.shape[1])[None, :] < targets[tied, None]),
                                        axis=1)
    return np.where(np.isfinite(t[:, 0]), 1.0 + higher + before, np.inf)


def _served_ranks(S: np.ndarray, targets: np.ndarray, served: Sequence[np.ndarray]) -> np.ndarray:
    """Ranks on lists as served: the position in the list, else the list's length plus the
    rank among the items not served (by score)."""
    everything = _block_ranks(S, targets)  # the rank among all items; the served ones ahead come off
    out = np.empty(len(S), dtype=np.float64)
    for i, (best, target) in enumerate(zip(served, targets.tolist())):
        hit = np.flatnonzero(best == target)
        if hit.size:
            out[i] = float(hit[0] + 1)
        elif not math.isfinite(everything[i]):
            out[i] = math.inf
        else:
            t, s = S[i, target], S[i, best]
            ahead = np.count_nonzero((s > t) | ((s == t) & (best < target)))
            out[i] = len(best) + everything[i] - ahead
    return out


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
