"""The evaluation result as Markdown, JSON and a plot."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import StreamRun

# ============================================================================================


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def to_markdown(res: dict) -> str:
    """The result as a README-ready markdown section."""
    p, ev, k = res["protocol"], res["events"], res["protocol"]["k"]
    lines = [f"## `streamrec evaluate` — {res['dataset']}", ""]
    prefix = f" (prefix: first {p['limit']:,} events)" if p.get("prefix") else ""
    lines.append(f"{ev['replayed']:,} events replayed{prefix}, {ev['scored']:,} scored, {ev['users']:,} users, "
                 f"{ev['items']:,} items; {ev['duplicates']} exact duplicate rows dropped, invalid rows: "
                 f"{sum(ev['invalid'].values())}{' ' + str(ev['invalid']) if ev['invalid'] else ''}; "
                 f"{ev['repeats']} repeat interactions applied but not scored; {ev['cold']:,} cold-item events.")
    lines.append("")
    lines.append(f"### Streaming (prequential, test-then-train), K = {k}")
    lines.append("")
    cols = [f"hr@{k}", f"ndcg@{k}", "mrr", "coverage", f"cold_hit@{k}"]
    lines.append("| system | " + " | ".join(cols) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for n, m in res["systems"].items():
        lines.append(f"| {n} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
    lines.append(f"| *random (expected)* | {_fmt(p.get('random_hr@k'))} | | | | |")
    lines.append("")
    off = res.get("offline")
    if off:
        lines.append(f"### Offline (leave-last-out, full ranking), K = {k}")
        lines.append("")
        cols = [f"hr@{k}", f"ndcg@{k}", "mrr", f"precision@{k}", f"recall@{k}", f"f1@{k}", f"map@{k}"]
        lines.append("| system | " + " | ".join(cols) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
        for n, m in off["systems"].items():
            lines.append(f"| {n} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
        lines.append("")
        lines.append(f"{off['users']:,} test users; skipped: {off['skipped']}.")
        lines.append("")
    lines.append("### Notes")
    lines.append("")
    if not p["retraining"]:
        lines.append(f"- **No retraining**: {p['retraining_note']}.")
    src = p["item_text_source"]
    lines.append(f"- Item text (`--item-text {src['mode']}`): {src['items_from_catalogue_text']} items from catalogue "
                 f"text, {src['items_from_review_history']} from review text seen so far.")
    if src.get("leakage"):
        lines.append(f"- **Leakage**: {src['leakage']}")
    als = p["systems"].get("als", {})
    if als.get("fits") == 0:
        lines.append(f"- **ALS was never fitted** (fewer than --retrain-every={p['retrain_every']} events): "
                     "its figures are the popularity fallback's.")
    elif "fits" in als:
        lines.append(f"- ALS refits every {p['retrain_every']} events on all events so far ({als['fits']} refits, "
                     f"{als.get('fit_seconds')} s); between refits users are folded in from their current items.")
    cfgs = {n: i["config"] for n, i in p["systems"].items() if "config" in i and not n.startswith("streamrec")}
    if cfgs:
        lines.append("- Baselines: " + "; ".join(
            f"{n} ({', '.join(f'{a}={b}' for a, b in c.items() if isinstance(b, (int, float)))})"
            for n, c in cfgs.items()) + ".")
    sr = p["systems"].get("streamrec-untrained", {}).get("config")
    if sr:
        lines.append(f"- streamrec-untrained runs the worker's RecommenderConfig "
                     f"({'defaults' if sr['worker_defaults'] else 'NOT the defaults: tuned by flags'}).")
    ex = p.get("exploration") or {}
    if ex.get("systems"):
        lines.append(f"- Exploration ({', '.join(ex['systems'])}): streamrec-untrained with {ex['share']:.0%} of each "
                     f"list's slots given to the policy (epsilon {ex['epsilon']}), measured on {ex['measured_on']}; "
                     "the offline protocol does not run them.")
    lines.append(f"- Rank: {p['rank']}. Exclusion: {p['exclusion']}.")
    seen = {n: i.get("seen_in_top_k") for n, i in p["systems"].items() if i.get("seen_in_top_k")}
    if seen:
        lines.append(f"- Top-{k} lists holding an item the user had already interacted with: {seen}.")
    t = p["timing_s"]
    cached = f", {t['texts_from_cache']:,} of them from the cache" if t.get("texts_from_cache") else ""
    lines.append(f"- Time: {t.get('total')} s in all (load {t.get('load')} s, encode {t.get('encode', 0)} s for "
                 f"{t.get('texts_encoded', 0) + t.get('texts_from_cache', 0):,} texts{cached}, "
                 f"stream {t.get('stream')} s, offline {t.get('offline', 0)} s) on {os.cpu_count()} cores "
                 f"(a shared machine: timings are indicative).")
    lines.extend(_time_split(t))
    return "\n".join(lines) + "\n"


def _time_split(t: dict) -> list[str]:
    """Where the replay's time went, per system, and the total without each heavy system's own
    seconds (what the run takes with that system left out; always for SASRec, the optional extra)."""
    per = t.get("stream_per_system") or {}
    if not per:
        return []
    offline = t.get("offline_per_system") or {}
    out = ["- Time per system (streaming score / observe / retrain; offline), seconds: " + "; ".join(
        f"{n} {s['score']} / {s['observe']} / {s['retrain']}; {offline.get(n, 0)}" for n, s in per.items()) + "."]
    for name in per:
        own = sum(per[name].values()) + offline.get(name, 0)
        # SASRec always: the yardstick's replay time is quoted for "all systems except SASRec"
        if own > 0.25 * float(t.get("total") or 0) or name == "sasrec":
            out.append(f"- Without {name}: about {float(t['total']) - own:.0f} s (the total less its own seconds; "
                       "refits that overlapped on a second thread make this an upper bound).")
    return out


def write_results(res: dict, out_dir: str | Path, *, run: StreamRun | None = None,
                  plot: bool = True) -> dict[str, Path]:
    """``eval-<dataset>.json`` / ``.md`` (and ``.png`` when ``run`` is given and ``plot``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{_safe_name(res['dataset'])}"
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(res, indent=2, default=_json_default) + "\n")
    paths["md"].write_text(to_markdown(res))
    if plot and run is not None and run.ranks:
        from .plots import plot_stream

        paths["png"] = plot_stream(run, out / f"{stem}.png", title=f"{res['dataset']}: prequential HR@{run.k}",
                                   random_hr=res["protocol"].get("random_hr@k"),
                                   aliases={"streamrec-untrained": "streamrec-untrained (= streamrec)"}
                                   if not res["protocol"]["retraining"] and "streamrec" in res["systems"] else None)
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ============================================================================================
# CLI
# ============================================================================================


