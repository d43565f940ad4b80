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


LAYOUTS = ("NCHW", "NHWC")
POLARITIES = ("light-on-dark", "dark-on-light")


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects: its input size, channels and layout, and how uint8 pixels become floats.

    ``mean``/``std`` are one number for every channel or one per channel (a tuple). Pixels reach
    ``normalize`` in MNIST's format (light on dark, see ``to_model_pixels``); a ``dark-on-light`` model
    gets them inverted there, and a 3-channel model gets the gray digit in every channel.
    Older files' JSON (no ``channels``, scalar mean/std, NCHW) reads unchanged.
    """

    height: int = 28
    width: int = 28
    pixel_scale: float = 255.0
    mean: float | tuple[float, ...] = 0.5
    std: float | tuple[float, ...] = 0.5
    # MNIST digits are light strokes on a dark background.
    polarity: str = "light-on-dark"
    layout: str = "NCHW"
    channels: int = 1

    def __post_init__(self):
        for name in ("mean", "std"):  # JSON gives lists; a frozen dataclass must stay hashable
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, float(value[0]) if len(value) == 1 else tuple(map(float, value)))

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
        spec.check()
        return spec

    def check(self) -> None:
        """ValueError naming the first value a model could not be fed with."""
        if self.polarity not in POLARITIES:
            raise ValueError(f"unknown polarity {self.polarity!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unsupported layout {self.layout!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"{self.channels} channels: only 1 (gray) or 3 (the gray digit in R, G and B) are fed")
        if min(self.height, self.width) < 1:
            raise ValueError(f"image size {self.height}x{self.width}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != self.channels:
                raise ValueError(f"{len(value)} {name} values for {self.channels} channel(s)")
        if 0 in self.stds or self.pixel_scale == 0:
            raise ValueError("std and pixel_scale must be non-zero")
        problem = value_problem(self.pixel_scale, self.means, self.stds)
        if problem:
            raise ValueError(problem)

    @property
    def stds(self) -> tuple[float, ...]:
        return self.std if isinstance(self.std, tuple) else (self.std,)

    @property
    def means(self) -> tuple[float, ...]:
        return self.mean if isinstance(self.mean, tuple) else (self.mean,)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's input dimensions in the model's layout."""
        if self.layout == "NHWC":
            return (self.height, self.width, self.channels)
        return (self.channels, self.height, self.width)

    def _values(self, a: np.ndarray) -> np.ndarray:
        """The float32 arithmetic for uint8 pixels, channels last when mean/std are per channel.

        x / scale, then (x - mean) / std, in float32, in that order: the seed's ToTensor + Normalize.
        """
        if self.polarity == "dark-on-light":
            a = 255 - a
        x = a.astype(np.float32)
        x /= np.float32(self.pixel_scale)
        if isinstance(self.mean, tuple) or isinstance(self.std, tuple):
            x = x[..., None] - np.asarray(self.means, dtype=np.float32)
            x /= np.asarray(self.stds, dtype=np.float32)
            return x
        x -= np.float32(self.mean)
        x /= np.float32(self.std)
        return x

    def arrange(self, values: np.ndarray) -> np.ndarray:
        """(N, H, W) or (N, H, W, C) float32 values -> the model's input tensor (channels and layout)."""
        if values.ndim == 3:
            values = values[..., None]
        if values.shape[-1] != self.channels:  # one value per pixel: the gray digit in every channel
            values = np.repeat(values, self.channels, axis=-1)
        if self.layout == "NHWC":
            return values
        return values[:, :, :, 0][:, None] if self.channels == 1 else np.ascontiguousarray(values.transpose(0, 3, 1, 2))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W) or (H, W) in MNIST's format -> float32 model input, e.g. (N, 1, H, W)."""
        a = np.asarray(pixels)
        if a.dtype != np.uint8:
            raise TypeError(f"expected uint8 pixels, got {a.dtype}")
        if a.ndim == 2:
            a = a[None]
        if a.shape[1:] != (self.height, self.width):
            raise ValueError(f"expected images of {self.height}x{self.width}, got {a.shape[1:]}")
        return self.arrange(self._values(a))

    def lookup_table(self) -> np.ndarray:
        """``normalize`` of every uint8 value, (256,) or (256, C) per channel:
        ``arrange(table[pixels])`` equals ``normalize(pixels)`` bit for bit.

        The same float32 operations in the same order, applied to the 256 possible inputs;
        one gather per pixel is several times cheaper than converting and dividing.
        """
        return self._values(np.arange(256, dtype=np.uint8))


MNIST = PreprocessSpec()

# Model inputs must be numbers a half-precision network can still tell apart: the fp16 variant casts its
# float32 input to float16, and no network is trained on inputs beyond float16's range or finer than its steps.
INPUT_LIMIT = float(np.finfo(np.float16).max)  # 65504


