"""The text encoder: an exported ONNX sentence model behind a fast tokenizer.

A model directory is what ``streamrec export-onnx`` writes: ``manifest.json``, one ONNX
file per variant (``fp32``, ``int8`` for CPU, ``fp16`` for GPU) and the tokenizer files.
The graph already does mean pooling and L2 normalisation, so every row that comes back
is a float32 unit vector.

Example (needs an exported model directory)::

    enc = Encoder("~/.cache/streamrec/models/all-MiniLM-L6-v2")
    vecs = enc.encode(["warm acoustic guitar strings", "a pop filter for vocals"])
    vecs.shape  # (2, 384)
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger("streamrec.encoder")

#: Padded tokens per ONNX call (rows x longest row). A batch of 32 review texts padded to its
#: longest (often 256 tokens) does ~3x the work of the same texts in length-sorted calls under
#: this budget (measured: streamrec bench pipeline); short texts still go 32 at a time.
#: Small calls also keep INT8 activations in cache: on the 2-core bench box (AVX2) CPU time per
#: review text was 37 ms at 256 tokens per call, 40 ms at 512 and 44 ms at 1024 (parallel lanes).
MAX_BATCH_TOKENS = 256

#: Characters kept before tokenizing. Tokenizing a 1 MB text costs ~100 ms for nothing,
#: since everything past ``max_tokens`` is cut anyway; 16 chars/token is generous.
CHARS_PER_TOKEN_BOUND = 16


class ModelDirError(FileNotFoundError):
    """The model directory is missing or incomplete."""


@dataclass(frozen=True)
class EncoderInfo:
    """What was loaded, for logs, metrics and output records."""

    model_name: str
    model_dir: str
    variant: str
    provider: str
    dim: int
    max_tokens: int


def read_manifest(model_dir: str | Path) -> dict:
    """Load ``manifest.json`` of an exported model, with an actionable error if absent."""
    path = Path(model_dir).expanduser() / "manifest.json"
    if not path.is_file():
        raise ModelDirError(
            f"no exported encoder at {path.parent} (manifest.json missing): "
            f"run `streamrec export-onnx --out {path.parent}` first"
        )
    return json.loads(path.read_text())


def gpu_present() -> bool:
    """True when an NVIDIA driver is visible; avoids onnxruntime-gpu's noisy CUDA load errors on CPU hosts."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def choose_device(device: str = "auto") -> str:
    """Resolve ``auto`` to ``cuda`` when onnxruntime can use a GPU here, else ``cpu``."""
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device != "auto":
        return device
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present():
        return "cuda"
    return "cpu"


def _session(path: Path, device: str, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No spin-waiting between ops: on a small box the encoder shares the cores with the event
    # loop and the broker, and spinning threads took their CPU (bench pipeline: +10-100%
    # sentences/s under contention, no loss alone).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from pip (nvidia-*) packages are found this way
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - best effort, the session check below decides
                log.debug("onnxruntime.preload_dlls failed: %s", exc)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def _load_tokenizer(model_dir: Path, max_tokens: int):
    """The fast tokenizer, truncating at ``max_tokens`` and never padding (we pad per batch)."""
    tok_file = model_dir / "tokenizer.json"
    if tok_file.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
    else:  # a directory with only a slow tokenizer's files: let transformers convert it
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True, local_files_only=True)
        tok = tok.backend_tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


