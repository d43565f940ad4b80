"""Images too large for Pillow's full-size decode, decoded by libvips at a reduced size.

Pillow has no public way to decode a PNG, TIFF or WebP at less than full size, so an image whose
decoded pixels exceed ``decode.DECODE_BUDGET`` goes to libvips (pyvips), which reads the file
sequentially, a few rows at a time, and box-averages it by the same integer factor as
``decode._reduced_gray`` while it is read: no full-size copy ever exists. WebP is the exception:
libwebp cannot decode rows on demand, so it is asked to decode at the reduced scale directly
(its rescaler averages areas too).

The result follows Pillow's rules, so the reduced image is the one the normal path would give:
ITU-R 601-2 luma (Pillow's ``convert("L")``), 16-bit samples scaled by 1/257, gray levels
premultiplied by their alpha and averaged with it (the caller composites them on a contrasting
background and applies the EXIF orientation that Pillow read from the header).

Only 8/16-bit gray, gray+alpha, RGB and RGBA are taken (palette images are expanded by the loader);
anything else over the budget (CMYK, float or 32-bit TIFF, BMP, which libvips cannot read without
ImageMagick), and every such image where pyvips has no wheel, is refused with a reason.
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import ImageError

_LOADERS = {"PNG": "pngload", "TIFF": "tiffload", "WEBP": "webpload"}
_SCALE = {"uchar": 1.0, "ushort": 1 / 257}
_LUMA = (0.299, 0.587, 0.114)


def shrink_decode(fp, path, im, factor: int, why_large: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(gray levels 0..255 premultiplied by alpha, alpha 0..1 or None), box-averaged over ``factor`` pixels.

    ``im`` is Pillow's opened (not loaded) image of the same file: its format picks the libvips loader,
    so libvips never parses a format outside decode's allowlist.
    """
    def refuse(reason: str) -> ImageError:
        return ImageError(path, f"too large to decode: {why_large}, and {reason}; save it smaller "
                                "(the digit is read at 20x20)")

    loader = _LOADERS.get(im.format)
    if loader is None:
        raise refuse(f"a {im.format} file cannot be decoded at reduced size")
    try:
        import pyvips  # heavy (loads libvips): only for the rare image over the budget
    except (ImportError, OSError):  # no wheel for this platform, or libvips missing
        raise refuse("libvips (pyvips), which decodes such images at reduced size, is not installed") from None
    try:
        options = {"access": "sequential", "fail_on": "truncated"}
        if im.format == "WEBP":
            # libwebp decodes a whole frame at once unless told to scale (area-averaging as it decodes).
            options["scale"], factor = 1 / factor, 1
        if isinstance(fp, io.BytesIO):
            image = getattr(pyvips.Image, loader + "_buffer")(fp.getvalue(), **options)
        else:
            image = getattr(pyvips.Image, loader)(path, **options)
        scale = _SCALE.get(image.format)
        if scale is None or image.bands not in (1, 2, 3, 4):
            raise refuse(f"its {image.bands}-band {image.format} {image.interpretation} pixels cannot be "
                         "reduced here")
        if image.interpretation == "cmyk":
            raise refuse("CMYK pixels cannot be reduced here")
        alpha = image.hasalpha()
        colour = image.bands - alpha
        bands = image.bandsplit()
        gray = bands[0] * scale if colour == 1 else sum(b * (w * scale) for b, w in zip(bands[:3], _LUMA))
        if alpha:
            opacity = bands[-1] * (scale / 255.0)
            gray = (gray * opacity).bandjoin(opacity)
        gray = gray.cast("float")
        if factor > 1:
            # Edge rows and columns short of a whole box are dropped, as decode._reduced_gray does.
            w, h = image.width // factor * factor, image.height // factor * factor
            gray = gray.crop(0, 0, w, h).shrink(factor, factor)
        shrunk = gray.numpy()
    except ImageError:
        raise
    except pyvips.Error as e:
        raise ImageError(path, f"damaged or truncated {im.format} data (libvips: {_first_line(e)})") from None
    if alpha:
        return shrunk[..., 0], shrunk[..., 1]
    return shrunk, None


def _first_line(e: Exception) -> str:
    text = " ".join(str(getattr(e, "detail", "") or e).split())
    return text[:160] or type(e).__name__
