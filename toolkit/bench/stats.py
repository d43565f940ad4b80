"""Summary statistics of one timed series.

Percentiles use linear interpolation between order statistics (numpy's default,
Hyndman & Fan type 7), so p50 of an even-sized series is the mean of the two middle
values. Throughput is images divided by the total time the timed runs took, which
for back-to-back runs equals batch / mean latency.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)
LATENCY_KEYS = ("p50", "p90", "p99", "mean", "min", "max")


def summarize(latencies_s: Sequence[float], batch: int) -> dict:
    """Latency statistics in milliseconds and throughput in images per second."""
    a = np.asarray(latencies_s, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("need at least one timing")
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if not np.isfinite(a).all() or (a < 0).any() or a.sum() == 0:
        raise ValueError("timings must be finite, non-negative and not all zero")
    ms = a * 1e3
    latency = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
    latency.update(mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()))
    return {"runs": int(a.size), "latency_ms": latency, "throughput_ips": float(batch * a.size / a.sum())}


def gflops(flops_per_image: int, images_per_second: float) -> float:
    return flops_per_image * images_per_second / 1e9
