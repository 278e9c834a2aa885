"""The sequential user encoder the trainer fits (torch), and its export for serving (ONNX).

Causal self-attention over a user's recent items (SASRec-like), with item inputs built from
the frozen text encoder's vectors::

    item i  ->  e_i = P(text_i) + id_i          (P: learned dim -> d; id_i only for items with
                                                 >= min_count training interactions, else 0)
    user    ->  h_u = Blocks(LN(e_{i_1..i_L} + pos + gap + neg * [low rating]))[last]
    score   ->  s(u, i) = <h_u, e_i>            (tied: the same e_i in and out)

* An id vector starts at 0, so a new id starts as its text; items without one (cold items,
  catalogue additions after the fit) are read and scored through ``P(text)`` alone.
  Ablations: ``use_text=False`` (ids only: an item without an id vector cannot be scored)
  and ``use_id=False`` (text only).
* A low-rated event enters the sequence as such (a learned vector at its position), and so
  does the time since the previous event (:func:`inference.sequence.gap_buckets`).
* :func:`to_params` exports what serving needs (:class:`inference.sequence.SequenceParams`):
  the encoder graph on embedded inputs (ONNX, opset 17; it does not depend on the catalogue)
  and the item side as arrays. The export runs the graph with onnxruntime on real inputs
  and refuses it (:class:`ParityError`) when it differs from torch by more than ``tolerance``.

Example::

    model = SequenceModel(SequenceConfig(d=64), item_ids, text_vectors, id_items)
    params = to_params(model, sample_inputs)        # ONNX + item arrays, parity checked
"""
from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.sequence import N_GAP_BUCKETS, SequenceParams