def value_problem(scale: float, means: tuple[float, ...], stds: tuple[float, ...]) -> str | None:
    """Why ``(p / scale - mean) / std`` in float32 is not a usable input for pixels 0..255, or None.

    The 256 values of each channel must be finite, within +-65504 and all different once rounded to
    float16. A negative std is refused: it negates the input, which --polarity (the other one) with mean
    255/scale - mean and std |std| says in positive terms.
    """
    if any(s < 0 for s in stds):
        return ("a negative std negates every input; describe that as the other --polarity with "
                "--mean 255/scale - mean and a positive --std")
    values = (np.arange(256, dtype=np.float32)[:, None] / np.float32(scale) - np.asarray(means, np.float32))
    with np.errstate(all="ignore"):  # overflow and division by zero are exactly what is being detected
        values = values / np.asarray(stds, np.float32)
        rounded = values.astype(np.float16)
    if not np.isfinite(values).all():
        return "pixel values 0..255 become infinite or NaN in float32"
    if float(np.abs(values).max()) > INPUT_LIMIT:
        return f"pixel values 0..255 become as large as {float(np.abs(values).max()):.3g} (beyond +-65504)"
    for c in range(rounded.shape[1]):
        if len(np.unique(rounded[:, c])) < 256:
            where = f" in channel {c}" if rounded.shape[1] > 1 else ""
            return (f"pixel values 0..255 become {float(values[0, c]):.6g}..{float(values[255, c]):.6g}{where}, too "
                    "close together to tell apart (distinct pixels give equal inputs in float16)")
    return None

# Gray levels below this (3% of full scale) above the background are not ink.
INK_MIN = 8


def is_blank(pixels: np.ndarray) -> np.ndarray | bool:
    """Model pixels (H, W) or (N, H, W) in which the preprocessing found no ink: nothing to classify.

    ``to_model_pixels`` returns an all-dark canvas for an image with no ink (white, black, uniform,
    1x1, fully transparent, faint noise); an MNIST-formatted image is blank when it is that dark itself.
    """
    a = np.asarray(pixels)
    return a.reshape(len(a), -1).max(axis=1) < INK_MIN if a.ndim >= 3 else bool(a.max() < INK_MIN)


def model_input(pixels: np.ndarray, spec: PreprocessSpec, table: np.ndarray | None = None) -> np.ndarray:
    """A batch of model pixels, uint8 (N, H, W) or (N, H, W, C), -> the float32 tensor the model takes.

    ``table``: ``spec.lookup_table()``, computed once per run by callers that convert many batches.
    Equal bit for bit to ``spec.normalize(pixels)``: one gather per pixel instead of the arithmetic.
    """
    table = spec.lookup_table() if table is None else table
    if table.ndim == 2 and pixels.ndim == 4:  # per-channel values: channel c of each pixel through column c
        return spec.arrange(table[pixels, np.arange(table.shape[1])])
    return spec.arrange(table[pixels])


# ---------------------------------------------------------------- any image -> MNIST format

def is_mnist_formatted(gray: np.ndarray, spec: PreprocessSpec = MNIST) -> bool:
    """Already model-ready: exactly the model's size and light strokes on a dark border."""
    if gray.shape != (spec.height, spec.width):
        return False
    border = np.concatenate((gray[0], gray[-1], gray[:, 0], gray[:, -1]))
    # The median, computed by partial sort: np.median's overhead dominated predict's per-image cost.
    k = border.size // 2
    if border.size % 2:
        return int(np.partition(border, k)[k]) < 128
    low, high = np.partition(border, (k - 1, k))[k - 1:k + 1]
    return int(low) + int(high) < 256


def to_model_pixels(gray: np.ndarray, spec: PreprocessSpec = MNIST) -> np.ndarray:
    """Any 8-bit grayscale image (H, W) -> (spec.height, spec.width) uint8 in MNIST's own format.

    The rule (documented in README and `toolkit predict --help`):
      * an image that is already 28x28 with a dark border is used unchanged;
      * otherwise it is normalised the way MNIST was made: the background is
        taken as the median of the border pixels; a light background means dark
        ink, so the image is inverted; the background level plus three times
        the border's noise (robust standard deviation) is subtracted and the
        contrast stretched to 0..255; the ink's bounding box is scaled to fit
        20x20 keeping its aspect ratio (anti-aliased); the result is placed in a
        28x28 canvas so that its centre of mass sits at (14, 14), where MNIST's
        own digits have theirs (for other model sizes, box and centre scale alike).
    An image with no ink at all becomes an all-dark canvas (``is_blank`` says so).
    """
    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    if is_mnist_formatted(gray, spec):
        return gray
    h, w = gray.shape
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    bg = float(np.median(border))
    # Paper grain and sensor noise must not count as ink, or the bounding box spans the
    # whole photo: 1.4826 * MAD estimates the noise's standard deviation, robust to ink at the edge.
    noise = 1.4826 * float(np.median(np.abs(border.astype(np.float32) - bg)))
    img = gray.astype(np.float32)
    if bg >= 128:  # dark ink on light paper: flip to MNIST's light-on-dark
        img = 255.0 - img
        bg = 255.0 - bg
    img = np.clip(img - (bg + 3.0 * noise), 0, None)
    peak = float(img.max())
    canvas = np.zeros((spec.height, spec.width), dtype=np.uint8)
    if peak < INK_MIN:  # nothing but background
        return canvas
    img *= 255.0 / peak
    ink = img > 0.1 * 255.0  # ignore faint noise when finding the digit's extent
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

    box = round(20 * min(spec.height, spec.width) / 28)  # MNIST: digits fit a 20x20 box inside 28x28
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
    # MNIST's centres of mass average (14.0, 14.0) in pixel-index coordinates, not the
    # geometric centre 13.5: aiming there keeps re-normalised digits where the model saw them.
    top = int(round(spec.height / 2 - cy))
    left = int(round(spec.width / 2 - cx))
    # keep the whole digit on the canvas even if its mass is lopsided
    top = min(max(top, 0), spec.height - nh)
    left = min(max(left, 0), spec.width - nw)
    canvas[top:top + nh, left:left + nw] = np.clip(small, 0, 255).astype(np.uint8)
    return canvas
