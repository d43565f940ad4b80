"""Any common image file -> a 2-D uint8 grayscale array (digit mode) or an RGB image (image mode),
or an ImageError saying why not.

Decoding is separate from preprocessing (``toolkit.preprocess.to_model_pixels``):
this module only turns bytes into gray levels or colours, the way a viewer would show them,
with plain Pillow. ``read_image(path, mode)`` and ``decode_image(data, mode)`` give what
``to_model_pixels`` takes for a model of that mode.

Image mode is what torchvision's and Hugging Face's loaders do: EXIF orientation applied, then
Pillow's ``convert("RGB")`` (palette expanded, CMYK converted, alpha dropped, 16-bit and float as
Pillow converts them), every pixel decoded: no reduced decode (JPEG DCT scaling, box averaging), which
would change them. A gray file stays a gray (mode "L") image, whose RGB is that gray in R, G and B; the
rules below on transparency, 16-bit scaling and reduction are digit mode's.

* Formats: an allowlist (``ALLOWED_FORMATS``). Pillow is only ever asked to try those
  plugins, so PSD, EPS (Ghostscript), PDF and friends are refused before any parser
  for them runs.
* Decompression bombs: images over ``Image.MAX_IMAGE_PIXELS`` pixels are refused
  with a per-file error instead of Pillow's warning (and instead of a 2 GB allocation).
* Truncated files are errors; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here.
* EXIF orientation is applied; the first frame of a GIF/TIFF is used.
* Transparency: the image is composited on a background that contrasts with its
  visible content (white behind dark ink, black behind light ink), so a digit
  drawn on a transparent canvas stays visible whichever colour it was drawn in.
* 16/32-bit integer images are scaled from 0..65535 to 0..255; float images from
  0..1 (or clipped to 0..255 when their values exceed 1).
* Memory: the digit ends up 20x20 pixels, so large images are reduced. JPEGs decode at a reduced
  DCT scale (draft mode); other images of more than ``REDUCE_ABOVE`` pixels are box-averaged by an
  integer factor while they are converted to gray, one band of rows at a time, so no full-size copy
  exists besides Pillow's decoded pixels. Those are bounded too: an image whose decoded pixels would
  take more than ``DECODE_BUDGET`` bytes (Pillow stores RGB, RGBA, CMYK and 32-bit pixels in 4 bytes,
  16-bit in 2, gray and palette in 1; WebP's decoder holds its own buffers, 12 bytes more), known from
  the header, is never given to Pillow: libvips decodes it a few rows at a time and shrinks it on the
  way (``shrink_decode``), or, where libvips cannot, it is refused with a reason. Peak memory of one
  decode therefore stays near the budget plus the interpreter's own.

The dominant input, a small plain 8-bit gray PNG (what MNIST exports look like), is
decoded by libspng (pyspng, 0.4 MB installed): Pillow's PNG plugin spends five times as long
in Python on such a file. Only files whose pixels cannot differ from Pillow's take that
path (see ``_plain_png``); everything else, and anything libspng refuses, is Pillow's.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from ..text import first_line
from .shrink_decode import shrink_decode

try:
    import pyspng
except ImportError:  # no wheel for this platform (e.g. ARM Linux): Pillow decodes every file
    pyspng = None

# Pillow's plugin names, most common first (Pillow tries them in this order). The JPEG plugin
# also opens the multi-picture JPEGs that many phone cameras write (Pillow calls them MPO).
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
ALLOWED_TEXT = "PNG, JPEG, BMP, GIF, WebP, TIFF"

# File name endings that mark an image inside a folder (explicitly named files are always tried).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".webp",
                            ".tif", ".tiff"})

_EXIF_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "TIFF", "PNG"})
# Where Image.getexif finds an orientation besides a TIFF's own tags. Looking for them first
# skips Pillow's EXIF parsing, a third of the time of a small PNG that has none.
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
# Files up to this size are read whole (and may take the pyspng path); larger ones are streamed by Pillow.
_WHOLE_READ = 256 * 1024
# Image mode reads a PNG up to this size whole, so that a plain 8-bit RGB one can take libspng's path.
_WHOLE_READ_RGB_PNG = 64 << 20
# Large JPEGs are decoded at a reduced DCT scale: the digit ends up 20x20 pixels anyway.
_JPEG_DRAFT_SIZE = (1024, 1024)
# Larger images are box-averaged to about a million pixels (a factor of 2 or more) while turned gray.
REDUCE_ABOVE = 4 << 20
_REDUCED_PIXELS = 1 << 20
_BAND_PIXELS = 1 << 18  # pixels converted at a time while reducing
# Decoded pixels one image may take: with the interpreter, numpy and Pillow (~40-60 MB) a decoding
# worker stays under 300 MB for any image.
DECODE_BUDGET = 200 << 20

# Recognised-but-refused formats, so the message says what the file is rather than "unknown".
_REFUSED_MAGIC = (
    (0, b"8BPS", "a Photoshop PSD file"),
    (0, b"%PDF", "a PDF document"),
    (0, b"%!PS", "a PostScript/EPS file"),
    (0, b"\xc5\xd0\xd3\xc6", "an EPS file"),
    (0, b"\x00\x00\x01\x00", "an ICO icon"),
    (0, b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file"),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (0, b"gimp xcf", "a GIMP XCF file"),
    (4, b"ftypheic", "a HEIC image"),
    (4, b"ftypheix", "a HEIC image"),
    (4, b"ftypmif1", "a HEIF image"),
    (4, b"ftypavif", "an AVIF image"),
    (0, b"qoif", "a QOI image"),
)


@contextlib.contextmanager
def bombs_refused():
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error inside this block.

    Pillow's UserWarnings about damaged metadata ("Corrupt EXIF data") are silenced here: such a file either
    decodes or gets its one-line reason, and a raw warning on stderr would break that one line.
    Decoding workers enter it once per chunk of files: per file it would cost more than decoding a small PNG.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Decode the image file at ``path`` to a 2-D uint8 array (see the module rules)."""
    with bombs_refused():
        return read_gray_unguarded(path)


