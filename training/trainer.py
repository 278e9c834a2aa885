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

import copy
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from inference.events import Event
from inference.cooccur import Cooccurrence
from inference.index import ItemIndex
from inference.model import ModelParams, safe_unit
from inference.ranking import Popularity, Weights
from inference.recommender import ActiveModel, Recommender, RecommenderConfig
from inference.user import UpdateConfig, UserState
from inference.vectors import top_k

from .seqfit import DEFAULT_GRID
from .seqmodel import SequenceConfig

log = logging.getLogger("streamrec.train")


@dataclass
class TrainConfig:
    """Plain training knobs (all recorded in each version's manifest)."""

    #: "sequence" (default): a sequence encoder over the user's recent items with the
    #: text-rolling vector and popularity blended in (:mod:`training.seqrecipe`); "adapter":
    #: the earlier recipe, an adapter, item residuals and context vectors over the text vectors.
    recipe: str = "sequence"
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    #: Choices a sequence chain's first fit picks on its validation slice (later fits keep them).
    sequence_grid: dict = field(default_factory=lambda: dict(DEFAULT_GRID))
    #: A sequence version's blend (sequence score, text-rolling part, item co-occurrence,
    #: popularity) is fitted on at most ``max_validation_events`` of the validation tail,
    #: each event's item against ``blend_candidates`` top items of every part and as many at
    #: random, for ``blend_steps`` optimiser steps (:func:`training.seqrecipe.fit_blend`).
    max_validation_events: int = 2000
    #: What a sequence version's blend is picked on, and the acceptance test run on: "tail",
    #: the newest events (the streaming task: what ``streamrec train`` serves), or "last",
    #: each user's last event (the leave-last-out task; ``streamrec evaluate``'s offline refit).
    validation_slice: str = "tail"
    blend_candidates: int = 30
    blend_steps: int = 300
    #: Largest difference (max abs, user vectors) between the exported ONNX encoder and torch;
    #: a version over it is refused (the current one keeps serving).
    parity_tolerance: float = 1e-4
    epochs: int = 12
    patience: int = 2  # stop after this many epochs without a better validation loss
    batch_size: int = 256
    #: Fewest optimiser steps per epoch: a small retrain (a few hundred pairs) uses smaller
    #: batches rather than one or two steps per epoch (down to 16 pairs a batch).
    min_steps: int = 16
    lr: float = 1e-3
    adapter: bool = True  # fit the dim x dim adapter (else identity)
    residuals: bool = True  # fit per-item residuals
    context: bool = True  # fit per-item context vectors (a user's recent items pull the user)
    negatives: int = 2048  # sampled softmax candidates per batch (all items when the catalogue is smaller)
    min_item_events: int = 2  # items with fewer interactions get no residual
    #: Fewest training pairs a version is fitted on; with fewer, no version is made and the
    #: current one (the encoder alone at first) keeps serving. Every later version is
    #: warm-started from the first, so it should not be fitted on a handful of pairs. Musical
    #: Instruments, streaming NDCG@10 over the encoder alone: first version at event 250 on 90
    #: pairs: +19.5 %; from 300 pairs on (first accepted at event 1,500, 727 pairs): +21.2 %
    #: (the same run with 200 or 500; seeds 1 and 2: +20.1 / +19.9 %, was +19.6 / +19.2 %).
    min_pairs: int = 300
    adapter_l2: float = 1e-2  # pull towards the parent's adapter (identity for the first version)
    residual_l2: float = 1e-3
    context_l2: float = 1e-3
    #: Item-vector L2 strengths tried (residuals and context alike); the fit with the lowest
    #: validation loss is kept, each value costing one more fit. With (1e-3, 1e-2) the
    #: validation slice chose 1e-2 in 47 of 51 MovieLens retrains and 36 of 40 on Musical
    #: Instruments, so one value is the default: half the training time, the same accuracy
    #: (MovieLens, first 20,000 events: streaming NDCG@10 0.0537 vs 0.0535, retraining 32 s vs
    #: 56 s). Empty: ``residual_l2``/``context_l2`` only.
    item_l2_grid: tuple[float, ...] = (1e-2,)
    validation: float = 0.1  # tail share of the training events used to pick epochs and weights
    holdout: float = 0.1  # most recent share of all events: the acceptance slice (never trained on)
    min_holdout: int = 50
    #: At most this many events in the acceptance slice: on a long window 10 % is more than a
    #: verdict needs, and every event held back is one the version does not learn from.
    max_holdout: int = 2000
    #: Popularity weights tried for the blend. The lowest is a floor: the validation slice
    #: (events just after the training data) always preferred the least popularity on offer,
    #: but a version is served while it ages and popularity is the part that stays current.
    #: Musical Instruments, streaming NDCG@10 with retraining: grid from 0.0: +14.7 % over the
    #: encoder alone; from 0.25: +18.8 %; from 0.2: +19.5 % (the floor was chosen ~90 % of the time).
    popularity_grid: tuple[float, ...] = (0.2, 0.3, 0.5, 1.0)
    head_grid: tuple[float, ...] = (0.0, 0.25)
    k: int = 10
    seed: int = 0
    #: torch threads while fitting (None: torch's default, one per core). ``streamrec
    #: evaluate`` uses 1: on the 2-core bench box, busy, a MovieLens retrain took 17-26 s with
    #: one thread and 74-102 s with two (the same weights, bit for bit).
    threads: int | None = None


