"""The results file says where the time went: per system, and the run without the slowest."""
import json
from pathlib import Path

from evaluation.report import to_markdown

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def test_the_movielens_results_say_where_the_time_went_and_what_the_run_takes_without_sasrec():
    res = json.loads((RESULTS / "eval-movielens.json").read_text())
    t = res["protocol"]["timing_s"]
    md = to_markdown(res)
    sasrec_own = sum(t["stream_per_system"]["sasrec"].values()) + t["offline_per_system"]["sasrec"]
    assert f"sasrec {t['stream_per_system']['sasrec']['score']} /" in md
    assert f"Without sasrec: about {t['total'] - sasrec_own:.0f} s" in md
    # a system that costs little gets no "without" line
    assert "Without popularity" not in md
