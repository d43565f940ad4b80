"""The one place that defines how pixels become model input: two pipelines, one module.

Training, export (reference inputs and metadata), predict, the drawing pad and serving all go
through ``PreprocessSpec`` and ``to_model_pixels`` (decoded image -> the model's uint8 pixels), then
``PreprocessSpec.normalize`` (uint8 -> float32 input tensor).

* ``digit`` (the default, the toolkit's own models and every file written before modes existed): any
  image is brought to MNIST's format (gray, polarity fixed, ink box scaled, centred by mass).
* ``image`` (any photo classifier): RGB as Pillow's ``convert("RGB")`` gives it (the decode module),
  colour order (RGB, BGR, or luma for a 1-channel model), one geometry (``crop``, ``letterbox``,
  ``stretch``) with Pillow's filters and torchvision's/timm's rounding, then the same arithmetic.

The arithmetic matches torchvision's ``ToTensor()`` + ``Normalize(mean, std)`` exactly: x / scale, then
(x - mean[c]) / std[c], in float32, in that order, so every path produces bit-identical inputs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np


LAYOUTS = ("NCHW", "NHWC")
POLARITIES = ("light-on-dark", "dark-on-light")
MODES = ("digit", "image")
FITS = ("crop", "letterbox", "stretch")
# Pillow's Image.Resampling codes (Hugging Face configs store these integers as ``resample``).
INTERPOLATIONS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
CHANNEL_ORDERS = ("rgb", "bgr")
# Where a centre crop starts: torchvision's CenterCrop (and timm) int(round(d / 2)); Hugging Face's d // 2.
CROP_OFFSETS = ("round", "floor")
DEFAULT_CROP_PCT = {"crop": 0.875, "letterbox": 1.0, "stretch": 1.0}  # timm's eval default; the others: none
SPEC_VERSION = 2  # version 1: digit mode only (files written before image mode; they carry no version key)
IMAGE_KEYS = ("version", "mode", "fit", "resize", "crop_pct", "interpolation", "channel_order", "pad_value",
              "crop_offset")


def resolve_resize(fit: str, height: int, width: int, resize=None, crop_pct: float | None = None):
    """What the image is resized to before the centre crop/pad to ``height`` x ``width``.

    crop: the shorter side's length (torchvision ``Resize(N)``), ``resize`` or timm's ``floor(size / crop_pct)``;
    stretch/letterbox: the box (h, w) the image is stretched to / fitted into, ``floor(side / crop_pct)`` each.
    """
    if resize is not None:
        return int(resize) if fit == "crop" else tuple(int(v) for v in (resize if isinstance(resize, (list, tuple))
                                                                         else (resize, resize)))
    pct = DEFAULT_CROP_PCT[fit] if crop_pct is None else crop_pct
    if fit == "crop":
        return math.floor(min(height, width) / pct)
    return math.floor(height / pct), math.floor(width / pct)


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects: its input size, channels and layout, and how an image becomes its input.

    ``mean``/``std`` are one number for every channel or one per channel (a tuple), in the model's
    channel order. Digit mode: pixels reach ``normalize`` in MNIST's format (light on dark, see
    ``to_model_pixels``); a ``dark-on-light`` model gets them inverted there, and a 3-channel model gets the
    gray digit in every channel. Image mode: ``to_model_pixels`` gives (H, W, C) pixels in the model's
    channel order; every image field is stored resolved (``resize`` computed, never a library default).
    Older files' JSON (no ``mode``: digit, no ``channels``, scalar mean/std, NCHW) reads unchanged, and a
    digit spec's JSON is exactly what it was before image mode existed.
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
    # ---- image mode only (digit mode keeps these defaults and does not write them)
    mode: str = "digit"
    fit: str = "crop"
    resize: int | tuple[int, int] | None = None  # resolved in image mode: see resolve_resize
    crop_pct: float | None = None  # the one that gave ``resize`` (None when resize was given itself)
    interpolation: str = "bilinear"
    channel_order: str = "rgb"
    pad_value: tuple[int, int, int] = (0, 0, 0)  # R, G, B of letterbox (and crop padding) borders
    crop_offset: str = "round"
    version: int = 1

    def __post_init__(self):
        for name in ("mean", "std"):  # JSON gives lists; a frozen dataclass must stay hashable
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, float(value[0]) if len(value) == 1 else tuple(map(float, value)))
        if isinstance(self.pad_value, (list, tuple)):
            object.__setattr__(self, "pad_value", tuple(int(v) for v in self.pad_value))
        if isinstance(self.resize, list):
            object.__setattr__(self, "resize", tuple(self.resize))
        if self.mode == "image":
            object.__setattr__(self, "version", SPEC_VERSION)
            if self.resize is None and self.fit in FITS:  # recorded resolved: the fit's default is written down
                pct = DEFAULT_CROP_PCT[self.fit] if self.crop_pct is None else self.crop_pct
                object.__setattr__(self, "crop_pct", pct)
                object.__setattr__(self, "resize", resolve_resize(self.fit, self.height, self.width, crop_pct=pct))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.mode == "digit":  # byte-identical to what every earlier toolkit wrote (and reads)
            for key in IMAGE_KEYS:
                d.pop(key)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        version = d.get("version", 1)
        if not isinstance(version, int) or not 1 <= version <= SPEC_VERSION:
            raise ValueError(f"preprocessing version {version!r}: this toolkit reads versions 1 to {SPEC_VERSION} "
                             "(a newer toolkit wrote it?)")
        if d.get("mode", "digit") == "image" and version < 2:
            raise ValueError("image-mode preprocessing needs version 2")
        spec = cls(**d)
        spec.check()
        return spec

    def check(self) -> None:
        """ValueError naming the first value a model could not be fed with."""
        if self.mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}")
        if self.polarity not in POLARITIES:
            raise ValueError(f"unknown polarity {self.polarity!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unsupported layout {self.layout!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"{self.channels} channels: only 1 (gray) or 3 (RGB/BGR, or the gray digit in each) "
                             "are fed")
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
        if self.mode == "image":
            self._check_image()
        elif any(getattr(self, f.name) != f.default for f in fields(self) if f.name in IMAGE_KEYS):
            raise ValueError("image preprocessing fields (fit, resize, ...) on a digit-mode model")

    def _check_image(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r} (crop, letterbox or stretch)")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"unknown channel order {self.channel_order!r}")
        if self.channel_order == "bgr" and self.channels == 1:
            raise ValueError("channel order bgr for a 1-channel (luma) model")
        if self.crop_offset not in CROP_OFFSETS:
            raise ValueError(f"unknown crop offset rule {self.crop_offset!r}")
        if self.polarity != "light-on-dark":
            raise ValueError("polarity is a digit-mode setting")
        if len(self.pad_value) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.pad_value):
            raise ValueError(f"pad value {self.pad_value!r}: three integers 0-255")
        if self.crop_pct is not None and not (0 < self.crop_pct <= 1):
            raise ValueError(f"crop_pct {self.crop_pct!r}: must be above 0 and at most 1")
        sides = (self.resize,) if self.fit == "crop" else self.resize
        if not isinstance(sides, tuple) or len(sides) != (1 if self.fit == "crop" else 2) or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sides):
            raise ValueError(f"resize {self.resize!r} for fit {self.fit}: "
                             + ("one length" if self.fit == "crop" else "a height and a width") + " of at least 1")

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

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """One image's uint8 pixels as ``to_model_pixels`` gives them: (H, W) digit, (H, W, C) image."""
        return (self.height, self.width) if self.mode == "digit" else (self.height, self.width, self.channels)

    def _values(self, a: np.ndarray) -> np.ndarray:
        """The float32 arithmetic for uint8 pixels, channels last when mean/std are per channel (or image mode).

        x / scale, then (x - mean) / std, in float32, in that order: torchvision's ToTensor + Normalize.
        """
        if self.polarity == "dark-on-light":
            a = 255 - a
        x = a.astype(np.float32)
        x /= np.float32(self.pixel_scale)
        if self.mode == "image":  # pixels already carry their channel axis
            x -= np.asarray(self.means, dtype=np.float32)
            x /= np.asarray(self.stds, dtype=np.float32)
            return x
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
        """uint8 model pixels, one image or a batch (``pixel_shape``, or N of them) -> float32 model input."""
        a = np.asarray(pixels)
        if a.dtype != np.uint8:
            raise TypeError(f"expected uint8 pixels, got {a.dtype}")
        if a.ndim == len(self.pixel_shape):
            a = a[None]
        if a.shape[1:] != self.pixel_shape:
            raise ValueError(f"expected images of {'x'.join(map(str, self.pixel_shape))}, got {a.shape[1:]}")
        return self.arrange(self._values(a))

    def lookup_table(self) -> np.ndarray:
        """``normalize`` of every uint8 value, (256,) or (256, C) per channel:
        ``model_input(pixels, spec, table)`` equals ``normalize(pixels)`` bit for bit.

        The same float32 operations in the same order, applied to the 256 possible inputs;
        one gather per pixel is several times cheaper than converting and dividing.
        """
        levels = np.arange(256, dtype=np.uint8)
        if self.mode == "image":
            levels = np.repeat(levels[:, None], self.channels, axis=1)
        return self._values(levels)



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
        ordered = np.sort(rounded[:, c])  # not np.unique: its first call imports numpy.ma (~20 ms a run)
        if (ordered[1:] == ordered[:-1]).any():
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