@dataclass
class TrainResult:
    params: ModelParams
    curve: list[dict]  # per epoch: {"epoch", "loss", "val_loss"}
    validation: dict  # chosen weights and the grid's NDCG
    pairs: int
    seconds: float
    config: dict = field(default_factory=dict)
    #: User states and popularity after replaying all the events trained on: where the
    #: acceptance test (:func:`evaluate_slice` on the held-back events) starts from.
    replayed: ReplayState | None = field(default=None, repr=False, compare=False)

    @property
    def too_few_pairs(self) -> bool:
        """Nothing was fitted (fewer pairs than ``TrainConfig.min_pairs``): ``params`` is the parent."""
        return self.validation.get("note") == "too few pairs"


# ------------------------------------------------------------------------------------------
# replay: the online update, producing training pairs
# ------------------------------------------------------------------------------------------


def build_index(item_ids: Sequence[str], item_vecs: np.ndarray) -> ItemIndex:
    index = ItemIndex(item_vecs.shape[1], capacity=max(1024, len(item_ids)))
    keep = [k for k in range(len(item_ids)) if np.any(item_vecs[k])]
    if keep:
        index.upsert_many([item_ids[k] for k in keep], item_vecs[keep])
    return index


def replay_events(rec: Recommender, states: dict[str, UserState], events: Sequence[Event],
                  text_vecs: dict[str, np.ndarray],
                  on_event: Callable[[Event, UserState], None] | None = None) -> None:
    """Apply ``events`` in order with the workers' update (duplicates by event id skipped);
    ``on_event(event, state_before)`` is called first for each accepted event."""
    for ev in events:
        state = states.get(ev.user_id)
        if state is None:
            state = states[ev.user_id] = rec.new_state()
        if state.has_seen(ev.event_id):
            continue
        if on_event is not None:
            on_event(ev, state)
        tv = text_vecs.get(ev.event_id) if ev.event_id is not None else None
        rec.observe(state, ev, tv)


