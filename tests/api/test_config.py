"""Worker flags for the API and exploration reach the running parts (no Kafka needed)."""
from __future__ import annotations

import pytest

from streams.cli import build_parser, worker_config


def args(*flags: str):
    return build_parser().parse_args(["worker", *flags])


def test_api_and_exploration_flags(model_dir, tmp_path, monkeypatch):
    from streams.app import StreamrecWorker

    monkeypatch.setenv("STREAMREC_API_TOKEN", "t0ken")
    cfg = worker_config(args("--model", str(model_dir), "--state-dir", str(tmp_path), "--store", "memory",
                             "--explore-share", "0.2", "--explore-policy", "epsilon", "--explore-epsilon", "0.3",
                             "--text-weight", "0.8"))
    ex = cfg.recommender.explore
    assert (ex.share, ex.policy, ex.epsilon, cfg.recommender.text_weight) == (0.2, "epsilon", 0.3, 0.8)
    assert cfg.api.token == "t0ken" and "t0ken" not in repr(cfg)  # from the environment, never printed
    w = StreamrecWorker(cfg)
    assert w.recommender.explorer is not None and w.recommender.explorer.slots(10) == 2
    assert not w.serving_ready()  # catalogue not loaded yet: the API answers 503
    off = worker_config(args("--model", str(model_dir)))
    assert off.recommender.explore.share == 0.0 and not off.recommender.explore.enabled


def test_repeats_flag_and_env_reach_the_recommender(model_dir, monkeypatch):
    assert worker_config(args("--model", str(model_dir))).recommender.repeats is False  # default: never
    assert worker_config(args("--model", str(model_dir), "--repeats")).recommender.repeats is True
    monkeypatch.setenv("STREAMREC_REPEATS", "1")
    assert worker_config(args("--model", str(model_dir))).recommender.repeats is True


@pytest.mark.parametrize("flags", [("--explore-share", "1.5"), ("--text-weight", "-0.1")])
def test_out_of_range_flags_are_refused(flags):
    with pytest.raises(ValueError, match="0..1"):
        worker_config(args(*flags))
