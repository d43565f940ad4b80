"""Any common image file -> a 2-D uint8 grayscale array, or an ImageError saying why not.

Decoding is separate from preprocessing (``toolkit.preprocess.to_model_pixels``):
this module only turns bytes into gray levels, the way a viewer would show them.

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

Fast path: the dominant input (small 8-bit grayscale non-interlaced PNG, what MNIST
exports look like) spends most of ``Image.open`` in Python-level plugin machinery.
``_png_gray8`` walks the chunks itself (checking every CRC) and hands the IDAT
stream to Pillow's own C zlib decoder, which also undoes the PNG row filters.
Anything unusual (other colour types, interlacing, tRNS, eXIf, APNG, a bad CRC,
a missing IEND...) falls back to full Pillow, so accepted files and their pixels
are exactly Pillow's.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# Pillow's plugin names, most common first (Pillow tries them in this order). The JPEG plugin
# also opens the multi-picture JPEGs that many phone cameras write (Pillow calls them MPO).
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
ALLOWED_TEXT = "PNG, JPEG, BMP, GIF, WebP, TIFF"

# File name endings that mark an image inside a folder (explicitly named files are always tried).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".webp",
                            ".tif", ".tiff"})

# Files up to this size are read whole and may take the PNG fast path; larger ones are streamed by Pillow.
_WHOLE_READ = 256 * 1024
_EXIF_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "TIFF", "PNG"})
# Large JPEGs are decoded at a reduced DCT scale: the digit ends up 20x20 pixels anyway.
_JPEG_DRAFT_SIZE = (1024, 1024)

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


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Decode the image file at ``path`` to a 2-D uint8 array (see the module rules)."""
    path = os.fspath(path)
    try:
        # os.open/os.read, not open(): a buffered file object costs several times more than
        # decoding a small PNG, and reading into an oversized buffer costs an mmap per file.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            size = os.fstat(fd).st_size
            if size <= _WHOLE_READ:
                data = _read_all(fd, size)
            else:
                data = None
                head = os.read(fd, 64)
        finally:
            os.close(fd)
        if data is not None:
            return decode_gray(data, path)
        with open(path, "rb") as f:
            return _decode_with_pillow(f, head, path)
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read ({e.strerror or e})") from None


