"""The one place that defines how pixels become model input.

Training, export (reference inputs and metadata), predict and the drawing pad
all go through ``PreprocessSpec``. The arithmetic matches the seed's
``ToTensor()`` + ``Normalize((0.5,), (0.5,))`` exactly: x / 255, then (x - mean) / std,
in float32, in that order, so every path produces bit-identical inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    height: int = 28
    width: int = 28
    pixel_scale: float = 255.0
    mean: float = 0.5
    std: float = 0.5
    # MNIST digits are light strokes on a dark background.
    polarity: str = "light-on-dark"
    layout: str = "NCHW"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        spec = cls(**d)
        if spec.polarity not in ("light-on-dark", "dark-on-light"):
            raise ValueError(f"unknown polarity {spec.polarity!r}")
        if spec.layout != "NCHW":
            raise ValueError(f"unsupported layout {spec.layout!r}")
        if spec.std == 0 or spec.pixel_scale == 0:
            raise ValueError("std and pixel_scale must be non-zero")
        return spec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.height, self.width)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W) or (H, W) -> float32 (N, 1, H, W) model input."""
        a = np.asarray(pixels)
        if a.dtype != np.uint8:
            raise TypeError(f"expected uint8 pixels, got {a.dtype}")
        if a.ndim == 2:
            a = a[None]
        if a.shape[1:] != (self.height, self.width):
            raise ValueError(f"expected images of {self.height}x{self.width}, got {a.shape[1:]}")
        x = a.astype(np.float32)
        x /= np.float32(self.pixel_scale)
        x -= np.float32(self.mean)
        x /= np.float32(self.std)
        return x[:, None, :, :]


MNIST = PreprocessSpec()


# ---------------------------------------------------------------- any image -> MNIST format

def is_mnist_formatted(gray: np.ndarray, spec: PreprocessSpec = MNIST) -> bool:
    """Already model-ready: exactly the model's size and light strokes on a dark border."""
    if gray.shape != (spec.height, spec.width):
        return False
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(border)) < 128


def to_model_pixels(gray: np.ndarray, spec: PreprocessSpec = MNIST) -> np.ndarray:
    """Any 8-bit grayscale image (H, W) -> (28, 28) uint8 in MNIST's own format.

    The rule (documented in README and `toolkit predict --help`):
      * an image that is already 28x28 with a dark border is used unchanged;
      * otherwise it is normalised the way MNIST was made: the background is
        taken as the median of the border pixels; a light background means dark
        ink, so the image is inverted; the background level is subtracted and
        contrast stretched to 0..255; the ink's bounding box is scaled to fit
        20x20 keeping its aspect ratio (anti-aliased); the result is placed in a
        28x28 canvas so that its centre of mass sits at the centre.
    An image with no ink at all becomes an all-dark canvas.
    """
    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    if is_mnist_formatted(gray, spec):
        return gray
    h, w = gray.shape
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    bg = float(np.median(border))
    img = gray.astype(np.float32)
    if bg >= 128:  # dark ink on light paper: flip to MNIST's light-on-dark
        img = 255.0 - img
        bg = 255.0 - bg
    img = np.clip(img - bg, 0, None)
    peak = float(img.max())
    canvas = np.zeros((spec.height, spec.width), dtype=np.uint8)
    if peak < 8:  # nothing but background (noise below 3% of full scale)
        return canvas
    img *= 255.0 / peak
    ink = img > 0.1 * 255.0  # ignore faint noise when finding the digit's extent
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

    box = round(20 * spec.height / 28)  # MNIST: digits fit a 20x20 box inside 28x28
    ch, cw = crop.shape
    scale = box / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    from PIL import Image

    small = np.asarray(
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8), mode="L").resize((nw, nh), Image.Resampling.LANCZOS),
        dtype=np.float32,
    )
    total = small.sum()
    if total <= 0:
        return canvas
    cy = (small.sum(axis=1) * np.arange(nh)).sum() / total
    cx = (small.sum(axis=0) * np.arange(nw)).sum() / total
    top = int(round((spec.height - 1) / 2 - cy))
    left = int(round((spec.width - 1) / 2 - cx))
    # keep the whole digit on the canvas even if its mass is lopsided
    top = min(max(top, 0), spec.height - nh)
    left = min(max(left, 0), spec.width - nw)
    canvas[top:top + nh, left:left + nw] = np.clip(small, 0, 255).astype(np.uint8)
    return canvas
