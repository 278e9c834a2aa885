"""Run the fault suite again and again: ``python -m tests.faults.loop --runs 20``.

Each run is a fresh ``pytest tests/faults`` process (its own embedded brokers and workers). The
summary says how many runs passed, which tests failed in which run (with the run's log kept),
and the wall time; it is printed and written to ``bench/results/faults-loop.json`` after every
run, so a loop cut short still leaves its numbers. The machine is shared: run it under ``nice``.

    nice -n 10 .venv/bin/python -m tests.faults.loop --runs 20
    .venv/bin/python -m tests.faults.loop --runs 5 -- -k crash     # extra pytest arguments after --
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "bench" / "results" / "faults-loop.json"


def failures(junit: Path) -> list[str]:
    """``file::test`` of every failed or erroring test case in a JUnit XML report."""
    if not junit.is_file():
        return ["(no report: pytest did not finish)"]
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out.append(f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="python -m tests.faults.loop", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="how many full runs (default %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="summary JSON (default %(default)s)")
    p.add_argument("--logs", type=Path, default=None, help="where run logs go (default: a temporary folder)")
    p.add_argument("--stop-on-failure", action="store_true", help="stop after the first failing run")
    args = p.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="faults-loop-"))
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/faults", "-p", "no:cacheprovider", *extra]
    summary: dict = {"what": "consecutive full runs of the fault suite", "command": " ".join(cmd[1:]),
                     "runs_asked": args.runs, "runs": 0, "passed": 0, "failed": 0, "failures": [],
                     "run_seconds": [], "wall_s": 0.0, "logs": str(logs),
                     "machine": {"cores": os.cpu_count(), "nice": os.nice(0)}}
    started = time.monotonic()
    for run in range(1, args.runs + 1):
        junit, log = logs / f"run-{run:02d}.xml", logs / f"run-{run:02d}.log"
        t0 = time.monotonic()
        with open(log, "wb") as fh:
            rc = subprocess.run([*cmd, f"--junitxml={junit}", f"--basetemp={logs / f'tmp-{run:02d}'}"],
                                cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
        seconds = time.monotonic() - t0
        failed = failures(junit) if rc != 0 else []
        if rc != 0 and not failed:
            failed = [f"(pytest exit status {rc})"]
        summary["runs"] = run
        summary["run_seconds"].append(round(seconds, 1))
        if failed:
            summary["failed"] += 1
            summary["failures"].append({"run": run, "tests": failed, "log": str(log)})
        else:
            summary["passed"] += 1
        summary["wall_s"] = round(time.monotonic() - started, 1)
        summary["load_avg"] = [round(x, 2) for x in os.getloadavg()]
        print(f"[loop] run {run}/{args.runs}: {'FAILED ' + ', '.join(failed) if failed else 'passed'} "
              f"({seconds:.0f}s; {summary['passed']} passed, {summary['failed']} failed so far)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        if failed and args.stop_on_failure:
            break
    print(f"[loop] {summary['passed']}/{summary['runs']} runs passed, wall time {summary['wall_s'] / 60:.1f} min; "
          f"failures: {summary['failures'] or 'none'}; summary in {args.out}", flush=True)
    return 0 if summary["failed"] == 0 and summary["runs"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
