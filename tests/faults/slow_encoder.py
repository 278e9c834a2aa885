"""``streamrec`` with a deliberately slow text encoder: ``python -m tests.faults.slow_encoder worker ...``.

A fake, and the only one in the fault tests: an encoder slower than the input is a real
condition (a long-text burst, a loaded CPU, a cold GPU), but not one a test can produce on
demand and size exactly. Everything else (broker, worker process, Faust, Kafka I/O) stays
real. Each encoder call sleeps ``STREAMREC_FAKE_ENCODE_S`` seconds (default 0.25; off the
event loop, like the real encoder) and returns a unit vector derived from the text, so the
worker's throughput is set by the sleep alone and costs next to no CPU.
"""
from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

from inference import encoder as _encoder

DELAY_S = float(os.environ.get("STREAMREC_FAKE_ENCODE_S", "0.25"))


def _slow_encode(self, texts):
    time.sleep(DELAY_S)
    out = np.zeros((len(texts), self.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        if text.strip():
            v = np.random.default_rng(zlib.crc32(text.encode("utf-8"))).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
    return out


_encoder.Encoder.encode = _slow_encode

if __name__ == "__main__":
    from streams.cli import main

    sys.exit(main())