@dataclass
class ReplayState:
    """User states and item popularity after replaying some events with the workers' update
    (``update``, popularity half-life ``half_life_s``): a replay that needs them again starts
    from a copy (:meth:`restore`) instead of replaying the same events once more."""

    states: dict[str, UserState]
    popularity: Popularity
    update: UpdateConfig
    half_life_s: float
    cooccurrence: Cooccurrence | None = None
    #: the index the events were replayed over, and the ids and vectors it was built from
    index: ItemIndex | None = field(default=None, repr=False)
    item_ids: list[str] | None = field(default=None, repr=False)
    item_vecs: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def take(cls, rec: Recommender, states: dict[str, UserState]) -> ReplayState:
        return cls(copy.deepcopy(states), Popularity.from_state(rec.popularity.state()),
                   replace(rec.config.update), rec.popularity.half_life_s, rec.cooccurrence.copy())

    def fits(self, config: RecommenderConfig) -> bool:
        """Whether a replay under ``config`` would have built these very states."""
        return self.update == config.update and self.half_life_s == config.popularity_half_life_s

    def restore(self) -> tuple[dict[str, UserState], Popularity, Cooccurrence | None]:
        co = self.cooccurrence.copy() if self.cooccurrence is not None else None
        return copy.deepcopy(self.states), Popularity.from_state(self.popularity.state()), co

    def index_for(self, item_ids: list[str], item_vecs: np.ndarray) -> ItemIndex | None:
        """The replay's index if it holds exactly these items and vectors (nothing changes an
        index while a slice is replayed, so it can serve again), else None."""
        if self.index is None or self.item_ids != item_ids:
            return None
        same = self.item_vecs is item_vecs or (self.item_vecs.shape == item_vecs.shape
                                               and np.array_equal(self.item_vecs, item_vecs))
        return self.index if same else None


@dataclass
class Pairs:
    """Training pairs: the user just before each positive event, and the event's item."""

    users: np.ndarray  # (n, dim) encoder-space unit vectors
    items: list[str]
    where: np.ndarray  # (n,) the event's position in the events given
    histories: list[dict[str, float]]  # the user's recent items and signed weights then
    #: position in the events -> the states and popularity after replaying the events before it
    replayed: dict[int, ReplayState] = field(default_factory=dict)


def training_pairs(events: Sequence[Event], index: ItemIndex, text_vecs: dict[str, np.ndarray],
                   update=None, marks: Sequence[int] = ()) -> Pairs:
    """The pairs of ``events`` for users with history, replayed with the workers' update;
    ``marks``: positions at which to keep the replay's state (``Pairs.replayed``)."""
    rec = Recommender(index, config=RecommenderConfig(update=update) if update else None)
    users: list[np.ndarray] = []
    items: list[str] = []
    where: list[int] = []
    histories: list[dict[str, float]] = []
    position = {id(ev): k for k, ev in enumerate(events)}

    def take(ev: Event, state: UserState) -> None:
        if ev.item_id not in index or rec.config.update.sign(ev.rating) <= 0:
            return
        u = state.unit()
        if u is not None:
            users.append(u)
            items.append(ev.item_id)
            where.append(position[id(ev)])
            histories.append(state.item_weights())

    states: dict[str, UserState] = {}
    replayed: dict[int, ReplayState] = {}
    done = 0
    for mark in sorted({min(max(int(m), 0), len(events)) for m in marks}):
        replay_events(rec, states, events[done:mark], text_vecs, take)
        replayed[mark], done = ReplayState.take(rec, states), mark
    replay_events(rec, states, events[done:], text_vecs, take)
    U = np.stack(users) if users else np.zeros((0, index.dim), np.float32)
    return Pairs(U, items, np.asarray(where, np.int64), histories, replayed)


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
                  progress: bool = False) -> TrainResult:
    """Fit a new version on ``events`` (in time order), warm-started from ``parent``.

    The last ``cfg.validation`` share of ``events`` picks the best epoch and the blend
    weights; nothing here sees the acceptance slice (the caller holds it back).
    """
    cfg = cfg or TrainConfig()
    if cfg.recipe == "sequence":
        from .seqrecipe import train_sequence_version

        return train_sequence_version(events, item_ids, item_vecs, text_vecs, parent=parent, cfg=cfg,
                                      base_weights=base_weights, progress=progress)
    if cfg.recipe != "adapter":
        raise ValueError(f"unknown training recipe {cfg.recipe!r}: use 'sequence' or 'adapter'")
    if parent is not None and parent.sequence is not None:
        parent = None  # an adapter version does not grow from a sequence version
    t0 = time.perf_counter()
    item_ids = [str(i) for i in item_ids]
    item_vecs = np.asarray(item_vecs, np.float32)
    dim = item_vecs.shape[1]
    index = build_index(item_ids, item_vecs)
    ids = index.ids()
    V = index.matrix[[index.row(i) for i in ids]].copy() if ids else np.zeros((0, dim), np.float32)
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
# measuring: the acceptance slice
# ------------------------------------------------------------------------------------------


