"""Decoding (toolkit.predict.decode) and the MNIST-style normalisation (toolkit.preprocess) on real files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from toolkit.errors import ImageError
from toolkit.predict.decode import _plain_png, decode_gray, read_gray
from toolkit.preprocess import MNIST, is_mnist_formatted, to_model_pixels


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pillow_gray(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.test_images[:300]


@pytest.fixture(scope="module")
def digit(mnist):
    return mnist.test_images[0]


# ---------------------------------------------------------------- PNG fast path (pyspng)

def test_fast_path_gives_pillows_pixels_on_mnist_pngs(digits):
    for a in digits:
        data = encode(Image.fromarray(a), "PNG")
        fast = _plain_png(data)
        assert fast is not None, "an 8-bit gray PNG must take the fast path"
        assert np.array_equal(fast, pillow_gray(data))
        assert np.array_equal(decode_gray(data), a)


@pytest.mark.parametrize("size", [(1, 1), (1, 600), (333, 17), (64, 64), (1000, 3)])
@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"compress_level": 0}, {"compress_level": 9}])
def test_fast_path_matches_pillow_on_odd_sizes_and_settings(size, options):
    rng = np.random.default_rng(size[0] * 7 + size[1])
    # random gradients plus noise: every PNG row filter gets used somewhere
    h, w = size[1], size[0]
    a = (np.add.outer(np.arange(h), np.arange(w)) * 3 + rng.integers(0, 40, (h, w))).astype(np.uint8)
    data = encode(Image.fromarray(a), "PNG", **options)
    assert np.array_equal(_plain_png(data), a)
    assert np.array_equal(decode_gray(data), a)


def test_text_chunks_and_gamma_do_not_change_the_pixels(digit):
    """Text chunks may hold an orientation (EXIF/XMP), so they go to Pillow; its pixels are the same."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "drawn by hand")
    info.add_text("Long", "x" * 5000, zip=True)
    data = encode(Image.fromarray(digit), "PNG", pnginfo=info, dpi=(300, 300))
    assert _plain_png(data) is None
    assert np.array_equal(decode_gray(data), digit)
    assert np.array_equal(_plain_png(encode(Image.fromarray(digit), "PNG", dpi=(300, 300))), digit)


@pytest.mark.parametrize("case", ["rgb", "palette", "16bit", "transparency", "exif", "bad-ihdr-crc", "no-iend"])
def test_fast_path_declines_and_pillow_decides(digit, case):
    im = Image.fromarray(digit)
    if case == "rgb":
        data = encode(im.convert("RGB"), "PNG")
    elif case == "palette":
        data = encode(im.convert("P"), "PNG")
    elif case == "16bit":
        data = encode(Image.fromarray(digit.astype(np.uint16) * 257), "PNG")
    elif case == "transparency":
        data = encode(im, "PNG", transparency=0)
    elif case == "exif":
        exif = Image.Exif()
        exif[0x0112] = 1
        data = encode(im, "PNG", exif=exif)
    elif case == "bad-ihdr-crc":
        data = bytearray(encode(im, "PNG"))
        data[29] ^= 0xFF  # last byte of the IHDR CRC
        data = bytes(data)
    else:
        data = encode(im, "PNG")[:-12]
    assert _plain_png(data) is None or case == "no-iend"  # libspng, like Pillow, needs no IEND
    got = _judged_like_pillow(data)
    if got is not None and case in ("rgb", "palette", "16bit", "exif", "no-iend"):
        assert np.array_equal(got, digit)


def _with_chunk(data: bytes, chunk: bytes, where: str) -> bytes:
    """``data`` (a PNG) with ``chunk`` put right after IHDR or right before IEND."""
    at = 33 if where == "first" else data.rindex(b"IEND") - 4
    return data[:at] + chunk + data[at:]


@pytest.mark.parametrize("where", ["first", "after the pixels"])
@pytest.mark.parametrize("kind", [b"tRNS", b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"acTL"])
def test_every_pillow_only_chunk_is_found_wherever_it_is(digit, kind, where):
    """The chunk list is walked to IEND: a text chunk after the image data (where an EXIF or XMP orientation may
    be) sends the file to Pillow as one before it does."""
    data = _with_chunk(encode(Image.fromarray(digit), "PNG"), png_chunk(kind, b"\x00" * 8), where)
    assert _plain_png(data) is None


