"""The timing loop shared by every engine: first run, warm-up, then timed runs.

Each run is timed on its own with a monotonic nanosecond clock, so percentiles describe
single calls. The garbage collector is paused while timing (as ``timeit`` does) so that
a collection triggered by the harness is not billed to the engine.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

MAX_RUNS = 1_000_000  # bounds memory if a duration is long and a run is very short


def measure(fn: Callable[[], object], *, warmup: int, runs: int | None = None, duration: float | None = None,
            min_runs: int = 10) -> tuple[float, list[float]]:
    """Return (first_run_seconds, timed_run_seconds).

    Exactly ``runs`` timed runs when given; otherwise runs until ``duration`` seconds have
    passed, but never fewer than ``min_runs`` (p99 of a handful of runs means little).
    """
    if (runs is None) == (duration is None):
        raise ValueError("give exactly one of runs or duration")
    clock = time.perf_counter_ns
    t0 = clock()
    fn()
    first = (clock() - t0) / 1e9
    for _ in range(warmup):
        fn()
    times: list[int] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if runs is not None:
            for _ in range(runs):
                t0 = clock()
                fn()
                times.append(clock() - t0)
        else:
            deadline = clock() + int(duration * 1e9)
            while len(times) < MAX_RUNS:
                t0 = clock()
                fn()
                t1 = clock()
                times.append(t1 - t0)
                if t1 >= deadline and len(times) >= min_runs:
                    break
    finally:
        if was_enabled:
            gc.enable()
    return first, [t / 1e9 for t in times]
