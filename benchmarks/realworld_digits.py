"""Real-world-like digits made from the MNIST test set, and accuracy through `toolkit predict` on them.

Each test digit is re-rendered the way digits reach a deployed model: dark ink on white paper,
drawn on a 280x280 pad, photographed (paper shading, sensor noise, blur, a slight tilt, JPEG),
off-centre in a wider frame, RGBA with transparent paper, 16-bit grayscale, a palette GIF in
colours, and a JPEG whose pixels are stored rotated with an EXIF orientation saying so. The
set is deterministic (image i always gets the same transform and the same random draws), so
two models, or two runs, see identical files. Labels are folder names, as `toolkit predict` reads them.

    python benchmarks/realworld_digits.py --out /tmp/rw --count 2000 --model mlp.onnx --model cnn.onnx

Prints per-model accuracy, overall and per transform, from predict's own CSV. It is not a test
(tests/test_cnn.py uses write_set on a few images).
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRANSFORMS = ("inverted", "canvas280", "photo", "offcentre", "rgba", "gray16", "palette", "exif")


def _ink(digit: np.ndarray, size: int, rng) -> np.ndarray:
    """The 28x28 digit's ink (0..1) resized to ``size`` square, bicubic, with a slight random tilt."""
    from PIL import Image

    img = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _paste(canvas_shape, ink: np.ndarray, top: int, left: int) -> np.ndarray:
    out = np.zeros(canvas_shape, dtype=np.float32)
    out[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    return out


def render(digit: np.ndarray, transform: str, rng) -> tuple[bytes, str]:
    """(file bytes, suffix) of one MNIST digit (28x28 uint8, light on dark) under ``transform``."""
    from PIL import Image

    buf = io.BytesIO()
    if transform == "inverted":  # dark ink on white, MNIST's size: a scanned form field
        Image.fromarray(255 - digit).save(buf, "PNG")
        return buf.getvalue(), ".png"
    if transform == "canvas280":  # what the drawing pad saves: black strokes on a white 280x280 canvas
        size = int(rng.integers(150, 240))
        ink = _ink(digit, size, rng)
        top, left = (int(rng.integers(0, 280 - size + 1)) for _ in range(2))
        paper = 1.0 - _paste((280, 280), ink, top, left)
        Image.fromarray(np.uint8(np.clip(paper * 255, 0, 255))).save(buf, "PNG")
        return buf.getvalue(), ".png"
    if transform == "photo":  # phone photo of paper: shading, colour cast, noise, blur, JPEG
        from PIL import ImageFilter

        h, w = 240, 320
        size = int(rng.integers(110, 180))
        ink = _ink(digit, size, rng)
        ink = _paste((h, w), ink, int(rng.integers(20, h - size - 19)), int(rng.integers(30, w - size - 29)))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        light = 200 + 30 * (xx / w) * rng.uniform(-1, 1) + 20 * (yy / h) * rng.uniform(-1, 1)  # uneven lighting
        gray = light * (1 - 0.8 * ink) + rng.normal(0, 4, (h, w))
        tint = np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.82, 0.95)], dtype=np.float32)  # warm light
        rgb = np.uint8(np.clip(gray[..., None] * tint, 0, 255))
        img = Image.fromarray(rgb, "RGB").filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
        img.save(buf, "JPEG", quality=int(rng.integers(45, 80)))
        return buf.getvalue(), ".jpg"
    if transform == "offcentre":  # light on dark, small, in a corner of a wider frame
        h, w = 64, 96
        size = int(rng.integers(28, 44))
        ink = _ink(digit, size, rng)
        corner = int(rng.integers(0, 4))
        top = 2 if corner < 2 else h - size - 2
        left = 2 if corner % 2 == 0 else w - size - 2
        Image.fromarray(np.uint8(np.clip(_paste((h, w), ink, top, left) * 255, 0, 255))).save(buf, "PNG")
        return buf.getvalue(), ".png"
    if transform == "rgba":  # an app's export: dark blue ink, transparent background
        size = int(rng.integers(56, 112))
        alpha = np.uint8(np.clip(_ink(digit, size, rng) * 255, 0, 255))
        rgba = np.zeros((size, size, 4), dtype=np.uint8)
        rgba[..., :3] = (20, 30, 120)
        rgba[..., 3] = alpha
        Image.fromarray(rgba, "RGBA").save(buf, "PNG")
        return buf.getvalue(), ".png"
    if transform == "gray16":  # 16-bit grayscale (scientific cameras, some scanners), dark on light
        size = int(rng.integers(56, 100))
        ink = _ink(digit, size, rng)
        level = np.uint16(np.clip((1 - 0.85 * ink) * 60000, 0, 65535))
        Image.fromarray(level).save(buf, "PNG")  # uint16 -> mode I;16
        return buf.getvalue(), ".png"
    if transform == "palette":  # palette GIF: coloured ink on a coloured background
        size = int(rng.integers(40, 90))
        ink = _ink(digit, size, rng)[..., None]
        paper = np.array([240, 230, 180], np.float32)
        pen = np.array([160, 20, 40], np.float32)
        rgb = np.uint8(np.clip(paper * (1 - ink) + pen * ink, 0, 255))
        Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buf, "GIF")
        return buf.getvalue(), ".gif"
    if transform == "exif":  # camera JPEG stored sideways, EXIF Orientation saying how to turn it upright
        size = int(rng.integers(60, 120))
        ink = _paste((size, size + size // 2), _ink(digit, size, rng), 0, int(rng.integers(0, size // 2 + 1)))
        upright = np.uint8(np.clip((1 - 0.8 * ink) * 235, 0, 255))  # landscape, so a missed turn shows in the size
        orientation, stored = [(6, np.rot90(upright, 1)), (8, np.rot90(upright, -1)), (3, np.rot90(upright, 2))][
            int(rng.integers(0, 3))]
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(np.ascontiguousarray(stored)).save(buf, "JPEG", quality=90, exif=exif)
        return buf.getvalue(), ".jpg"
    raise ValueError(f"unknown transform {transform!r}; choose from {TRANSFORMS}")


def write_set(folder: str | Path, images: np.ndarray, labels: np.ndarray, count: int, seed: int = 0) -> int:
    """The first ``count`` digits as <folder>/<label>/<index>_<transform>.<ext>, transforms in turn."""
    folder = Path(folder)
    count = min(count, len(images))
    for i in range(count):
        rng = np.random.default_rng([seed, i])  # per image: the same file whatever count is asked for
        transform = TRANSFORMS[i % len(TRANSFORMS)]
        data, suffix = render(images[i], transform, rng)
        target = folder / str(int(labels[i])) / f"{i:05d}_{transform}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return count


def accuracy_by_transform(csv_path: str | Path) -> dict[str, tuple[int, int]]:
    """(correct, total) per transform and "all" from a `toolkit predict --output` CSV; blank rows count as wrong."""
    counts: dict[str, list[int]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            transform = Path(row["path"]).stem.split("_", 1)[1]
            for key in (transform, "all"):
                c = counts.setdefault(key, [0, 0])
                c[0] += row["label"] == row["expected"]
                c[1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the images and predict's CSVs")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", action="append", default=[], type=Path, help="ONNX model (repeatable)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from toolkit.train.data import load_mnist

    mnist = load_mnist(quiet=True)
    images = args.out / "images"
    if not images.exists():
        n = write_set(images, mnist.test_images, mnist.test_labels, args.count, args.seed)
        print(f"wrote {n} images under {images}")
    script = Path(sys.executable).parent / "toolkit"
    for model in args.model:
        out_csv = args.out / f"{model.stem}.csv"
        t = time.perf_counter()
        proc = subprocess.run([str(script), "predict", str(images), "--model", str(model), "--provider", "cpu",
                               "-o", str(out_csv), "--force"], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode not in (0,):
            print(f"{model}: predict exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        acc = accuracy_by_transform(out_csv)
        parts = "  ".join(f"{k} {c / n * 100:.1f}%" for k, (c, n) in sorted(acc.items()) if k != "all")
        c, n = acc["all"]
        print(f"{model.name}: {c / n * 100:.2f}% of {n} ({wall:.1f} s predict)  |  {parts}")


if __name__ == "__main__":
    main()
