"""Hot swap under load: a version is published while events stream in; nothing dropped or doubled.

Real broker, a real worker process following the control topic, the real trainer (`streamrec
train --once`) run while a producer keeps sending events at a steady rate.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

from harness import REPO, fresh_topics, start_worker, stop_worker
from kafkaio import read_all
from streams.replay import producer, publish_catalogue
from streams.settings import KafkaConfig

T0 = time.time() - 30 * 86400


def test_swap_while_events_flow(broker, model_dir, mi_dataset, tmp_path):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka, partitions=3)
    prod = producer(kafka)
    items = sorted(mi_dataset.items)[:300]  # real items; a part of the catalogue keeps start-up quick
    publish_catalogue(prod, topics, [mi_dataset.items[i] for i in items])
    prod.flush()
    rng = random.Random(5)
    chosen = rng.sample(items, 200)
    pairs = [(chosen[2 * k], chosen[2 * k + 1]) for k in range(100)]

    def event(i: int) -> tuple[str, dict]:  # user k clicks A then B of a pair: a pattern training picks up
        k, step = divmod(i, 2)
        user, item = f"u{k}", pairs[k % len(pairs)][step]
        return user, {"user_id": user, "item_id": item, "event_time": T0 + 600 * k + 60 * step, "event_id": f"{user}-{step}"}

    registry = tmp_path / "registry"
    w = start_worker(kafka, topics, model_dir, tmp_path / "w", "--partitions", "3", "--registry", str(registry))
    sent, stop_after = 0, None

    def stream(rate: float = 30.0) -> None:  # steady load until 200 events after the swap
        nonlocal sent
        start = time.monotonic()
        while stop_after is None or sent < stop_after:
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
            user, value = event(sent)
            prod.send(topics.clicks, key=user.encode(), value=json.dumps(value).encode())
            sent += 1
        prod.flush()

    def version() -> str:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{w.web_port}/health", timeout=5).read())[
            "model_version"]

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        while sent < 300:
            time.sleep(0.2)
        trainer = subprocess.run([sys.executable, "-m", "streams.cli", "train", "--once", "--broker", kafka.bootstrap,
                                  "--prefix", topics.prefix, "--registry", str(registry), "--model", str(model_dir),
                                  "--min-events", "100", "--min-pairs", "20", "--epochs", "10", "--quiet"],
                                 capture_output=True, text=True, cwd=REPO, timeout=400)
        assert trainer.returncode == 0, trainer.stderr[-3000:]
        assert json.loads(trainer.stdout)["status"] == "accepted", trainer.stdout
        deadline = time.monotonic() + 60
        while not version().endswith(":v1"):
            assert time.monotonic() < deadline, "the worker did not switch to v1"
            time.sleep(0.2)
        swapped_at = sent
        stop_after = sent + 200
        t.join(timeout=120)
        n = sent
        out = read_all(kafka, topics.recommendations, timeout_s=240, settle_s=2.0,
                       until=lambda rs: len({r["trigger"]["event_id"] for r in rs}) >= n)
        processed = w.metric("streamrec_events_total")
        swaps = w.metric("streamrec_model_swaps_total")
    finally:
        stop_after = 0
        prod.close()
        stop_worker(w)
    events = [event(i) for i in range(n)]
    assert swapped_at < len(events), "the version must land while events are still flowing"
    ids = Counter(r["trigger"]["event_id"] for r in out)
    assert len(ids) == len(events) == processed and set(ids.values()) == {1}  # none dropped, none twice
    versions = Counter(r["model_version"].rsplit(":", 1)[-1] for r in out)
    assert set(versions) == {"v0", "v1"}, versions  # every record names one of the two
    assert swaps == 1
    assert sum(1 for r in out if r["model_version"].endswith(":v1")) >= 200  # the events after the swap
    for part in {r["_partition"] for r in out}:  # within a partition the switch happens once, forward
        seq = [r["model_version"].endswith(":v1") for r in sorted(out, key=lambda r: r["_offset"])
               if r["_partition"] == part]
        assert seq == sorted(seq)
