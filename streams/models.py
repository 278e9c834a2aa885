"""Hot swap: follow the control topic and switch to each newly published model version.

Every worker reads the whole control topic (no group). At start it catches up first and
loads the newest published version before it processes any event, so a restarted worker
never scores with an older version than its peers. Afterwards each ``model-published``
record is loaded in the background (weights read, catalogue vectors pushed through the
adapter on a worker thread) and activated in one reference swap on the event loop, i.e.
between two events: an event is scored wholly by the old or wholly by the new version, and
its output record says which (``model_version``).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

from inference.model import load_version
from inference.recommender import Recommender

from .follow import follow_topic

log = logging.getLogger("streamrec.models")

PUBLISHED = "model-published"


def _version_number(version: str) -> int:
    try:
        return int(version.lstrip("v"))
    except ValueError:
        return -1


class ModelFollower:
    """Load and activate published versions from ``registry`` into ``recommender``."""

    def __init__(self, recommender: Recommender, registry: Path | None, *,
                 on_swap: Callable[[str], None] | None = None) -> None:
        self.recommender = recommender
        self.registry = registry
        self.on_swap = on_swap
        self.ready = asyncio.Event()
        self.loading: str | None = None  # a version being loaded right now
        self._latest: dict | None = None  # newest published record seen while catching up
        self._caught_up = False
        self._warned = False

    async def _on_batch(self, msgs: list) -> None:
        for m in msgs:
            try:
                rec = json.loads(m.value) if m.value is not None else None
            except ValueError:
                log.warning("control record at offset %d is not JSON: ignored", m.offset)
                continue
            if not isinstance(rec, dict) or rec.get("type") != PUBLISHED or not rec.get("version"):
                continue
            if self._caught_up:
                await self.load(rec)
            elif self._latest is None or _version_number(rec["version"]) >= _version_number(self._latest["version"]):
                self._latest = rec

    async def _on_caught_up(self) -> None:
        self._caught_up = True
        if self._latest is not None:
            await self.load(self._latest)
        self.ready.set()
        log.info("model ready: %s", self.recommender.model_version)

    async def load(self, rec: dict) -> bool:
        """Load one published version and swap to it; False (and the reason logged) if not."""
        version = rec["version"]
        if _version_number(version) <= _version_number(self.recommender.model_version):
            return False
        if self.registry is None:
            if not self._warned:
                log.error("model %s was published but this worker has no --registry: it keeps serving %s. Run "
                          "workers with --registry pointing at the trainer's registry (a shared volume).", version,
                          self.recommender.model_version)
                self._warned = True
            return False
        path = self.registry / rec.get("path", version)
        self.loading = version
        try:
            loop = asyncio.get_running_loop()
            params, _ = await loop.run_in_executor(None, load_version, path)
            prepared = await loop.run_in_executor(None, self.recommender.prepare_model, params, version)
        except (OSError, ValueError) as exc:
            log.error("cannot load model %s from %s: %s. This worker keeps serving %s; check that --registry is "
                      "the trainer's registry", version, path, exc, self.recommender.model_version)
            return False
        finally:
            self.loading = None
        old = self.recommender.model_version
        self.recommender.activate(prepared)  # one assignment: between two events
        log.info("switched model %s -> %s", old, version)
        if self.on_swap is not None:
            self.on_swap(version)
        return True

    async def run(self, consumer_factory: Callable[[], object], topic: str) -> None:
        await follow_topic(consumer_factory, topic, self._on_batch, self._on_caught_up, poll_ms=200)
