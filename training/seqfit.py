"""Fitting the sequence encoder (:mod:`training.seqmodel`) on next-item prediction.

* **Sequences.** Each user's events in the order their state keeps them (event time, ties in
  replay order: :class:`inference.user.Sequence`), duplicates by event id dropped, items outside
  the catalogue dropped (the worker cannot read them either). An event whose rating is below
  neutral is marked negative, as the state marks it.
* **Training.** Every position of every non-overlapping ``max_len`` window predicts the next
  item: softmax cross-entropy over the target and ``negatives`` items drawn uniformly for the
  batch (the full softmax on catalogues up to that size). AdamW, one warm-up epoch then a
  cosine decay over ``max_epochs``. Warm-started from the parent version's model (every
  tensor whose name and shape match, id vectors by item id, the parent's text normalisation
  kept), the same schedule runs from the parent's weights (``warm_lr``, ``warm_epochs``), the
  parent itself a candidate at epoch 0.
* **Validation.** Each user's last event (users with >= 3 events whose last item is new to
  them; after a warm start only users with events the parent was not fitted on), ranked among
  all items minus the user's other items, NDCG@10, picks the epoch (early stopping). On small
  data (validation targets >= ``refit_share`` of the training targets) the model is then
  fitted again on every event for that many epochs. :func:`select_config` picks other choices
  (``DEFAULT_GRID``) the same way, at a chain's first fit.

Example::

    fit = fit_sequence(events, item_ids, item_vecs, SequenceConfig(), parent=None)
    fit.model, fit.best_epoch, fit.val_ndcg
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from inference.events import Event
from inference.seen import item_key
from inference.sequence import gap_buckets
from inference.user import UpdateConfig

from .seqmodel import SequenceConfig, SequenceModel

log = logging.getLogger("streamrec.train")

#: What :func:`select_config` tries at a chain's first fit (the rest of the recipe is fixed).
DEFAULT_GRID: dict[str, tuple] = {"dropout": (0.2, 0.5)}


@dataclass
class UserSequences:
    """Users' sequences as model indices (``items``), negative flags and times, oldest first."""

    users: list[str]
    items: list[np.ndarray]
    neg: list[np.ndarray]
    times: list[np.ndarray]


def build_sequences(events: Sequence[Event], pos: Mapping[str, int], update: UpdateConfig | None = None
                    ) -> UserSequences:
    """Per-user sequences of catalogue indices (``pos``: item id -> index >= 1) from events in
    replay order, ordered as the user state orders them (by time, ties in replay order)."""
    update = update or UpdateConfig()
    rows: dict[str, list[tuple[float, int, int, bool]]] = {}
    seen_ids: set[str] = set()
    keys: dict[str, int] = {}
    for ev in events:
        if ev.event_id is not None:
            if ev.event_id in seen_ids:
                continue
            seen_ids.add(ev.event_id)
        p = pos.get(ev.item_id)
        if p is None:
            continue
        k = keys.get(ev.item_id)
        if k is None:
            k = keys[ev.item_id] = item_key(ev.item_id)
        rows.setdefault(ev.user_id, []).append((float(ev.event_time), k, p, update.sign(ev.rating) < 0))
    users = list(rows)
    items, negs, times = [], [], []
    for u in users:
        r = sorted(rows[u], key=lambda x: x[0])  # stable: events of the same time keep replay order
        items.append(np.fromiter((x[2] for x in r), np.int64, len(r)))
        negs.append(np.fromiter((x[3] for x in r), bool, len(r)))
        times.append(np.fromiter((x[0] for x in r), np.float64, len(r)))
    return UserSequences(users, items, negs, times)


