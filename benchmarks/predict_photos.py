"""`toolkit predict` on photos against what a user writes instead, in the same run, on the same files.

Prints numbers; it is not a test. 2,000 generated photo-sized images (1,000 JPEG 1024x768, 1,000 PNG 800x600,
in ImageFolder's class folders), one 224x224 RGB ONNX model, the ImageNet-style transform
Resize(256) + CenterCrop(224) + ToTensor + Normalize:

  (a) `toolkit predict DIR --model m.onnx --preprocess image --mean ... --std ... --labels ... -o out.csv`
  (b) torchvision ImageFolder + DataLoader(num_workers=<usable CPUs>, batch_size=64) with those transforms,
      feeding one ONNX Runtime session (CPU, its default threads), labels written per file.

Both as whole processes (interpreter start, imports, model load, every image, the output). Each side runs
``--repeat`` times, alternating; the best of each is compared. The two must give identical labels for every
file, or the script exits 1. Also timed: (a) with --jpeg-draft (JPEGs decoded at a reduced DCT scale: pixels
change), with the share of its labels that equal the reference's.

    flock /tmp/bench.lock python benchmarks/predict_photos.py --work /tmp/photos
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = [f"class{i}" for i in range(10)]
GOAL = 1.5


def photo(rng, h: int, w: int):
    """Something like a photo for the codecs: smooth gradients, a few shapes, sensor-like noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([x / w * rng.uniform(80, 255), y / h * rng.uniform(80, 255),
                  (x + y) / (w + h) * rng.uniform(80, 255)], -1)
    im = Image.fromarray(np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 50)), int(rng.integers(0, h - 50))
        draw.ellipse([x0, y0, x0 + int(rng.integers(40, w // 2)), y0 + int(rng.integers(40, h // 2))],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def write_photos(folder: Path, count: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(count):
        cls = folder / CLASSES[i % len(CLASSES)]
        cls.mkdir(parents=True, exist_ok=True)
        if i % 2 == 0:
            photo(rng, 768, 1024).save(cls / f"{i:05d}.jpg", quality=90)
        else:
            photo(rng, 600, 800).save(cls / f"{i:05d}.png")


def write_model(path: Path) -> None:
    """A small 224x224 RGB CNN (random weights, fixed seed): the cost is the pipeline's, as on an edge box."""
    import warnings

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 7, stride=4, padding=3), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, len(CLASSES))).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


REFERENCE = r'''
import csv, sys
import numpy as np, onnxruntime as ort, torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as T
root, model, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mean, std, classes = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), sys.argv[5].split(",")
ds = datasets.ImageFolder(root, T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)]))
loader = DataLoader(ds, batch_size=64, num_workers=workers)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
labels = []
for x, _ in loader:
    labels += session.run(None, {"input": x.numpy()})[0].argmax(1).tolist()
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "label"])
    for (path, _), k in zip(ds.samples, labels):
        w.writerow([path, classes[k]])
'''


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def labels(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {os.path.realpath(r["path"]): r["label"] for r in csv.DictReader(f)}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from toolkit.machine import usable_cpus

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the images, model and outputs (kept)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    images, model = args.work / "photos", args.work / "photo224.onnx"
    if not images.is_dir():
        print(f"writing {args.count} photos to {images} ...", flush=True)
        write_photos(images, args.count)
    if not model.exists():
        write_model(model)
    cpus = usable_cpus()
    script = args.work / "reference.py"
    script.write_text(REFERENCE)
    toolkit = [str(Path(sys.executable).parent / "toolkit"), "predict", str(images), "--model", str(model),
               "--provider", "cpu", "--preprocess", "image", "--mean", ",".join(map(str, MEAN)),
               "--std", ",".join(map(str, STD)), "--labels", ",".join(CLASSES), "--force",
               "-o", str(args.work / "toolkit.csv")]
    reference = [sys.executable, str(script), str(images), str(model), str(args.work / "reference.csv"), str(cpus),
                 ",".join(CLASSES)]
    draft = [*toolkit[:-1], str(args.work / "draft.csv"), "--jpeg-draft"]
    times: dict[str, list[float]] = {"toolkit": [], "reference": [], "jpeg-draft": []}
    load_before = os.getloadavg()
    for _ in range(args.repeat):
        times["toolkit"].append(timed(toolkit))
        times["reference"].append(timed(reference))
        times["jpeg-draft"].append(timed(draft))
    load_after = os.getloadavg()
    ours, theirs = labels(args.work / "toolkit.csv"), labels(args.work / "reference.csv")
    drafted = labels(args.work / "draft.csv")
    same = sum(ours.get(p) == label for p, label in theirs.items())
    same_draft = sum(drafted.get(p) == label for p, label in theirs.items())
    n = len(theirs)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["reference"] / best["toolkit"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({cpus} usable), "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    for k, v in times.items():
        print(f"{k:9s}: {n / best[k]:7.1f} images/s (best of {len(v)}: {', '.join(f'{s:.2f}' for s in v)} s)")
    print(f"ratio toolkit / reference: {ratio:.2f}x (goal {GOAL}x); identical labels: {same}/{n}")
    print(f"ratio toolkit --jpeg-draft / reference: {best['reference'] / best['jpeg-draft']:.2f}x; labels equal to "
          f"the reference's: {same_draft}/{n} ({same_draft / n:.2%}; the 1,000 PNGs are not drafted)")
    if same != n or len(ours) != n:
        sys.exit(1)


if __name__ == "__main__":
    main()
