"""The images' health check against a real worker configured the way a container is.

The worker runs as a real process on the embedded broker with only the environment a compose
worker gets (the image's ENV plus the service's ``environment``), so this also shows that the
container's configuration by variables reaches the worker: model, state dir, web host and port.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

from deployfiles import DOCKER, REPO, image_env, load_compose, service_env

from streams.broker import free_port

HEALTHCHECK = DOCKER / "healthcheck.py"


def _health(port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "STREAMREC_WEB_PORT": str(port)}
    return subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, text=True, env=env, timeout=30)


def _outside_address() -> str:
    """This machine's address on its network (not loopback): where a container's peers connect."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # UDP: picks the outgoing interface, sends nothing
        return s.getsockname()[0]


def test_health_check_follows_a_worker_configured_like_a_container(broker, model_dir, tmp_path):
    worker = load_compose()["services"]["worker"]
    port = free_port()
    env = {**os.environ, **image_env(worker), **service_env(worker), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = os.environ["PATH"]
    env.update({  # what differs between a container and this machine
        "STREAMREC_BROKER": broker.bootstrap,
        "STREAMREC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "STREAMREC_APP_ID": f"deploy-{uuid.uuid4().hex[:8]}",
        "STREAMREC_MODEL_DIR": str(model_dir),
        "STREAMREC_STATE_DIR": str(tmp_path / "state"),
        "STREAMREC_WEB_PORT": str(port),
    })
    before = _health(port)
    assert before.returncode == 1 and "no answer" in before.stdout

    log = open(tmp_path / "worker.log", "wb")
    # the compose command minus --registry (issue #4), plus the embedded broker's timing
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--session-timeout", "3",
                             "--heartbeat", "1", "--fetch-wait-ms", "10"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 240
        seen = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            r = _health(port)
            seen.append(r.returncode)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        assert seen[-1] == 0, (tmp_path / "worker.log").read_text()[-3000:]
        status, body = r.stdout.split(": ", 1)[1].split(" ", 1)
        assert status == "200" and json.loads(body)["ready"] is True
        # STREAMREC_WEB_HOST=0.0.0.0: Prometheus on another container reaches /metrics
        outside = _outside_address()
        assert not outside.startswith("127.")
        metrics = urllib.request.urlopen(f"http://{outside}:{port}/metrics", timeout=5).read().decode()
        assert "streamrec_model_info{" in metrics
        assert (tmp_path / "state" / env["STREAMREC_APP_ID"]).is_dir(), "STREAMREC_STATE_DIR reached the worker"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    after = _health(port)
    assert after.returncode == 1 and "no answer" in after.stdout
