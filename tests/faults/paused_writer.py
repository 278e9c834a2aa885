"""``streamrec`` that holds each chunk's state write back: ``python -m tests.faults.paused_writer worker ...``.

An injected delay, not a fake: the worker's own ``StreamrecWorker._write_states`` still runs,
unchanged, after the pause. Between the broker's ack of a chunk's lists and the chunk's table
write there is a real window where a crash leaves lists published and their states unwritten,
but it lasts microseconds, so no test can land ``kill -9`` in it without widening it. Here, once
the chunk's list sends are acknowledged (the same gather the original does first) and before any
state is written, the worker appends one JSON line to ``STREAMREC_PAUSE_MARKER`` (when set):
``{"users": <states about to be written>, "lists": <lists acknowledged>, "at": <unix time>}``,
then sleeps ``STREAMREC_PAUSE_S`` seconds (default 30) on the event loop, then calls the
original, which gathers the resolved futures again and writes. Broker, worker process, Faust,
encoder and Kafka I/O stay real.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from streams.app import StreamrecWorker, _ChunkUsers

PAUSE_S = float(os.environ.get("STREAMREC_PAUSE_S", "30"))
MARKER = os.environ.get("STREAMREC_PAUSE_MARKER")

_write_states = StreamrecWorker._write_states


def _mark(users: int, lists: int) -> None:
    """One line per pause, flushed at once: the test kills the worker as soon as it sees it."""
    if MARKER:
        with open(MARKER, "a", encoding="utf-8") as f:
            f.write(json.dumps({"users": users, "lists": lists, "at": time.time()}) + "\n")
            f.flush()


async def _paused_write_states(self: StreamrecWorker, users: _ChunkUsers) -> None:
    if users.sent:
        await asyncio.gather(*users.sent)  # the lists are in Kafka from here on
    if users.writes:  # a chunk with nothing to write has no window to widen
        _mark(len(users.writes), len(users.sent))
        await asyncio.sleep(PAUSE_S)
    await _write_states(self, users)


StreamrecWorker._write_states = _paused_write_states

if __name__ == "__main__":
    from streams.cli import main

    sys.exit(main())
