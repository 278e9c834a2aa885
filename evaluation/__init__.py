"""Measuring streamrec: the replay protocols, metrics, baselines, benchmarks and plots.

``evaluation`` may import ``inference``, ``training`` and ``streams``; none of them imports it
(``streamrec evaluate`` and ``streamrec bench`` reach it by module name from the CLI).

* :mod:`evaluation.evaluate`: ``streamrec evaluate`` (both protocols, every system, results files)
* :mod:`evaluation.protocol`: the streaming (prequential) replay and leave-last-out
* :mod:`evaluation.metrics`: HR, NDCG, MRR, precision, recall, F1, MAP at K
* :mod:`evaluation.systems` / :mod:`evaluation.baselines`: streamrec and what it is compared with
* :mod:`evaluation.bench` (encoder, scoring) and :mod:`evaluation.pipeline` (the whole pipeline)
"""
