"""Exploration: give a share of each list to items the model is unsure about.

A ranker that only ever shows its current best items never learns about the others (a new
item that nobody is shown gets no clicks, so it stays at the bottom). With exploration on,
the last ``round(share * n)`` slots of a list (at least one when ``share > 0``) go to
*candidates*: the ``pool`` items ranked just below the list, preferring those shown fewer
than ``unsure_impressions`` times. Every item keeps a Beta posterior of its click rate:

* an **impression** is an item in a list served to a user;
* a **click** (the reward) is a later event of that user on an item of the last list served
  to them (counted once per list).

Policies, for each exploration slot:

* ``thompson``: draw a click rate from each candidate's ``Beta(a + clicks, b + misses)`` and
  take the best draw (an item with little evidence has a wide posterior, so it is tried);
* ``epsilon``: with probability ``epsilon`` a uniformly random candidate, otherwise the
  candidate with the highest posterior mean click rate (greedy on the reward so far).

The statistics live in the worker's memory: each worker learns from the users it owns and
starts afresh after a restart (exploration needs no durable state to be correct, only to be
efficient). Off by default (``share = 0``).

Example::

    ex = Explorer(ExploreConfig(share=0.2, policy="thompson", seed=1))
    slots = ex.slots(10)                         # 2
    picked = ex.pick(["a", "b", "c"], 2)          # two of the three candidates
    ex.shown("u1", ["x", "a", "b"]); ex.clicked("u1", "a")
    ex.stats("a")                                 # (1, 1): one impression, one click
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POLICIES = ("thompson", "epsilon")


@dataclass
class ExploreConfig:
    """How much of a list explores, and how."""

    share: float = 0.0  # of the list's slots; 0 = off
    policy: str = "thompson"  # thompson | epsilon
    epsilon: float = 0.1  # epsilon policy: chance a slot goes to a random candidate
    pool: int = 100  # candidates: this many items ranked just below the list
    unsure_impressions: int = 50  # an item shown fewer times than this is "unsure" (preferred)
    prior_clicks: float = 1.0  # Beta prior a
    prior_misses: float = 1.0  # Beta prior b
    remember_users: int = 100_000  # last list per user kept for click attribution (LRU)
    seed: int | None = None  # for reproducible runs (evaluation); None: fresh entropy

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"exploration share must be within 0..1, not {self.share}")
        if self.policy not in POLICIES:
            raise ValueError(f"exploration policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be within 0..1, not {self.epsilon}")
        if self.pool < 1 or self.prior_clicks <= 0 or self.prior_misses <= 0:
            raise ValueError("exploration pool must be >= 1 and the Beta prior positive")

    @property
    def enabled(self) -> bool:
        return self.share > 0.0


class Explorer:
    """Per-item impression/click counts and the slot-filling policy."""

    def __init__(self, config: ExploreConfig | None = None) -> None:
        self.config = config or ExploreConfig()
        self.rng = np.random.default_rng(self.config.seed)
        self.impressions: dict[str, int] = {}
        self.clicks: dict[str, int] = {}
        self._last: OrderedDict[str, set[str]] = OrderedDict()  # user -> items of the last list served
        self.explored = 0  # slots filled by exploration so far
        self.rewarded = 0  # clicks counted so far

    def slots(self, n: int) -> int:
        """Exploration slots in a list of ``n`` (0 when off)."""
        share = self.config.share
        if share <= 0.0 or n <= 0:
            return 0
        return min(n, max(1, round(share * n)))

    def stats(self, item_id: str) -> tuple[int, int]:
        """``(impressions, clicks)`` of an item."""
        return self.impressions.get(item_id, 0), self.clicks.get(item_id, 0)

    def pick(self, candidates: Sequence[str], k: int) -> list[str]:
        """``k`` of ``candidates`` (given best-first by the model), chosen by the policy."""
        if k <= 0 or not candidates:
            return []
        cfg = self.config
        impressions = [self.impressions.get(c, 0) for c in candidates]  # one lookup each (a list per event)
        unsure = [(c, n) for c, n in zip(candidates, impressions) if n < cfg.unsure_impressions]
        if len(unsure) >= k:
            pool, impressions = [c for c, _ in unsure], [n for _, n in unsure]
        else:
            pool = list(candidates)
        shown = np.asarray(impressions, dtype=np.float64)
        clicks = self.clicks.get
        hits = np.asarray([clicks(c, 0) for c in pool], dtype=np.float64)
        a, b = cfg.prior_clicks + hits, cfg.prior_misses + np.maximum(shown - hits, 0.0)
        if cfg.policy == "thompson":
            draws = self.rng.beta(a, b)
            order = np.argsort(-draws, kind="stable")[:k]
            return [pool[i] for i in order]
        mean = a / (a + b)
        greedy = [pool[i] for i in np.argsort(-mean, kind="stable")]  # ties: the model's order
        out: list[str] = []
        for _ in range(min(k, len(pool))):
            if self.rng.random() < cfg.epsilon:
                rest = [c for c in pool if c not in out]
                out.append(rest[int(self.rng.integers(len(rest)))])
            else:
                out.append(next(c for c in greedy if c not in out))
        return out

    def shown(self, user_id: str | None, item_ids: Sequence[str]) -> None:
        """Count a list served to ``user_id`` as impressions; remember it for the reward."""
        for i in item_ids:
            self.impressions[i] = self.impressions.get(i, 0) + 1
        if user_id is None:
            return
        self._last[user_id] = set(item_ids)
        self._last.move_to_end(user_id)
        while len(self._last) > self.config.remember_users:
            self._last.popitem(last=False)

    def clicked(self, user_id: str, item_id: str) -> bool:
        """A later event of ``user_id`` on ``item_id``: a reward if it was in their last list."""
        last = self._last.get(user_id)
        if not last or item_id not in last:
            return False
        last.discard(item_id)  # one reward per item per list
        self.clicks[item_id] = self.clicks.get(item_id, 0) + 1
        self.rewarded += 1
        return True
