"""Benchmarks: the text encoder backends and Top-N scoring by dot product.

``streamrec bench encoder [--model DIR] [--out PATH]``
    torch eager (the original HF model + mean pooling) vs the exported ONNX variants
    (``training.export``) on real review text, batches 1/8/32: sentences/s (tokenization
    included), p50/p99 ms per batch call.
``streamrec bench scoring [--out PATH]``
    Top-100 by dot product over random unit-vector catalogues (10k/100k/1M x 384), one user and a
    batch of 256 users, float32 (numpy, torch) and float16 (torch, CUDA when available).

Both write JSON (machine description + rows) and print a rich table. Each cell is time-bounded so
the whole run stays within a few minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .machine import machine_info

log = logging.getLogger("streamrec.bench")

DEFAULT_EXPORT_DIR = Path("artifacts/onnx/all-MiniLM-L6-v2")
ENCODER_OUT = "bench/results/encoder.json"
SCORING_OUT = "bench/results/scoring.json"


# --------------------------------------------------------------------------------------------
# machine + timing helpers
# --------------------------------------------------------------------------------------------






def _percentile_ms(samples: Sequence[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(samples) * 1000.0, q)), 3)


def _time_calls(fn: Callable[[int], Any], seconds: float, min_calls: int = 3,
                max_calls: int = 10_000, warmup: int = 1) -> list[float]:
    """Call ``fn(i)`` ``warmup`` times untimed, then repeatedly for about ``seconds`` (at least
    ``min_calls``); returns the per-call wall times in seconds."""
    for i in range(warmup):
        fn(i)
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        fn(warmup + i)
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def _progress(total: int, label: str):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn(f"[bold]{label}[/bold] {{task.description}}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True))


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 120))


def _write_json(out_path: str | Path, payload: dict) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------
# encoder benchmark
# --------------------------------------------------------------------------------------------
def _cuda_provider_works() -> tuple[bool, str]:
    """Whether onnxruntime can create CUDA sessions here (without triggering its noisy load error
    on machines that have no NVIDIA device at all)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "onnxruntime has no CUDAExecutionProvider"
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi")):
        return False, "no NVIDIA device"
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001
            log.info("onnxruntime.preload_dlls() failed: %s", exc)
    return True, ""