def blank_images(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Per image of a batch of model pixels: no ink, so no label. A digit-pipeline notion (``is_blank``); an
    image model classifies every image, a uniform one too."""
    if spec.mode == "digit":
        return is_blank(pixels)
    return np.zeros(len(pixels), dtype=bool)


# Pixels (uint8) model_input converts at a time: with their float32 values they stay in a core's cache.
_TAKE_BLOCK = 1 << 18


def model_input(pixels: np.ndarray, spec: PreprocessSpec, table: np.ndarray | None = None) -> np.ndarray:
    """A batch of model pixels, uint8 (N, H, W) or (N, H, W, C), -> the float32 tensor the model takes.

    ``table``: ``spec.lookup_table()``, computed once per run by callers that convert many batches.
    Equal bit for bit to ``spec.normalize(pixels)``: one gather per pixel instead of the arithmetic.
    """
    table = spec.lookup_table() if table is None else table
    if table.ndim == 2 and pixels.ndim == 4:  # per-channel values: channel c of each pixel through column c
        if spec.layout == "NCHW":
            # One take per channel plane, a few hundred KB of pixels at a time: the planes are read in place
            # (strided) while they are still in cache. Measured, 256 images of 224x224x3 on the 2-core build
            # machine: 0.28 ms an image, against 0.82 ms for a transposed copy of the whole batch first and
            # 3.7 ms for a broadcast gather followed by the transpose.
            n, height, width, channels = pixels.shape
            out = np.empty((n, channels, height, width), dtype=np.float32)
            step = max(1, _TAKE_BLOCK // max(1, height * width * channels))
            for i in range(0, n, step):
                for c in range(channels):
                    np.take(table[:, c], pixels[i:i + step, :, :, c], out=out[i:i + step, c])
            return out
        return spec.arrange(table[pixels, np.arange(table.shape[1])])
    return spec.arrange(table[pixels])


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


def to_model_pixels(decoded, spec: PreprocessSpec = MNIST) -> np.ndarray:
    """Decoded image data -> the model's uint8 pixels (``spec.pixel_shape``): the one entry for both modes.

    ``decoded``: what the decode module gives for the spec's mode (``toolkit.predict.decode``:
    ``read_image``/``decode_image``): digit mode a 2-D uint8 gray array; image mode an RGB Pillow image
    or (H, W, 3) uint8 array (a 2-D gray array is taken as Pillow's gray-to-RGB, the same value in R, G, B).
    """
    if spec.mode == "image":
        return _image_pixels(decoded, spec)
    return _digit_pixels(decoded, spec)


# ---------------------------------------------------------------- image mode

def describe_image(spec: dict) -> str:
    """An image-mode spec's dict (as a contract stores it) in one line, as a user would say it."""
    resize = spec["resize"]
    if spec["fit"] == "crop":
        how = f"shorter side to {resize}, centre crop"
    elif spec["fit"] == "stretch":
        how = f"stretch to {resize[0]}x{resize[1]}"
    else:
        how = f"fit in {resize[0]}x{resize[1]}, pad {','.join(map(str, spec['pad_value']))}"
    if spec["fit"] != "crop" and tuple(resize) != (spec["height"], spec["width"]):
        how += ", centre crop"
    pct = f", crop_pct {spec['crop_pct']:g}" if spec.get("crop_pct") is not None else ""
    return (f"image pipeline: {spec['channel_order'] if spec['channels'] == 3 else 'luma'}, {spec['fit']} "
            f"({how}{pct}) to {spec['height']}x{spec['width']}, {spec['interpolation']}")


def resized_size(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    """(h, w) an image of ``height`` x ``width`` is resized to before its centre crop/pad, as
    torchvision's ``Resize`` (crop: shorter side N, longer ``int(N * long / short)``), its exact
    ``Resize((h, w))`` (stretch) and timm's ``ResizeKeepRatio(longest=1)`` (letterbox: round(side / ratio))."""
    if spec.fit == "crop":
        n = spec.resize
        return (int(n * height / width), n) if width <= height else (n, int(n * width / height))
    box_h, box_w = spec.resize
    if spec.fit == "stretch":
        return box_h, box_w
    ratio = max(height / box_h, width / box_w)
    return max(1, round(height / ratio)), max(1, round(width / ratio))


def _centre(im, height: int, width: int, fill, offset: str):
    """torchvision's CenterCrop (pads with ``fill`` first where the image is smaller, the odd pixel right/bottom;
    timm's CenterCropOrPad), or with ``offset`` "floor" Hugging Face's ``center_crop`` (crop offsets rounded
    down, the odd padding pixel top/left)."""
    from PIL import Image

    w0, h0 = im.size
    if width > w0 or height > h0:
        extra = 1 if offset == "floor" else 0

        def before(want, have):
            return (want - have + extra) // 2 if want > have else 0

        canvas = Image.new(im.mode, (max(width, w0), max(height, h0)), fill)
        canvas.paste(im, (before(width, w0), before(height, h0)))
        im, (w0, h0) = canvas, canvas.size
    if (w0, h0) == (width, height):
        return im
    if offset == "round":
        top, left = int(round((h0 - height) / 2.0)), int(round((w0 - width) / 2.0))
    else:
        top, left = (h0 - height) // 2, (w0 - width) // 2
    return im.crop((left, top, left + width, top + height))


def _image_pixels(decoded, spec: PreprocessSpec) -> np.ndarray:
    """RGB image -> colour (luma for 1 channel) -> geometry -> (H, W, C) uint8 in the model's channel order."""
    from PIL import Image

    if isinstance(decoded, Image.Image):
        im = decoded
    else:
        a = np.asarray(decoded)
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise ValueError(f"expected an RGB (H, W, 3) or gray (H, W) uint8 image, got {a.dtype} {a.shape}")
        im = Image.fromarray(a)
    fill = spec.pad_value
    if spec.channels == 1:  # luma: Pillow's ITU-R 601-2 convert("L") of the RGB image (a gray one is kept)
        if im.mode != "L":
            im = im.convert("RGB").convert("L")
        fill = Image.new("RGB", (1, 1), fill).convert("L").getpixel((0, 0))
    elif im.mode != "RGB":
        im = im.convert("RGB")
    h, w = resized_size(im.height, im.width, spec)
    if (w, h) != im.size:  # Pillow antialiases when shrinking, as torchvision's PIL path and Hugging Face do
        im = im.resize((w, h), INTERPOLATIONS[spec.interpolation])
    im = _centre(im, spec.height, spec.width, fill, spec.crop_offset)
    pixels = np.asarray(im, dtype=np.uint8)
    if spec.channels == 1:
        return pixels[..., None]
    return np.ascontiguousarray(pixels[..., ::-1]) if spec.channel_order == "bgr" else pixels


# ---------------------------------------------------------------- digit mode: any image -> MNIST format

def _digit_pixels(gray: np.ndarray, spec: PreprocessSpec = MNIST) -> np.ndarray:
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