def histories(seqs: UserSequences, rows: Sequence[int], L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(idx, neg, gap)``, ``(len(rows), L)`` each: the given users' last ``L`` events."""
    idx = np.zeros((len(rows), L), np.int64)
    neg = np.zeros((len(rows), L), np.float32)
    gap = np.zeros((len(rows), L), np.int64)
    for j, r in enumerate(rows):
        s = seqs.items[r]
        if len(s):
            g = gap_buckets(seqs.times[r][-(L + 1):])[-L:]
            n = min(L, len(s))
            idx[j, L - n:] = s[-n:]
            neg[j, L - n:] = seqs.neg[r][-n:]
            gap[j, L - n:] = g[-n:]
    return idx, neg, gap


def _windows(seqs: UserSequences, L: int) -> tuple[np.ndarray, ...]:
    """Training windows ``inp, neg, gap, tgt`` (``(W, L)`` each, left-padded; ``tgt`` 0: none)."""
    inp, negs, gaps, tgt = [], [], [], []
    for s, n, t in zip(seqs.items, seqs.neg, seqs.times):
        g = gap_buckets(t)
        end = len(s) - 1  # (input, target) pairs
        while end > 0:
            start = max(0, end - L)
            w = end - start
            rows = [np.zeros(L, np.int64), np.zeros(L, np.float32), np.zeros(L, np.int64), np.zeros(L, np.int64)]
            rows[0][L - w:] = s[start:end]
            rows[1][L - w:] = n[start:end]
            rows[2][L - w:] = g[start:end]
            rows[3][L - w:] = s[start + 1:end + 1]
            for out, r in zip((inp, negs, gaps, tgt), rows):
                out.append(r)
            end = start
    if not inp:
        z = np.zeros((0, L), np.int64)
        return z, np.zeros((0, L), np.float32), z, z
    return np.stack(inp), np.stack(negs), np.stack(gaps), np.stack(tgt)


def split_last(events: Sequence[Event], min_events: int = 3) -> tuple[list[Event], list[Event]]:
    """``(context, held)``: each user's last event (users with ``min_events`` or more whose last
    item is new to them) held out, in time order, the rest as context: the validation slice of
    :func:`fit_sequence`, as events (the leave-last-out task)."""
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    for i, ev in enumerate(events):
        last[ev.user_id] = i
        count[ev.user_id] = count.get(ev.user_id, 0) + 1
    before: dict[str, set[str]] = {}
    for i, ev in enumerate(events):
        if last[ev.user_id] != i:
            before.setdefault(ev.user_id, set()).add(ev.item_id)
    held_idx = {i for u, i in last.items()
                if count[u] >= min_events and events[i].item_id not in before.get(u, ())}
    return [ev for i, ev in enumerate(events) if i not in held_idx], [events[i] for i in sorted(held_idx)]


def _split_validation(seqs: UserSequences, only: set[str] | None) -> tuple[UserSequences, list[tuple[int, int]]]:
    """Hold out each user's last event (users with >= 3 events whose last item is new to them):
    ``(training sequences, [(user row, target index)])``."""
    items, negs, times, val = [], [], [], []
    for r, (s, n, t) in enumerate(zip(seqs.items, seqs.neg, seqs.times)):
        if len(s) >= 3 and s[-1] not in set(s[:-1].tolist()) and (only is None or seqs.users[r] in only):
            items.append(s[:-1])
            negs.append(n[:-1])
            times.append(t[:-1])
            val.append((r, int(s[-1])))
        else:
            items.append(s)
            negs.append(n)
            times.append(t)
    return UserSequences(seqs.users, items, negs, times), val


def validation_ndcg(model: SequenceModel, seqs: UserSequences, val: Sequence[tuple[int, int]], k: int) -> float:
    """NDCG@k of each held-out target, ranked among the scorable items minus the user's others."""
    if not val:
        return 0.0
    rows = [r for r, _ in val]
    idx, neg, gap = histories(seqs, rows, model.cfg.max_len)
    U = model.user_vectors(idx, neg, gap)
    M = model.item_matrix()
    unscorable = ~model.scorable()
    total = 0.0
    for b in range(0, len(rows), 1024):
        S = U[b:b + 1024] @ M.T
        S[:, unscorable] = -np.inf
        for j in range(S.shape[0]):
            r, t = val[b + j]
            s = S[j]
            s[seqs.items[r] - 1] = -np.inf
            tv = s[t - 1]
            if np.isfinite(tv):
                rank = 1 + np.count_nonzero(s > tv)
                if rank <= k:
                    total += 1.0 / math.log2(rank + 1.0)
    return total / len(val)


@dataclass
class SequenceFit:
    model: SequenceModel
    history: list[dict]  # per epoch: {"epoch", "loss", "val_ndcg", "seconds"}
    best_epoch: int  # 0: no epoch beat the starting point (the parent)
    val_ndcg: float | None
    val_users: int
    targets: int
    seconds: float
    config: dict = field(default_factory=dict)
    warm_start: dict | None = None
    refit: dict | None = None
    sample: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # for parity
    #: The model as the validation slice chose it, before the refit on every event (the same
    #: object as ``model`` without a refit): what a blend fitted on that slice must use.
    val_model: SequenceModel | None = field(default=None, repr=False)


def _warm_start(model: SequenceModel, parent: SequenceModel) -> dict:
    """Copy every parent tensor whose name and shape match; id vectors by item id."""
    mine, theirs = model.state_dict(), parent.state_dict()
    skipped, rows = [], 0
    with torch.no_grad():
        for name, t in mine.items():
            if name in ("text", "has_text", "id_row", "text_mean", "id_emb.weight"):
                continue
            p = theirs.get(name)
            if p is not None and p.shape == t.shape:
                t.copy_(p)
            else:
                skipped.append(name)
        if model.id_emb is not None and parent.id_emb is not None:
            prow = {i: r for r, i in enumerate(parent.id_items, start=1)}
            pairs = [(prow[i], r) for r, i in enumerate(model.id_items, start=1) if i in prow]
            if pairs:
                src, dst = (torch.as_tensor(x) for x in zip(*pairs))
                model.id_emb.weight[dst] = parent.id_emb.weight[src]
            rows = len(pairs)
    return {"tensors_not_matching": skipped, "id_vectors_copied": rows, "id_vectors_new": len(model.id_items) - rows}


def _new_model(cfg: SequenceConfig, ids: list[str], text: np.ndarray | None, seqs: UserSequences,
               parent: SequenceModel | None) -> tuple[SequenceModel, dict | None]:
    flat = np.concatenate(seqs.items) if seqs.items else np.zeros(0, np.int64)
    counts = np.bincount(flat, minlength=len(ids) + 1)
    id_items = [i for k, i in enumerate(ids) if counts[k + 1] >= cfg.min_count] if cfg.use_id else []
    stats = {}
    if parent is not None and parent.proj is not None and cfg.use_text and parent.text_dim == (
            0 if text is None else text.shape[1]):
        stats = {"text_mean": parent.text_mean.numpy(), "text_scale": parent.text_scale}
    model = SequenceModel(cfg, ids, text if cfg.use_text else None, id_items, **stats)
    warm = _warm_start(model, parent) if parent is not None else None
    return model, warm


def _train(model: SequenceModel, seqs: UserSequences, val: Sequence[tuple[int, int]], cfg: SequenceConfig,
           epochs: int, lr: float, rng: np.random.Generator, t0: float, parent_counts: bool) -> dict:
    """Up to ``epochs`` epochs (early stopping on ``val``, ``max_seconds``); the schedule spans
    ``epochs``. Leaves the best weights in ``model``."""
    scorable = model.scorable()
    scorable_t = torch.from_numpy(np.concatenate([[False], scorable]))
    inp, neg, gap, tgt = _windows(seqs, cfg.max_len)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    pool = np.flatnonzero(scorable) + 1
    full = cfg.negatives >= len(pool)
    history: list[dict] = []
    best_state, best_ndcg, best_epoch, bad = None, -1.0, 0, 0
    if val:
        nd0 = validation_ndcg(model, seqs, val, cfg.k)
        history.append({"epoch": 0, "loss": None, "val_ndcg": round(nd0, 6), "seconds": round(time.perf_counter() - t0, 2)})
        if parent_counts:  # a warm start: the parent as it is is a candidate; an untrained model never is
            best_state, best_ndcg = {k: v.clone() for k, v in model.state_dict().items()}, nd0
    steps_per_epoch = max(1, math.ceil(len(inp) / cfg.batch_size))
    total_steps, step = steps_per_epoch * epochs, 0
    for epoch in range(1, epochs + 1):
        model.train()
        tot = cnt = 0.0
        order = rng.permutation(len(inp))
        for s in range(0, len(inp), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            bi, bn, bg, bt = (torch.from_numpy(a[b]) for a in (inp, neg, gap, tgt))
            keep = (bt > 0) & scorable_t[bt]
            n_pos = int(keep.sum())
            if not n_pos:
                continue
            if full:
                table = model.item_table()
                h = model(bi, bn, bg, last=False, table=table)[keep]
                logits = (h @ table[1:].T).masked_fill(torch.from_numpy(~scorable)[None], -1e9)
                loss = F.cross_entropy(logits, bt[keep] - 1)
            else:  # only the item rows the batch needs: its inputs, its targets, the sampled items
                cand = torch.from_numpy(pool[rng.integers(0, len(pool), size=cfg.negatives)])
                need, inv = torch.unique(torch.cat([bi.reshape(-1), bt.reshape(-1), cand]), return_inverse=True)
                rows = model.item_rows(need)
                nb = bi.numel()
                li, lt, lc = inv[:nb].view_as(bi), inv[nb:2 * nb].view_as(bt)[keep], inv[2 * nb:]
                h = model.encode(rows[li], bn, bg, (bi > 0).to(rows.dtype), last=False)[keep]
                pos_logit = (h * rows[lt]).sum(-1, keepdim=True)
                neg_logit = (h @ rows[lc].T).masked_fill(lc[None] == lt[:, None], -1e9)  # accidental hits
                loss = F.cross_entropy(torch.cat([pos_logit, neg_logit], 1), torch.zeros(n_pos, dtype=torch.long))
            frac = min(1.0, step / total_steps)
            warm = min(1.0, (step + 1) / steps_per_epoch) if not parent_counts else 1.0
            for g in opt.param_groups:
                g["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))
            step += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * n_pos
            cnt += n_pos
        row = {"epoch": epoch, "loss": round(tot / max(cnt, 1.0), 5)}
        if val:
            nd = validation_ndcg(model, seqs, val, cfg.k)
            row["val_ndcg"] = round(nd, 6)
            if nd > best_ndcg:
                best_ndcg, best_epoch, bad = nd, epoch, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
        else:
            best_epoch = epoch
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        log.debug("sequence epoch %s", row)
        if (val and bad >= cfg.patience) or (cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best_epoch": best_epoch, "best_ndcg": best_ndcg if val else None,
            "targets": int(np.count_nonzero(tgt))}


def fit_sequence(events: Sequence[Event], item_ids: Sequence[str], item_vecs: np.ndarray | None,
                 cfg: SequenceConfig | None = None, *, parent: SequenceModel | None = None,
                 update: UpdateConfig | None = None) -> SequenceFit:
    """Fit a :class:`SequenceModel` over the catalogue ``item_ids`` (text: ``item_vecs``, one row
    each, zeros = none) on ``events`` (replay order), warm-started from ``parent``."""
    cfg = cfg or SequenceConfig()
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        ids = list(item_ids)
        text = np.asarray(item_vecs, np.float32) if item_vecs is not None else None
        seqs = build_sequences(events, {i: k + 1 for k, i in enumerate(ids)}, update)
        only = None
        if parent is not None and parent.fitted_until is not None:  # validate on users the parent has not seen last
            only = {ev.user_id for ev in events if ev.event_time > parent.fitted_until}
        train, val = _split_validation(seqs, only)
        lr, epochs = cfg.lr, cfg.max_epochs
        if parent is not None:
            lr, epochs = cfg.warm_lr or cfg.lr, cfg.warm_epochs or cfg.max_epochs
        model, warm = _new_model(cfg, ids, text, train, parent)
        run = _train(model, train, val, cfg, epochs, lr, rng, t0, parent_counts=parent is not None)
        refit = None
        val_model = model
        share = len(val) / max(1, run["targets"])
        if val and run["best_epoch"] > 0 and cfg.refit_share and share >= cfg.refit_share:
            torch.manual_seed(cfg.seed)
            rng = np.random.default_rng(cfg.seed)
            model, warm = _new_model(cfg, ids, text, seqs, parent)
            t1 = time.perf_counter()
            _train(model, seqs, [], cfg, run["best_epoch"], lr, rng, t0, parent_counts=parent is not None)
            refit = {"epochs": run["best_epoch"], "validation_share": round(share, 4),
                     "seconds": round(time.perf_counter() - t1, 2)}
        model.fitted_until = max((float(ev.event_time) for ev in events), default=None)
        val_model.fitted_until = model.fitted_until
        sample_rows = list(range(min(64, len(seqs.users))))
        return SequenceFit(model, run["history"], run["best_epoch"],
                           None if run["best_ndcg"] is None else round(max(run["best_ndcg"], 0.0), 6), len(val),
                           run["targets"], round(time.perf_counter() - t0, 2), asdict(cfg), warm, refit,
                           histories(seqs, sample_rows, cfg.max_len), val_model)
    finally:
        torch.set_rng_state(rng_state)
        torch.set_num_threads(threads)


def select_config(events: Sequence[Event], item_ids: Sequence[str], item_vecs: np.ndarray | None,
                  base: SequenceConfig, grid: Mapping[str, Sequence], *, update: UpdateConfig | None = None,
                  ) -> tuple[SequenceFit, list[dict]]:
    """Fit every combination of ``grid`` over ``base`` and keep the best by validation NDCG.
    Returns ``(best fit, [{"config", "val_ndcg", "best_epoch", "seconds"}])``."""
    keys = list(grid)
    best: SequenceFit | None = None
    table = []
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        over = dict(zip(keys, values))
        fit = fit_sequence(events, item_ids, item_vecs, replace(base, **over), update=update)
        table.append({"config": over, "val_ndcg": fit.val_ndcg, "best_epoch": fit.best_epoch, "seconds": fit.seconds})
        if best is None or (fit.val_ndcg or 0.0) > (best.val_ndcg or 0.0):
            best = fit
    assert best is not None
    return best, table
