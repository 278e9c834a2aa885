"""``streamrec bench pipeline --quick`` end to end on the real broker: the report's shape, not speed."""
from __future__ import annotations

import json
import os
import time

from evaluation import pipeline as bench
from evaluation import pipeline_load


def test_bench_pipeline_quick_writes_the_documented_report(broker, model_dir, tmp_path):
    out = tmp_path / "pipeline.json"
    assert bench.main(["--quick", "--out", str(out), "--model", str(model_dir), "--broker", broker.bootstrap,
                       "--no-progress"]) == 0
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and "gpu" in machine
    assert len(report["load_avg_before"]) == 3
    assert set(report["runs"]) == set(bench.RUNS)
    for name, run in report["runs"].items():
        for key in ("events_per_s", "p50_ms", "p95_ms", "p99_ms", "offered_rate"):
            assert isinstance(run[key], (int, float)) and run[key] > 0, (name, key, run)
        assert run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"], (name, run)
        assert run["latency"] and all(ph["received"] > 0 for ph in run["latency"]), (name, run["latency"])
        assert isinstance(run["cpu_ms_per_event"], dict), (name, run)  # empty when too few polls
    assert report["encoder_yardstick"]["sentences_per_s"] > 0
    assert set(report["targets"]) >= {"clicks_vs_ceiling", "clicks_p99_ms_at_half_saturation",
                                      "clicks_seq_vs_clicks", "reviews_vs_encoder_batch", "reviews_vs_naive"}
    assert report["ratios"]["clicks_vs_ceiling"] > 0 and report["ratios"]["reviews_vs_naive"] > 0
    assert out.with_suffix(".md").read_text().startswith("# streamrec pipeline benchmark")
    assert out.with_suffix(".png").stat().st_size > 10_000

    # clicks-seq: the worker serves the sequence version v1 (published on its control topic before
    # it starts), side by side with clicks on v0, and the report says so
    runs = report["runs"]
    model = runs["clicks-seq"]["model"]
    assert model["version"] == "v1" and model["weights"]["cooccurrence"] == 1.0
    assert all(model["weights"][k] == 1.0 for k in ("similarity", "popularity", "text"))
    assert model["d"] > 0 and model["blocks"] > 0 and model["max_len"] > 0
    assert model["items"] == report["settings"]["catalogue_items"]
    seq_versions = runs["clicks-seq"]["model_versions"]  # the outputs themselves say which version made them
    assert seq_versions and all(v.endswith(":v1") for v in seq_versions), seq_versions
    assert sum(seq_versions.values()) == runs["clicks-seq"]["saturation"]["outputs"]
    assert all(v.endswith(":v0") for v in runs["clicks"]["model_versions"]), runs["clicks"]["model_versions"]
    assert "model" not in runs["clicks"]
    target = report["targets"]["clicks_seq_vs_clicks"]
    assert report["ratios"]["clicks_seq_vs_clicks"] > 0
    assert target["goal"].startswith(">= 0.9") and target["value"] == report["ratios"]["clicks_seq_vs_clicks"]
    md = out.with_suffix(".md").read_text()
    assert "clicks_seq_vs_clicks" in md and "streamrec, clicks, sequence version" in md


def test_steady_rate_and_percentiles():
    stamps = [1000 + 10 * i for i in range(101)]  # 100 events/s
    rate = pipeline_load.steady_rate(stamps)
    assert rate["outputs"] == 101 and abs(rate["events_per_s"] - 100.0) < 1e-6
    p = pipeline_load.percentiles_ms([0.001 * i for i in range(1, 101)])
    assert p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= p["max_ms"] == 100.0


def test_cpu_per_event_between_the_polls_at_10_and_90_percent():
    before = pipeline_load.cpu_seconds(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:  # burn a little CPU in this process
        pass
    assert before is not None and pipeline_load.cpu_seconds(os.getpid()) > before
    assert pipeline_load.cpu_seconds(None) is None
    samples = [(0, {"system": 1.0, "broker": 0.5}), (10, {"system": 1.2, "broker": 0.6}),
               (50, {"system": 2.0, "broker": None}), (95, {"system": 3.0, "broker": 1.5})]
    # polls at 10 and 95 outputs of 100: 1.8 s and 0.9 s of CPU over 85 outputs
    assert pipeline_load.cpu_per_event(samples, 100) == {"system": round(1800 / 85, 3), "broker": round(900 / 85, 3)}
    assert pipeline_load.cpu_per_event(samples[:1], 100) == {}