class Encoder:
    """Encode texts to unit vectors with an exported ONNX model.

    ``variant`` is ``auto`` (FP16 on CUDA, INT8 on CPU), or ``fp32``/``int8``/``fp16``.
    ``device`` is ``auto``, ``cpu`` or ``cuda``; a CUDA request that onnxruntime cannot
    honour falls back to the CPU, and says so in the log.

    On the CPU with ``threads`` > 1 (default: every core) an ``encode`` that makes several
    ONNX calls runs them side by side on ``threads`` single-threaded sessions ("lanes"); a
    lone call uses one session with ``threads`` intra-op threads. Lanes need no hand-off
    between threads inside every operator: 30% less CPU per review text than one session with
    two threads on the 2-core bench box (37 vs 53 ms), and calls of different lengths overlap.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        variant: str = "auto",
        device: str = "auto",
        max_tokens: int | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        self.model_dir = Path(model_dir).expanduser().resolve()
        self.manifest = read_manifest(self.model_dir)
        self.dim = int(self.manifest["dim"])
        self.max_tokens = int(max_tokens or self.manifest.get("max_tokens", 256))
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        variants = self.manifest["variants"]
        device = choose_device(device)
        if variant == "auto":
            variant = "fp16" if device == "cuda" and "fp16" in variants else ("int8" if "int8" in variants else "fp32")
        if variant not in variants:
            raise ModelDirError(
                f"variant {variant!r} is not in {self.model_dir} (has {sorted(variants)}); "
                "re-export with it or pick another variant"
            )
        path = self.model_dir / variants[variant]["file"]
        self._session = _session(path, device, threads)
        provider = self._session.get_providers()[0]
        if device == "cuda" and provider != "CUDAExecutionProvider":
            log.warning(
                "CUDA was requested but onnxruntime could not load it (CUDA/cuDNN libraries missing?); "
                "running on CPU. Install onnxruntime-gpu's CUDA dependencies or pass --device cpu."
            )
            if variant == "fp16":
                variant = "int8" if "int8" in variants else "fp32"
                self._session = _session(self.model_dir / variants[variant]["file"], "cpu", threads)
            provider = self._session.get_providers()[0]
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._output = self._session.get_outputs()[0].name
        self._tokenizer = _load_tokenizer(self.model_dir, self.max_tokens)
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self._lock = threading.Lock()
        self.lanes = 0
        self._lanes: queue.SimpleQueue | None = None
        self._lane_pool: ThreadPoolExecutor | None = None
        lanes = threads or os.cpu_count() or 1
        if provider == "CPUExecutionProvider" and lanes > 1:
            self._lanes = queue.SimpleQueue()
            for _ in range(lanes):
                self._lanes.put(_session(self.model_dir / variants[variant]["file"], "cpu", 1))
            self._lane_pool = ThreadPoolExecutor(lanes, thread_name_prefix="streamrec-encoder-lane")
            self.lanes = lanes
        self.info = EncoderInfo(
            model_name=str(self.manifest.get("model_name", self.model_dir.name)),
            model_dir=str(self.model_dir),
            variant=variant,
            provider=provider,
            dim=self.dim,
            max_tokens=self.max_tokens,
        )
        log.info(
            "encoder %s: variant %s on %s, dim %d, max %d tokens",
            self.info.model_name, variant, provider, self.dim, self.max_tokens,
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array of unit vectors.

        Texts are sorted by token length and cut into calls of at most ``batch_size`` rows and
        ``max_batch_tokens`` padded tokens, so each ONNX call pads little. An empty or
        whitespace-only text has no meaning to encode: its row is all zeros, which callers
        treat as "no text signal". Non-``str`` input raises ``TypeError``.
        """
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        keep: list[int] = []
        clean: list[str] = []
        limit = self.max_tokens * CHARS_PER_TOKEN_BOUND
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"text #{i} is {type(text).__name__}, not str: decode bytes as UTF-8 before encoding"
                )
            if text.strip():
                keep.append(i)
                clean.append(text[:limit])
        if not clean:
            return out
        encodings = self._tokenizer.encode_batch(clean)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        rows = np.asarray(keep)
        calls = []
        start = 0
        while start < len(order):
            end = start + 1  # ascending lengths: the newest row is the longest of the call
            while (end < len(order) and end - start < self.batch_size
                   and (end - start + 1) * int(lengths[order[end]]) <= self.max_batch_tokens):
                end += 1
            calls.append(order[start:end])
            start = end
        if len(calls) == 1 or self._lane_pool is None:
            for chunk in calls:
                with self._lock:  # one call at a time on this session: it uses every thread given
                    out[rows[chunk]] = self._run(self._session, [encodings[j] for j in chunk],
                                                 int(lengths[chunk].max()))
            return out
        # the longest calls first, so no lane is left with a long one at the end
        calls.sort(key=lambda c: -len(c) * int(lengths[c].max()))
        results = self._lane_pool.map(
            lambda c: self._run_on_lane([encodings[j] for j in c], int(lengths[c].max())), calls)
        for chunk, vecs in zip(calls, results):
            out[rows[chunk]] = vecs
        return out

    def _run_on_lane(self, encodings: list, width: int) -> np.ndarray:
        assert self._lanes is not None
        session = self._lanes.get()  # as many lanes as pool threads: one is always free here
        try:
            return self._run(session, encodings, width)
        finally:
            self._lanes.put(session)

    def _run(self, session, encodings: list, width: int) -> np.ndarray:
        n = len(encodings)
        ids = np.full((n, width), self._pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for r, enc in enumerate(encodings):
            k = len(enc.ids)
            ids[r, :k] = enc.ids
            mask[r, :k] = 1
            types[r, :k] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {name: feeds[name] for name in self._inputs}
        (vecs,) = session.run([self._output], feeds)
        return np.asarray(vecs, dtype=np.float32)
