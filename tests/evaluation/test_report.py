"""The results file says where the time went: per system, and the run without each heavy system
(always without SASRec, the optional extra the replay-time target leaves out)."""
import json
from pathlib import Path

from evaluation.report import to_markdown

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def test_the_movielens_results_say_where_the_time_went_and_what_the_run_takes_without_heavy_systems():
    res = json.loads((RESULTS / "eval-movielens.json").read_text())
    t = res["protocol"]["timing_s"]
    md = to_markdown(res)

    def own(name: str) -> float:
        return sum(t["stream_per_system"][name].values()) + t["offline_per_system"].get(name, 0)

    assert f"sasrec {t['stream_per_system']['sasrec']['score']} /" in md
    assert f"Without sasrec: about {t['total'] - own('sasrec'):.0f} s" in md
    heavy = [n for n in t["stream_per_system"] if own(n) > 0.25 * t["total"]]
    assert heavy, "the MovieLens run has a system that takes over a quarter of the time (streamrec's retrains)"
    for name in heavy:
        assert f"Without {name}: about {t['total'] - own(name):.0f} s" in md
    # a system that costs little gets no "without" line
    assert own("popularity") < 0.25 * t["total"]
    assert "Without popularity" not in md
    # and the markdown committed beside the JSON is what the report writes from it
    assert md == (RESULTS / "eval-movielens.md").read_text()
