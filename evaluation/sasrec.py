"""SASRec (Kang & McAuley 2018) from RecTools, behind the :class:`~evaluation.baselines.System`
interface: the sequential transformer a user would pick instead of streamrec.

Why RecTools (``rectools.models.SASRecModel``) and not RecBole: RecTools keeps a maintained
SASRec with a documented recipe and a public reproducibility benchmark, takes a plain pandas
frame (no config files or atomic-file dumps), exposes the fitted torch backbone (so a user's
scores can be recomputed from their current sequence without a refit) and has a light
dependency set (pandas, pytorch-lightning). RecBole 1.2.1 would pull ray 2.6.3, tensorboard,
grpcio, scikit-learn, plotly, pandas 3 and exact pins of colorlog/colorama (``pip install
--dry-run``), and is driven by config files and its own dataset format.

Install (the ``baselines`` extra; see the note in ``pyproject.toml``)::

    pip install -e '.[baselines]' 'torch==2.13.0'
    pip install --no-deps 'rectools==0.19.0'

``--no-deps`` because RecTools' metadata caps ``numpy<2`` and ``attrs<24`` on Python < 3.12 and
asks for ``pm-implicit`` (a fork of ``implicit``, same module name): honouring that would
downgrade numpy and break ``onnx``'s ``ml_dtypes>=0.5.4`` (numpy 2 only) and overwrite
``implicit``. Its code runs on numpy 2 (the same wheel asks for numpy>=2.1 on Python 3.13) and
only imports ``implicit`` for its ALS wrappers, which this module does not use. Without the
library, :func:`unavailable_reason` says why and :class:`SASRecBaseline` raises ImportError
with the same text, so the evaluator can list the system as skipped.

How it runs (:class:`SASRecBaseline`):

* **Fit.** ``SASRecModel`` on every event so far (one sequence per user, in replay order,
  repeats kept; as RecTools trains: each user's last ``session_max_len + 1`` events, users with
  >= 2). Recipe: RecTools' defaults (2 blocks, Adam lr 1e-3 with betas (0.9, 0.98), batch 128,
  learnable positional encoding, causal attention, item-id embeddings only) scaled down for
  CPU: 64 factors, 2 heads, ``session_max_len`` 50 (the RecTools tutorials' setting; the paper
  used 200 on MovieLens-1M), capped at the first fit at the 95th percentile of the users' history
  lengths rounded up to a multiple of 8 (16 on Musical Instruments: padding costs as much as
  data). Loss (``loss="auto"``): RecTools' default full-catalogue softmax up to 2,048 items;
  above, ``sampled_softmax`` with 32 uniform negatives, because the full softmax's
  ``batch x len x n_items`` logits made an epoch ~5x dearer on MovieLens' 9.7k items (6.4 s vs
  1.35 s CPU, one thread; not run to convergence for that cost), while on small catalogues
  gathering ``len x 33`` sampled embeddings costs more than the full logits.
  On MovieLens leave-last-out (610 test users, so +-0.005 is noise) sampled softmax (32), gBCE
  (32) and the paper's BCE (1 negative, 160 epochs) all gave NDCG@10 0.023-0.026. ``all_windows=True`` trains every
  ``session_max_len + 1`` window of each history instead of the latest (0.028, ~3.5x the time;
  off by default, not the library's recipe). One torch thread by default (``threads``): on 2
  shared cores the second thread mostly spins (2-4x the CPU time per epoch measured).
* **Grid** (at the first fit only, then fixed; recorded in :meth:`config`): ``dropout`` in
  {0.2, 0.5} (the paper's dense / sparse-data settings) x ``epochs`` in {10, 20, 40}
  (:data:`DROPOUT_GRID`, :data:`EPOCH_GRID`; the epochs are read along one training run per
  dropout, resumed with ``fit_partial``): 6 configurations, picked by NDCG@10 on a validation
  split of the events given to that fit: each user's last event held out (users with >= 3
  events; a last item the user already had is not scored; the user's other items excluded
  from the ranking, as in the offline protocol); ties go to the first (fewer epochs). The
  chosen configuration is then fitted from scratch on all the events. Offline (leave-last-out)
  the evaluator passes only the training events, so the test item is never seen by the grid.
* **Refit schedule.** The runner calls :meth:`retrain` every ``retrain_every`` events (1000 by
  default); the model is refitted only when at least ``refit_every`` events arrived since the
  last fit (10 % slack, so that a 1,027-event interval is not rounded up to 2,000 by the runner's
  1000-event calls): ``ceil(refit_every_share * total_events)`` when the stream length ``total_events``
  is given at construction (default share 0.1: about ten fits per stream), else
  ``refit_every_events`` (default 10,000). The first fit happens at the first call with at
  least that many events; with ``total_events=None`` the first call always fits (the offline
  protocol calls :meth:`retrain` once, on the training part).
* **Fold-in between fits.** A user's scores are the fitted network's next-item scores for their
  *current* sequence (their last ``session_max_len`` events on items the model knows), so a new
  event counts at once; cached per user (the last 1024 users scored) and recomputed only when
  the sequence (or the model) changed. One forward pass of one sequence per scored event in the
  replay (~1 ms on one core). Items first seen after the last fit cannot be ranked (``-inf``).
  Before the first fit, and for users with no event on a fitted item, it ranks by
  recency-weighted popularity (as :class:`~evaluation.baselines.ALSBaseline` does).
* **Deterministic**: a fixed torch seed per fit (the caller's torch RNG state is restored
  afterwards), Lightning's ``deterministic=True`` (the global flag is put back after the fit),
  CPU only, no data-loader workers. Results are reproducible for a given number of torch
  threads (``threads``, default 1; ``None`` leaves torch's setting alone).
* **Quiet**: no progress bar, model summary, logger or checkpoints; Lightning's and RecTools'
  info logs and warnings are silenced during fits.

Example::

    sas = SASRecBaseline(item_ids, total_events=len(events))
    for ev in events: sas.observe(ev)
    sas.retrain(events)
    sas.recommend("u1", 10)
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

from inference.events import Event

from .baselines import DecayedCounts, System

log = logging.getLogger("streamrec.sasrec")

__all__ = ["DROPOUT_GRID", "EPOCH_GRID", "INSTALL_HINT", "SASRecBaseline", "unavailable_reason"]

INSTALL_HINT = ("pip install -e '.[baselines]' 'torch==2.13.0' && pip install --no-deps 'rectools==0.19.0' "
                "(see evaluation/sasrec.py)")
#: epochs evaluated along each training run of the grid (cumulative)
EPOCH_GRID: tuple[int, ...] = (10, 20, 40)
#: dropout rates of the grid (the SASRec paper: 0.2 on MovieLens, 0.5 on the sparse Amazon sets)
DROPOUT_GRID: tuple[float, ...] = (0.2, 0.5)
_VAL_K = 10
_VAL_MAX_USERS = 5000
_FULL_SOFTMAX_ITEMS = 2048  # loss="auto": full softmax up to this many items, sampled softmax above
_CACHE_USERS = 1024  # score vectors kept (n_items floats each)
_QUIET_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "rectools")


def unavailable_reason() -> str | None:
    """Why the SASRec baseline cannot run here (None: it can)."""
    try:
        import pytorch_lightning  # noqa: F401
        from rectools.models import SASRecModel  # noqa: F401
    except ImportError as exc:
        return f"sasrec needs RecTools with its torch extra, which is not installed ({exc}); install: {INSTALL_HINT}"
    return None


def _cpu_trainer(epochs: int = 1):
    """The Lightning trainer for every fit: CPU, deterministic, silent (module level, so that
    RecTools can name it in the model config)."""
    from pytorch_lightning import Trainer

    return Trainer(max_epochs=epochs, min_epochs=epochs, accelerator="cpu", devices=1, deterministic=True,
                   enable_progress_bar=False, enable_model_summary=False, logger=False,
                   enable_checkpointing=False, num_sanity_val_steps=0)


@contextlib.contextmanager
def _fit_context(seed: int, threads: int | None):
    """Seeded, quiet, single-purpose: restores the torch RNG state, the deterministic-algorithms
    flag, the thread count and the library loggers' levels afterwards."""
    import torch

    levels = {}
    for name in _QUIET_LOGGERS:
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.ERROR)
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    n_threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            if threads:
                torch.set_num_threads(threads)
            yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.set_num_threads(n_threads)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """``threads`` torch threads inside, the caller's count restored after (~30 us a switch). On
    a busy machine a second OpenMP thread makes each small op wait for a time slice: one
    sequence's forward pass took 120 ms with 2 threads against 0.9 ms with one."""
    import torch

    if not threads or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SASRecBaseline(System):
    """SASRec from RecTools, refitted on a schedule, users folded in from their current
    sequence between fits (see the module docstring for the recipe, grid and schedule)."""

    name = "sasrec"
    needs_retraining = True

    def __init__(self, item_ids: Sequence[str], *, total_events: int | None = None,
                 refit_every_share: float = 0.1, refit_every_events: int = 10_000,
                 n_factors: int = 64, n_blocks: int = 2, n_heads: int = 2, session_max_len: int = 50,
                 loss: str = "auto", n_negatives: int = 32, lr: float = 1e-3,
                 batch_size: int = 128, dropout_grid: Iterable[float] = DROPOUT_GRID,
                 epoch_grid: Iterable[int] = EPOCH_GRID, seed: int = 0, threads: int | None = 1,
                 popularity_half_life_s: float = 14 * 86400.0, all_windows: bool = False) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise ImportError(reason)
        super().__init__(item_ids)
        if not 0 < refit_every_share <= 1:
            raise ValueError("refit_every_share must be in (0, 1]")
        self.total_events = total_events
        self.refit_every_share = refit_every_share
        self.refit_every = (max(1, math.ceil(refit_every_share * total_events)) if total_events
                            else int(refit_every_events))
        if loss == "auto":  # the full softmax while the catalogue is small, else sampled (see above)
            loss = "softmax" if self.n_items <= _FULL_SOFTMAX_ITEMS else "sampled_softmax"
        self.params = {"n_factors": n_factors, "n_blocks": n_blocks, "n_heads": n_heads,
                       "session_max_len": session_max_len, "loss": loss, "n_negatives": n_negatives,
                       "lr": lr, "batch_size": batch_size}
        self.dropout_grid = tuple(float(d) for d in dropout_grid)
        self.epoch_grid = tuple(sorted(int(e) for e in epoch_grid))
        if not self.dropout_grid or not self.epoch_grid or self.epoch_grid[0] < 1:
            raise ValueError("the grid needs at least one dropout and one positive epoch count")
        self.all_windows = all_windows
        self.seq_len = session_max_len  # the one in use: capped at the first fit, see _pick_seq_len
        self.seed = seed
        self.threads = threads
        self.pop = DecayedCounts(self.n_items, popularity_half_life_s)
        self.seqs: dict[str, list[int]] = {}  # user -> universe positions, event order, repeats kept
        self.chosen: dict | None = None  # {"dropout", "epochs"} once the grid ran
        self.grid_results: list[dict] = []
        self.fits = 0
        self.fit_seconds = 0.0
        self.grid_seconds = 0.0
        self.last_fit_events = 0
        self._net = None  # the fitted torch backbone (eval mode)
        self._item_embs = None  # torch [n_internal, d]: the backbone's item embeddings
        self._item_out: np.ndarray | None = None  # float32 [n_internal, d] after the item tower
        self._internal: np.ndarray | None = None  # universe position -> internal id (0: unknown)
        self._universe_of: np.ndarray | None = None  # internal id (>= 1) - 1 -> universe position
        # user -> ((fits, sequence length), scores): the last _CACHE_USERS users scored
        self._cache: OrderedDict[str, tuple[tuple[int, int], np.ndarray]] = OrderedDict()

    # -- the interface --------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        item = self.pos.get(event.item_id)
        if item is None:
            return
        self.seqs.setdefault(event.user_id, []).append(item)
        self.pop.add(item, event.event_time)
        self._remember(event.user_id, item)

    def retrain(self, events_so_far: Sequence[Event]) -> None:
        n = len(events_so_far)
        # 10 % slack: with retrain() every 1000 events, a 1,027-event interval is not 2,000
        if self._net is None:
            due = self.total_events is None or n >= 0.9 * self.refit_every
        else:
            due = n - self.last_fit_events >= 0.9 * self.refit_every
        if due and n:
            self.fit(events_so_far)

    def scores(self, user_id: str) -> np.ndarray:
        if self._net is None:
            return self.pop.scores()
        seq = self.seqs.get(user_id)
        key = (self.fits, len(seq) if seq else 0)
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] == key:
            self._cache.move_to_end(user_id)
            return hit[1].copy()
        s = self._score_sequences([seq or []])[0]
        if s is None:  # nothing the model knows: popularity (moves with everyone's events: not cached)
            return self.pop.scores()
        self._cache[user_id] = (key, s)
        if len(self._cache) > _CACHE_USERS:
            self._cache.popitem(last=False)
        return s.copy()

    def config(self) -> dict:
        import rectools

        return {"library": "rectools", "library_version": getattr(rectools, "__version__", "?"),
                "model": "SASRecModel", **self.params, "session_len_used": self.seq_len,
                "item_net": "IdEmbeddingsItemNet (item ids only)",
                "grid": {"dropout": list(self.dropout_grid), "epochs": list(self.epoch_grid),
                         "selected_by": f"ndcg@{_VAL_K} on each user's last event of the first fit's events",
                         "results": self.grid_results},
                "chosen": self.chosen, "seed": self.seed, "threads": self.threads,
                "refit_every_events": self.refit_every, "refit_every_share": self.refit_every_share
                if self.total_events else None, "total_events": self.total_events,
                "fits": self.fits, "fit_seconds": round(self.fit_seconds, 2),
                "grid_seconds": round(self.grid_seconds, 2),
                "fold_in": "next-item scores of the user's current sequence through the fitted network",
                "before_first_fit": "recency-weighted popularity",
                "unfitted_items": "-inf (first seen after the last fit)"}

    # -- fitting --------------------------------------------------------------------------
    def fit(self, events: Sequence[Event]) -> None:
        """Fit on ``events`` now (the grid first, if it has not run yet)."""
        t0 = time.perf_counter()
        users, items = self._columns(events)
        if len(items) == 0 or len(np.unique(users)) == len(users):
            return  # SASRec trains on users with >= 2 events: nothing to learn from yet
        with _fit_context(self.seed, self.threads):
            if self.chosen is None:
                self.seq_len = self._pick_seq_len(users)
                tg = time.perf_counter()
                self.chosen = self._grid(users, items)
                self.grid_seconds += time.perf_counter() - tg
            model = self._new_model(self.chosen["dropout"], self.chosen["epochs"])
            model.fit(self._dataset(users, items))
        self._install(model)
        self.fits += 1
        self.last_fit_events = len(events)
        self._cache.clear()
        self.fit_seconds += time.perf_counter() - t0
        log.info("sasrec fit %d on %d events in %.1f s (%s)", self.fits, len(events),
                 time.perf_counter() - t0, self.chosen)

    def _pick_seq_len(self, users: np.ndarray) -> int:
        """``session_max_len``, capped at the 95th percentile of the users' history lengths
        (rounded up to a multiple of 8, at least 8): a padded position costs as much as a real one."""
        _, counts = np.unique(users, return_counts=True)
        p95 = float(np.percentile(counts, 95)) if len(counts) else 1.0
        return int(min(self.params["session_max_len"], max(8, 8 * math.ceil(p95 / 8))))

    def _columns(self, events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray]:
        users, items = [], []
        for ev in events:
            p = self.pos.get(ev.item_id)
            if p is not None:
                users.append(ev.user_id)
                items.append(p)
        return np.asarray(users, dtype=object), np.asarray(items, dtype=np.int64)

    def _dataset(self, users: np.ndarray, items: np.ndarray):
        import pandas as pd
        from rectools import Columns
        from rectools.dataset import Dataset

        if self.all_windows:  # every window of seq_len + 1 events trains, not only the latest
            total: dict[str, int] = {}
            for u in users:
                total[u] = total.get(u, 0) + 1
            seen: dict[str, int] = {}
            keys = []
            for u in users:
                k = seen.get(u, 0)
                seen[u] = k + 1
                keys.append(f"{u}\x1f{(total[u] - 1 - k) // (self.seq_len + 1)}")
            users = np.asarray(keys, dtype=object)

        # replay order is the time axis: RecTools sorts each user's events by datetime (stably)
        df = pd.DataFrame({Columns.User: users, Columns.Item: items,
                           Columns.Datetime: pd.to_datetime(np.arange(len(items)), unit="s"),
                           Columns.Weight: np.ones(len(items), dtype=np.float32)})
        return Dataset.construct(df)

    def _new_model(self, dropout: float, epochs: int):
        from rectools.models import SASRecModel
        from rectools.models.nn.item_net import IdEmbeddingsItemNet

        p = self.params
        return SASRecModel(
            n_blocks=p["n_blocks"], n_heads=p["n_heads"], n_factors=p["n_factors"], dropout_rate=dropout,
            session_max_len=self.seq_len, loss=p["loss"], n_negatives=p["n_negatives"], lr=p["lr"],
            batch_size=p["batch_size"], epochs=epochs, deterministic=True, dataloader_num_workers=0,
            item_net_block_types=(IdEmbeddingsItemNet,), get_trainer_func=_cpu_trainer,
            get_trainer_func_kwargs={"epochs": int(epochs)}, recommend_torch_device="cpu")

    def _install(self, model) -> None:
        """Keep the fitted backbone and the id maps between universe positions and its ids."""
        import torch

        net = model.torch_model
        net.eval()
        prep = model.data_preparator
        n_extra = prep.n_item_extra_tokens
        external = np.asarray(prep.item_id_map.get_external_sorted_by_internal()[n_extra:], dtype=np.int64)
        internal = np.zeros(self.n_items, dtype=np.int64)
        internal[external] = np.arange(n_extra, n_extra + len(external))
        with torch.no_grad():
            embs = net.item_model.get_all_embeddings()
            out = net.similarity_module.item_tower_forward(embs)
        self._net = net
        self._n_extra = n_extra
        self._item_embs = embs
        self._item_out = out.detach().cpu().numpy().astype(np.float32)
        self._internal = internal
        self._universe_of = external

    def _score_sequences(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray | None]:
        """Universe-length next-item scores for each sequence of universe positions (None for a
        sequence with no item the fitted model knows)."""
        import torch

        L = self.seq_len
        rows: list[np.ndarray] = []
        which: list[int] = []
        for i, seq in enumerate(seqs):
            ids = self._internal[np.asarray(seq[-4 * L:], dtype=np.int64)] if len(seq) else np.empty(0, np.int64)
            ids = ids[ids > 0][-L:]
            if len(ids) == 0 and len(seq) > 4 * L:  # the recent tail was all unknown: look further back
                ids = self._internal[np.asarray(seq, dtype=np.int64)]
                ids = ids[ids > 0][-L:]
            if len(ids):
                row = np.zeros(L, dtype=np.int64)
                row[L - len(ids):] = ids
                rows.append(row)
                which.append(i)
        out: list[np.ndarray | None] = [None] * len(seqs)
        if not rows:
            return out
        with torch.inference_mode(), _torch_threads(self.threads):
            for start in range(0, len(rows), 512):
                x = torch.from_numpy(np.stack(rows[start:start + 512]))
                h = self._net.encode_sessions({"x": x}, self._item_embs)[:, -1, :]
                h = self._net.similarity_module.session_tower_forward(h)
                logits = h.cpu().numpy().astype(np.float32) @ self._item_out.T
                for j, lg in enumerate(logits):
                    s = np.full(self.n_items, -np.inf, dtype=np.float32)
                    s[self._universe_of] = lg[self._n_extra:]
                    out[which[start + j]] = s
        return out

    # -- the grid -------------------------------------------------------------------------
    def _grid(self, users: np.ndarray, items: np.ndarray) -> dict:
        """Pick dropout x epochs on a validation split of (users, items): each user's last event."""
        last: dict[str, int] = {}
        count: dict[str, int] = {}
        for i, u in enumerate(users):
            last[u] = i
            count[u] = count.get(u, 0) + 1
        held = np.zeros(len(items), dtype=bool)
        val: list[tuple[str, int]] = []
        for u, i in last.items():
            if count[u] >= 3:
                held[i] = True
                val.append((u, i))
        if len(val) > _VAL_MAX_USERS:  # evenly spaced, deterministic
            keep = np.linspace(0, len(val) - 1, _VAL_MAX_USERS).astype(int)
            val = [val[k] for k in keep]
        tr_users, tr_items = users[~held], items[~held]
        history: dict[str, list[int]] = {}
        for u, p in zip(tr_users, tr_items):
            history.setdefault(u, []).append(int(p))
        # repeats are unwinnable (the user's items are excluded), as in leave-last-out
        val = [(u, i) for u, i in val if int(items[i]) not in set(history.get(u, ()))]
        if not val:
            self.grid_results = []
            return {"dropout": self.dropout_grid[0], "epochs": self.epoch_grid[len(self.epoch_grid) // 2],
                    "validation_users": 0,
                    "note": "no user with >= 3 events and a new last item: no grid, its middle point"}
        dataset = self._dataset(tr_users, tr_items)
        import torch

        results: list[dict] = []
        for dropout in self.dropout_grid:
            torch.manual_seed(self.seed)
            model = self._new_model(dropout, self.epoch_grid[-1])
            done = 0
            for epochs in self.epoch_grid:
                model.fit_partial(dataset, min_epochs=epochs - done, max_epochs=epochs - done)
                done = epochs
                self._install(model)
                ndcg = self._validation_ndcg(val, history, items)
                results.append({"dropout": dropout, "epochs": epochs, f"val_ndcg@{_VAL_K}": round(ndcg, 6)})
        self.grid_results = results
        best = max(results, key=lambda r: r[f"val_ndcg@{_VAL_K}"])  # first of equals: fewer epochs
        self._net = None
        return {"dropout": best["dropout"], "epochs": best["epochs"], "validation_users": len(val)}

    def _validation_ndcg(self, val: list[tuple[str, int]], history: dict[str, list[int]],
                         items: np.ndarray) -> float:
        if not val:
            return 0.0
        scored = self._score_sequences([history.get(u, []) for u, _ in val])
        total = 0.0
        for (u, i), s in zip(val, scored):
            if s is None:
                continue
            target = int(items[i])
            t = s[target]
            if not np.isfinite(t):
                continue
            s = s.copy()
            s[np.asarray(history[u], dtype=np.int64)] = -np.inf
            rank = 1 + np.count_nonzero(s > t) + np.count_nonzero(s[:target] == t)
            if rank <= _VAL_K:
                total += 1.0 / math.log2(rank + 1.0)
        return total / len(val)
