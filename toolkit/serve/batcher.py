"""Idle-first dynamic batching for one model.

A request that finds the model idle runs at once: no batching wait ever slows a lone client.
Requests that arrive while a batch runs wait in a bounded queue and form the next batch, up to
``max_batch`` rows; with ``max_delay_s`` > 0 a batch formed from waiting requests may wait that
long after its oldest request arrived for more to fill it (never a request that found the model
idle). A full queue is refused at once (QueueFull), never waited on.

The model runs in one thread of its own (ONNX Runtime releases the GIL), so the event loop keeps
accepting and parsing requests, which is what fills the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .metrics import ModelStats


class QueueFull(Exception):
    """More requests are waiting than ``max_queue``."""


class Stopped(Exception):
    """The batcher was closed (the server is shutting down)."""


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    queued: float  # perf_counter() when queued


class Batcher:
    def __init__(self, run, stats: ModelStats, max_batch: int, max_queue: int, max_delay_s: float = 0.0,
                 name: str = "model"):
        self._run = run  # float32 batch -> outputs, called in the model's own thread
        self.stats = stats
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._pending: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task | None = None
        self.running = 0  # rows in the batch being computed
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def set_runner(self, run) -> None:
        """Swap the model (a reload); the next batch uses the new one, the running one finishes on the old."""
        self._run = run

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        return bool(self._pending) or self.running > 0

    async def submit(self, x: np.ndarray, timeout_s: float | None) -> np.ndarray:
        """Outputs for the rows of ``x``; TimeoutError past ``timeout_s`` (the rows are then dropped, not computed)."""
        if self._closed:
            raise Stopped()
        if len(self._pending) >= self.max_queue:
            raise QueueFull()
        item = _Item(x, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._pending.append(item)
        self._wake.set()
        if timeout_s is None:
            return await item.future
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            item.future.cancel()  # skipped when its batch is formed, or its result dropped
            raise TimeoutError() from None

    def _take(self) -> list[_Item]:
        batch, rows = [], 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # timed out while waiting
                self._pending.popleft()
                continue
            if batch and rows + len(item.x) > self.max_batch:
                break
            batch.append(self._pending.popleft())
            rows += len(item.x)
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            idle = not self._pending
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if not idle and self.max_delay_s > 0:
                await self._fill(self._pending[0].queued + self.max_delay_s)
            batch = self._take()
            if not batch:
                continue
            x = batch[0].x if len(batch) == 1 else np.concatenate([b.x for b in batch])
            self.running = len(x)
            start = time.perf_counter()
            try:
                out, seconds = await loop.run_in_executor(self._executor, _timed, self._run, x)
                error = None
            except Exception as e:  # the model's failure is each request's answer, never the loop's end
                out, error, seconds = None, e, time.perf_counter() - start
            self.running = 0
            self.stats.executed(len(x), seconds, [start - b.queued for b in batch])
            pos = 0
            for b in batch:
                n = len(b.x)
                if not b.future.done():
                    if error is None:
                        b.future.set_result(out[pos:pos + n])
                    else:
                        b.future.set_exception(error)
                pos += n

    async def _fill(self, until: float) -> None:
        """Wait (at most until ``until``) for the waiting rows to reach max_batch."""
        while sum(len(i.x) for i in self._pending) < self.max_batch:
            left = until - time.perf_counter()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except (asyncio.TimeoutError, TimeoutError):
                return

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(Stopped())
        self._executor.shutdown(wait=False)


def _timed(run, x: np.ndarray) -> tuple[np.ndarray, float]:
    """The model's outputs and its compute time, timed in its own thread: the hand-off to and from the event loop
    (tens of microseconds, more on a loaded machine) is queue or request time, not the model's."""
    start = time.perf_counter()
    out = run(x)
    return out, time.perf_counter() - start


async def warm(run, sizes: list[int], example: np.ndarray) -> None:
    """Run a model once at each batch size it may see, off the event loop, before it takes traffic.

    Not on the model's own thread: a reloaded model warms while the old one keeps serving.
    """
    loop = asyncio.get_running_loop()
    for n in sizes:
        await loop.run_in_executor(None, run, np.repeat(example, n, axis=0))


def warm_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to max_batch, and max_batch itself."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return sizes + [max_batch]
