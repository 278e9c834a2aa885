"""The learning loop end to end: worker asks, trainer trains, registry keeps, worker swaps.

Real broker over TCP, real worker and trainer processes, the real ONNX encoder and the real
Musical Instruments catalogue. The events follow a pattern the item texts cannot reveal:
each user clicks an item A, then its partner B (random pairs over the real catalogue, the
collaborative signal "people who took A took B"). The untrained system, which ranks by text
similarity, cannot know B follows A; a trained version must.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections import Counter

from harness import REPO, fresh_topics, start_worker, stop_worker
from kafkaio import read_all, send
from streams.replay import producer, publish_catalogue
from streams.settings import KafkaConfig

T0 = time.time() - 30 * 86400


def catalogue(ds) -> list[str]:
    """400 real items of the catalogue: enough for 100 pairs plus distractors, quick to encode."""
    return sorted(ds.items)[:400]


def published_catalogue(broker, ds):
    """Fresh 3-partition topics with :func:`catalogue`'s items published: ``(kafka, topics, items)``."""
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka, partitions=3)
    items = catalogue(ds)
    prod = producer(kafka)
    publish_catalogue(prod, topics, [ds.items[i] for i in items])
    prod.close()
    return kafka, topics, items


def pairs_of(items: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    chosen = rng.sample(items, 2 * n)
    return [(chosen[2 * k], chosen[2 * k + 1]) for k in range(n)]


def pair_events(pairs, users: range, prefix: str, t0: float) -> list[tuple[bytes, dict]]:
    """User k clicks A then B of pair k % len(pairs)."""
    out = []
    for k in users:
        a, b = pairs[k % len(pairs)]
        user = f"{prefix}{k}"
        for step, item in enumerate((a, b)):
            out.append((user.encode(), {"user_id": user, "item_id": item, "event_time": t0 + 600 * k + 60 * step,
                                        "event_id": f"{user}-{step}"}))
    return out


def health(worker) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/health", timeout=5).read())


def start_trainer(kafka: KafkaConfig, topics, registry, model_dir, log_path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streams.cli", "train", "--broker", kafka.bootstrap, "--prefix", topics.prefix,
           "--registry", str(registry), "--model", str(model_dir), "--quiet", "--min-pairs", "50", *extra]
    return subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)


