"""The machine's measured float32 matrix-multiply rate: the roof that engines are compared to.

CPU: numpy's BLAS. Its thread count is fixed when the library loads, so the measurement
runs in a child process started with the thread variables set to the benchmark's
thread count (and it keeps torch out of the parent). CUDA: a torch matmul in a child
process, with TF32 off so it is a true float32 rate.

Run as ``python -m toolkit.bench.peak --device cpu --threads N``; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# (M, K, N): a square cube, and the model's widest layer at batch 1024
SHAPES = ((1024, 1024, 1024), (1024, 784, 512))
REPS = 15
WARMUP = 3


def _summarize(shape, times: list[float], **extra) -> dict:
    m, k, n = shape
    flops = 2 * m * k * n
    times = sorted(times)
    median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
    return {"shape": list(shape), "reps": len(times), "gflops_best": flops / times[0] / 1e9,
            "gflops_median": flops / median / 1e9, **extra}


def _cpu(threads: int) -> dict:
    import numpy as np

    rows = []
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        m, k, n = shape
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), dtype=np.float32)
        for _ in range(WARMUP):
            np.matmul(a, b, out=c)
        times = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
        rows.append(_summarize(shape, times))
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        library = f"numpy {np.__version__} / {blas.get('name')} {blas.get('version')}"
    except (AttributeError, KeyError, TypeError):
        library = f"numpy {np.__version__}"
    return {"device": "cpu", "library": library, "threads": threads, "shapes": rows}


def _cuda() -> dict:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} cannot use CUDA here")
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would not be a float32 rate
    rows = []
    for shape in SHAPES:
        m, k, n = (s * 4 for s in shape)  # a GPU needs bigger matrices to reach its rate
        a = torch.randn(m, k, device="cuda")
        b = torch.randn(k, n, device="cuda")
        for _ in range(WARMUP):
            a @ b
        torch.cuda.synchronize()
        times = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            a @ b
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows.append(_summarize((m, k, n), times))
    return {"device": "cuda", "library": f"torch {torch.__version__} (CUDA {torch.version.cuda}, TF32 off)",
            "gpu": torch.cuda.get_device_name(0), "threads": None, "shapes": rows}


def measure_peak(device: str, threads: int, timeout: float = 120) -> tuple[dict | None, str | None]:
    """Return (peak, None) or (None, reason). ``peak`` holds per-shape rates and the best of them."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        env[var] = str(threads)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "toolkit.bench.peak", "--device", device, "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"the {device} matmul measurement took over {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"the {device} matmul measurement failed: {tail[:200]}"
    result = json.loads(lines[-1])
    if "error" in result:
        return None, result["error"]
    best = max(result["shapes"], key=lambda r: r["gflops_median"])
    result.update(gflops_best=max(r["gflops_best"] for r in result["shapes"]),
                  gflops_median=best["gflops_median"], shape=best["shape"])
    return result, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        result = _cpu(args.threads) if args.device == "cpu" else _cuda()
    except Exception as e:  # reported to the parent as data, not a traceback
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
