"""The sequential part of a trained version, at run time: a user's recent items -> a vector.

A version trained by ``training.seqfit`` carries a small causal self-attention encoder
(exported to ONNX, ``sequence.onnx``) and the item side it reads and scores
(``sequence.npz``)::

    item i  ->  e_i = P(text_i) + id_i          P: learned linear map of the item's (centred,
                                                rescaled) encoder vector; id_i: a learned vector
                                                for items with enough training interactions
    user    ->  h_u = Encoder(e_{i_1..i_L}, negative flags, time-gap buckets)[last]
    score   ->  <h_u, e_i>

Items without an id vector (cold items, catalogue additions after the version was trained)
are read and scored through ``P(text)`` alone, so they work at once. Everything here is
numpy and onnxruntime (CUDA when there is a GPU, else CPU): no torch at run time.

A user's sequence lives in :class:`inference.user.UserState` as item keys
(:mod:`inference.seen`), signs and event times; :func:`encode_sequences` turns a batch of
them into the encoder's inputs (left-padded to ``max_len``), dropping items the version's
index does not hold, and :meth:`SequenceParams.user_vectors` runs one batched call.

Example::

    seq = SequenceParams.load("registry/v3")                 # sequence.npz + sequence.onnx
    E = seq.item_vectors(["b1", "b2"], unit_text_vectors)    # (2, d)
    x, neg, gap, mask = encode_sequences([(rows, signs, times)], E_table, seq.max_len)
    seq.user_vectors(x, neg, gap, mask)                      # (1, d)
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SEQUENCE_FILE = "sequence.npz"
SEQUENCE_ONNX = "sequence.onnx"
FORMAT = 1

#: Time-gap buckets (the time since the user's previous event in the sequence): 0 padding,
#: 1 unknown, 2 the first event, then a tie (same timestamp), <= 1 min, <= 1 h, <= 1 day,
#: <= 1 week, <= 30 days, <= 1 year, longer.
GAP_PAD = 0
GAP_UNKNOWN = 1
_GAP_EDGES = np.array([0.0, 60.0, 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0, 365 * 86400.0])
N_GAP_BUCKETS = 3 + len(_GAP_EDGES) + 1


def _bucket(gaps: np.ndarray) -> np.ndarray:
    """The bucket of each time gap in seconds (any shape; NaN or infinite: unknown). The one
    place the edges are applied, for the trainer's sequences and the worker's batches alike."""
    out = np.full(gaps.shape, GAP_UNKNOWN, dtype=np.int64)
    known = np.isfinite(gaps)
    out[known] = 3 + np.searchsorted(_GAP_EDGES, np.maximum(gaps[known], 0.0), side="left")
    return out


def _diff(times: np.ndarray) -> np.ndarray:
    """Time since the previous event along the last axis (one value fewer than ``times``)."""
    with np.errstate(invalid="ignore"):  # -inf - -inf (times unknown): NaN, the unknown bucket
        return np.diff(times, axis=-1)


def gap_buckets(times: np.ndarray) -> np.ndarray:
    """Per event (times oldest first, NaN = unknown): its time-gap bucket."""
    t = np.asarray(times, dtype=np.float64)
    if not len(t):
        return np.full(0, GAP_UNKNOWN, dtype=np.int64)
    out = _bucket(np.concatenate(([np.nan], _diff(t))))
    if np.isfinite(t[0]):
        out[0] = 2
    return out


def encode_sequences(seqs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], table: np.ndarray,
                     max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The encoder's inputs for a batch of sequences ``(rows, signs, times)`` (oldest first;
    ``rows`` index ``table``, -1 = an item the version cannot read, dropped before the time
    gaps are taken). Returns ``x (B, L, d)``, ``neg (B, L)``, ``gap (B, L)``, ``mask (B, L)``,
    left-padded to ``L`` = the batch's longest (the last ``max_len`` readable events at most)."""
    B, L = len(seqs), max_len
    W = L + 1  # one more: the first kept event's gap
    rows_all = np.full((B, W), -1, np.int64)
    signs_all = np.zeros((B, W), np.int8)
    times_all = np.full((B, W), np.nan)
    for b, (rows, signs, times) in enumerate(seqs):
        rows = np.asarray(rows)
        n = min(len(rows), W)
        if n and rows[-n:].min() >= 0:  # the usual case: every recent item readable
            rows_all[b, W - n:], signs_all[b, W - n:], times_all[b, W - n:] = rows[-n:], signs[-n:], times[-n:]
            continue
        keep = np.flatnonzero(rows >= 0)[-W:]
        n = keep.size
        if n:
            rows_all[b, W - n:] = rows[keep]
            signs_all[b, W - n:] = np.asarray(signs)[keep]
            times_all[b, W - n:] = np.asarray(times, np.float64)[keep]
    gap = _bucket(_diff(times_all))  # (B, L): each kept event's time since the one before
    idx = rows_all[:, 1:]
    present = idx >= 0
    n_kept = present.sum(axis=1)
    first = np.flatnonzero((n_kept > 0) & (rows_all[:, 0] < 0))  # the oldest kept event is the sequence's first
    at = L - n_kept[first]
    timed = np.isfinite(times_all[first, at + 1])
    gap[first[timed], at[timed]] = 2
    gap[~present] = GAP_PAD
    idx = np.where(present, idx, 0)
    neg = (present & (signs_all[:, 1:] < 0)).astype(np.float32)
    mask = present.astype(np.float32)
    width = int(n_kept.max()) if B else 0  # the batch's longest: shorter ones stay padded
    if 0 < width < L:
        idx, neg, gap, mask = idx[:, L - width:], neg[:, L - width:], gap[:, L - width:], mask[:, L - width:]
    x = table[idx] * mask[..., None]
    return x.astype(np.float32, copy=False), neg, gap, mask