def test_retrain_is_triggered_published_and_swapped_in_without_losing_events(broker, model_dir, mi_dataset,
                                                                             tmp_path):
    kafka, topics, items = published_catalogue(broker, mi_dataset)
    registry = tmp_path / "registry"
    pairs = pairs_of(items, 100, seed=1)
    w = start_worker(kafka, topics, model_dir, tmp_path / "w", "--partitions", "3", "--registry", str(registry),
                     "--retrain-every-events", "300")
    trainer = start_trainer(kafka, topics, registry, model_dir, tmp_path / "trainer.log", "--min-events", "200",
                            "--epochs", "6")
    try:
        # phase 1: 400 pattern events (200 users), 6 resent (duplicates), 4 bad records
        first = pair_events(pairs, range(200), "a", T0)
        bad = [(b"x", b"{oops"), (b"x", {"user_id": "x", "item_id": "no-such-item", "event_time": T0}),
               (b"x", {"user_id": ["x"], "item_id": pairs[0][0], "event_time": T0}), (b"x", {"user_id": "x", "event_time": "soon"})]
        send(kafka, topics.clicks, first + first[:6] + bad)
        # the worker asks after 300 accepted events; the trainer trains, accepts and publishes v1
        deadline = time.monotonic() + 300
        while not health(w)["model_version"].endswith(":v1"):
            assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no swap to v1:\n{(tmp_path / 'trainer.log').read_text()[-3000:]}"
            time.sleep(1)
        assert w.metric("streamrec_retrain_requests_total") >= 1
        assert w.metric("streamrec_model_swaps_total") == 1
        # phase 2: new users with the same pattern, processed by v1
        second = pair_events(pairs, range(200, 300), "b", T0 + 600 * 300)
        send(kafka, topics.clicks, second)
        n_in = len(first) + 6 + len(bad) + len(second)

        def counted() -> float:
            return sum(w.metric(m) for m in ("streamrec_events_total", "streamrec_duplicates_total",
                                             "streamrec_dead_letters_total"))
        out = read_all(kafka, topics.recommendations, timeout_s=240, settle_s=1.0, until=lambda rs: counted() >= n_in)
        metrics = {m: w.metric(m) for m in ("streamrec_events_total", "streamrec_duplicates_total",
                                            "streamrec_dead_letters_total")}
    finally:
        trainer.terminate()
        trainer.wait(30)
        stop_worker(w)

    versions = Counter(r["model_version"].rsplit(":", 1)[-1] for r in out)
    ids = Counter(r["trigger"]["event_id"] for r in out)
    # counting invariant across the swap: in = processed + duplicates + dead letters, one list per event
    assert set(ids.values()) == {1}, "an event was scored twice"
    assert (metrics["streamrec_events_total"], metrics["streamrec_duplicates_total"],
            metrics["streamrec_dead_letters_total"]) == (600, 6, 4)
    assert sum(metrics.values()) == n_in
    assert len(ids) == 600
    assert set(versions) == {"v0", "v1"} and sum(versions.values()) == 600
    # every event of phase 2 was scored by v1; per partition, versions never go back
    assert all(r["model_version"].endswith(":v1") for r in out if r["user_id"].startswith("b"))
    by_part: dict[int, list[str]] = {}
    for r in sorted(out, key=lambda r: r["_offset"]):
        by_part.setdefault(r["_partition"], []).append(r["model_version"])
    for seq in by_part.values():
        assert seq == sorted(seq, key=lambda v: v.endswith(":v1")), "a partition went back to the old version"
    # the registry: v1 accepted, with weights, curve, manifest; `streamrec models` lists it
    manifest = json.loads((registry / "v1" / "manifest.json").read_text())
    assert manifest["status"] == "accepted" and manifest["parent"] is None
    assert manifest["metrics"]["candidate"]["ndcg"] >= manifest["metrics"]["current"]["ndcg"]
    assert manifest["data_range"]["new_events"] >= 200 and manifest["training"]["curve"]
    assert (registry / "v1" / "model.npz").is_file() and (registry / "v1" / "curve.png").stat().st_size > 1000
    listing = subprocess.run([sys.executable, "-m", "streams.cli", "models", "--registry", str(registry)],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "v1" in listing and "accepted" in listing
    # and v1 learned the pattern: after clicking A, B is in the list far more often than under v0
    def partner_hits(version: str) -> float:
        partner = {a: b for a, b in pairs}
        lists = [r for r in out if r["trigger"]["event_id"].endswith("-0") and r["model_version"].endswith(version)]
        return sum(partner[r["trigger"]["item_id"]] in [i["item_id"] for i in r["items"]] for r in lists) / len(lists)
    assert partner_hits(":v1") > partner_hits(":v0") + 0.2


def run_train_once(kafka, topics, registry, model_dir, *extra: str) -> subprocess.CompletedProcess:
    """``streamrec train --once`` (later ``extra`` flags override the defaults here)."""
    return subprocess.run([sys.executable, "-m", "streams.cli", "train", "--once", "--broker", kafka.bootstrap,
                           "--prefix", topics.prefix, "--registry", str(registry), "--model", str(model_dir),
                           "--quiet", "--min-pairs", "50", *extra], capture_output=True, text=True, cwd=REPO, timeout=400)


def train_once(kafka, topics, registry, model_dir, *extra: str) -> dict:
    proc = run_train_once(kafka, topics, registry, model_dir, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_worse_model_is_rejected_and_kept_with_its_numbers(broker, model_dir, mi_dataset, tmp_path):
    """v1 learns "A then B". Then the trainer is fed "A then C" for a while, and the newest
    events (the held-out slice) go back to "A then B": the candidate, pulled towards C, is worse
    than v1 on them, so it is kept as rejected and nothing is published."""
    kafka, topics, items = published_catalogue(broker, mi_dataset)
    registry = tmp_path / "registry"
    ab = pairs_of(items, 100, seed=3)
    rng = random.Random(4)
    others = [i for i in items if i not in {x for p in ab for x in p}]
    ac = [(a, c) for (a, _), c in zip(ab, rng.sample(others, len(ab)))]

    send(kafka, topics.clicks, pair_events(ab, range(300), "p", T0))
    # fewer training pairs than asked for: no version is written, and the next run reads the same events
    wait = run_train_once(kafka, topics, registry, model_dir, "--min-pairs", "100000")
    assert wait.returncode == 0 and wait.stdout == "", wait.stderr[-3000:]
    assert "no version written" in wait.stderr and "need 100000" in wait.stderr
    assert not registry.exists() or not any(registry.iterdir())
    first = train_once(kafka, topics, registry, model_dir, "--epochs", "20")
    assert first["status"] == "accepted" and first["version"] == "v1"
    assert json.loads((registry / "v1" / "manifest.json").read_text())["data_range"]["new_events"] == 600

    send(kafka, topics.clicks, pair_events(ac, range(300, 700), "q", T0 + 600 * 300)  # 800 misleading events
         + pair_events(ab, range(700, 800), "r", T0 + 600 * 700))  # then the real pattern again: 200, newest
    second = train_once(kafka, topics, registry, model_dir, "--epochs", "8", "--holdout", "0.125")
    manifest = json.loads((registry / "v2" / "manifest.json").read_text())
    cand, cur = manifest["metrics"]["candidate"], manifest["metrics"]["current"]
    assert second["status"] == manifest["status"] == "rejected", (cand, cur)
    assert manifest["parent"] == "v1" and cand["events"] == cur["events"] >= 100
    assert cand["ndcg"] < cur["ndcg"]
    assert "rejected_because" in manifest and (registry / "v2" / "model.npz").is_file()
    # only v1 was ever published, and v1 stays the version to serve
    control = read_all(kafka, topics.control, timeout_s=10, until=lambda rs: len(rs) >= 1, settle_s=2.0)
    assert [r["version"] for r in control if r.get("type") == "model-published"] == ["v1"]
    listing = subprocess.run([sys.executable, "-m", "streams.cli", "models", "--registry", str(registry)],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "rejected" in listing and "accepted" in listing
