"""Worker settings, from arguments first, then ``STREAMREC_*`` variables.

The connection settings (``KafkaConfig``, ``--broker`` and the SASL/TLS flags) live in
:mod:`inference.wire`, shared with the trainer, and are re-exported here.
"""
from __future__ import annotations

import os
from pathlib import Path

from inference.wire import (  # noqa: F401 - re-exported
    DEFAULT_BROKER,
    DEFAULT_PREFIX,
    KafkaConfig,
    add_kafka_args,
    kafka_from_args,
)


def default_model_dir() -> Path:
    """Where ``streamrec export-onnx`` puts the default encoder unless told otherwise."""
    return Path(os.environ.get("STREAMREC_MODEL_DIR", "~/.cache/streamrec/models/all-MiniLM-L6-v2")).expanduser()


def default_state_dir() -> Path:
    return Path(os.environ.get("STREAMREC_STATE_DIR", "~/.cache/streamrec/state")).expanduser()