#: Largest ONNX-vs-torch difference (max abs, on the user vectors) a version may have.
PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported encoder does not compute what the trained one does."""


@dataclass
class SequenceConfig:
    """Model and training knobs (all recorded in the version's manifest). The defaults are the
    recipe picked on MovieLens, Magazine Subscriptions and Musical Instruments (validation
    NDCG@10 on each user's last training event, never on scored events)."""

    d: int = 64
    blocks: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2  # on the inputs and on each block's residual branches
    use_text: bool = True  # text projection in the item representation
    use_id: bool = True  # id vectors for items with >= min_count interactions
    min_count: int = 2
    negative_below: float | None = 3.0  # a rating below this enters the sequence as negative
    time_gaps: bool = True
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 15  # one warm-up epoch (from scratch), then cosine decay over these
    #: A warm-started fit starts from the parent's weights, the parent itself a candidate at
    #: epoch 0, with this learning rate and epoch budget (None: ``lr`` and ``max_epochs``). A
    #: gentle fine-tune (1e-3, 5 epochs) made things worse on MovieLens (validation NDCG 0.018
    #: -> 0.010 at 20,000 events); the full schedule from the parent's weights reached 0.073.
    warm_lr: float | None = None
    warm_epochs: int | None = None
    patience: int = 5  # stop after this many epochs without a better validation NDCG
    negatives: int = 1024  # sampled softmax: the target and this many uniform items per batch
    max_seconds: float | None = None  # stop training after this long (the best epoch is kept)
    #: After the epoch is picked, fit again on every event (validation events included) when
    #: the validation targets are at least this share of the training targets (small data,
    #: where holding them out is a real loss); 0: never.
    refit_share: float = 0.02
    k: int = 10
    seed: int = 0
    threads: int | None = None  # torch threads during the fit (None: leave torch's setting)

    def __post_init__(self) -> None:
        if not (self.use_text or self.use_id):
            raise ValueError("an item needs a text projection, an id vector or both")
        if self.d % self.heads:
            raise ValueError("d must be a multiple of heads")

    @property
    def inputs(self) -> str:
        """The ablation this configuration is: "text+id", "text" or "id"."""
        return "+".join(p for p, on in (("text", self.use_text), ("id", self.use_id)) if on)


class _Block(nn.Module):
    """Pre-LN transformer block, causal self-attention written out (plain ops export cleanly)."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, 2 * d)
        self.ff2 = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, last: bool = False) -> torch.Tensor:
        """``x (B, L, d)`` -> ``(B, L, d)``, or with ``last`` only the last position ``(B, 1, d)``
        (all the keys, one query: what the final block of a user vector needs)."""
        B, L, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, h, d // h).permute(2, 0, 3, 1, 4)
        if last:
            q, bias, x = q[:, :, -1:], bias[:, :, -1:], x[:, -1:]
        att = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // h)) + bias, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, x.shape[1], d)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff2(F.gelu(self.ff1(self.ln2(x)))))


class SequenceModel(nn.Module):
    """The item representation and the sequence encoder over a fixed catalogue.

    Item index 0 is padding; ``item_ids[k]`` has index ``k + 1`` (``text`` rows, ``id_row``,
    sequences) and row ``k`` of :meth:`item_matrix`.
    """

    def __init__(self, cfg: SequenceConfig, item_ids: Sequence[str], text: np.ndarray | None,
                 id_items: Sequence[str] = (), *, text_mean: np.ndarray | None = None,
                 text_scale: float | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        self.item_ids = list(item_ids)
        self.pos = {i: k + 1 for k, i in enumerate(self.item_ids)}
        n = len(self.item_ids)
        self.text_dim = 0 if text is None else int(text.shape[1])
        if cfg.use_text and not self.text_dim:
            raise ValueError("use_text needs item text vectors")
        T = np.zeros((n + 1, max(self.text_dim, 1)), np.float32)
        has = np.zeros(n + 1, bool)
        if text is not None and n:
            T[1:, : self.text_dim] = text
            has[1:] = np.any(text != 0, axis=1)
        if text_mean is None:
            text_mean = T[has].mean(axis=0) if has.any() else np.zeros(T.shape[1], np.float32)
        if text_scale is None:  # centred text vectors rescaled to unit RMS norm
            cen = T[has] - text_mean
            text_scale = 1.0 / max(float(np.sqrt(np.mean(np.sum(cen * cen, axis=1)))) if has.any() else 1.0, 1e-6)
        self.register_buffer("text", torch.from_numpy(T))
        self.register_buffer("has_text", torch.from_numpy(has))
        self.register_buffer("text_mean", torch.as_tensor(np.asarray(text_mean, np.float32)))
        self.text_scale = float(text_scale)
        self.id_items = [i for i in id_items if i in self.pos] if cfg.use_id else []
        rows = np.zeros(n + 1, np.int64)
        for r, i in enumerate(self.id_items, start=1):
            rows[self.pos[i]] = r
        self.register_buffer("id_row", torch.from_numpy(rows))
        self.proj = nn.Linear(self.text_dim, d) if cfg.use_text else None
        self.id_emb = None
        if cfg.use_id:
            self.id_emb = nn.Embedding(len(self.id_items) + 1, d, padding_idx=0)
            with torch.no_grad():  # with text an id vector starts at 0 (the item starts as its text)
                self.id_emb.weight.normal_(0.0, 0.1)
                if cfg.use_text:
                    self.id_emb.weight.zero_()
                self.id_emb.weight[0].zero_()
        self.pos_emb = nn.Parameter(torch.zeros(cfg.max_len, d))
        nn.init.normal_(self.pos_emb, 0.0, 0.02)
        self.neg_emb = nn.Parameter(torch.zeros(d))
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, d, padding_idx=0) if cfg.time_gaps else None
        if self.gap_emb is not None:
            nn.init.normal_(self.gap_emb.weight, 0.0, 0.02)
            with torch.no_grad():
                self.gap_emb.weight[0].zero_()
        self.ln_in = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(_Block(d, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.ln_out = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.fitted_until: float | None = None  # the newest event time the fit that made it saw

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    # -- items ------------------------------------------------------------------------------
    def item_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``e`` of the items at indices ``idx`` (1-D; index 0, padding, gives zeros)."""
        e = torch.zeros(len(idx), self.cfg.d, dtype=self.pos_emb.dtype)
        if self.proj is not None:
            t = (self.text[idx, : self.text_dim] - self.text_mean) * self.text_scale
            e = e + self.proj(t) * self.has_text[idx][:, None].to(e.dtype)
        if self.id_emb is not None:
            e = e + self.id_emb(self.id_row[idx])
        return e * (idx > 0)[:, None].to(e.dtype)

    def item_table(self) -> torch.Tensor:
        """``(n_items + 1, d)``: row 0 (padding) zero, row k+1 the ``e`` of ``item_ids[k]``."""
        return self.item_rows(torch.arange(self.n_items + 1))

    def scorable(self) -> np.ndarray:
        """Per catalogue item: has it a representation (text or an id vector)?"""
        ok = self.id_row[1:].numpy() > 0
        return ok | self.has_text[1:].numpy() if self.proj is not None else ok

    @torch.no_grad()
    def item_matrix(self) -> np.ndarray:
        """``(n_items, d)`` float32, row ``k`` for ``item_ids[k]``."""
        was = self.training
        self.eval()
        m = self.item_table()[1:].numpy().astype(np.float32, copy=True)
        self.train(was)
        return m

    # -- users ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, neg: torch.Tensor, gap: torch.Tensor, mask: torch.Tensor, *,
               last: bool = True) -> torch.Tensor:
        """The encoder on embedded inputs (the exported graph): ``x (B, L, d)`` item vectors
        (left-padded), ``neg (B, L)`` 1.0 for negative events, ``gap (B, L)`` time-gap buckets,
        ``mask (B, L)`` 1.0 for real positions. The user vectors ``(B, d)`` (``last``), or every
        position's output ``(B, L, d)``."""
        B, L, _ = x.shape
        h = x + self.pos_emb[-L:][None] + neg[..., None] * self.neg_emb
        if self.gap_emb is not None:
            h = h + self.gap_emb(gap)
        h = self.drop(self.ln_in(h))
        ar = torch.arange(L, device=x.device)
        causal = ar[None, :] <= ar[:, None]  # (query, key): keys up to the query
        allowed = (causal[None] & (mask[:, None, :] > 0)) | (ar[None, :] == ar[:, None])[None]  # pads see themselves
        bias = torch.zeros(B, 1, L, L, dtype=x.dtype).masked_fill(~allowed[:, None], -1e9)
        for n, blk in enumerate(self.blocks):
            h = blk(h, bias, last=last and n == len(self.blocks) - 1)
        h = self.ln_out(h)
        return h[:, -1] if last else h

    def forward(self, idx: torch.Tensor, neg: torch.Tensor, gap: torch.Tensor, *, last: bool = True,
                table: torch.Tensor | None = None) -> torch.Tensor:
        table = self.item_table() if table is None else table
        return self.encode(table[idx], neg.to(table.dtype), gap, (idx > 0).to(table.dtype), last=last)

    @torch.no_grad()
    def user_vectors(self, idx: np.ndarray, neg: np.ndarray, gap: np.ndarray, *, batch: int = 512,
                     table: torch.Tensor | None = None) -> np.ndarray:
        """``(B, d)`` user vectors for ``(B, L)`` index, negative and gap arrays (eval mode)."""
        was = self.training
        self.eval()
        table = self.item_table() if table is None else table
        out = [self.forward(torch.as_tensor(idx[s:s + batch]), torch.as_tensor(neg[s:s + batch]),
                            torch.as_tensor(gap[s:s + batch]), table=table).numpy()
               for s in range(0, len(idx), batch)]
        self.train(was)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.cfg.d), np.float32)

    def summary(self) -> dict:
        return {"items": self.n_items, "id_vectors": len(self.id_items), "text_items": int(self.has_text[1:].sum()),
                "parameters": sum(p.numel() for p in self.parameters()), "config": asdict(self.cfg)}


