"""`toolkit predict` on one node: the local engine against --engine ray, on the 60,000 MNIST training images.

Prints numbers; it is not a test. The images are written once as PNGs (<dir>/<label>/<index>.png, labelled
folders) and reused. Each engine runs in its own fresh process, in the same run, on the same files and
model, writing the same CSV; the two CSVs are compared. For Ray, the start-up of the local Ray instance
(ray.init) is reported apart and the throughput is given both with and without it.

    flock /tmp/toolkit-bench.lock python benchmarks/ray_vs_local.py --onnx model.onnx [--images DIR]

Goal (issue 13): --engine ray reaches at least 50% of the local engine's images/s, start-up excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 0.50

RUN = r"""
import json, sys, time
started = time.perf_counter()
from toolkit.predict import Reporter, predict_paths
engine, images, model, out = sys.argv[1:5]
marks = []
class Marks(Reporter):
    def advance(self, n):
        marks.append((time.perf_counter(), n))
called = time.perf_counter()
summary = predict_paths([images], engine=engine, model=model, provider="cpu", output=out, reporter=Marks())
# Rows after the first rows arrived, over the time they took: the pipeline's steady rate.
first = next(k for k, (t, n) in enumerate(marks) if n)
steady = sum(n for t, n in marks[first + 1:]) / (marks[-1][0] - marks[first][0])
print(json.dumps({"images": summary.images, "seconds": summary.seconds,
                  "startup": summary.startup_seconds, "first_rows": marks[first][0] - called,
                  "steady": steady, "process": time.perf_counter() - started}))
"""


def write_pngs(folder: Path) -> int:
    """The 60,000 MNIST training images as PNGs, once (the folder is reused when it holds them all)."""
    from PIL import Image

    from toolkit.train.data import load_mnist

    mnist = load_mnist(quiet=True)
    count = len(mnist.train_images)
    if len(list(folder.rglob("*.png"))) == count:
        return count
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(mnist.train_images[i]).save(folder / str(int(mnist.train_labels[i])) / f"{i:05d}.png")
    return count


def run(engine: str, images: Path, model: Path, out: Path) -> dict:
    wall = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN, engine, str(images), str(model), str(out)],
                            capture_output=True, text=True, check=True)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    numbers["wall"] = time.perf_counter() - wall
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--images", type=Path, help="folder for the PNGs (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images or Path(tmp) / "mnist-train"
        t = time.perf_counter()
        count = write_pngs(images)
        print(f"{count} PNGs in {images} ({time.perf_counter() - t:.1f} s to prepare)")
        local = run("local", images, args.onnx, Path(tmp) / "local.csv")
        ray = run("ray", images, args.onnx, Path(tmp) / "ray.csv")
        same = (Path(tmp) / "local.csv").read_bytes() == (Path(tmp) / "ray.csv").read_bytes()
    local_rate = local["images"] / local["seconds"]
    ray_rate = ray["images"] / (ray["seconds"] - ray["startup"])
    ray_rate_all = ray["images"] / ray["seconds"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average after the runs "
          f"{os.getloadavg()[0]:.2f}")
    print(f"local engine: {local['images']} images in {local['seconds']:.2f} s = {local_rate:,.0f} images/s; "
          f"first rows after {local['first_rows']:.2f} s, then {local['steady']:,.0f} images/s "
          f"(process {local['wall']:.2f} s)")
    print(f"ray engine:   {ray['images']} images in {ray['seconds']:.2f} s, of which Ray start-up (import ray + "
          f"ray.init) {ray['startup']:.2f} s; first rows after {ray['first_rows']:.2f} s (worker processes, the "
          f"actor's model load), then {ray['steady']:,.0f} images/s (process {ray['wall']:.2f} s)")
    print(f"ray / local, whole run without Ray start-up: {ray_rate / local_rate:.0%} "
          f"({ray_rate:,.0f} vs {local_rate:,.0f} images/s; with start-up {ray_rate_all:,.0f}); goal >= "
          f"{GOAL_RATIO:.0%}: {'met' if ray_rate >= GOAL_RATIO * local_rate else 'NOT met'}")
    print(f"ray / local, steady rate once rows flow: {ray['steady'] / local['steady']:.0%}; identical CSV: {same}")

if __name__ == "__main__":
    main()