def length_groups(mask: np.ndarray, shortest: int = 4) -> list[tuple[np.ndarray, int]]:
    """``(rows, width)`` groups of a left-padded batch (``mask (B, L)``), rows with no event left
    out: sequences of similar length run together, each group only as wide as its longest (up to
    ``shortest``, 2x, 4x, ... events), so a few long histories do not make every short one pay for
    their padding (positions count from the right and padding is masked: the same vectors)."""
    n = mask.sum(axis=1).astype(np.int64)
    some = np.flatnonzero(n > 0)
    if not some.size:
        return []
    bucket = np.ceil(np.log2(np.maximum(n[some], shortest) / shortest)).astype(np.int64)
    return [(some[bucket == b], int(n[some[bucket == b]].max())) for b in np.unique(bucket)]


@dataclass
class SequenceParams:
    """One version's sequence encoder (ONNX bytes) and item side."""

    d: int
    max_len: int
    onnx: bytes  # the encoder graph: (x, neg, gap, mask) -> user (B, d)
    text_dim: int
    proj_w: np.ndarray | None  # (d, text_dim): the text projection (None: id-only ablation)
    proj_b: np.ndarray | None  # (d,)
    text_mean: np.ndarray | None  # (text_dim,): encoder vectors are centred ...
    text_scale: float = 1.0  # ... and scaled before the projection
    id_items: list[str] = field(default_factory=list)  # items with an id vector
    id_emb: np.ndarray | None = None  # (len(id_items), d)
    #: Weight of the user's text-rolling vector (cosine to the item's encoder vector) added to
    #: the sequence score: the blend the trainer picked on its validation slice.
    text_weight: float = 0.0
    meta: dict = field(default_factory=dict)  # what trained it (config, ablation, parity)
    #: The encoder's own tensors by name (what the ONNX graph holds), for the trainer to
    #: warm-start the next version from; serving does not read them.
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id_rows = {i: k for k, i in enumerate(self.id_items)}
        self._session = None
        self._lock = threading.Lock()
        self.provider: str | None = None

    # -- items --------------------------------------------------------------------------
    def item_vectors(self, ids: Sequence[str], unit_vecs: np.ndarray) -> np.ndarray:
        """``e`` of items from their encoder-space unit vectors (a zero vector: no text)."""
        out = np.zeros((len(ids), self.d), np.float32)
        if not len(ids):  # e.g. a version loaded before the catalogue: nothing to map yet
            return out
        vecs = np.asarray(unit_vecs, np.float32).reshape(len(ids), -1)
        if self.proj_w is not None:
            has = np.any(vecs != 0, axis=1)
            t = (vecs - self.text_mean) * np.float32(self.text_scale)
            out[has] = t[has] @ self.proj_w.T + self.proj_b
        if self.id_emb is not None and self.id_items:
            for k, i in enumerate(ids):
                r = self.id_rows.get(i)
                if r is not None:
                    out[k] += self.id_emb[r]
        return out

    # -- users --------------------------------------------------------------------------
    def session(self, device: str = "auto"):
        """The onnxruntime session (made once; CUDA when there is a GPU, else the CPU)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort

                    from .encoder import choose_device

                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = 1  # small graph: one thread, no spinning
                    opts.inter_op_num_threads = 1
                    opts.log_severity_level = 3
                    providers = ["CPUExecutionProvider"]
                    if choose_device(device) == "cuda":
                        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
                    self._session = ort.InferenceSession(self.onnx, sess_options=opts, providers=providers)
                    self.provider = self._session.get_providers()[0]
        return self._session

    def user_vectors(self, x: np.ndarray, neg: np.ndarray, gap: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(B, d)``: the encoder on a batch (one call)."""
        if not len(x):
            return np.zeros((0, self.d), np.float32)
        (out,) = self.session().run(None, {"x": x, "neg": neg, "gap": gap, "mask": mask})
        return np.asarray(out, dtype=np.float32)

    # -- files --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``sequence.npz`` and ``sequence.onnx`` into ``folder``."""
        folder = Path(folder)
        meta = {"format": FORMAT, "d": self.d, "max_len": self.max_len, "text_dim": self.text_dim,
                "text_scale": self.text_scale, "text_weight": self.text_weight, "meta": self.meta}
        arrays: dict[str, np.ndarray] = {"meta": np.asarray(json.dumps(meta))}
        if self.proj_w is not None:
            arrays.update(proj_w=self.proj_w, proj_b=self.proj_b, text_mean=self.text_mean)
        if self.id_emb is not None:
            arrays.update(id_emb=self.id_emb, id_items=np.asarray(self.id_items, dtype=object).astype(str))
        arrays.update({f"t/{k}": v for k, v in self.tensors.items()})
        tmp = folder / ".sequence.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, folder / SEQUENCE_FILE)
        (folder / SEQUENCE_ONNX).write_bytes(self.onnx)

    @classmethod
    def load(cls, folder: str | Path) -> SequenceParams:
        folder = Path(folder)
        try:
            with np.load(folder / SEQUENCE_FILE, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FORMAT:
                    raise ValueError(f"unknown sequence format {meta.get('format')!r} (this build reads {FORMAT})")
                proj = (z["proj_w"], z["proj_b"], z["text_mean"]) if "proj_w" in z else (None, None, None)
                ids = [str(i) for i in z["id_items"]] if "id_items" in z else []
                emb = z["id_emb"] if "id_emb" in z else None
                tensors = {k[2:]: z[k] for k in z.files if k.startswith("t/")}
            onnx = (folder / SEQUENCE_ONNX).read_bytes()
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot read the sequence encoder in {folder}: {exc}. The version folder is "
                             "damaged: retrain, or point the worker at another version") from exc
        return cls(d=int(meta["d"]), max_len=int(meta["max_len"]), onnx=onnx, text_dim=int(meta["text_dim"]),
                   proj_w=proj[0], proj_b=proj[1], text_mean=proj[2], text_scale=float(meta["text_scale"]),
                   id_items=ids, id_emb=emb, text_weight=float(meta.get("text_weight", 0.0)),
                   meta=meta.get("meta", {}), tensors=tensors)
