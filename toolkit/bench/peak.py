"""The machine's measured float32 matrix-multiply rate: the roof that engines are compared to.

CPU: numpy's BLAS, limited in-process to the benchmark's thread count with threadpoolctl.
The CUDA peak (a torch matmul) lives on the torch side, toolkit.export.bench_engines,
and reports through the same dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..timing import measure, summarize

# (M, K, N): a square cube, and the model's widest layer at batch 1024
SHAPES = ((1024, 1024, 1024), (1024, 784, 512))
REPS = 15
WARMUP = 3


@dataclass
class ShapeRate:
    shape: list[int]
    reps: int
    gflops_best: float
    gflops_median: float


@dataclass
class Peak:
    device: str
    library: str | None = None
    threads: int | None = None  # BLAS threads (CPU)
    gpu: str | None = None  # the card's name (CUDA)
    shapes: list[ShapeRate] = field(default_factory=list)
    gflops_median: float | None = None  # the highest per-shape median rate: the roof used for ratios
    shape: list[int] | None = None  # the shape that gave it
    gflops_best: float | None = None
    error: str | None = None  # why it was not measured; the numbers are then null


def shape_rate(shape: tuple[int, int, int], matmul: Callable[[], object]) -> ShapeRate:
    """Time ``matmul`` (one finished M x K x N product per call) and turn its times into rates."""
    m, k, n = shape
    stats = summarize(measure(matmul, warmup=WARMUP, runs=REPS)[1])
    gflop_ms = 2 * m * k * n / 1e6  # GFLOP per run, times 1e3 ms per s
    return ShapeRate(list(shape), stats.runs, gflop_ms / stats.latency_ms.min, gflop_ms / stats.latency_ms.p50)


def peak_of(device: str, rows: list[ShapeRate], **details) -> Peak:
    top = max(rows, key=lambda r: r.gflops_median)
    return Peak(device=device, shapes=rows, gflops_median=top.gflops_median, shape=top.shape,
                gflops_best=max(r.gflops_best for r in rows), **details)


def cpu_peak(threads: int) -> Peak:
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=threads, user_api="blas"):
        for m, k, n in SHAPES:
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            c = np.empty((m, n), dtype=np.float32)
            rows.append(shape_rate((m, k, n), lambda: np.matmul(a, b, out=c)))
    blas = next((i for i in threadpool_info() if i.get("user_api") == "blas"), None)
    library = f"numpy {np.__version__}" + (f" / {blas['internal_api']} {blas['version']}" if blas else "")
    return peak_of("cpu", rows, library=library, threads=threads)
