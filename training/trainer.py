"""Fit a model version from interactions: adapter, item residuals, head and blend weights.

The training signal is "a user's history -> the next item they chose". Users' histories are
built by replaying the events through :meth:`inference.recommender.Recommender.observe`, the
very update the workers run, so the vectors trained on are the vectors served. Each positive
event gives one pair (the user's encoder-space vector just before the event, the item).

What is fitted, warm-started from the parent version each time:

1. an adapter ``A`` (dim x dim, starts at identity), per-item residuals ``r_i`` and context
   vectors ``c_h`` (items with at least ``min_item_events`` interactions) with a
   sampled-softmax loss over ``s * <u', unit(v_i A + r_i)>``, where the user is
   ``u' = unit(unit(u A) + sum_h a_h c_h / sum_h |a_h|)`` over their recent items ``h`` (``s`` a
   learned scale), each L2-pulled towards the parent's values (zero for a new item);
2. the head ``sigmoid(w . (u' * v') + b)`` by logistic regression against sampled negatives;
3. the blend weights (popularity, head) by a small grid on a validation slice, measured with
   the online ranking code (:meth:`Recommender.score_all`).

:func:`evaluate_slice` is the acceptance test a version has to pass (NDCG@k on the most recent
held-out events, prequentially, against the current version). :class:`PeriodicRetrainer` plugs
all of it into ``streamrec evaluate`` as its retrain hook.

Example::

    result = train_version(events, item_ids, item_vecs, text_vecs, parent=None, cfg=TrainConfig(epochs=3))
    result.params.save("model.npz")
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np

from inference.events import Event
from inference.model import ModelParams, safe_unit
from inference.ranking import Weights
from inference.recommender import Recommender

from .recipe import TrainConfig, TrainResult, split_holdout
from .slices import ReplayState, build_index, catalogue, evaluate_slice, replay_events, training_pairs

__all__ = ["PeriodicRetrainer", "ReplayState", "TrainConfig", "TrainResult", "build_index", "evaluate_slice",
           "replay_events", "split_holdout", "train_version", "training_pairs"]

log = logging.getLogger("streamrec.train")


def history_arrays(histories: Sequence[dict[str, float]], rows: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Histories as padded ``(context row, weight)`` arrays; weights divided by the row's
    total ``|a|`` as in :meth:`ModelParams.history_vector`; padding points at row ``len(rows)``."""
    width = max([sum(1 for h in hist if h in rows) for hist in histories] + [1])
    idx = np.full((len(histories), width), len(rows), np.int32)
    w = np.zeros((len(histories), width), np.float32)
    for n, hist in enumerate(histories):
        k = 0
        for h, a in hist.items():
            r = rows.get(h)
            if r is not None and a == a and a != 0.0:
                idx[n, k], w[n, k] = r, a
                k += 1
        total = np.abs(w[n, :k]).sum()
        if total > 0:
            w[n, :k] /= total
    return idx, w



# ------------------------------------------------------------------------------------------
# fitting
# ------------------------------------------------------------------------------------------