def test_a_chunk_name_inside_the_pixel_data_is_not_a_chunk(digit):
    """Bytes that spell tEXt inside the compressed pixels (an unknown chunk's body here) are data, not a chunk."""
    data = _with_chunk(encode(Image.fromarray(digit), "PNG"), png_chunk(b"prIv", b"tEXt eXIf tRNS"), "first")
    assert b"tEXt" in data
    assert np.array_equal(_plain_png(data), digit)


@pytest.mark.parametrize("damage", ["length past the end", "no IEND", "cut inside a chunk header"])
def test_a_chunk_list_that_does_not_reach_iend_is_pillows_to_judge(digit, damage):
    data = encode(Image.fromarray(digit), "PNG")
    iend = data.rindex(b"IEND") - 4
    if damage == "length past the end":
        data = data[:33] + struct.pack(">I", 1 << 30) + data[37:]
    elif damage == "no IEND":
        data = data[:iend]
    else:
        data = data[:iend] + data[iend:iend + 6]
    assert _plain_png(data) is None
    _judged_like_pillow(data)


def test_rgb_photos_with_a_transparent_colour_go_to_pillow():
    rgb = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    plain = encode(Image.fromarray(rgb), "PNG")
    assert np.array_equal(_plain_png(plain, rgb=True), rgb)
    assert _plain_png(encode(Image.fromarray(rgb), "PNG", transparency=(1, 2, 3)), rgb=True) is None


def _judged_like_pillow(data: bytes):
    """Our decoder refuses exactly what Pillow refuses, and otherwise decodes to Pillow's shape."""
    try:
        expected = pillow_gray(data)
    except Exception:
        with pytest.raises(ImageError):
            decode_gray(data)
        return None
    got = decode_gray(data)
    assert got.shape == expected.shape
    return got


def test_corrupt_idat_crc_is_judged_like_pillow(digit):
    data = bytearray(encode(Image.fromarray(digit), "PNG"))
    iend = data.rindex(b"IEND")
    data[iend - 5] ^= 0xFF  # last byte of the IDAT CRC
    data = bytes(data)
    got = _judged_like_pillow(data)
    if got is not None:
        assert np.array_equal(got, pillow_gray(data))


def test_only_a_bad_zlib_checksum_is_judged_differently(digit):
    """libspng does not check the Adler-32 at the end of the image data; the pixels are intact."""
    data = bytearray(encode(Image.fromarray(digit), "PNG"))
    data[-20] ^= 0xFF  # last byte of the zlib stream: IDAT data, IDAT CRC (4), IEND chunk (12)
    data = bytes(data)
    with pytest.raises(Exception):
        pillow_gray(data)
    assert np.array_equal(decode_gray(data), digit)


def test_truncated_gray_png_is_refused_by_both_decoders(digit):
    data = encode(Image.fromarray(digit), "PNG")
    cut = data[:len(data) // 2]
    assert _plain_png(cut) is None
    with pytest.raises(ImageError, match="truncated"):
        decode_gray(cut)


# ---------------------------------------------------------------- formats and modes

@pytest.mark.parametrize("fmt,kw,exact", [
    ("PNG", {}, True), ("BMP", {}, True), ("GIF", {}, True), ("TIFF", {}, True),
    ("TIFF", {"compression": "tiff_lzw"}, True), ("WEBP", {"lossless": True}, True),
    ("JPEG", {"quality": 95}, False), ("WEBP", {"quality": 90}, False),
])
def test_every_allowed_format_decodes(digit, fmt, kw, exact):
    got = decode_gray(encode(Image.fromarray(digit), fmt, **kw))
    assert got.dtype == np.uint8 and got.shape == digit.shape
    diff = np.abs(got.astype(int) - digit).mean()
    assert diff == 0 if exact else diff < 6


def test_modes_become_the_same_gray(digit):
    L = Image.fromarray(digit)
    cases = {
        "RGB": L.convert("RGB"),
        "P": L.convert("P"),
        "LA": Image.merge("LA", [L, Image.new("L", L.size, 255)]),
        "RGBA": L.convert("RGBA"),
        "I;16": Image.fromarray(digit.astype(np.uint16) * 257),
        "CMYK": L.convert("CMYK"),
    }
    for mode, im in cases.items():
        assert im.mode == mode
        fmt = "TIFF" if mode == "CMYK" else "PNG"
        assert np.array_equal(decode_gray(encode(im, fmt)), digit), mode


def test_bilevel_mode_1(digit):
    bw = Image.fromarray(digit).point(lambda v: 255 if v > 127 else 0).convert("1")
    got = decode_gray(encode(bw, "PNG"))
    assert set(np.unique(got)) <= {0, 255}
    assert np.array_equal(got > 127, digit > 127)


def test_gif_first_frame_is_used(mnist):
    first, second = mnist.test_images[0], mnist.test_images[1]
    frames = [Image.fromarray(first).convert("P"), Image.fromarray(second).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    assert np.array_equal(decode_gray(buf.getvalue()), first)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied(fmt):
    a = np.zeros((20, 40), dtype=np.uint8)
    a[2:8, 3:30] = 255  # a wide bar near the top: rotation moves it unmistakably
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    got = decode_gray(encode(Image.fromarray(a), fmt, exif=exif, **kw))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(encode(Image.fromarray(a), "PNG", exif=exif)))))
    assert got.shape == (40, 20) == expected.shape
    assert np.abs(got.astype(int) - expected).mean() < 8


