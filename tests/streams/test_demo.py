"""The README's demo command, run the way the README writes it, and its totals checked."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMIT = 600


def _streamrec() -> str:
    """``.venv/bin/streamrec`` as in the README (the interpreter's own when the venv lives elsewhere)."""
    venv = REPO / ".venv" / "bin" / "streamrec"
    return str(venv if venv.is_file() else Path(sys.executable).with_name("streamrec"))


def _totals(stdout: str) -> dict[str, str]:
    """The rows of the demo's totals table: ``│ events sent │ 606 │`` -> {"events sent": "606"}."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_readme_demo_command_runs_and_its_totals_add_up(model_dir, tmp_path):
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/streamrec demo" in quick_start and "--limit" in quick_start and "--quiet" in quick_start
    # the exported test encoder stands in for the default model directory (no export during the test)
    env = {**os.environ, "STREAMREC_MODEL_DIR": str(model_dir), "COLUMNS": "200"}
    run = subprocess.run([_streamrec(), "demo", "--limit", str(LIMIT), "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    errors = [ln for ln in output.splitlines() if "ERROR" in ln]
    assert not errors, errors[:5]
    t = _totals(run.stdout)
    sent, processed = int(t["events sent"]), int(t["events processed"])
    dead = sum(int(v) for v in re.findall(r"=(\d+)", t["dead letters"]))
    duplicates = int(t["duplicates"])
    assert sent >= LIMIT and processed > 0
    assert sent == processed + dead + duplicates, t  # every record accounted for once: nothing read twice
    assert int(t["lists published"]) == processed == int(t["lists received"]), t
