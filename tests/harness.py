"""Real worker processes on a real broker, for every test folder (imported as ``harness``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.broker import free_port
from streams.settings import KafkaConfig
from streams.topics import Topics, ensure_topics

REPO = Path(__file__).resolve().parents[1]


@dataclass
class RunningWorker:
    kafka: KafkaConfig
    topics: Topics
    web_port: int
    proc: subprocess.Popen
    log_path: Path

    def metrics(self) -> dict[str, float]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k == prefix or k.startswith(prefix + "{"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def start_worker(kafka: KafkaConfig, topics: Topics, model_dir: Path, tmp: Path, *extra: str,
                 app_id: str | None = None, web_port: int | None = None, wait: bool = True,
                 env: dict[str, str] | None = None, entry: str = "streams.cli") -> RunningWorker:
    """Start ``streamrec worker`` as a separate process and wait until its catalogue is loaded
    (``wait=False``: return at once; call :func:`wait_ready` later). ``env``: extra variables;
    ``entry``: the module run with ``python -m`` (a test's wrapper around ``streams.cli``)."""
    web_port = web_port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"worker-{web_port}.log"
    cmd = [sys.executable, "-m", entry, "worker", "--broker", kafka.bootstrap, "--prefix", topics.prefix,
           "--app-id", app_id or f"test-{uuid.uuid4().hex[:8]}", "--model", str(model_dir),
           "--state-dir", str(tmp / "state"), "--web-port", str(web_port),
           # tuned for the embedded broker: a group join takes about half the session timeout
           "--session-timeout", "3", "--heartbeat", "1", "--fetch-wait-ms", "10", "--loglevel", "info", *extra]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    w = RunningWorker(kafka, topics, web_port, proc, log_path)
    return wait_ready(w) if wait else w


def is_ready(w: RunningWorker) -> bool:
    """Whether the worker's ``/health`` says ready now (False while it loads or is not answering)."""
    try:
        return bool(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{w.web_port}/health", timeout=2).read())
                    .get("ready"))
    except OSError:  # not answering yet, or 503 while loading
        return False


def wait_ready(w: RunningWorker, timeout_s: float = 240) -> RunningWorker:
    """Wait until the worker's ``/health`` says ready (its catalogue is loaded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if w.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.log()}")
        if is_ready(w):
            return w
        time.sleep(0.3)
    stop_worker(w)
    raise TimeoutError(f"worker not ready in time:\n{w.log()}")


def stop_worker(w: RunningWorker, sig: int = signal.SIGTERM) -> None:
    if w.proc.poll() is None:
        w.proc.send_signal(sig)
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def fresh_topics(kafka: KafkaConfig, partitions: int = 6) -> Topics:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka, topics, partitions)
    return topics
