"""The one timing loop and summary used by bench, the matmul peak, export's INT8 latency and benchmarks/.

Each run is timed on its own with a monotonic nanosecond clock, so percentiles describe
single calls. The garbage collector is paused while timing (as ``timeit`` does) so that
a collection triggered by the harness is not billed to the code being timed.
Percentiles interpolate linearly between order statistics (numpy's default, Hyndman & Fan
type 7): p50 of an even-sized series is the mean of the two middle values.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

MAX_RUNS = 1_000_000  # bounds memory if a duration is long and a run is very short


@dataclass
class Latency:
    """Milliseconds per run."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float


@dataclass
class Summary:
    runs: int
    latency_ms: Latency
    throughput_ips: float  # items / total timed seconds: batch / mean latency for back-to-back runs


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
    deadline = None if duration is None else clock() + int(duration * 1e9)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        while len(times) < (runs if runs is not None else MAX_RUNS):
            t0 = clock()
            fn()
            t1 = clock()
            times.append(t1 - t0)
            if deadline is not None and t1 >= deadline and len(times) >= min_runs:
                break
    finally:
        if was_enabled:
            gc.enable()
    return first, [t / 1e9 for t in times]


def summarize(latencies_s: Sequence[float], batch: int = 1) -> Summary:
    """Latency statistics in milliseconds and throughput in items (images) per second."""
    a = np.asarray(latencies_s, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("need at least one timing")
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if not np.isfinite(a).all() or (a < 0).any() or a.sum() == 0:
        raise ValueError("timings must be finite, non-negative and not all zero")
    ms = a * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, (50, 90, 99)))
    latency = Latency(p50=p50, p90=p90, p99=p99, mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()))
    return Summary(runs=int(a.size), latency_ms=latency, throughput_ips=float(batch * a.size / a.sum()))