#: Held-out events :func:`evaluate_slice` ranks in one matrix product (per model space)
SLICE_BLOCK = 128


def evaluate_slice(context: Sequence[Event], held_out: Sequence[Event], item_ids: Sequence[str],
                   item_vecs: np.ndarray, text_vecs: dict[str, np.ndarray],
                   models: dict[str, ModelParams | None], *, k: int = 10,
                   config: RecommenderConfig | None = None, start: ReplayState | None = None,
                   collect: Callable[[ActiveModel, list, np.ndarray], None] | None = None) -> dict[str, dict]:
    """NDCG@k / HR@k of each model on ``held_out``, test-then-train, after ``context``.

    User state and popularity are model-independent, so one replay serves every model: for
    each held-out event each model ranks all items (the user's seen items excluded, as
    the worker does), then the event is applied. Repeats (an item the user already
    interacted with) are not scored, as in ``streamrec evaluate``.

    Ranked as the worker ranks a chunk: a :meth:`Recommender.request` per event (the user,
    exclusions and popularity of that moment), then :meth:`Recommender.score_requests`-style
    matrices for a block of events at once. Models that differ only in their blend weights
    (the trainer's weight grid) share one scoring space and one product. ``start``: the
    states and popularity after ``context`` (:class:`ReplayState`), when the caller has them.
    ``collect(model, requests, target_rows)``: called for each block instead of ranking it (the
    sequence recipe fits its blend on the parts of each request).
    """
    ids, vecs = [str(i) for i in item_ids], np.asarray(item_vecs, np.float32)
    config = config or RecommenderConfig()
    states: dict[str, UserState] = {}
    popularity = index = co = None
    if start is not None and start.fits(config):
        index = start.index_for(ids, vecs)
        if index is not None:
            states, popularity, co = start.restore()
    if index is None:
        index = build_index(ids, vecs)
    rec = Recommender(index, config=config, popularity=popularity, cooccurrence=co)
    groups = _share_spaces(rec, models)
    if popularity is None:
        replay_events(rec, states, context, text_vecs)
    sums = {name: [0.0, 0.0] for name in models}
    scored = 0
    pending: list[tuple[int, list]] = []  # (target row, one request per group)

    def rank_block() -> None:
        targets = np.asarray([t for t, _ in pending], np.int64)
        at = np.arange(len(pending))
        for g, (model, members) in enumerate(groups):
            reqs = [r[g] for _, r in pending]
            layout = model.ranker.index.version
            model.encode(reqs)  # a sequence version: one encoder call for the block
            if collect is not None:
                collect(model, reqs, targets)
                continue
            totals = model.ranker.score_matrix(
                [r.user for r in reqs], excludes=[r.exclude for r in reqs],
                popularity=[r.popularity if r.layout == layout else None for r in reqs],
                weights=[w for _, w in members], texts=[r.text for r in reqs], cooc=[r.cooc for r in reqs])
            for (name, _), total in zip(members, totals):
                t = total[at, targets][:, None]
                higher = np.count_nonzero(total > t, axis=1)
                equal = np.count_nonzero(total == t, axis=1)
                for h, e in zip(higher.tolist(), equal.tolist()):
                    rank = 1.0 + float(h) + (float(e) - 1.0) / 2.0  # ties: mean rank
                    if rank <= k:
                        sums[name][0] += 1.0 / math.log2(rank + 1)
                        sums[name][1] += 1.0
        pending.clear()

    def score(ev: Event, state: UserState) -> None:
        nonlocal scored
        if ev.item_id not in index or state.has_interacted(ev.item_id):
            return
        scored += 1
        user = state if state.count else None
        reqs = [rec.request(user, model) for model, _ in groups]
        for r, (model, members) in zip(reqs, groups):  # co-occurrence for every member that blends it in
            if r.cooc is None and any(w.cooccurrence for _, w in members):
                r.cooc = rec._cooc(user, model, force=True)
        pending.append((index.row(ev.item_id), reqs))
        if len(pending) >= SLICE_BLOCK:
            rank_block()

    replay_events(rec, states, held_out, text_vecs, score)
    if pending:
        rank_block()
    for model, _ in groups:
        if model.space is not None:
            model.space.close()
    return {name: {"ndcg": round(s[0] / scored, 5) if scored else 0.0,
                   "hit_rate": round(s[1] / scored, 5) if scored else 0.0, "events": scored}
            for name, s in sums.items()}


