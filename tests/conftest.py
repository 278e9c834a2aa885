"""Shared fixtures: one real exported encoder per code version, reused across test runs."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _export_key() -> str:
    src = (REPO / "training" / "export.py").read_bytes()
    return hashlib.sha256(src).hexdigest()[:12]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The default encoder (all-MiniLM-L6-v2) exported to ONNX by our own exporter.

    Cached under ~/.cache/streamrec/test-models keyed by the exporter's source hash, so a
    change to the exporter re-exports and an unchanged one costs nothing.
    """
    from training.export import export_onnx

    root = Path(os.environ.get("STREAMREC_TEST_CACHE", Path.home() / ".cache" / "streamrec" / "test-models"))
    out = root / f"minilm-{_export_key()}"
    if not (out / "manifest.json").is_file():
        export_onnx(None, out, progress=False)
    return out


@pytest.fixture(scope="session")
def encoder(model_dir):
    from inference.encoder import Encoder

    return Encoder(model_dir, device="cpu")


@pytest.fixture(scope="session")
def broker():
    """The embedded Kafka-protocol broker (Tansu) over TCP, shared by the whole session."""
    from streams.broker import EmbeddedBroker, free_port

    with EmbeddedBroker(port=free_port(), log_file=None) as b:
        yield b


@pytest.fixture(scope="session")
def mi_dataset():
    from inference.datasets import load_dataset

    return load_dataset("musical_instruments")
