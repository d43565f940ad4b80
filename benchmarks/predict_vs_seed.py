"""`toolkit predict` against the seed's per-image pipeline on the 10,000 MNIST test images.

Prints numbers; it is not a test. Both sides run as separate processes, in the same run,
on the same PNG files and the same weights:

  (a) `toolkit predict DIR --provider cpu --output out.csv` (whole command wall time:
      interpreter start, imports, model load, decoding, inference, writing the CSV);
  (b) the seed's way: for each file, PIL open -> convert("L") -> ImageOps.pad((28, 28)) ->
      ToTensor -> Normalize((0.5,), (0.5,)) -> the eager torch model, one image at a time.
      Reported as the whole process wall time and as the loop alone (excluding `import
      torch` and the checkpoint load), the stricter comparison.

Also the cold start of `toolkit predict --help` (median of several runs).

    python benchmarks/predict_vs_seed.py --checkpoint model.pth --onnx model.onnx

The ONNX file should be the export of the checkpoint (`toolkit export model.pth`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_RATIO = 0.10
GOAL_HELP_S = 0.3


def write_pngs(folder: Path, limit: int) -> int:
    """MNIST test images as <folder>/<label>/<index>.png (labelled folders, as samples/ is)."""
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from toolkit.train.data import load_mnist

    mnist = load_mnist(quiet=True)
    count = min(limit, len(mnist.test_images))
    for label in sorted(set(int(x) for x in mnist.test_labels[:count])):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(mnist.test_images[i]).save(folder / str(int(mnist.test_labels[i])) / f"{i:05d}.png")
    return count


def toolkit_command() -> list[str]:
    script = Path(sys.executable).parent / "toolkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "toolkit"]


def run_toolkit(images: Path, onnx: Path, out_csv: Path) -> tuple[float, float, int]:
    cmd = toolkit_command() + ["predict", str(images), "--model", str(onnx), "--provider", "cpu",
                               "--output", str(out_csv), "--force"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"toolkit predict failed ({proc.returncode}):\n{proc.stderr}")
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    correct = sum(r["label"] == r["expected"] for r in rows)
    return wall, correct / len(rows), len(rows)


def run_seed(images: Path, checkpoint: Path) -> tuple[float, float, float, int]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--seed-worker", str(images), "--checkpoint", str(checkpoint)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"seed pipeline failed ({proc.returncode}):\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, result["loop_s"], result["accuracy"], result["images"]


def seed_worker(images: Path, checkpoint: Path) -> None:
    """The seed notebook's inference, file by file (runs in its own process)."""
    sys.path.insert(0, str(ROOT))
    import torch
    from PIL import Image, ImageOps
    from torchvision import transforms

    from toolkit.train.checkpoint import build_model, load_checkpoint

    model = build_model(load_checkpoint(checkpoint))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    files = sorted(p for p in images.rglob("*.png"))
    correct = 0
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            img = ImageOps.pad(Image.open(path).convert("L"), (28, 28))
            pred = int(model(transform(img).unsqueeze(0)).argmax(1))
            correct += pred == int(path.parent.name)
    loop = time.perf_counter() - start
    print(json.dumps({"loop_s": loop, "accuracy": correct / len(files), "images": len(files)}))


def help_cold_start(runs: int) -> float:
    cmd = toolkit_command() + ["predict", "--help"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    from toolkit.timing import summarize

    return summarize(times).latency_ms.p50 / 1e3  # the median, in seconds


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}{load}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="seed/toolkit checkpoint (.pth) for the eager pipeline")
    ap.add_argument("--onnx", type=Path, help="its ONNX export, for toolkit predict")
    ap.add_argument("--images", type=int, default=10000, help="how many MNIST test images (default all 10,000)")
    ap.add_argument("--help-runs", type=int, default=7, help="cold starts of `toolkit predict --help` to take the median of")
    ap.add_argument("--seed-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_worker:
        seed_worker(args.seed_worker, args.checkpoint)
        return
    if not args.checkpoint or not args.onnx:
        ap.error("--checkpoint and --onnx are required")
    for p in (args.checkpoint, args.onnx):
        if not p.is_file():
            ap.error(f"{p}: no such file")

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        tmp = Path(tmp)
        count = write_pngs(tmp / "images", args.images)
        print(f"images: {count} MNIST test PNGs in labelled folders")
        # Warm the page cache so that neither side pays for the first read of the files.
        for p in (tmp / "images").rglob("*.png"):
            p.read_bytes()
        a_wall, a_acc, a_n = run_toolkit(tmp / "images", args.onnx, tmp / "out.csv")
        b_wall, b_loop, b_acc, b_n = run_seed(tmp / "images", args.checkpoint)
    help_s = help_cold_start(args.help_runs)

    print(f"(a) toolkit predict --provider cpu   wall {a_wall:7.2f} s  accuracy {a_acc * 100:.2f}%  ({a_n} images)")
    print(f"(b) seed per-image pipeline          wall {b_wall:7.2f} s  accuracy {b_acc * 100:.2f}%  ({b_n} images)")
    print(f"    of which the per-image loop alone     {b_loop:7.2f} s  (no torch import, no model load)")
    print(f"ratio (a)/(b) whole process: {a_wall / b_wall:.3f}x   (a)/(b) loop only: {a_wall / b_loop:.3f}x   "
          f"goal <= {GOAL_RATIO:.2f}x")
    print(f"accuracy difference: {(a_acc - b_acc) * 100:+.2f} points")
    print(f"cold start `toolkit predict --help`: median {help_s:.3f} s of {args.help_runs}   goal <= {GOAL_HELP_S} s")


if __name__ == "__main__":
    main()
