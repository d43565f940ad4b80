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
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from .metrics import ModelStats


class QueueFull(Exception):
    """More requests are waiting than ``max_queue``."""


class Stopped(Exception):
    """The batcher was closed (the server is shutting down)."""


@dataclass(slots=True)
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
        self.name = name
        self._pending: collections.deque[_Item] = collections.deque()
        # The model's thread takes batches from a SimpleQueue and answers with one call_soon_threadsafe: no executor
        # future, no asyncio future wrapping it, no batching task to wake in between, which on a lone request were
        # most of the hand-off's cost (measured: docs/serve.md).
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._launching = False  # a launch is scheduled for the end of this turn of the event loop
        self._forming: asyncio.TimerHandle | None = None  # a batch of waiting requests waits to fill (max_delay_s)
        self.running = 0  # rows in the batch being computed
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A daemon, so that a server that stops on an error path without close() still exits (the thread then
        # waits on an empty queue); close() waits for the batch it may be running, never left inside ONNX Runtime.
        self._thread = threading.Thread(target=self._work, name=f"infer-{self.name}", daemon=True)
        self._thread.start()

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
        loop = self._loop
        future = loop.create_future()
        self._pending.append(_Item(x, future, time.perf_counter()))
        if not self.running and self._forming is None:
            if not self._launching:
                # The model is idle: this request runs at the end of this turn of the loop, with any other request
                # that reached the batcher in the same turn, never after a batching wait.
                self._launching = True
                loop.call_soon(self._launch_idle)
        elif self._forming is not None and self._pending_rows() >= self.max_batch:
            self._forming.cancel()
            self._forming = None
            self._launch()
        if timeout_s is None:
            return await future
        deadline = loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        finally:
            deadline.cancel()

    def _pending_rows(self) -> int:
        return sum(len(i.x) for i in self._pending)

    def _take(self) -> list[_Item]:
        batch, rows = [], 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # timed out (or its client gone) while waiting
                self._pending.popleft()
                continue
            if batch and rows + len(item.x) > self.max_batch:
                break
            batch.append(self._pending.popleft())
            rows += len(item.x)
        return batch

    def _launch_idle(self) -> None:
        self._launching = False
        if not self.running and self._forming is None and not self._closed:
            self._launch()

    def _launch(self) -> None:
        """The next batch from what waits, to the model's thread (on the event loop, the model idle)."""
        batch = self._take()
        if not batch:
            return
        x = batch[0].x if len(batch) == 1 else np.concatenate([b.x for b in batch])
        self.running = len(x)
        self._inbox.put((self._run, x, batch, time.perf_counter()))

    def _next(self) -> None:
        """After a batch: the requests that arrived meanwhile form the next one, after waiting up to max_delay_s
        from the oldest's arrival for more to fill it."""
        if not self._pending:
            return
        if self.max_delay_s > 0 and self._pending_rows() < self.max_batch:
            left = self._pending[0].queued + self.max_delay_s - time.perf_counter()
            if left > 0:
                self._forming = self._loop.call_later(left, self._formed)
                return
        self._launch()

    def _formed(self) -> None:
        self._forming = None
        if not self.running and not self._closed:
            self._launch()

    def _work(self) -> None:
        """The model's thread: run each batch, hand its outputs (or the failure) back to the event loop."""
        while (job := self._inbox.get()) is not None:
            run, x, batch, launched = job
            start = time.perf_counter()
            try:
                out, error = run(x), None
            except Exception as e:  # the model's failure is each request's answer, never the thread's end
                out, error = None, e
            # Timed here, around the model alone: the hand-off to and from the event loop (tens of microseconds,
            # more on a loaded machine) is queue or request time, not the model's.
            seconds = time.perf_counter() - start
            try:
                self._loop.call_soon_threadsafe(self._finished, batch, launched, out, error, seconds)
            except RuntimeError:  # the event loop is closed: the server has stopped
                return

    def _finished(self, batch: list[_Item], launched: float, out, error, seconds: float) -> None:
        self.running = 0
        self.stats.executed(sum(len(b.x) for b in batch), seconds, [launched - b.queued for b in batch])
        pos = 0
        for b in batch:
            n = len(b.x)
            if not b.future.done():
                if error is None:
                    b.future.set_result(out[pos:pos + n])
                else:
                    b.future.set_exception(error)
            pos += n
        if not self._closed:
            self._next()

    async def close(self) -> None:
        self._closed = True
        if self._forming is not None:
            self._forming.cancel()
            self._forming = None
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(Stopped())
        self._pending.clear()
        if self._thread is not None:
            self._inbox.put(None)  # the thread ends after the batch it may be running; that batch's answers are set
            while self._thread.is_alive():
                await asyncio.sleep(0.005)


def _expire(future: asyncio.Future) -> None:
    if not future.done():  # skipped when its batch is formed, or its result dropped
        future.set_exception(TimeoutError())


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
