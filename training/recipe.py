"""What a training run is told and what it gives back: :class:`TrainConfig` (the recipe's
knobs, all recorded in each version's manifest) and :class:`TrainResult`.

Example::

    cfg = TrainConfig(recipe="sequence", min_pairs=300)
    train, held = split_holdout(events, cfg)     # the acceptance slice is never trained on
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inference.events import Event
from inference.model import ModelParams

from .seqfit import DEFAULT_GRID
from .seqmodel import SequenceConfig

if TYPE_CHECKING:
    from .slices import ReplayState


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


def split_holdout(events: Sequence[Event], cfg: TrainConfig) -> tuple[list[Event], list[Event]]:
    """``(train, held_out)``: the most recent ``cfg.holdout`` share (at least ``min_holdout``, at
    most ``max_holdout`` events)."""
    n_hold = min(len(events) // 2, max(cfg.min_holdout, min(cfg.max_holdout, int(len(events) * cfg.holdout))))
    return list(events[: len(events) - n_hold]), list(events[len(events) - n_hold:])