def _fit_space(U: np.ndarray, hist: tuple[np.ndarray, np.ndarray], targets: np.ndarray, V: np.ndarray,
               res_rows: np.ndarray, parent_A: np.ndarray, parent_R: np.ndarray, parent_C: np.ndarray,
               val: tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray], cfg: TrainConfig,
               progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Sampled-softmax fit of (A, R, C); returns the epoch with the best validation loss.

    Per step the cost is the candidates' ``V[cand] @ A`` and the logits (compute-bound); what
    touches every residual and context row is kept to one pass each: the history pull is an
    ``embedding_bag`` (no gathered batch x history x dim copy), the L2 pull's gradient
    ``2 * l2 * (P - P0)`` is added to ``R`` and ``C`` directly instead of being differentiated
    through, and Adam runs fused. MovieLens (9.7k items, ~200 pairs a batch, 2,048 negatives)
    on the busy 2-core bench box: 0.52 s a step before, ~0.04 s now with one thread.
    """
    import torch

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(torch, U, hist, targets, V, res_rows, parent_A, parent_R, parent_C, val, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(torch, U, hist, targets, V, res_rows, parent_A, parent_R, parent_C, val, cfg, progress):
    """:func:`_fit_space`'s body (run with the thread count it set)."""
    from tqdm import tqdm

    g = torch.Generator().manual_seed(cfg.seed)
    Vt = torch.from_numpy(V)
    n_items, dim = V.shape
    A0 = torch.from_numpy(parent_A)
    R0 = torch.from_numpy(parent_R)
    A = torch.nn.Parameter(A0.clone())
    R = torch.nn.Parameter(R0.clone())
    C0 = torch.from_numpy(parent_C)
    C = torch.nn.Parameter(C0.clone())
    n_ctx = len(C0)
    log_s = torch.nn.Parameter(torch.tensor(math.log(20.0)))
    rows = torch.from_numpy(res_rows)  # item row -> residual row (-1: none)
    has_res = rows >= 0
    params = [p for p, on in ((A, cfg.adapter), (R, cfg.residuals), (C, cfg.context), (log_s, True)) if on]
    try:
        opt = torch.optim.Adam(params, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):  # a torch without the fused CPU Adam
        opt = torch.optim.Adam(params, lr=cfg.lr, foreach=True)
    pulls = [(P, P0, 2.0 * l2) for P, P0, l2, on in ((R, R0, cfg.residual_l2, cfg.residuals),
                                                    (C, C0, cfg.context_l2, cfg.context)) if on and l2]

    def item_space(idx: torch.Tensor) -> torch.Tensor:
        x = Vt[idx] @ A
        r = torch.zeros_like(x)
        m = has_res[idx]
        if m.any():
            r[m] = R[rows[idx][m]]
        return torch.nn.functional.normalize(x + r, dim=1)

    def user_space(u: torch.Tensor, h_idx: torch.Tensor, h_w: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(u @ A, dim=1)
        if cfg.context and n_ctx:  # sum_h a_h c_h (padding: row 0 with weight 0)
            x = x + torch.nn.functional.embedding_bag(h_idx, C, per_sample_weights=h_w, mode="sum")
        return torch.nn.functional.normalize(x, dim=1)

    def batch_loss(u: torch.Tensor, h_idx: torch.Tensor, h_w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if n_items <= cfg.negatives:
            cand, labels = torch.arange(n_items), t
        else:
            neg = torch.randint(0, n_items, (cfg.negatives,), generator=g)
            cand, inv = torch.unique(torch.cat([t, neg]), return_inverse=True)
            labels = inv[: len(t)]
        uu = user_space(u, h_idx, h_w)
        logits = log_s.exp() * uu @ item_space(cand).T
        return torch.nn.functional.cross_entropy(logits, labels)

    def bags(idx: np.ndarray) -> torch.Tensor:  # history_arrays pads with row n_ctx; embedding_bag needs a real row
        out = torch.from_numpy(idx).long()
        return torch.where(out >= n_ctx, 0, out)

    Ut, Tt = torch.from_numpy(U), torch.from_numpy(targets)
    Hi, Hw = bags(hist[0]), torch.from_numpy(hist[1])
    Uv, Tv = torch.from_numpy(val[0]), torch.from_numpy(val[2])
    Hvi, Hvw = bags(val[1][0]), torch.from_numpy(val[1][1])
    best = (math.inf, parent_A, parent_R, parent_C, -1)
    curve: list[dict] = []
    n = len(Ut)
    batch = max(16, min(cfg.batch_size, -(-n // cfg.min_steps)))
    bar = tqdm(range(cfg.epochs), desc="training", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for s in range(0, n, batch):
            b = perm[s: s + batch]
            loss = batch_loss(Ut[b], Hi[b], Hw[b], Tt[b])
            # Everything is pulled towards the parent, not towards zero: an item missing from
            # this run's events keeps what earlier runs learned (Adam would otherwise shrink
            # its vectors by about lr per step, from the penalty's gradient alone). The
            # adapter's pull goes through autograd (small); the item vectors' is added below.
            reg = cfg.adapter_l2 * ((A - A0) ** 2).sum()
            opt.zero_grad()
            (loss + reg).backward()
            with torch.no_grad():
                for P, P0, scale in pulls:  # in place: no new (items x dim) tensor per step
                    if P.grad is None:
                        P.grad = (P - P0).mul_(scale)
                    else:
                        P.grad.add_(P, alpha=scale).sub_(P0, alpha=scale)
            opt.step()
            total += float(loss.detach()) * len(b)
        with torch.no_grad():
            val_loss = float(batch_loss(Uv, Hvi, Hvw, Tv)) if len(Uv) else float("nan")
        row = {"epoch": epoch + 1, "loss": round(total / max(n, 1), 5), "val_loss": round(val_loss, 5),
               "scale": round(float(log_s.detach().exp()), 3)}
        curve.append(row)
        log.info("epoch %d/%d: loss %.4f, validation loss %.4f", epoch + 1, cfg.epochs, row["loss"], val_loss)
        bar.set_postfix_str(f"loss={row['loss']:.3f} val={val_loss:.3f}")
        if not len(Uv) or val_loss < best[0]:
            best = (val_loss, A.detach().numpy().copy(), R.detach().numpy().copy(), C.detach().numpy().copy(),
                    epoch + 1)
        elif epoch + 1 - best[4] >= cfg.patience:
            log.info("validation loss has not improved for %d epochs: keeping epoch %d", cfg.patience, best[4])
            break
    bar.close()
    for row in curve:
        row["best"] = row["epoch"] == best[4]
    return best[1].astype(np.float32), best[2].astype(np.float32), best[3].astype(np.float32), curve


def users_in_space(U: np.ndarray, hist: tuple[np.ndarray, np.ndarray], params: ModelParams) -> np.ndarray:
    """:meth:`ModelParams.user_vector` for many pairs at once (``hist`` from :func:`history_arrays`)."""
    from scipy.sparse import csr_matrix

    users = safe_unit(U @ params.adapter) if params.adapter is not None else np.asarray(U, np.float32)
    if params.context is None or not len(U):
        return users
    idx, w = hist
    n_ctx = len(params.residual_ids)
    H = csr_matrix((w.ravel(), (np.repeat(np.arange(len(U)), idx.shape[1]), idx.ravel())), shape=(len(U), n_ctx + 1))
    return safe_unit(users + H[:, :n_ctx] @ params.context)


def _fit_head(targets: np.ndarray, items: np.ndarray, users: np.ndarray,
              cfg: TrainConfig) -> tuple[np.ndarray, float]:
    """Logistic regression of (u' * v') for the chosen item against one random item."""
    rng = np.random.default_rng(cfg.seed)
    neg = rng.integers(0, len(items), len(targets))
    x = np.concatenate([users * items[targets], users * items[neg]])
    y = np.concatenate([np.ones(len(targets)), np.zeros(len(targets))]).astype(np.float32)
    w, b = np.zeros(x.shape[1], np.float32), 0.0
    for _ in range(200):  # plain gradient descent: small, convex, deterministic
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        grad = p - y
        w -= 0.5 * (x.T @ grad / len(y) + 1e-3 * w)
        b -= 0.5 * float(grad.mean())
    return w.astype(np.float32), float(b)


def train_version(events: Sequence[Event], item_ids: Sequence[str], item_vecs: np.ndarray,
                  text_vecs: dict[str, np.ndarray], *, parent: ModelParams | None = None,
                  cfg: TrainConfig | None = None, base_weights: Weights | None = None,
                  progress: bool = False, resume: ReplayState | None = None) -> TrainResult:
    """Fit a new version on ``events`` (in time order), warm-started from ``parent``.

    The last ``cfg.validation`` share of ``events`` picks the best epoch and the blend
    weights; nothing here sees the acceptance slice (the caller holds it back). ``resume``: an
    earlier result's ``replayed`` states, when ``events`` extends that call's events (the
    sequence recipe then replays only the new events; the adapter recipe needs every pair and
    replays all).
    """
    cfg = cfg or TrainConfig()
    if cfg.recipe == "sequence":
        from .seqrecipe import train_sequence_version

        return train_sequence_version(events, item_ids, item_vecs, text_vecs, parent=parent, cfg=cfg,
                                      base_weights=base_weights, progress=progress, resume=resume)
    if cfg.recipe != "adapter":
        raise ValueError(f"unknown training recipe {cfg.recipe!r}: use 'sequence' or 'adapter'")
    if parent is not None and parent.sequence is not None:
        parent = None  # an adapter version does not grow from a sequence version
    t0 = time.perf_counter()
    item_ids = [str(i) for i in item_ids]
    item_vecs = np.asarray(item_vecs, np.float32)
    dim = item_vecs.shape[1]
    index, ids, V = catalogue(item_ids, item_vecs)
    pos = {i: k for k, i in enumerate(ids)}
    cut = int(len(events) * (1.0 - cfg.validation))
    fit_events, val_events = list(events[:cut]), list(events[cut:])
    pairs = training_pairs(events, index, text_vecs, marks=(cut, len(events)))
    for replayed in pairs.replayed.values():
        replayed.index, replayed.item_ids, replayed.item_vecs = index, item_ids, item_vecs
    U, items, where = pairs.users, pairs.items, pairs.where
    n_fit = int(np.sum(where < cut))  # pairs come in event order
    targets = np.asarray([pos[i] for i in items], np.int64)
    # every interaction counts (an item that is only ever a user's first one still needs a
    # context vector: it is in the history of their next choice)
    counts = Counter(e.item_id for e in fit_events if e.item_id in pos)
    res_ids = sorted(i for i, c in counts.items() if c >= cfg.min_item_events)
    parent = parent if parent is not None and parent.dim == dim else None
    parent_A = parent.adapter if parent is not None and parent.adapter is not None else np.eye(dim, dtype=np.float32)
    parent_res = parent.residual_map() if parent is not None else {}
    res_ids = sorted(set(res_ids) | {i for i in parent_res if i in pos})
    res_rows = np.full(len(ids), -1, np.int64)
    R0 = np.zeros((len(res_ids), dim), np.float32)
    C0 = np.zeros((len(res_ids), dim), np.float32)
    parent_ctx = parent.context_map() if parent is not None else {}
    for k, i in enumerate(res_ids):
        res_rows[pos[i]] = k
        if i in parent_res:
            R0[k] = parent_res[i]
        if i in parent_ctx:
            C0[k] = parent_ctx[i]
    base = base_weights or (parent.weights if parent is not None else Weights())
    need = max(10, cfg.min_pairs)
    if n_fit < need or len(ids) < 2:
        log.info("only %d training pairs (need %d): nothing fitted, the current version keeps serving", n_fit, need)
        params = parent or ModelParams.identity(dim, base)
        return TrainResult(params, [], {"note": "too few pairs", "need": need}, n_fit, time.perf_counter() - t0,
                           asdict(cfg), pairs.replayed.get(len(events)))
    hidx, hw = history_arrays(pairs.histories, {i: k for k, i in enumerate(res_ids)})
    fits = []
    for l2 in cfg.item_l2_grid or (None,):
        run = cfg if l2 is None else replace(cfg, residual_l2=l2, context_l2=l2)
        A, R, C, curve = _fit_space(U[:n_fit], (hidx[:n_fit], hw[:n_fit]), targets[:n_fit], V, res_rows, parent_A,
                                    R0, C0, (U[n_fit:], (hidx[n_fit:], hw[n_fit:]), targets[n_fit:]), run, progress)
        best_val = min((row["val_loss"] for row in curve if row["val_loss"] == row["val_loss"]), default=math.inf)
        fits.append((best_val, l2, A, R, C, curve))
    best_val, item_l2, A, R, C, curve = min(fits, key=lambda f: f[0])
    if len(fits) > 1:
        log.info("item L2 %s kept (validation loss %s)", item_l2,
                 ", ".join(f"{f[1]}: {f[0]:.4f}" for f in fits))
    params = ModelParams(dim, A, list(res_ids), R, weights=replace(base), context=C if cfg.context else None)
    head_w, head_b = _fit_head(targets[:n_fit], params.item_vectors(ids, V, params.residual_map()),
                               users_in_space(U[:n_fit], (hidx[:n_fit], hw[:n_fit]), params), cfg)
    params.head_w, params.head_b = head_w, head_b
    # blend weights: the grid, scored with the online ranking code on the validation tail
    grid = [replace(base, popularity=p, head=h) for p in cfg.popularity_grid for h in cfg.head_grid]
    candidates = {f"pop={w.popularity},head={w.head}": replace(params, weights=w) for w in grid}
    scores = evaluate_slice(fit_events, val_events, item_ids, item_vecs, text_vecs, candidates, k=cfg.k,
                            start=pairs.replayed.get(cut))
    best = max(candidates, key=lambda name: (scores[name]["ndcg"], -grid[list(candidates).index(name)].head))
    chosen = candidates[best] if scores[best]["events"] else params
    validation = {"chosen": asdict(chosen.weights), "grid": scores, "item_l2": item_l2,
                  "item_l2_val_loss": {str(f[1]): round(f[0], 5) for f in fits}}
    return TrainResult(chosen, curve, validation, n_fit, time.perf_counter() - t0, asdict(cfg),
                       pairs.replayed.get(len(events)))



# ------------------------------------------------------------------------------------------
# the evaluation harness's retrain hook
# ------------------------------------------------------------------------------------------


class PeriodicRetrainer:
    """``streamrec evaluate``'s retrain hook: what the trainer does, inside the replay.

    At every retrain point: take the events since the last point plus a bounded random sample
    of older ones, hold the most recent share back, train warm-started from the current
    version, and switch the recommender to it only if it is at least as good on the held-back
    slice. ``history`` keeps every attempt's numbers.
    """

    def __init__(self, cfg: TrainConfig | None = None, *, window: int = 20_000, replay_sample: int = 10_000,
                 every: int = 0, first: int = 0, progress: bool = False) -> None:
        self.cfg = cfg or TrainConfig()
        self.window = window
        self.every = every  # train only once this many events came since the last time (0: at every call)
        #: With ``first``: the first training once this many events came, then each time the
        #: events have doubled since the last one, until ``every`` is the shorter wait (an
        #: early version, and fresh ones while the data is small); 0: ``every`` throughout.
        self.first = first
        self._last = 0
        self._mark: Event | None = None  # the last event of the replay at the last training
        #: the states after the last training's events: the next one replays only the new events
        self._replayed: ReplayState | None = None
        self.replay_sample = replay_sample
        self.progress = progress
        self.history: list[dict] = []
        self.skipped: list[dict] = []  # retrain points with too few pairs: nothing trained, nothing measured
        self._rng = random.Random(self.cfg.seed)

    def variant(self, *, validation_slice: str | None = None, **sequence: object) -> PeriodicRetrainer:
        """A new retrainer like this one whose sequence encoder differs by ``sequence`` (e.g.
        ``use_id=False``: the text-only ablation), or that validates on another slice."""
        cfg = replace(self.cfg, sequence=replace(self.cfg.sequence, **sequence))
        if validation_slice is not None:
            cfg = replace(cfg, validation_slice=validation_slice)
        return PeriodicRetrainer(cfg, window=self.window, replay_sample=self.replay_sample, every=self.every,
                                 first=self.first, progress=self.progress)

    def __call__(self, rec: Recommender, events_so_far: Sequence[Event],
                 text_vecs: dict[str, np.ndarray] | None = None) -> None:
        n = len(events_so_far)
        # A new replay (e.g. the offline protocol's training part after the stream): shorter than
        # the last call, or not the same events up to where the last training stopped.
        if n < self._last or (self._last and events_so_far[self._last - 1] is not self._mark):
            self._last = 0
        wait = min(self.every or self.first, max(self.first, self._last)) if self.first else self.every
        if wait and n - self._last < wait:
            return
        self._last, self._mark = n, events_so_far[n - 1] if n else None
        recent = list(events_so_far[-self.window:])
        older = events_so_far[: max(0, len(events_so_far) - self.window)]
        if self.cfg.recipe == "sequence":
            older = []  # a sequence model learns from users' contiguous histories: the window only
        sample = self._rng.sample(list(older), min(self.replay_sample, len(older))) if older else []
        sample.sort(key=lambda e: e.event_time)
        events = sample + recent
        if self.cfg.validation_slice == "last":  # every event trains; each user's last one also measures
            from .seqfit import split_last

            train = events
            _, held = split_last(events)
        else:
            train, held = split_holdout(events, self.cfg)
        ids = rec.index.ids()
        vecs = np.stack([rec.index.vector(i) for i in ids]) if ids else np.zeros((0, rec.dim), np.float32)
        tv = text_vecs or {}
        parent = rec.params
        result = train_version(train, ids, vecs, tv, parent=parent, cfg=self.cfg, base_weights=rec.config.weights,
                               progress=self.progress, resume=self._replayed)
        self._replayed = result.replayed
        if result.too_few_pairs:
            self.skipped.append({"at_event": len(events_so_far), "pairs": result.pairs})
            return
        if self.cfg.validation_slice == "last":
            context, held = split_last(events)
            scores = evaluate_slice(context, held, ids, vecs, tv, {"candidate": result.params, "current": parent},
                                    k=self.cfg.k, config=rec.config)
        else:
            scores = evaluate_slice(train, held, ids, vecs, tv, {"candidate": result.params, "current": parent},
                                    k=self.cfg.k, config=rec.config, start=result.replayed)
        accepted = scores["candidate"]["ndcg"] >= scores["current"]["ndcg"]
        version = f"v{len([h for h in self.history if h['accepted']]) + 1}"
        self.history.append({"at_event": len(events_so_far), "version": version if accepted else None,
                             "accepted": accepted, "pairs": result.pairs, "seconds": round(result.seconds, 2),
                             "candidate": scores["candidate"], "current": scores["current"],
                             "weights": result.validation.get("chosen"), "item_l2": result.validation.get("item_l2"),
                             "replay_resumed_at": result.replayed.resumed_from if result.replayed else 0})
        log.info("retrain at event %d: candidate NDCG@%d %.4f vs current %.4f on %d held-out events: %s",
                 len(events_so_far), self.cfg.k, scores["candidate"]["ndcg"], scores["current"]["ndcg"],
                 scores["candidate"]["events"], f"accepted as {version}" if accepted else "rejected")
        if accepted:
            rec.use_model(result.params, version)
