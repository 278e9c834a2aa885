"""A trained model version, applied at scoring time over the frozen encoder's vectors.

What training fits (``training.trainer``) and the workers load (from the registry):

* ``adapter`` ``A`` (dim x dim): users and items are scored in the space ``x -> x A``;
* ``residuals``: per-item vectors ``r_i`` added in that space for items with enough
  interactions (the collaborative part the text alone does not carry), as candidates;
* ``context``: per-item vectors ``c_h`` for the same items, as history: a user's recent
  items pull the user towards what people chose after them ("people who played this then
  chose that": the collaborative signal text cannot see, e.g. two films with unrelated
  titles watched by the same people);
* ``head`` ``(w, b)`` and the blend ``weights`` (similarity, popularity, head);
* or, for a version with a sequence encoder (``sequence``, :mod:`inference.sequence`; no
  adapter, residuals or context then): the user's recent item sequence through that encoder,
  scored against each item's ``e_i``, with the user's text-rolling vector, popularity and the
  co-occurrence part blended in by the version's ``weights`` (see :class:`ActiveModel`).

A user with encoder-space vector ``u`` and recent items ``h`` with signed weights ``a_h``
(``UserState.item_weights``) is ``u' = unit(unit(u A) + sum_h a_h c_h / sum_h |a_h|)``, and
their score for item ``i`` is ``w_sim * <u', unit(v_i A + r_i)> + w_pop * pop_i + w_head *
sigmoid(w . (u' * v_i') + b)``. User state never changes with the model: it stays a decayed
sum of *encoder-space* vectors plus the recent item ids and weights, and the model is applied
when a list is made. So a new version needs no migration of user state, and switching
versions is a reference swap (:meth:`inference.recommender.Recommender.activate`).

Example::

    params = ModelParams.identity(dim=384)          # the untrained model: scores = cosine
    params.save("registry/v0001/model.npz"); ModelParams.load("registry/v0001/model.npz")
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .index import ItemIndex
from .ranking import LinearHead, Weights
from .sequence import SequenceParams

MODEL_FILE = "model.npz"
MANIFEST = "manifest.json"


def safe_unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (it scores 0 with everything)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


@dataclass
class ModelParams:
    """The learned parts of one version (all optional: absent = the encoder alone)."""

    dim: int
    adapter: np.ndarray | None = None  # (dim, dim)
    residual_ids: list[str] = field(default_factory=list)
    residuals: np.ndarray | None = None  # (len(residual_ids), dim)
    head_w: np.ndarray | None = None  # (dim,)
    head_b: float = 0.0
    weights: Weights = field(default_factory=Weights)
    context: np.ndarray | None = None  # (len(residual_ids), dim): the same items as history
    sequence: SequenceParams | None = None  # a sequence encoder (then none of the above)

    def __post_init__(self) -> None:
        #: item id -> its row of ``context`` (empty without context vectors); derived, not saved
        self.context_rows = {i: k for k, i in enumerate(self.residual_ids)} if self.context is not None else {}

    @classmethod
    def identity(cls, dim: int, weights: Weights | None = None) -> ModelParams:
        return cls(dim=dim, weights=weights or Weights())

    @property
    def is_identity(self) -> bool:
        return self.adapter is None and not self.residual_ids and self.sequence is None

    def head(self) -> LinearHead | None:
        return None if self.head_w is None else LinearHead(np.asarray(self.head_w, np.float32), float(self.head_b))

    def residual_map(self) -> dict[str, np.ndarray]:
        if self.residuals is None:
            return {}
        return {i: self.residuals[k] for k, i in enumerate(self.residual_ids)}

    def context_map(self) -> dict[str, np.ndarray]:
        if self.context is None:
            return {}
        return {i: self.context[k] for k, i in enumerate(self.residual_ids)}

    # -- the transform ----------------------------------------------------------------------
    def history_vector(self, history: dict[str, float] | None) -> np.ndarray | None:
        """``sum_h a_h c_h / sum_h |a_h|`` over the recent items that have a context vector
        (None: no such item, or no context in this version)."""
        if not history or self.context is None:
            return None
        rows, weights = [], []
        for item_id, a in history.items():
            k = self.context_rows.get(item_id)
            if k is not None and a == a and a != 0.0:  # a == a: not NaN (format-1 state)
                rows.append(k)
                weights.append(a)
        if not rows:
            return None
        w = np.asarray(weights, np.float32)
        return (w @ self.context[rows]) / np.float32(np.abs(w).sum())

    def user_vector(self, unit_user: np.ndarray | None, history: dict[str, float] | None = None) -> np.ndarray | None:
        """A user's encoder-space unit vector (and recent items with their signed weights), in
        this model's scoring space. None stays None: a user without signal is a cold start."""
        if unit_user is None:
            return None
        ctx = self.history_vector(history)
        if self.adapter is None and ctx is None:
            return unit_user
        out = safe_unit(unit_user @ self.adapter) if self.adapter is not None else unit_user
        if ctx is not None:
            out = safe_unit(out + ctx)
        return out if np.any(out) else None

    def item_vectors(self, ids: list[str], unit_vecs: np.ndarray, residuals: dict[str, np.ndarray]) -> np.ndarray:
        """Items' encoder-space unit vectors in this model's scoring space (unit rows; a sequence
        version's ``e_i``, whose length counts, as they are)."""
        if self.sequence is not None:
            return self.sequence.item_vectors(ids, unit_vecs)
        out = unit_vecs @ self.adapter if self.adapter is not None else np.array(unit_vecs, np.float32)
        if residuals:
            for k, item_id in enumerate(ids):
                r = residuals.get(item_id)
                if r is not None:
                    out[k] += r
        return safe_unit(out)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``model.npz`` to ``path`` (and, for a sequence version, the encoder's two files
        beside it)."""
        arrays: dict[str, np.ndarray] = {"dim": np.asarray(self.dim),
                                         "weights": np.asarray(json.dumps(asdict(self.weights)))}
        if self.sequence is not None:
            self.sequence.save(Path(path).parent)
            arrays["sequence"] = np.asarray(1)
        if self.adapter is not None:
            arrays["adapter"] = np.asarray(self.adapter, np.float32)
        if self.residual_ids:
            arrays["residual_ids"] = np.asarray(self.residual_ids, dtype=object).astype(str)
            arrays["residuals"] = np.asarray(self.residuals, np.float32)
            if self.context is not None:
                arrays["context"] = np.asarray(self.context, np.float32)
        if self.head_w is not None:
            arrays["head_w"] = np.asarray(self.head_w, np.float32)
            arrays["head_b"] = np.asarray(self.head_b, np.float32)
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ModelParams:
        try:
            with np.load(path, allow_pickle=False) as z:
                dim = int(z["dim"])
                adapter = z["adapter"] if "adapter" in z else None
                ids = [str(i) for i in z["residual_ids"]] if "residual_ids" in z else []
                res = z["residuals"] if "residuals" in z else None
                ctx = z["context"] if "context" in z else None
                head_w = z["head_w"] if "head_w" in z else None
                head_b = float(z["head_b"]) if "head_b" in z else 0.0
                weights = Weights(**json.loads(str(z["weights"])))
                has_sequence = "sequence" in z
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot read model weights {path}: {exc}. The version folder is damaged: "
                             "retrain, or point the worker at another version") from exc
        if adapter is not None and adapter.shape != (dim, dim):
            raise ValueError(f"{path}: adapter is {adapter.shape}, expected ({dim}, {dim})")
        if res is not None and res.shape != (len(ids), dim):
            raise ValueError(f"{path}: residuals are {res.shape}, expected ({len(ids)}, {dim})")
        if ctx is not None and ctx.shape != (len(ids), dim):
            raise ValueError(f"{path}: context vectors are {ctx.shape}, expected ({len(ids)}, {dim})")
        seq = SequenceParams.load(Path(path).parent) if has_sequence else None
        return cls(dim, adapter, ids, res, head_w, head_b, weights, ctx, seq)


class ModelSpace:
    """An item index in a model's scoring space that follows the encoder-space index.

    Built once from the base index (same rows, see :meth:`ItemIndex.layout_copy`), then every
    catalogue change to the base is applied here too (``ItemIndex.listen``), so popularity and
    exclusions line up row for row. Building holds the base index's lock: no change can slip
    between the copy and the subscription.
    """

    def __init__(self, base: ItemIndex, params: ModelParams) -> None:
        if params.dim != base.dim:
            raise ValueError(f"model has {params.dim} dims but the encoder gives {base.dim}: this version was "
                             "trained for another encoder")
        self.base = base
        self.params = params
        self._residuals = params.residual_map()
        self.unit = params.sequence is None  # a sequence version's item vectors keep their length
        with base._lock:
            rows = base.matrix
            ids = [i if i is not None else "" for i in base._ids[: base._top]]
            vecs = params.item_vectors(ids, rows, self._residuals)
            vecs[~base.alive] = 0.0
            self.index = base.layout_copy(vecs, unit=self.unit)
            base.listen(self._follow)

    def _follow(self, ids: list[str], vecs: np.ndarray | None) -> None:
        if vecs is None:
            for item_id in ids:
                self.index.remove(item_id)
            return
        out = self.params.item_vectors(ids, vecs, self._residuals)
        zero = ~np.any(out, axis=1)
        if np.any(zero) and self.unit:  # an item whose adapted vector vanished keeps its text direction
            out[zero] = vecs[zero]
        self.index.upsert_many(ids, out)

    def close(self) -> None:
        """Stop following the base index (the version was swapped out)."""
        self.base.unlisten(self._follow)


def read_manifest(version_dir: str | Path) -> dict:
    path = Path(version_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def load_version(version_dir: str | Path) -> tuple[ModelParams, dict]:
    """A registry version folder's weights and manifest (raises ``ValueError`` with what to do)."""
    d = Path(version_dir)
    manifest = read_manifest(d)
    if manifest.get("status") != "accepted":
        raise ValueError(f"{d} is {manifest.get('status')!r}, not an accepted version: it must not be served")
    return ModelParams.load(d / MODEL_FILE), manifest