@pytest.mark.parametrize("ink", [0, 255])
def test_transparent_canvas_keeps_the_digit_whatever_its_colour(digit, ink):
    alpha = Image.fromarray(digit)
    colour = Image.new("L", alpha.size, ink)
    rgba = Image.merge("RGBA", [colour, colour, colour, alpha])
    got = decode_gray(encode(rgba, "PNG"))
    # black ink goes on white paper, white ink on black: the strokes stay visible either way
    expected = 255 - digit if ink == 0 else digit
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert np.array_equal(to_model_pixels(got).astype(bool), to_model_pixels(expected).astype(bool))


def test_fully_transparent_image_is_blank():
    rgba = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    assert not to_model_pixels(decode_gray(encode(rgba, "PNG"))).any()


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_digit_intact(digit):
    big = Image.fromarray(255 - digit).resize((2800, 2800), Image.Resampling.BICUBIC).convert("RGB")
    got = decode_gray(encode(big, "JPEG", quality=90))
    assert got.ndim == 2 and 1024 <= max(got.shape) < 2800
    assert np.abs(to_model_pixels(got).astype(int) - to_model_pixels(255 - digit).astype(int)).mean() < 12


# ---------------------------------------------------------------- refusals

def make_bomb(width: int, height: int) -> bytes:
    """A real PNG of width x height black pixels: ~100 kB on disk, width*height bytes decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def test_decompression_bomb_is_an_error_not_a_warning():
    limit = Image.MAX_IMAGE_PIXELS
    side = int(limit ** 0.5) + 100  # just over the limit: the range where Pillow only warns
    data = make_bomb(side, side)
    assert len(data) < 200_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="decompression bomb"):
            decode_gray(data, "bomb.png")
    assert not caught


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"just some notes\n", "text, not an image"),
    (b"8BPS\x00\x01" + b"\x00" * 40, "Photoshop PSD"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, "EPS"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
    (bytes(range(256)) * 4, "not a recognised image"),
])
def test_not_allowed_or_not_images(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_gray(data, "x.png")


def test_real_psd_eps_pdf_files_are_refused(tmp_path, digit):
    im = Image.fromarray(digit)
    im.save(tmp_path / "digit.pdf")  # Pillow writes real PDFs
    im.save(tmp_path / "digit.eps") if _can_write("EPS") else None
    with pytest.raises(ImageError, match="PDF"):
        read_gray(tmp_path / "digit.pdf")
    if (tmp_path / "digit.eps").exists():
        with pytest.raises(ImageError, match="EPS"):
            read_gray(tmp_path / "digit.eps")


def _can_write(fmt: str) -> bool:
    try:
        encode(Image.new("L", (4, 4)), fmt)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files_are_errors_not_padded(fmt, keep):
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    data = encode(photo, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    with pytest.raises(ImageError, match="truncated"):
        decode_gray(data[:int(len(data) * keep)], "cut")


def test_read_gray_names_directories_and_missing_files(tmp_path):
    (tmp_path / "x.png").mkdir()
    with pytest.raises(ImageError, match="directory"):
        read_gray(tmp_path / "x.png")
    with pytest.raises(ImageError, match="cannot read"):
        read_gray(tmp_path / "gone.png")


def test_big_files_are_streamed_by_pillow(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (700, 700), dtype=np.uint8)  # incompressible: > 256 kB on disk
    path = tmp_path / "big.png"
    Image.fromarray(a).save(path)
    assert path.stat().st_size > 256 * 1024
    assert np.array_equal(read_gray(path), a)


# ---------------------------------------------------------------- normalisation

def test_mnist_formatted_images_are_used_unchanged(digits):
    for a in digits[:50]:
        assert is_mnist_formatted(a)
        assert to_model_pixels(a) is a


def test_mnist_check_is_the_median_rule():
    rng = np.random.default_rng(3)
    for _ in range(2000):
        g = rng.choice(np.array([0, 127, 128, 129, 255], dtype=np.uint8), size=(28, 28))
        border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
        assert is_mnist_formatted(g) == (float(np.median(border)) < 128)


def test_renormalising_an_mnist_digit_reproduces_its_format(digits):
    # Dark ink on white paper at 28x28 is not MNIST-formatted, so it goes through the full rule;
    # the result must land where MNIST put its digits (20x20 box, centre of mass near (14, 14)).
    diffs = []
    for a in digits[:100]:
        b = to_model_pixels(255 - a)
        ys, xs = np.nonzero(b > 25)
        assert 18 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 21
        total = b.sum()
        cy = (b.sum(axis=1) * np.arange(28)).sum() / total
        cx = (b.sum(axis=0) * np.arange(28)).sum() / total
        assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75
        diffs.append(np.abs(b.astype(int) - a).mean())
    assert np.mean(diffs) < 8  # same digit, same place: only resampling differences


def test_noise_on_paper_does_not_count_as_ink(digit):
    rng = np.random.default_rng(4)
    ink = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC), dtype=np.float32)
    paper = np.full((160, 200), 200.0, dtype=np.float32)
    paper[20:132, 50:162] -= ink * 0.55
    photo = np.clip(paper + rng.normal(0, 8, paper.shape), 0, 255).astype(np.uint8)
    clean = to_model_pixels(np.clip(paper, 0, 255).astype(np.uint8))
    noisy = to_model_pixels(photo)
    ys, xs = np.nonzero(noisy > 25)
    # the digit fills the 20x20 box: the box was the digit's, not the whole noisy photo's
    assert 18 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 21
    assert np.abs(noisy.astype(int) - clean.astype(int)).mean() < 10


def test_blank_and_tiny_inputs():
    assert not to_model_pixels(np.full((50, 80), 255, dtype=np.uint8)).any()
    assert to_model_pixels(np.zeros((1, 1), dtype=np.uint8)).shape == (28, 28)
    line = np.full((3, 300), 255, dtype=np.uint8)
    line[1, 10:290] = 0
    out = to_model_pixels(line)
    assert out.shape == (28, 28) and out.any()


def test_lookup_table_is_bit_identical_to_normalize(digits):
    table = MNIST.lookup_table()
    assert table.dtype == np.float32
    for batch in (digits[:64], np.arange(256, dtype=np.uint8).repeat(4)[:784].reshape(1, 28, 28)):
        expected = MNIST.normalize(batch)
        got = table[batch][:, None]
        assert got.dtype == expected.dtype and np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_without_pyspng_pillow_decodes_the_same_pixels(tmp_path, digits):
    """Where pyspng has no wheel (ARM Linux), decoding falls back to Pillow with identical results."""
    import subprocess
    import sys

    for i, a in enumerate(digits[:20]):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    np.save(tmp_path / "expected.npy", np.stack(digits[:20]))
    code = ("import sys; sys.modules['pyspng'] = None\n"  # makes `import pyspng` raise ImportError
            "import numpy as np, toolkit.predict.decode as d\n"
            "assert d.pyspng is None\n"
            f"root = {str(tmp_path)!r}\n"
            "got = np.stack([d.read_gray(f'{root}/{i}.png') for i in range(20)])\n"
            "assert np.array_equal(got, np.load(root + '/expected.npy'))\n"
            "print('same')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr[-2000:]
