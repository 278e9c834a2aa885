"""The model registry: a folder of versions, each written atomically.

Layout (``<registry>/v<N>/``)::

    manifest.json   version, parent, status (accepted | rejected), data range, training, metrics, encoder
    model.npz       the learned parameters (inference.model.ModelParams)
    curve.png       training and validation loss per epoch
    replay.jsonl.gz a bounded random sample of the events trained on, replayed by the next version

A version is built in a hidden temporary folder and renamed into place, so a reader (a
worker, ``streamrec models``) sees either nothing or the complete folder. Rejected versions
stay, with their numbers, and are never served. Workers learn about an accepted version from
the ``model-published`` record on the control topic and read the folder from their own
``--registry`` path (a shared volume).

Example::

    reg = Registry("/var/lib/streamrec/registry")
    reg.latest_accepted()          # the manifest dict of the newest accepted version, or None
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from inference.events import Event, parse_event
from inference.model import MANIFEST, MODEL_FILE, ModelParams, read_manifest

_VERSION = re.compile(r"^v(\d+)$")
REPLAY_FILE = "replay.jsonl.gz"
CURVE_FILE = "curve.png"


class Registry:
    """Versions on disk; see the module docstring for the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def versions(self) -> list[dict]:
        """Every readable version's manifest, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for d in self.root.iterdir():
            m = _VERSION.match(d.name)
            if m and (d / MANIFEST).is_file():
                try:
                    found.append((int(m.group(1)), read_manifest(d)))
                except ValueError:
                    continue
        return [man for _, man in sorted(found, key=lambda t: t[0])]

    def latest_accepted(self) -> dict | None:
        accepted = [m for m in self.versions() if m.get("status") == "accepted"]
        return accepted[-1] if accepted else None

    def path(self, version: str) -> Path:
        return self.root / version

    def params(self, version: str) -> ModelParams:
        return ModelParams.load(self.path(version) / MODEL_FILE)

    def next_version(self) -> str:
        nums = [0]
        if self.root.is_dir():
            nums += [int(m.group(1)) for d in self.root.iterdir() if (m := _VERSION.match(d.name))]
        return f"v{max(nums) + 1}"

    def replay_sample(self, version: str) -> list[Event]:
        path = self.path(version) / REPLAY_FILE
        if not path.is_file():
            return []
        out = []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                out.append(parse_event(line.encode(), None, now=float("inf")))
        return out

    def write(self, version: str, params: ModelParams, manifest: dict, *, replay: Iterable[Event] = (),
              curve_png=None) -> Path:
        """Write a complete version folder atomically; ``curve_png(path)`` draws the curve."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(version)
        if final.exists():
            raise FileExistsError(f"{final} exists: versions are immutable; pick the next version number")
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.root))
        try:
            params.save(tmp / MODEL_FILE)
            with gzip.open(tmp / REPLAY_FILE, "wt", encoding="utf-8") as f:
                for ev in replay:
                    f.write(json.dumps(ev.to_json()) + "\n")
            if curve_png is not None:
                try:
                    curve_png(tmp / CURVE_FILE)
                except Exception as exc:  # noqa: BLE001 - a plot must never lose a version
                    manifest = {**manifest, "curve_error": str(exc)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)  # atomic on one filesystem: readers see all or nothing
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