class _Encoder(nn.Module):
    """Just :meth:`SequenceModel.encode`, the graph that is exported."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, neg, gap, mask):
        return self.model.encode(x, neg, gap, mask)


def export_onnx(model: SequenceModel) -> bytes:
    """The encoder graph as ONNX bytes (inputs ``x, neg, gap, mask``, output ``user``; batch and
    length dynamic: a batch of short sequences is padded to its longest, up to ``max_len``)."""
    model.eval()
    L, d = model.cfg.max_len, model.cfg.d
    x = torch.zeros(2, L, d)
    neg = torch.zeros(2, L)
    gap = torch.zeros(2, L, dtype=torch.long)
    mask = torch.ones(2, L)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Encoder(model), (x, neg, gap, mask), buf, input_names=["x", "neg", "gap", "mask"],
                          output_names=["user"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "batch", 1: "length"}, "neg": {0: "batch", 1: "length"},
                                        "gap": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"},
                                        "user": {0: "batch"}})
    return buf.getvalue()


def to_params(model: SequenceModel, idx: np.ndarray, neg: np.ndarray, gap: np.ndarray, *,
              text_weight: float = 0.0, meta: dict | None = None, tolerance: float = PARITY_TOLERANCE,
              onnx: bytes | None = None) -> SequenceParams:
    """What a worker needs to serve ``model`` (:class:`inference.sequence.SequenceParams`), with
    the parity check: the exported graph and the torch model encode the histories ``idx, neg,
    gap`` (``(B, max_len)`` each; real ones) and must agree within ``tolerance`` (max abs
    difference of the user vectors), else :class:`ParityError`. The difference is recorded in
    ``meta["parity_max_abs_diff"]``."""
    model.eval()
    onnx = export_onnx(model) if onnx is None else onnx
    proj_w = proj_b = text_mean = None
    if model.proj is not None:
        proj_w = model.proj.weight.detach().numpy().astype(np.float32, copy=True)
        proj_b = model.proj.bias.detach().numpy().astype(np.float32, copy=True)
        text_mean = model.text_mean.numpy()[: model.text_dim].astype(np.float32, copy=True)
    id_emb = model.id_emb.weight.detach().numpy()[1:].astype(np.float32, copy=True) if model.id_emb is not None else None
    tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k not in _ITEM_SIDE}
    meta = {"config": asdict(model.cfg), "fitted_until": model.fitted_until, **(meta or {})}
    params = SequenceParams(d=model.cfg.d, max_len=model.cfg.max_len, onnx=onnx, text_dim=model.text_dim,
                            proj_w=proj_w, proj_b=proj_b, text_mean=text_mean, text_scale=model.text_scale,
                            id_items=list(model.id_items), id_emb=id_emb, text_weight=text_weight,
                            meta=meta, tensors=tensors)
    diff = parity(model, params, idx, neg, gap)
    params.meta["parity_max_abs_diff"] = diff
    if not diff <= tolerance:
        raise ParityError(f"the exported sequence encoder differs from the trained one by {diff:.3g} (max abs, "
                          f"tolerance {tolerance:g}): the version is refused")
    return params


#: State-dict entries that are the item side (saved as arrays of their own), not the encoder.
_ITEM_SIDE = ("text", "has_text", "id_row", "text_mean", "id_emb.weight", "proj.weight", "proj.bias")


def from_params(params: SequenceParams) -> SequenceModel:
    """A version's trained model back from its serving parameters (to warm-start the next fit
    from): the encoder's tensors, the text projection and normalisation, and the id vectors
    (its catalogue is its id items; a fit builds its own and copies these by item id)."""
    known = {f.name for f in SequenceConfig.__dataclass_fields__.values()}
    cfg = SequenceConfig(**{k: v for k, v in params.meta.get("config", {}).items() if k in known})
    text = np.zeros((len(params.id_items), params.text_dim), np.float32) if params.text_dim else None
    model = SequenceModel(cfg, params.id_items, text, params.id_items,
                          text_mean=params.text_mean if params.text_mean is not None else None,
                          text_scale=params.text_scale)
    state = model.state_dict()
    with torch.no_grad():
        for k, v in params.tensors.items():
            if k in state and tuple(state[k].shape) == v.shape:
                state[k].copy_(torch.from_numpy(np.asarray(v)))
        if model.proj is not None and params.proj_w is not None:
            model.proj.weight.copy_(torch.from_numpy(params.proj_w))
            model.proj.bias.copy_(torch.from_numpy(params.proj_b))
        if model.id_emb is not None and params.id_emb is not None:
            model.id_emb.weight[1:] = torch.from_numpy(params.id_emb)
    model.fitted_until = params.meta.get("fitted_until")
    return model.eval()


def parity(model: SequenceModel, params: SequenceParams, idx: np.ndarray, neg: np.ndarray, gap: np.ndarray) -> float:
    """Max abs difference between torch and the exported graph (through the serving item side)."""
    if not len(idx):
        idx = np.zeros((1, model.cfg.max_len), np.int64)
        idx[0, -1] = 1 if model.n_items else 0
        neg = np.zeros(idx.shape, np.float32)
        gap = np.ones(idx.shape, np.int64)
    want = model.user_vectors(idx, neg, gap)
    E = np.zeros((model.n_items + 1, model.cfg.d), np.float32)  # the item side as a worker builds it
    text = model.text[1:, : model.text_dim].numpy() if model.text_dim else np.zeros((model.n_items, 0), np.float32)
    E[1:] = params.item_vectors(model.item_ids, text)
    mask = (idx > 0).astype(np.float32)
    got = params.user_vectors((E[idx] * mask[..., None]).astype(np.float32), np.asarray(neg, np.float32),
                              np.asarray(gap, np.int64), mask)
    return float(np.max(np.abs(got - want))) if want.size else 0.0