def decode_gray(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode image bytes to a 2-D uint8 array; ``path`` only names the source in errors."""
    with bombs_refused():
        return _decode_bytes(data, path)


def read_image(path: str | os.PathLike, mode: str = "digit"):
    """The file at ``path`` decoded for a model of preprocessing ``mode``: a 2-D uint8 gray array (digit) or a
    Pillow image of mode RGB or L (image; see the module rules). Either goes to ``to_model_pixels``."""
    with bombs_refused():
        return read_image_unguarded(path, mode)


def decode_image(data: bytes, mode: str = "digit", path: str | os.PathLike = "<bytes>"):
    """``read_image`` of encoded bytes (an upload, a request body); ``path`` only names the source in errors."""
    with bombs_refused():
        return _decode_bytes(data, path, mode == "image")


def rgb_array(decoded) -> np.ndarray:
    """Image-mode decoded data -> (H, W, 3) uint8 RGB (a gray image's level in R, G and B, as Pillow converts)."""
    return np.asarray(decoded.convert("RGB") if decoded.mode != "RGB" else decoded, dtype=np.uint8)


def read_gray_unguarded(path: str | os.PathLike) -> np.ndarray:
    """``read_gray`` for callers already inside ``bombs_refused()``."""
    return read_image_unguarded(path, "digit")


def read_image_unguarded(path: str | os.PathLike, mode: str = "digit", draft=None):
    """``read_image`` for callers already inside ``bombs_refused()``. ``draft``: in image mode, the spec a JPEG
    is decoded for at a reduced DCT scale (`predict --jpeg-draft`: faster, changes pixels; never by default)."""
    path, rgb = os.fspath(path), mode == "image"
    try:
        # Unbuffered, sized by fstat: a buffered reader, or a read into an oversized buffer (an mmap
        # per file), costs about as much as decoding a small PNG.
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size <= _WHOLE_READ or (rgb and size <= _WHOLE_READ_RGB_PNG and path.lower().endswith(".png")):
                return _decode_bytes(f.read(), path, rgb, draft)
            return _decode(io.BufferedReader(f), path, rgb, draft)
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read ({e.strerror or e})") from None


def to_gray(im: Image.Image, unit_floats: bool | None = None) -> np.ndarray:
    """An opened Pillow image (any mode) -> 2-D uint8 gray levels, transparency composited.

    ``unit_floats``: whether a float image's values are 0..1 (default: judged from this image's maximum).
    """
    mode = im.mode
    if mode == "L" and "transparency" not in im.info:
        # tobytes, not np.asarray: the array interface costs a quarter of decoding a small PNG.
        return np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(im.height, im.width)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        return np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        unit = (a.size and a.max() <= 1.0) if unit_floats is None else unit_floats
        a = a * 255.0 if unit else a
        return np.rint(np.clip(a, 0, 255)).astype(np.uint8)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        return _composite(gray, alpha)
    if mode in ("RGB", "P", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    # CMYK, YCbCr, LAB, HSV...: through RGB, which Pillow converts each of correctly.
    return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Put the visible content on a background of the opposite brightness."""
    return _composite_premultiplied(gray * alpha, alpha)


def _composite_premultiplied(premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``_composite`` of gray levels already multiplied by their alpha (0..1)."""
    weight = float(alpha.sum())
    if weight == 0:  # fully transparent: nothing to see
        return np.zeros(alpha.shape, dtype=np.uint8)
    visible_mean = float(premultiplied.sum()) / weight
    background = 255.0 if visible_mean < 128 else 0.0
    out = premultiplied + background * (1.0 - alpha)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def _stored_bytes(im: Image.Image) -> int:
    """Bytes per pixel of Pillow's decoded image (RGB takes 4), plus WebP's decoder buffers (measured: 12)."""
    per_pixel = 1 if im.mode in ("1", "L", "P") else 2 if im.mode.startswith("I;16") else 4
    return per_pixel + (12 if im.format == "WEBP" else 0)


def _box_mean(a: np.ndarray, factor: int) -> np.ndarray:
    h, w = a.shape
    return a.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def _reduced_gray(im: Image.Image, factor: int) -> np.ndarray:
    """``to_gray`` of a large loaded image, box-averaged over ``factor`` x ``factor`` pixels.

    Converted one band of rows at a time: a full-size gray, alpha or float copy would cost more than
    the decoded image. Edge rows and columns short of a whole box are dropped (under ``factor`` pixels).
    """
    w, h = im.width // factor * factor, im.height // factor * factor
    step = factor * max(1, _BAND_PIXELS // (w * factor))
    alpha = _has_alpha(im)
    unit = im.getextrema()[1] <= 1.0 if im.mode == "F" else None  # one rule for the whole image
    gray_rows, alpha_rows = [], []
    for top in range(0, h, step):
        band = im.crop((0, top, w, min(top + step, h)))
        if alpha:
            rgba = band.convert("RGBA")
            a = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
            alpha_rows.append(_box_mean(a, factor))
            gray_rows.append(_box_mean(np.asarray(rgba.convert("L"), dtype=np.float32) * a, factor))
        else:
            gray_rows.append(_box_mean(to_gray(band, unit), factor))
    gray = np.concatenate(gray_rows)
    if alpha:
        return _composite_premultiplied(gray, np.concatenate(alpha_rows))
    return np.rint(gray).astype(np.uint8)


def _has_orientation(im: Image.Image) -> bool:
    return im.format in _EXIF_FORMATS and (im.format == "TIFF" or any(k in im.info for k in _ORIENTATION_KEYS))


def _oriented(gray: np.ndarray, im: Image.Image) -> np.ndarray:
    """Apply ``im``'s EXIF orientation to gray levels computed from it."""
    small = Image.fromarray(gray)
    small.info["exif"] = im.getexif().tobytes()
    _apply_orientation(small)
    return np.asarray(small)


# Signature, then the IHDR chunk, which the PNG standard puts first.
_PNG_IHDR = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
# Chunks that can make Pillow's pixels differ: transparency, an orientation (EXIF, or XMP/EXIF in
# text chunks), animation frames.
_PILLOW_ONLY_CHUNKS = (b"tRNS", b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"acTL")


def _plain_png(data: bytes, rgb: bool = False) -> np.ndarray | None:
    """libspng's pixels for an 8-bit gray (``rgb``: or RGB), non-interlaced PNG that Pillow would show as they
    are; else None. RGB ones are (H, W, 3), exactly Pillow's (measured 4.6 ms against Pillow's 5.8 ms for 800x600).

    libspng does not check the IHDR's CRC (Pillow refuses such a file), so that is checked here.
    One difference remains: libspng ignores the zlib stream's final Adler-32 checksum, so a file
    damaged only there is accepted with its intact pixels, where Pillow refuses it.
    """
    # depth 8, colour type 0 (gray), compression 0, filter 0, interlace 0
    colour = data[25:26]
    if pyspng is None or not data.startswith(_PNG_IHDR) or data[24:25] != b"\x08" or data[26:29] != b"\x00\x00\x00" \
            or colour not in ((b"\x00", b"\x02") if rgb else (b"\x00",)):
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS or \
            width * height * (3 if colour == b"\x02" else 1) > DECODE_BUDGET:
        return None  # Pillow's bomb rule and the decode budget decide
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big") or not _only_plain_chunks(data):
        return None
    try:
        pixels = pyspng.load(data)
    except Exception:  # truncated or corrupt: Pillow's path names the problem
        return None
    want = (height, width, 3) if colour == b"\x02" else (height, width)
    return pixels if pixels.shape == want and pixels.dtype == np.uint8 else None


def _only_plain_chunks(data: bytes) -> bool:
    """Whether the chunks from IHDR to IEND are whole and none of them is one of ``_PILLOW_ONLY_CHUNKS``.

    The chunk list is walked (a few dozen length fields), not the file searched for the names: searching an
    800x600 photo's 1.2 MB six times took 3.4 ms, most of libspng's 7 ms decode. A list that does not end
    in IEND within the file (damaged, truncated) is Pillow's to judge.
    """
    at, end = 8, len(data)
    while at + 12 <= end:
        length = int.from_bytes(data[at:at + 4], "big")
        kind = data[at + 4:at + 8]
        if kind in _PILLOW_ONLY_CHUNKS:
            return False
        if kind == b"IEND":
            return True
        at += 12 + length
    return False


def _decode_bytes(data: bytes, path, rgb: bool = False, draft=None):
    pixels = _plain_png(data, rgb)
    if pixels is None:
        return _decode(io.BytesIO(data), path, rgb, draft)
    return Image.fromarray(pixels) if rgb else pixels


def _decode(fp, path, rgb: bool = False, draft=None):
    try:
        im = Image.open(fp, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(path, _unidentified_reason(_head(fp))) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(path, _bomb_reason()) from None
    except Exception as e:  # plugins raise SyntaxError, ValueError, struct.error... on bad headers
        if "truncated" in str(e).lower():
            raise ImageError(path, "truncated file: it ends inside the image header") from None
        raise ImageError(path, f"damaged image header ({_describe(e)})") from None
    # Image mode returns the loaded image itself (closing it would free its pixels); the caller closes the file.
    with contextlib.nullcontext(im) if rgb else im:
        try:
            if rgb:
                return _to_rgb(im, path, draft)
            if im.format in ("JPEG", "MPO") and max(im.size) > max(_JPEG_DRAFT_SIZE):
                im.draft("L" if im.mode in ("RGB", "L") else None, _JPEG_DRAFT_SIZE)
            need = im.width * im.height * _stored_bytes(im)
            if need > DECODE_BUDGET:
                gray, alpha = shrink_decode(fp, path, im, math.isqrt(im.width * im.height // _REDUCED_PIXELS),
                                            f"{im.width}x{im.height} {im.mode} takes {need / 2**20:,.0f} MiB decoded, "
                                            f"over the {DECODE_BUDGET >> 20} MiB a decoding process may use")
                gray = np.rint(gray).astype(np.uint8) if alpha is None else _composite_premultiplied(gray, alpha)
                # Pillow never loads this image, so only an orientation stored before the pixels is seen.
                return _oriented(gray, im) if _has_orientation(im) else gray
            im.load()
            oriented = _has_orientation(im)  # after load: a PNG may keep its EXIF after the pixels
            if im.width * im.height > REDUCE_ABOVE:
                gray = _reduced_gray(im, math.isqrt(im.width * im.height // _REDUCED_PIXELS))
                return _oriented(gray, im) if oriented else gray
            if oriented:
                _apply_orientation(im)
            return to_gray(im)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(path, _bomb_reason()) from None
        except MemoryError:
            raise ImageError(path, f"too large to decode in memory ({im.size[0]}x{im.size[1]})") from None
        except Exception as e:
            raise ImageError(path, _load_reason(im, e)) from None


def _to_rgb(im: Image.Image, path, draft=None) -> Image.Image:
    """Image mode: every pixel decoded, oriented, then Pillow's convert("RGB") (a plain gray image stays "L").

    ``draft`` (a PreprocessSpec, `predict --jpeg-draft`): a JPEG is decoded at the smallest DCT scale (1/2, 1/4,
    1/8) still at least as large as what the spec resizes it to, so the resize shrinks less; pixels change."""
    if draft is not None and im.format in ("JPEG", "MPO"):
        from ..preprocess import resized_size

        side = max(resized_size(im.height, im.width, draft))  # either way round: EXIF may turn it
        im.draft("RGB", (side, side))
    need = im.width * im.height * _stored_bytes(im)
    if need > DECODE_BUDGET:
        raise ImageError(path, f"too large to decode: {im.width}x{im.height} {im.mode} takes {need / 2**20:,.0f} MiB "
                               f"decoded, over the {DECODE_BUDGET >> 20} MiB a decoding process may use, and image "
                               "mode decodes every pixel; save it smaller")
    im.load()
    if _has_orientation(im):
        _apply_orientation(im)
    if im.mode in ("L", "RGB") and "transparency" not in im.info:
        # Already what convert("RGB") would give (a gray level stands for itself in R, G and B, converted by
        # to_model_pixels when it must): returned without convert's copy of every pixel.
        return im
    return im.convert("RGB")


def _head(fp) -> bytes:
    fp.seek(0)
    return fp.read(64)


def _apply_orientation(im: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:
        # A malformed EXIF block says nothing reliable about orientation; the pixels are still good.
        pass


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {first_line(e, 160)}" if str(e).strip() else type(e).__name__


def _load_reason(im, e: Exception) -> str:
    text = str(e).lower()
    if "truncated" in text or isinstance(e, EOFError) or "not enough" in text or "premature" in text:
        return f"truncated {im.format} file: the image data ends early"
    return f"damaged {im.format} data ({_describe(e)})"


def _bomb_reason() -> str:
    return (f"image is larger than the limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            "(possible decompression bomb); refused")


def _unidentified_reason(head: bytes) -> str:
    if not head:
        return "empty file (0 bytes)"
    for offset, magic, what in _REFUSED_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return f"{what}; only {ALLOWED_TEXT} images are accepted"
    if head.lstrip()[:5].lower() in (b"<?xml", b"<svg ", b"<svg>"):
        return f"an SVG/XML file; only {ALLOWED_TEXT} images are accepted"
    if head.startswith(b"\x89PNG"):
        return "damaged or truncated PNG header"
    if head.startswith(b"\xff\xd8"):
        return "damaged or truncated JPEG header"
    try:
        text = head.decode("utf-8")
        looks = "text, not an image" if all(c.isprintable() or c.isspace() for c in text) else "not a recognised image"
    except UnicodeDecodeError:  # may also be text cut mid-character; "not an image" holds either way
        looks = "not a recognised image"
    return f"{looks} (accepted formats: {ALLOWED_TEXT})"
