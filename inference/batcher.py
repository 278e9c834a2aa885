"""An asyncio micro-batcher: many concurrent ``await encode(text)`` calls, few model calls.

Why: one ONNX call per event wastes most of the encoder (MEASURED.md: batch 8-32 gives
the best sentences/s), and running the model on the event loop starves Kafka heartbeats
(Faust then sees rebalance storms). So requests wait at most ``max_wait_ms`` to be
grouped into a batch of up to ``max_batch``, and the batch runs in one worker thread.
The queue is bounded: when the encoder cannot keep up, ``encode`` waits for room, which
slows the caller's intake instead of growing memory.

Example::

    batcher = MicroBatcher(encoder.encode, max_batch=32, max_wait_ms=5)
    vec = await batcher.encode("great strings, bright tone")
    await batcher.close()
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

EncodeFn = Callable[[Sequence[str]], np.ndarray]


class MicroBatcher:
    """Group concurrent encode requests into batched calls of ``fn`` in a worker thread."""

    def __init__(
        self,
        fn: EncodeFn,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue | None = None
        self._runner: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-encoder")
        self._closed = False

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (bounded by ``max_queue``)."""
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self) -> asyncio.Queue:
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="streamrec-batcher")
        return self._queue

    async def encode(self, text: str) -> np.ndarray:
        """Return the unit vector of one text, batched with whatever else is waiting."""
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        await queue.put((text, future))  # waits when full: backpressure
        return await future

    async def encode_many(self, texts: Sequence[str]) -> np.ndarray:
        """Encode several texts through the same queue; rows in input order."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(await asyncio.gather(*(self.encode(t) for t in texts)))

    async def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    item = queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            live = [(t, f) for t, f in batch if not f.cancelled()]
            if not live:
                continue
            texts = [t for t, _ in live]
            started = time.perf_counter()
            try:
                vecs = await loop.run_in_executor(self._pool, self.fn, texts)
            except Exception as exc:  # noqa: BLE001 - the error belongs to the callers
                if len(live) == 1:
                    if not live[0][1].done():
                        live[0][1].set_exception(exc)
                    continue
                # One bad text must not fail its neighbours: retry each alone.
                for text, fut in live:
                    try:
                        vec = (await loop.run_in_executor(self._pool, self.fn, [text]))[0]
                    except Exception as one_exc:  # noqa: BLE001
                        if not fut.done():
                            fut.set_exception(one_exc)
                    else:
                        if not fut.done():
                            fut.set_result(vec)
                continue
            self.batches += 1
            self.items += len(live)
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - started)
            for (_, fut), vec in zip(live, vecs):
                if not fut.done():
                    fut.set_result(vec)

    async def close(self) -> None:
        """Finish what is queued, then stop the runner and its thread."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None and self._runner is not None:
            await self._queue.put(None)  # sentinel: everything before it is still served
            await self._runner
        self._pool.shutdown(wait=True)