def _share_spaces(rec: Recommender, models: dict[str, ModelParams | None],
                  ) -> list[tuple[ActiveModel, list[tuple[str, Weights]]]]:
    """Models grouped by everything but their blend weights: one prepared model (scoring
    space) per group, with each member's name and weights."""
    groups: dict[tuple, tuple[ActiveModel, list[tuple[str, Weights]]]] = {}
    for name, p in models.items():
        if p is None:
            key: tuple = ("encoder",)
            weights = rec.config.weights
        else:
            space = None if p.is_identity else (id(p.adapter), id(p.residuals), id(p.context), id(p.residual_ids),
                                                 id(p.sequence))
            key = (space, id(p.head_w), float(p.head_b))
            weights = p.weights
        if key not in groups:
            groups[key] = (rec.prepare_model(p, name), [])
        groups[key][1].append((name, weights))
    return list(groups.values())


def split_holdout(events: Sequence[Event], cfg: TrainConfig) -> tuple[list[Event], list[Event]]:
    """``(train, held_out)``: the most recent ``cfg.holdout`` share (at least ``min_holdout``, at
    most ``max_holdout`` events)."""
    n_hold = min(len(events) // 2, max(cfg.min_holdout, min(cfg.max_holdout, int(len(events) * cfg.holdout))))
    return list(events[: len(events) - n_hold]), list(events[len(events) - n_hold:])


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
                 every: int = 0, progress: bool = False) -> None:
        self.cfg = cfg or TrainConfig()
        self.window = window
        self.every = every  # train only once this many events came since the last time (0: at every call)
        self._last = 0
        self._mark: Event | None = None  # the last event of the replay at the last training
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
                                 progress=self.progress)

    def __call__(self, rec: Recommender, events_so_far: Sequence[Event],
                 text_vecs: dict[str, np.ndarray] | None = None) -> None:
        n = len(events_so_far)
        # A new replay (e.g. the offline protocol's training part after the stream): shorter than
        # the last call, or not the same events up to where the last training stopped.
        if n < self._last or (self._last and events_so_far[self._last - 1] is not self._mark):
            self._last = 0
        if self.every and n - self._last < self.every:
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
                               progress=self.progress)
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
                             "weights": result.validation.get("chosen"), "item_l2": result.validation.get("item_l2")})
        log.info("retrain at event %d: candidate NDCG@%d %.4f vs current %.4f on %d held-out events: %s",
                 len(events_so_far), self.cfg.k, scores["candidate"]["ndcg"], scores["current"]["ndcg"],
                 scores["candidate"]["events"], f"accepted as {version}" if accepted else "rejected")
        if accepted:
            rec.use_model(result.params, version)
