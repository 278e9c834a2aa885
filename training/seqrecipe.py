"""The sequence recipe: one trained version = a sequence encoder plus its blend weights.

:func:`train_sequence_version` is what :func:`training.trainer.train_version` runs for
``TrainConfig.recipe == "sequence"`` (the default):

1. the events are split: with ``validation_slice="tail"`` (the streaming task) the newest
   ``validation`` share (at most ``max_validation_events``) is held back and the rest trains
   the encoder; with ``"last"`` (the leave-last-out task) every event trains it and each
   user's last event is the slice (the fit holds those out itself to pick its epoch). The fit
   (:func:`training.seqfit.fit_sequence`) is warm-started from the parent version's encoder; a
   chain's first fit also picks ``sequence_grid``'s choices;
2. the encoder is exported to ONNX and checked against torch (:func:`training.seqmodel.to_params`:
   a difference over ``parity_tolerance`` refuses the version, the current one keeps serving);
3. the blend weights -- of the sequence score, the user's text-rolling vector (``text``), item
   co-occurrence with the user's recent items (``cooccurrence``) and popularity -- are fitted
   on the slice, replayed test-then-train through the online ranking code
   (:func:`training.trainer.evaluate_slice`): :func:`fit_blend`.

Example::

    result = train_sequence_version(events, item_ids, item_vecs, text_vecs, parent=None, cfg=TrainConfig())
    result.params.sequence.meta["parity_max_abs_diff"]
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np

from inference.events import Event
from inference.model import ModelParams
from inference.ranking import Weights

from .recipe import TrainResult
from .seqfit import build_sequences, fit_sequence, select_config, split_last
from .seqmodel import ParityError, from_params, to_params
from .slices import ReplayState, catalogue, evaluate_slice, replay_marks

log = logging.getLogger("streamrec.train")


def train_sequence_version(events: Sequence[Event], item_ids: Sequence[str], item_vecs: np.ndarray,
                           text_vecs: dict[str, np.ndarray], *, parent: ModelParams | None, cfg,
                           base_weights: Weights | None = None, progress: bool = False,
                           resume: ReplayState | None = None):
    """Fit a sequence version on ``events`` (time order); ``cfg`` is a ``TrainConfig``. Returns a
    ``TrainResult`` (``pairs``: the next-item targets trained on; ``replayed``: the states after
    ``events``, which a later call on a longer list starting with these events takes as
    ``resume`` to replay only the new ones)."""
    t0 = time.perf_counter()
    item_ids = [str(i) for i in item_ids]
    item_vecs = np.asarray(item_vecs, np.float32)
    dim = item_vecs.shape[1]
    index, ids, V = catalogue(item_ids, item_vecs)
    if cfg.validation_slice == "last":  # the leave-last-out task: each user's last event picks the blend
        cut = len(events)
        fit_events = list(events)  # the fit holds each user's last event out itself (and refits on small data)
        blend_context, blend_events = split_last(events)
        blend_events = blend_events[-cfg.max_validation_events:]
    else:  # the streaming task: the newest events pick the blend
        cut = len(events) - min(int(len(events) * cfg.validation), cfg.max_validation_events)
        fit_events = list(events[:cut])
        blend_context, blend_events = fit_events, list(events[cut:])
    # one replay of the events with the workers' update: states where the blend slice and the
    # acceptance slice start
    replayed = replay_marks(events, item_ids, item_vecs, text_vecs, (cut, len(events)), index=index, resume=resume)
    parent_seq = parent.sequence if parent is not None and parent.dim == dim else None
    scfg = replace(cfg.sequence, seed=cfg.seed, threads=cfg.threads or cfg.sequence.threads)
    warm = from_params(parent_seq) if parent_seq is not None else None
    if warm is not None and warm.cfg.inputs != scfg.inputs:
        warm = None  # another ablation: nothing to carry over
    if warm is not None:  # a chain keeps its first fit's choices
        scfg = replace(scfg, **{k: getattr(warm.cfg, k) for k in cfg.sequence_grid if hasattr(warm.cfg, k)})
    selection = None
    base = base_weights or Weights()
    need = max(10, cfg.min_pairs)
    targets = sum(len(s) - 1 for s in build_sequences(fit_events, {i: k + 1 for k, i in enumerate(ids)}).items)
    if targets < need or len(ids) < 2:
        log.info("only %d training targets (need %d): nothing fitted, the current version keeps serving", targets, need)
        return TrainResult(parent or ModelParams.identity(dim, base), [], {"note": "too few pairs", "need": need},
                           targets, time.perf_counter() - t0, asdict(cfg), replayed.get(len(events)))
    if warm is None and cfg.sequence_grid:
        fit, selection = select_config(fit_events, ids, V, scfg, cfg.sequence_grid)
    else:
        fit = fit_sequence(fit_events, ids, V, scfg, parent=warm)
    try:
        meta = {"best_epoch": fit.best_epoch, "val_ndcg": fit.val_ndcg, "inputs": scfg.inputs}
        seq = to_params(fit.model, *fit.sample, meta=meta, tolerance=cfg.parity_tolerance)
        # the blend is fitted with the model its slice did not train (the one before a refit)
        val_seq = seq if fit.val_model is fit.model else to_params(fit.val_model, *fit.sample, meta=meta,
                                                                   tolerance=cfg.parity_tolerance)
    except ParityError as exc:
        log.error("%s", exc)
        params = parent or ModelParams.identity(dim, base)
        return TrainResult(params, fit.history, {"note": "parity check failed", "error": str(exc)}, fit.targets,
                           time.perf_counter() - t0, asdict(cfg), replayed.get(len(events)))
    start = replayed.get(cut) if cfg.validation_slice != "last" else None
    score_if = _new_users_first(fit_events, blend_events) if cfg.validation_slice != "last" else None
    fitted, blend = fit_blend(blend_context, blend_events, item_ids, item_vecs, text_vecs, val_seq, dim, cfg,
                              start=start, score_if=score_if)
    # the fit minimises cross-entropy over candidates; NDCG@k on the same slice has the last word
    # among it and its neighbours (each part's weight halved, doubled, or the part left out)
    near = _neighbours(fitted)
    scores = evaluate_slice(blend_context, blend_events, item_ids, item_vecs, text_vecs,
                            {_name(w): ModelParams(dim, weights=w, sequence=val_seq) for w in near}, k=cfg.k,
                            start=start, score_if=score_if)
    weights = max(near, key=lambda w: (scores[_name(w)]["ndcg"], w == fitted))
    blend["fitted"] = asdict(fitted)
    blend["ndcg_on_slice"] = {n: v["ndcg"] for n, v in scores.items()}
    chosen = ModelParams(dim, weights=weights, sequence=seq)
    seq.text_weight = weights.text
    best = _name(weights)
    validation = {"chosen": asdict(weights), "blend": blend, "sequence_fit": {
        "best_epoch": fit.best_epoch, "val_ndcg": fit.val_ndcg, "val_users": fit.val_users, "seconds": fit.seconds,
        "warm_start": fit.warm_start, "refit": fit.refit, "selection": selection,
        "config": fit.config, "parity_max_abs_diff": seq.meta["parity_max_abs_diff"]}}
    log.info("sequence version: %d targets, epoch %d (validation NDCG %.4f), blend %s, %.1f s", fit.targets,
             fit.best_epoch, fit.val_ndcg or 0.0, best, time.perf_counter() - t0)
    return TrainResult(chosen, fit.history, validation, fit.targets, time.perf_counter() - t0, asdict(cfg),
                       replayed.get(len(events)))


def _new_users_first(fit_events: Sequence[Event], tail: Sequence[Event], least: float = 0.25):
    """Which tail events to fit the blend on: those of users the fit never saw, when they are
    at least ``least`` of the tail (else None: all). A version serves mostly such users
    (MovieLens: 70-96 % of each tenth of the stream comes from users with no earlier event),
    while the users right after the fit's cut are mostly the ones active just before it, whose
    habits the encoder has just learned: on them the sequence score looks better than it will
    be, and the blend would lean on it too much."""
    known = {e.user_id for e in fit_events}
    new = sum(1 for e in tail if e.user_id not in known)
    return (lambda e: e.user_id not in known) if new >= least * len(tail) else None


def _neighbours(w: Weights) -> list[Weights]:
    """``w`` and the blends one step from it: each part's weight halved or doubled, each part
    left out (co-occurrence and popularity alone among them)."""
    out = [w]
    for part in ("similarity", "text", "cooccurrence", "popularity"):
        v = getattr(w, part)
        for x in ((v * 0.5, v * 2.0, 0.0) if v else ()):
            out.append(replace(w, **{part: round(x, 6)}))
    if w.cooccurrence:
        out.append(replace(w, similarity=0.0, text=0.0))
    return [x for k, x in enumerate(out) if x not in out[:k] and (x.similarity or x.text or x.cooccurrence)]


def _name(w: Weights) -> str:
    return (f"sim={w.similarity:.3g},text={w.text:.3g},co={w.cooccurrence:.3g},pop={w.popularity:.3g}")


#: The parts a sequence version blends, in the order of the fitted weights.
PARTS = ("similarity", "text", "cooccurrence", "popularity")


def fit_blend(context: Sequence[Event], held: Sequence[Event], item_ids: Sequence[str], item_vecs: np.ndarray,
              text_vecs: dict[str, np.ndarray], seq, dim: int, cfg, *, start=None, score_if=None,
              ) -> tuple[Weights, dict]:
    """The blend weights of :data:`PARTS` (non-negative), fitted on ``held`` replayed
    test-then-train after ``context`` with the online ranking code: each scored event's item
    against candidates drawn from the user's eligible items (the top ``blend_candidates`` of
    every part, and as many at random), softmax cross-entropy, a few hundred Adam steps. A
    learned blend instead of a grid: no edge to hit, and the parts' scales (a logit, cosines,
    counts) need no guessing. Returns the weights and what the fit saw."""
    import torch

    rng = np.random.default_rng(cfg.seed)
    feats: list[np.ndarray] = []
    K = cfg.blend_candidates

    def collect(model, reqs, targets) -> None:
        layout = model.ranker.index.version
        parts = model.ranker.part_matrices([r.user for r in reqs],
                                           popularity=[r.popularity if r.layout == layout else None for r in reqs],
                                           texts=[r.text for r in reqs], cooc=[r.cooc for r in reqs])
        P = np.stack([parts.get(p, np.zeros_like(parts["popularity"])) for p in PARTS], axis=-1)  # (B, n, parts)
        ok = np.ones(P.shape[:2], bool)
        ok[:, ~model.ranker.index.alive] = False
        drops = [model.ranker.index.mask_rows(r.exclude) for r in reqs]
        for i, d in enumerate(drops):
            if d.size:
                ok[i, d] = False
        for i, t in enumerate(targets.tolist()):
            if not ok[i, t]:
                continue
            cand = np.flatnonzero(ok[i])
            cand = cand[cand != t]
            pick = [rng.choice(cand, size=min(K, cand.size), replace=False)]
            for j in range(P.shape[2]):
                col = P[i, cand, j]
                if np.any(col):
                    pick.append(cand[np.argpartition(-col, min(K, cand.size) - 1)[:K]])
            rows = np.unique(np.concatenate(pick))
            feats.append(np.concatenate([P[i, [t]], P[i, rows]]))  # the target first

    evaluate_slice(context, held, item_ids, item_vecs, text_vecs,
                   {"blend": ModelParams(dim, weights=Weights(similarity=1.0, popularity=1.0, head=0.0, text=1.0,
                                                              cooccurrence=1.0), sequence=seq)},
                   k=cfg.k, start=start, collect=collect, score_if=score_if)
    if not feats:
        return Weights(similarity=1.0, popularity=0.0, head=0.0), {"events": 0, "note": "nothing to fit the blend on"}
    width = max(len(f) for f in feats)
    X = np.zeros((len(feats), width, len(PARTS)), np.float32)
    valid = np.zeros((len(feats), width), bool)
    for i, f in enumerate(feats):
        X[i, : len(f)] = f
        valid[i, : len(f)] = True
    scale = np.maximum(np.abs(X[valid]).std(axis=0), 1e-6)  # fit on comparable scales
    Xt = torch.from_numpy(X / scale)
    mask = torch.from_numpy(~valid)
    theta = torch.zeros(len(PARTS), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(cfg.blend_steps):
        w = torch.nn.functional.softplus(theta)
        logits = (Xt @ w).masked_fill(mask, -1e9)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(X), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = (torch.nn.functional.softplus(theta).detach().numpy() / scale).astype(float)
    w = w / max(w[0], 1e-12) if w[0] > 1e-3 * w.max() else w / w.max()  # the sequence score at 1 when it counts
    w[w < 1e-3 * w.max()] = 0.0
    weights = Weights(similarity=round(float(w[0]), 6), popularity=round(float(w[3]), 6), head=0.0,
                      text=round(float(w[1]), 6), cooccurrence=round(float(w[2]), 6))
    with torch.no_grad():
        s = (torch.from_numpy(X) @ torch.from_numpy(w.astype(np.float32))).masked_fill(mask, -np.inf).numpy()
    rank = 1 + np.count_nonzero(s[:, 1:] > s[:, :1], axis=1)
    ndcg = float(np.mean(np.where(rank <= cfg.k, 1.0 / np.log2(rank + 1.0), 0.0)))
    return weights, {"events": len(feats), "new_users_only": score_if is not None,
                     "candidates": int(valid.sum() / len(feats)), "loss": round(float(loss.detach()), 5),
                     f"candidate_ndcg@{cfg.k}": round(ndcg, 5), "parts": list(PARTS)}