def _read_all(fd: int, size: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decode_gray(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode image bytes to a 2-D uint8 array; ``path`` only names the source in errors."""
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    fast = _png_gray8(data)
    if fast is not None:
        return fast
    import io

    return _decode_with_pillow(io.BytesIO(data), data[:64], path)


def to_gray(im: Image.Image) -> np.ndarray:
    """An opened Pillow image (any mode) -> 2-D uint8 gray levels, transparency composited."""
    mode = im.mode
    if mode == "L" and "transparency" not in im.info:
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        return np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        return np.rint(np.clip(a, 0, 255)).astype(np.uint8)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        return _composite(gray, alpha)
    if mode in ("RGB", "P", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    # CMYK, YCbCr, LAB, HSV...: through RGB, which Pillow converts each of correctly.
    return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8)


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Put the visible content on a background of the opposite brightness."""
    weight = float(alpha.sum())
    if weight == 0:  # fully transparent: nothing to see
        return np.zeros(gray.shape, dtype=np.uint8)
    visible_mean = float((gray * alpha).sum()) / weight
    background = 255.0 if visible_mean < 128 else 0.0
    out = gray * alpha + background * (1.0 - alpha)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


# ---------------------------------------------------------------- Pillow path

def _decode_with_pillow(fp, head: bytes, path) -> np.ndarray:
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp, formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise ImageError(path, _unidentified_reason(head)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(path, _bomb_reason(head)) from None
        except Exception as e:  # plugins raise SyntaxError, ValueError, struct.error... on bad headers
            if "truncated" in str(e).lower():
                raise ImageError(path, "truncated file: it ends inside the image header") from None
            raise ImageError(path, f"damaged image header ({_describe(e)})") from None
        with im:
            try:
                if im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L") and max(im.size) > max(_JPEG_DRAFT_SIZE):
                    im.draft("L", _JPEG_DRAFT_SIZE)
                im.load()
                if im.format in _EXIF_FORMATS:
                    _apply_orientation(im)
                return to_gray(im)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageError(path, _bomb_reason(head)) from None
            except MemoryError:
                raise ImageError(path, f"too large to decode in memory ({im.size[0]}x{im.size[1]})") from None
            except Exception as e:
                raise ImageError(path, _load_reason(im, e)) from None


def _apply_orientation(im: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:
        # A malformed EXIF block says nothing reliable about orientation; the pixels are still good.
        pass


def _describe(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _load_reason(im, e: Exception) -> str:
    text = str(e).lower()
    if "truncated" in text or isinstance(e, EOFError) or "not enough" in text or "premature" in text:
        return f"truncated {im.format} file: the image data ends early"
    return f"damaged {im.format} data ({_describe(e)})"


def _bomb_reason(head: bytes) -> str:
    return (f"image is larger than the limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            "(possible decompression bomb); refused")


def _unidentified_reason(head: bytes) -> str:
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


# ---------------------------------------------------------------- PNG fast path

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks that do not change the pixels Pillow returns for an 8-bit gray image.
_HARMLESS_CHUNKS = frozenset({b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tIME",
                              b"tEXt", b"zTXt", b"iTXt", b"bKGD", b"hIST", b"sPLT", b"oFFs", b"pCAL", b"sCAL"})
_CHUNK_HEAD = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")


def _png_gray8(data: bytes) -> np.ndarray | None:
    """Pixels of an 8-bit gray, non-interlaced PNG; None to let Pillow handle the file."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    n = len(data)
    pos = 8
    header = None
    idat: list[bytes] = []
    while True:
        if pos + 12 > n:
            return None  # no IEND: let Pillow judge whether the image is complete
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        end = pos + 12 + length
        if end > n:
            return None
        body = data[pos + 8:end - 4]
        if zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(data[end - 4:end], "big"):
            return None
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"IHDR":
            if header is not None or length != 13:
                return None
            header = _IHDR.unpack(body)
        elif kind == b"IEND":
            break
        elif kind not in _HARMLESS_CHUNKS or header is None:
            return None
        pos = end
    if header is None or not idat:
        return None
    width, height, depth, colour, compression, filtering, interlace = header
    if (depth, colour, compression, filtering, interlace) != (8, 0, 0, 0, 0):
        return None
    if width == 0 or height == 0 or width * height > (Image.MAX_IMAGE_PIXELS or 1 << 62):
        return None
    pixels = _inflate_gray8(b"".join(idat), width, height)
    if pixels is None:
        return None  # short or corrupt stream: Pillow's own path gives the precise error
    return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width)


_core_codecs = True


def _inflate_gray8(stream: bytes, width: int, height: int) -> bytes | None:
    """Pillow's C zlib decoder + PNG unfiltering; None if the stream is short or corrupt.

    Image.frombytes + tobytes do exactly this but their Python wrappers cost as much as
    the decoding itself; the same C codecs are called directly here. Should a Pillow
    release change those internals, the public functions are used from then on (the
    tests compare this path with Pillow's full decoder pixel for pixel).
    """
    global _core_codecs
    if _core_codecs:
        try:
            return _inflate_with_core(stream, width, height)
        except (AttributeError, TypeError):
            _core_codecs = False
    try:
        return Image.frombytes("L", (width, height), stream, "zip", "L").tobytes()
    except (ValueError, OSError):
        return None


def _inflate_with_core(stream: bytes, width: int, height: int) -> bytes | None:
    core = Image.core
    box = (0, 0, width, height)
    image = core.new("L", (width, height))
    decoder = core.zip_decoder("L", "L")
    decoder.setimage(image, box)
    consumed, error = decoder.decode(stream)
    if consumed >= 0 or error != 0:  # same completeness test as Image.frombytes
        return None
    encoder = core.raw_encoder("L", "L")
    encoder.setimage(image, box)
    parts = []
    while True:
        _, status, data = encoder.encode(max(65536, width * 4))
        parts.append(data)
        if status:
            break
    if status < 0:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)
