"""Roofline rows and the issue's goals, each a ratio of numbers measured in the same run.

Like is compared with like: an engine's rate at its median (p50) latency against the matmul
measurement's median rate. The mode used per provider is the engine's compute path:
"device" (resident buffers) on CUDA, "e2e" on CPU where there is nothing to copy.
"""

from __future__ import annotations

GOAL_BATCH1_RATIO = 0.25  # ORT batch-1 p50 <= 0.25 x eager PyTorch batch-1 p50
GOAL_PEAK_FRACTION = 0.85  # ORT at batch 1024 >= 85% of the measured matmul rate
GOAL_PEAK_BATCH = 1024


def compute_mode(provider: str) -> str:
    return "device" if provider == "cuda" else "e2e"


def _row(results, engine, provider, batch):
    mode = compute_mode(provider)
    return next((r for r in results if r["engine"] == engine and r["provider"] == provider
                 and r["batch"] == batch and r["mode"] == mode), None)


def roofline(results: list[dict], peaks: dict, flops_per_image: int | None) -> list[dict]:
    rows = []
    if not results:
        return rows
    pairs = list(dict.fromkeys((r["engine"], r["provider"]) for r in results))
    for engine, provider in pairs:
        batch = max(r["batch"] for r in results if r["engine"] == engine and r["provider"] == provider)
        r = _row(results, engine, provider, batch)
        if r is None:
            continue
        peak = peaks.get(provider) or {}
        out = {"engine": engine, "provider": provider, "precision": r["precision"], "batch": batch, "mode": r["mode"],
               "gflops_p50": None, "gflops_best": None, "gflops_mean": None,
               "peak_gflops_median": peak.get("gflops_median"), "fraction_of_peak": None}
        if flops_per_image:
            work = flops_per_image * batch / 1e9  # GFLOP per run
            out.update(gflops_p50=work / (r["latency_ms"]["p50"] / 1e3),
                       gflops_best=work / (r["latency_ms"]["min"] / 1e3),
                       gflops_mean=flops_per_image * r["throughput_ips"] / 1e9)
            if peak.get("gflops_median"):
                out["fraction_of_peak"] = out["gflops_p50"] / peak["gflops_median"]
        rows.append(out)
    return rows


def evaluate(results: list[dict], peaks: dict, flops_per_image: int | None) -> list[dict]:
    goals = []
    for provider in dict.fromkeys(r["provider"] for r in results):
        ort, eager = _row(results, "ort", provider, 1), _row(results, "eager", provider, 1)
        goal = {"name": "ort_batch1_p50_vs_eager", "provider": provider, "comparison": "<=",
                "threshold": GOAL_BATCH1_RATIO, "ratio": None, "met": None}
        if ort and eager:
            goal["ratio"] = ort["latency_ms"]["p50"] / eager["latency_ms"]["p50"]
            goal["met"] = goal["ratio"] <= GOAL_BATCH1_RATIO
            goal["detail"] = (f"ORT {ort['latency_ms']['p50']:.4f} ms / eager {eager['latency_ms']['p50']:.4f} ms "
                              f"({ort['mode']}, batch 1)")
        else:
            goal["detail"] = "not evaluated: needs ort and eager at batch 1 in this run"
        goals.append(goal)

        r = _row(results, "ort", provider, GOAL_PEAK_BATCH)
        peak = (peaks.get(provider) or {}).get("gflops_median")
        goal = {"name": "ort_batch1024_vs_matmul_peak", "provider": provider, "comparison": ">=",
                "threshold": GOAL_PEAK_FRACTION, "ratio": None, "met": None}
        if r and peak and flops_per_image:
            rate = flops_per_image * GOAL_PEAK_BATCH / 1e9 / (r["latency_ms"]["p50"] / 1e3)
            goal["ratio"] = rate / peak
            goal["met"] = goal["ratio"] >= GOAL_PEAK_FRACTION
            goal["detail"] = (f"ORT {rate:.1f} GFLOP/s at p50 / matmul {peak:.1f} GFLOP/s median "
                              f"({r['mode']}, batch {GOAL_PEAK_BATCH})")
        else:
            goal["detail"] = (f"not evaluated: needs ort at batch {GOAL_PEAK_BATCH}, a FLOP count and a "
                              "matmul measurement in this run")
        goals.append(goal)
    return goals