def _ort_session(path: Path, cuda: bool = False, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


def _ensure_export(model_dir: str | Path | None) -> tuple[Path, dict]:
    from training.export import export_onnx

    export_dir = Path(model_dir) if model_dir is not None else DEFAULT_EXPORT_DIR
    manifest_path = export_dir / "manifest.json"
    if not manifest_path.is_file():
        if model_dir is not None and (export_dir / "config.json").is_file():
            raise SystemExit(
                f"{export_dir} is a Hugging Face model directory, not an ONNX export: run "
                f"`streamrec export-onnx --model {export_dir} --out DIR` and bench DIR")
        log.info("no export at %s: exporting the default model there first", export_dir)
        export_onnx(None, export_dir)
    return export_dir, json.loads(manifest_path.read_text())


TEXT_PROFILES = ("reviews", "reviews-sorted", "short")


def _encoder_texts(profile: str, n: int, tok, max_tokens: int) -> list[str]:
    """The benchmark texts of a profile (all real Musical Instruments review texts):

    ``reviews``        the first ``n`` reviews of the file as they come (long tail: ~5% exceed
                       256 tokens, so most batches of 32 pad to max_tokens);
    ``reviews-sorted`` the same texts sorted by token count, so each batch holds similar lengths
                       (what length bucketing in a runtime encoder would give);
    ``short``          the first ``n`` reviews of 39-83 tokens (the setup of MEASURED.md).
    """
    from inference.data import review_sentences

    def ntok(texts):
        return [len(x) for x in tok(texts, truncation=True, max_length=max_tokens)["input_ids"]]

    if profile in ("reviews", "reviews-sorted"):
        texts = review_sentences(limit=n)
        if profile == "reviews-sorted":
            lengths = ntok(texts)
            texts = [t for _, t in sorted(zip(lengths, texts), key=lambda p: p[0])]
        return texts
    if profile == "short":
        pool = review_sentences(limit=10**9)
        out: list[str] = []
        for i in range(0, len(pool), 512):
            chunk = pool[i:i + 512]
            out += [t for t, k in zip(chunk, ntok(chunk)) if 39 <= k <= 83]
            if len(out) >= n:
                break
        return out[:n]
    raise ValueError(f"unknown text profile {profile!r}; choose from {TEXT_PROFILES}")


def bench_encoder(
    model_dir: str | Path | None,
    out_path: str | Path = ENCODER_OUT,
    batches: Sequence[int] = (1, 8, 32),
    n_sentences: int = 128,
    seconds: float = 1.0,
    texts: Sequence[str] = TEXT_PROFILES,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Benchmark torch eager vs the ONNX variants of the export in ``model_dir`` (an
    ``export-onnx`` output directory; ``None``: ``artifacts/onnx/all-MiniLM-L6-v2``, exported
    first when missing). Writes ``out_path`` and returns the same dict.

    Every cell (text profile x backend x batch) encodes whole passes over the same
    ``n_sentences`` texts in the same batches (at least one pass, then more until about
    ``seconds`` per backend), so all backends do exactly the same work; the backends take turns
    pass by pass so background load hits them alike. Tokenization is included, batches pad to
    their longest text and truncate at the manifest's max_tokens."""
    import numpy as np
    import torch

    from training.export import (
        VARIANT_FILES,
        default_model_dir,
        load_tokenizer,
        pooled_encoder,
    )

    export_dir, manifest = _ensure_export(model_dir)
    max_tokens = int(manifest["max_tokens"])
    input_names = list(manifest["inputs"])
    source = Path(manifest.get("source_dir") or default_model_dir())
    if not (source / "config.json").is_file():
        source = default_model_dir()
    cores = threads or os.cpu_count() or 1
    torch.set_num_threads(cores)
    tok = load_tokenizer(export_dir)  # the exported tokenizer (no fixed padding)

    corpora = {p: _encoder_texts(p, n_sentences, tok, max_tokens) for p in texts}
    text_stats = {}
    for p, tx in corpora.items():
        lengths = np.array([len(x) for x in tok(tx, truncation=True, max_length=max_tokens)["input_ids"]])
        text_stats[p] = {"sentences": len(tx), "tokens_p50": int(np.percentile(lengths, 50)),
                         "tokens_p90": int(np.percentile(lengths, 90)), "tokens_max": int(lengths.max()),
                         "at_max_tokens": round(float((lengths >= max_tokens).mean()), 3)}

    def tokenize(batch, kind):
        return tok(batch, padding="longest", truncation=True, max_length=max_tokens, return_tensors=kind)

    def torch_backend():
        # HF's default attention (sdpa): the best plain-torch baseline, not the export's eager one
        module = pooled_encoder(source, attn_implementation=None)

        def call(batch):
            enc = tokenize(batch, "pt")
            with torch.inference_mode():
                return module(**{k: enc[k] for k in input_names}).numpy()
        return call

    def ort_backend(variant: str, cuda: bool = False):
        def setup():
            session = _ort_session(export_dir / VARIANT_FILES[variant], cuda=cuda, threads=cores)
            if cuda and session.get_providers()[0] != "CUDAExecutionProvider":
                raise RuntimeError(f"CUDA provider not active (got {session.get_providers()})")

            def call(batch):
                enc = tokenize(batch, "np")
                return session.run(["embeddings"], {k: enc[k].astype(np.int64) for k in input_names})[0]
            return call
        return setup

    backends: list[tuple[str, Callable[[], Callable]]] = [("torch", torch_backend)]
    skipped: dict[str, str] = {}
    for variant in ("fp32", "int8"):
        if variant in manifest["variants"]:
            backends.append((f"onnx-{variant}", ort_backend(variant)))
        else:
            skipped[f"onnx-{variant}"] = "not in the export"
    cuda_ok, why = _cuda_provider_works()
    if "fp16" not in manifest["variants"]:
        skipped["onnx-fp16-cuda"] = "not in the export"
    elif cuda_ok:
        backends.append(("onnx-fp16-cuda", ort_backend("fp16", cuda=True)))
    else:
        skipped["onnx-fp16-cuda"] = why

    # all backends are loaded up front and take turns pass by pass (rotating who goes first), so
    # on a shared machine they see the same background load and their ratios stay meaningful
    calls: dict[str, Callable] = {}
    for name, setup in backends:
        try:
            calls[name] = setup()
            calls[name](corpora[next(iter(corpora))][:8])  # first-run allocations
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA provider failing to start
            skipped[name] = f"{type(exc).__name__}: {exc}"
            log.warning("backend %s skipped: %s", name, exc)
            calls.pop(name, None)

    results: list[dict[str, Any]] = []
    load_before = round(os.getloadavg()[0], 2)
    cells = len(batches) * len(corpora)
    t_start = time.perf_counter()
    with _progress(cells, "bench encoder") if progress else _nullcontext() as bar:
        task = bar.add_task("", total=cells) if bar else None
        for profile, corpus in corpora.items():
            for b in batches:
                if bar:
                    bar.update(task, description=f"{profile} batch {b}")
                chunks = [corpus[i:i + b] for i in range(0, len(corpus), b)]
                times: dict[str, list[float]] = {name: [] for name in calls}
                passes = 0
                for call in calls.values():
                    call(chunks[len(chunks) // 2])  # warm up at this batch size
                t_cell = time.perf_counter()
                while passes == 0 or time.perf_counter() - t_cell < seconds * len(calls):
                    names = list(calls)
                    names = names[passes % len(names):] + names[:passes % len(names)]
                    for name in names:
                        time.sleep(0.05)  # let the previous backend's spinning threads park
                        for chunk in chunks:
                            t0 = time.perf_counter()
                            calls[name](chunk)
                            times[name].append(time.perf_counter() - t0)
                    passes += 1
                for name, ts in times.items():
                    row = {
                        "text": profile, "backend": name, "batch": b,
                        "sentences_per_s": round(passes * len(corpus) / sum(ts), 1),
                        "p50_ms": _percentile_ms(ts, 50), "p99_ms": _percentile_ms(ts, 99),
                        "calls": len(ts),
                    }
                    results.append(row)
                    log.info("%s", row)
                if bar:
                    bar.advance(task)
    calls.clear()
    order = {name: i for i, (name, _) in enumerate(backends)}
    results.sort(key=lambda r: (order[r["backend"]], list(corpora).index(r["text"]), r["batch"]))

    def ratio(profile, batch=32):
        rate = {r["backend"]: r["sentences_per_s"] for r in results
                if r["text"] == profile and r["batch"] == batch}
        return round(rate["onnx-int8"] / rate["torch"], 2) if rate.get("torch") and rate.get("onnx-int8") else None

    ratios = {p: ratio(p) for p in corpora}
    machine = machine_info()
    machine["load_avg_1m_before"] = load_before
    payload = {
        "machine": machine,
        "model": {"name": manifest.get("model_name"), "export_dir": str(export_dir),
                  "source_dir": str(source), "max_tokens": max_tokens},
        "texts": text_stats,
        "settings": {"threads": cores, "min_seconds_per_cell": seconds, "padding": "longest in batch",
                     "schedule": "backends interleaved pass by pass",
                     "tokenization_included": True, "torch_attention": "sdpa (transformers default)",
                     "wall_seconds": round(time.perf_counter() - t_start, 1)},
        "results": results,
        "skipped": skipped,
        # headline: the first text profile (file-order reviews by default)
        "int8_vs_torch_b32": ratios[next(iter(corpora))] if corpora else None,
        "int8_vs_torch_b32_by_text": ratios,
    }
    _write_json(out_path, payload)
    _print_encoder_table(payload, out_path)
    return payload


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _print_encoder_table(payload: dict, out_path) -> None:
    from rich.table import Table

    m = payload["machine"]
    table = Table(title=f"encoder {payload['model']['name']}: {m['cores']} cores, {m['cpu_model']}, "
                        f"gpu {m['gpu']}")
    for col in ("text", "backend", "batch", "sentences/s", "p50 ms", "p99 ms", "calls"):
        table.add_column(col, justify="left" if col in ("text", "backend") else "right")
    for r in payload["results"]:
        table.add_row(r["text"], r["backend"], str(r["batch"]), f"{r['sentences_per_s']:.1f}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", str(r["calls"]))
    console = _console()
    console.print(table)
    for p, t in payload["texts"].items():
        console.print(f"{p}: {t['sentences']} texts, tokens p50 {t['tokens_p50']} / p90 "
                      f"{t['tokens_p90']} / max {t['tokens_max']}, {t['at_max_tokens']:.0%} at max_tokens")
    for name, why in payload["skipped"].items():
        console.print(f"skipped {name}: {why}")
    console.print(f"int8 / torch at batch 32: {payload['int8_vs_torch_b32_by_text']}  -> {out_path}")


# --------------------------------------------------------------------------------------------
# scoring benchmark
# --------------------------------------------------------------------------------------------
def _unit_rows(rng, n: int, dim: int):
    import numpy as np

    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def topn_numpy(queries, catalog, n: int):
    """Top-``n`` catalogue indices per query row by dot product, best first (numpy float32)."""
    import numpy as np

    scores = queries @ catalog.T
    part = np.argpartition(scores, -n, axis=1)[:, -n:]  # (no negated copy of the scores)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def bench_scoring(
    out_path: str | Path = SCORING_OUT,
    sizes: Sequence[int] = (10_000, 100_000, 1_000_000),
    dim: int = 384,
    n: int = 100,
    users: Sequence[int] = (1, 256),
    seconds: float = 1.5,
    slow_call_s: float = 5.0,
    progress: bool = True,
) -> dict:
    """Top-``n`` by dot product over random unit-vector catalogues. Rows: numpy float32
    (matmul + argpartition + sort of the top n), torch float32 (matmul + topk), torch float16
    (CUDA when available, else CPU). Each cell runs for about ``seconds`` after one warm-up call
    (at least 3 timed calls; 2 when a call takes over a second; just the first call when it took
    over ``slow_call_s``, as CPU fp16 at 1M x 256 users). ``recall``
    of each row is its overlap with the numpy float32 top-n (ties and fp16 rounding)."""
    import numpy as np
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    fp16_backend = "torch-fp16-cuda" if cuda else "torch-fp16-cpu"
    rng = np.random.default_rng(0)
    queries_all = _unit_rows(rng, max(users), dim)

    rows: list[dict[str, Any]] = []
    load_before = round(os.getloadavg()[0], 2)
    t_start = time.perf_counter()
    cells = len(sizes) * len(users) * 3
    with _progress(cells, "bench scoring") if progress else _nullcontext() as bar:
        task = bar.add_task("", total=cells) if bar else None
        for size in sizes:
            if bar:
                bar.update(task, description=f"catalogue {size:,}: building")
            catalog = _unit_rows(rng, size, dim)
            cat32 = torch.from_numpy(catalog)
            cat16 = cat32.to(device=device, dtype=torch.float16)
            for u in users:
                q = queries_all[:u]
                q32 = torch.from_numpy(q)
                q16 = q32.to(dtype=torch.float16)
                t0 = time.perf_counter()
                exact = topn_numpy(q, catalog, n)
                exact_s = time.perf_counter() - t0

                def run_numpy(_i):
                    return topn_numpy(q, catalog, n)

                def run_torch32(_i):
                    return torch.topk(q32 @ cat32.T, n, dim=1).indices

                def run_torch16(_i):
                    scores = q16.to(device, non_blocking=True) @ cat16.T
                    idx = torch.topk(scores, n, dim=1).indices
                    return idx.cpu()  # includes the device sync on CUDA

                for dtype, backend, fn in (("float32", "numpy", run_numpy),
                                           ("float32", "torch-fp32", run_torch32),
                                           ("float16", fp16_backend, run_torch16)):
                    if bar:
                        bar.update(task, description=f"catalogue {size:,} x {u} users {backend}")
                    with torch.inference_mode():
                        # the first call is the warm-up (and the reference, for numpy)
                        t0 = time.perf_counter()
                        got = exact if fn is run_numpy else np.asarray(fn(-1))
                        first = exact_s if fn is run_numpy else time.perf_counter() - t0
                        if first > slow_call_s:
                            # e.g. 1M x 256 users on CPU fp16: the one call is the measurement
                            times = [first]
                        else:  # multi-second cells: 2 timed calls, not 3+
                            times = _time_calls(fn, seconds, min_calls=2 if first > 1.0 else 3, warmup=0)
                    recall = float(np.mean([len(set(a) & set(b)) / n for a, b in zip(got, exact)]))
                    row = {"catalog": size, "users": u, "dtype": dtype, "backend": backend,
                           "p50_ms": _percentile_ms(times, 50), "p99_ms": _percentile_ms(times, 99),
                           "calls": len(times), "recall": round(recall, 4)}
                    rows.append(row)
                    log.info("%s", row)
                    if bar:
                        bar.advance(task)

    machine = machine_info()
    machine["load_avg_1m_before"] = load_before
    payload = {
        "machine": machine,
        "settings": {"dim": dim, "n": n, "threads": cores, "seconds_per_cell": seconds,
                     "slow_call_s": slow_call_s,
                     "vectors": "random unit vectors (standard normal, L2-normalised)",
                     "float16_device": str(device),
                     "wall_seconds": round(time.perf_counter() - t_start, 1)},
        "results": rows,
    }
    _write_json(out_path, payload)
    _print_scoring_table(payload, out_path)
    return payload


def _print_scoring_table(payload: dict, out_path) -> None:
    from rich.table import Table

    m = payload["machine"]
    table = Table(title=f"Top-{payload['settings']['n']} by dot product, dim {payload['settings']['dim']}: "
                        f"{m['cores']} cores, gpu {m['gpu']}")
    for col in ("catalog", "users", "dtype", "backend", "p50 ms", "p99 ms", "calls", "recall"):
        table.add_column(col, justify="left" if col in ("dtype", "backend") else "right")
    for r in payload["results"]:
        table.add_row(f"{r['catalog']:,}", str(r["users"]), r["dtype"], r["backend"],
                      f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", str(r["calls"]), f"{r['recall']:.3f}")
    console = _console()
    console.print(table)
    console.print(f"-> {out_path}")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="streamrec bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    enc = sub.add_parser("encoder", help="text encoder backends: torch vs ONNX fp32/int8 (fp16 on CUDA)")
    enc.add_argument("--model", default=None, metavar="DIR",
                     help=f"export-onnx output directory (default {DEFAULT_EXPORT_DIR}, exported if missing)")
    enc.add_argument("--out", default=ENCODER_OUT, metavar="PATH")
    enc.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    enc.add_argument("--seconds", type=float, default=1.0,
                     help="minimum time per cell (at least one pass over the texts)")
    enc.add_argument("--sentences", type=int, default=128, help="review texts per pass")
    enc.add_argument("--threads", type=int, default=None,
                     help="torch / onnxruntime intra-op threads (default: all cores)")
    enc.add_argument("--texts", default=",".join(TEXT_PROFILES),
                     help=f"comma-separated text profiles ({', '.join(TEXT_PROFILES)})")
    sc = sub.add_parser("scoring", help="Top-100 by dot product, float32 vs float16")
    sc.add_argument("--model", default=None, metavar="DIR", help=argparse.SUPPRESS)
    sc.add_argument("--out", default=SCORING_OUT, metavar="PATH")
    sc.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated catalogue sizes")
    sc.add_argument("--dim", type=int, default=384)
    sc.add_argument("--n", type=int, default=100)
    sc.add_argument("--seconds", type=float, default=1.5, help="time per cell")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ints = lambda s: tuple(int(x) for x in s.split(",") if x.strip())  # noqa: E731
    if args.what == "encoder":
        bench_encoder(args.model, args.out, batches=ints(args.batches), n_sentences=args.sentences,
                      seconds=args.seconds, texts=[t for t in args.texts.split(",") if t.strip()],
                      threads=args.threads)
    else:
        bench_scoring(args.out, sizes=ints(args.sizes), dim=args.dim, n=args.n, seconds=args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
