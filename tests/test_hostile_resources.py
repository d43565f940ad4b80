"""Issue 10, items 8 (bench side), 16 and 17: fixed-batch models, resources, blank images.

Classes covered, each with cases beyond the tester's examples:
* a graph with a fixed batch dimension (1, 3, 4) is benchmarked at that size only, the other sizes listed
  as skipped, and predicted over any number of images (fixed 1 and 4 over 7 images, odd batch sizes);
* a bench batch too large for the machine's free memory is refused before anything is allocated;
* --workers is capped at a multiple of the usable CPUs, with one notice line;
* one decode of any large image stays under 300 MB peak RSS (measured in a fresh process), large images
  are box-averaged before conversion (pixels close to a full-size decode); images whose decoded pixels
  would exceed the budget (RGBA/16-bit RGB/gray+alpha PNG, TIFF, WebP) are decoded by libvips at reduced
  size under 300 MB and read as the same digit drawn small; a BMP that large, or any such image without
  libvips, is refused with a reason;
* images without ink (white, black, grey, 1x1, transparent, faint noise, 16-bit flat, palette) are
  flagged blank with no label in CSV, JSONL and the terminal, never a class; real digits keep their labels.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from test_runtime_contracts import linear_onnx
from toolkit.bench.runner import BatchTooLarge, check_memory
from toolkit.cli import cli
from toolkit.machine import available_memory, usable_cpus
from toolkit.predict import predict_paths
from toolkit.predict.decode import DECODE_BUDGET, REDUCE_ABOVE, read_gray, to_gray
from toolkit.predict import Reporter
from toolkit.predict.local import WORKERS_PER_CPU
from toolkit.preprocess import INK_MIN, is_blank, to_model_pixels
from toolkit.runtime import Predictor

FAST_BENCH = ["--provider", "cpu", "--warmup", "0", "--runs", "2", "--no-peak", "--no-progress", "--engines", "onnx"]


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def digit_images(folder: Path, count: int) -> list[Path]:
    """Drawn digit-like strokes in several sizes and polarities: real ink, never blank."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        size = (28, 64, 200, 37)[i % 4]
        dark_ink = i % 2 == 0
        im = Image.new("L", (size, size), 255 if dark_ink else 0)
        d = ImageDraw.Draw(im)
        w = max(2, size // 9)
        d.line([(size * 0.3, size * 0.2), (size * (0.4 + 0.05 * i), size * 0.8)], fill=0 if dark_ink else 255, width=w)
        d.arc([size * 0.2, size * 0.15, size * 0.8, size * 0.55], 0, 180 + 20 * i, fill=0 if dark_ink else 255, width=w)
        if size == 28:  # MNIST's own format: light ink on a dark border
            im = Image.new("L", (28, 28), 0)
            ImageDraw.Draw(im).line([(8, 5 + i % 3), (18, 22)], fill=255, width=3)
        p = folder / f"digit{i}.png"
        im.save(p)
        paths.append(p)
    return paths


# ---------------------------------------------------------------- item 8: fixed batch dimension

@pytest.mark.parametrize("fixed, asked", [(1, "1,8,64"), (4, "1,4,16"), (4, "1,8"), (3, "2")])
def test_bench_times_a_fixed_batch_graph_at_its_size_only(tmp_path, fixed, asked):
    model = tmp_path / "fixed.onnx"
    linear_onnx(model, batch=fixed)
    out = tmp_path / "b.json"
    result = invoke(["bench", "--model", model, "--batch-sizes", asked, *FAST_BENCH, "--json", out])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {r["batch"] for r in doc["results"]} == {fixed}  # measured, whether asked for or not
    others = [b for b in map(int, asked.split(",")) if b != fixed]
    skipped = [s for s in doc["skipped"] if s["engine"] == "onnx"]
    assert len(skipped) == 1 and skipped[0]["batch_sizes"] == others and f"fixed at {fixed}" in skipped[0]["reason"]
    assert f"skipped   onnx on cpu at batch {', '.join(map(str, others))}: the graph's batch dimension is fixed" \
        in result.output


def test_bench_of_a_dynamic_graph_skips_no_batch_size(tmp_path):
    model = tmp_path / "dyn.onnx"
    linear_onnx(model)
    out = tmp_path / "b.json"
    assert invoke(["bench", "--model", model, "--batch-sizes", "1,3", *FAST_BENCH, "--json", out]).exit_code == 0
    doc = json.loads(out.read_text())
    assert sorted({r["batch"] for r in doc["results"]}) == [1, 3]
    assert not [s for s in doc["skipped"] if s["engine"] == "onnx"]


@pytest.mark.parametrize("fixed", [1, 4])
@pytest.mark.parametrize("batch_size", ["256", "3"])
def test_predict_with_a_fixed_batch_graph_over_seven_images(tmp_path, fixed, batch_size):
    images = digit_images(tmp_path / "img", 7)
    fixed_model, dynamic_model = tmp_path / "fixed.onnx", tmp_path / "dyn.onnx"
    linear_onnx(fixed_model, batch=fixed)
    linear_onnx(dynamic_model)  # the same weights (seeded), any batch
    rows = {}
    for name, model in (("fixed", fixed_model), ("dynamic", dynamic_model)):
        out = tmp_path / f"{name}.csv"
        result = invoke(["predict", tmp_path / "img", "--model", model, "--provider", "cpu", "-o", out,
                         "--batch-size", batch_size])
        assert result.exit_code == 0, result.output
        rows[name] = read_csv(out)
    assert [r["path"] for r in rows["fixed"]] == [str(p) for p in images]
    assert [r["label"] for r in rows["fixed"]] == [r["label"] for r in rows["dynamic"]]
    for a, b in zip(rows["fixed"], rows["dynamic"]):
        assert float(a["confidence"]) == pytest.approx(float(b["confidence"]), abs=1e-6)


# ---------------------------------------------------------------- item 16a: memory before allocating

def test_available_memory_is_a_plausible_byte_count():
    free = available_memory()
    total = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    assert free is not None and 0 < free <= total


@pytest.mark.parametrize("sizes", ["100000000", "1,8,100000000", "2000000000"])
def test_bench_refuses_a_batch_that_cannot_fit_before_allocating(tmp_path, sizes):
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    r = subprocess.run([sys.executable, "-m", "toolkit", "bench", "--model", str(model), "--batch-sizes", sizes,
                        "--provider", "cpu", "--no-progress"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and f"batch size {max(map(int, sizes.split(',')))} needs about" in line
    assert "GB of memory" in line and "available" in line
    assert r.stdout == ""  # refused before a single measurement


def test_memory_check_counts_engines_and_passes_ordinary_batches(tmp_path):
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    contract = Predictor.open(model, "cpu").contract
    per_engine = 1024 * (784 + 10) * 4
    check_memory(contract, 1024, 4, available=2 ** 30)  # what bench does by default: no trouble
    # the same batch against just less than it needs with one engine, then with three
    need_one = 1024 * 784 * 5 + 2 * per_engine
    check_memory(contract, 1024, 1, available=need_one)
    with pytest.raises(BatchTooLarge, match="batch size 1024 needs about .* 1 engine"):
        check_memory(contract, 1024, 1, available=need_one - 1)
    with pytest.raises(BatchTooLarge, match="3 engine"):
        check_memory(contract, 1024, 3, available=need_one)


# ---------------------------------------------------------------- item 16b: worker processes

class Notices(Reporter):
    def __init__(self):
        self.lines = []

    def notice(self, text):
        self.lines.append(text)


@pytest.mark.parametrize("asked", [1000, WORKERS_PER_CPU * usable_cpus() + 1])
def test_workers_are_capped_at_a_multiple_of_the_usable_cpus(tmp_path, asked):
    digit_images(tmp_path / "img", 6)
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    reporter = Notices()
    summary = predict_paths([tmp_path / "img"], model=model, provider="cpu", workers=asked, reporter=reporter)
    cap = WORKERS_PER_CPU * usable_cpus()
    capped = [n for n in reporter.lines if "capped" in n]
    assert capped == [f"--workers {asked} capped at {cap} ({WORKERS_PER_CPU} per usable CPU, {usable_cpus()} usable): "
                      "more decoding processes only contend for the same cores"]
    assert summary.images == 6 and summary.skipped == 0


def test_workers_within_the_cap_are_not_mentioned(tmp_path):
    digit_images(tmp_path / "img", 3)
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    reporter = Notices()
    predict_paths([tmp_path / "img"], model=model, provider="cpu", workers=WORKERS_PER_CPU * usable_cpus(),
                  reporter=reporter)
    assert not [n for n in reporter.lines if "capped" in n]


# ---------------------------------------------------------------- item 16c: large images

def _digit_canvas(w: int, h: int) -> Image.Image:
    im = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(im)
    d.rectangle([w // 2 - w // 30, h // 5, w // 2 + w // 30, 4 * h // 5], fill=0)
    d.rectangle([w // 2 - w // 8, h // 5, w // 2, h // 5 + h // 20], fill=0)
    return im


def _save(kind: str, im: Image.Image, path: Path) -> None:
    if kind == "rgba-png":
        im.convert("RGBA").save(path, compress_level=1)
    elif kind == "ink-on-transparent-png":  # the digit only in the alpha channel
        a = np.zeros((im.height, im.width, 4), np.uint8)
        a[..., 3] = 255 - np.asarray(im)
        Image.fromarray(a, "RGBA").save(path, compress_level=1)
    elif kind == "gray16-png":
        Image.fromarray(np.asarray(im).astype(np.uint16) * 257).save(path, compress_level=1)
    elif kind == "gray-png":
        im.save(path, compress_level=1)
    elif kind == "rgb-tiff":
        im.convert("RGB").save(path, compression="tiff_lzw")
    elif kind == "int32-tiff":
        Image.fromarray(np.asarray(im).astype(np.int32) * 257).save(path, compression="tiff_lzw")
    elif kind == "rgb-bmp":
        im.convert("RGB").save(path)
    elif kind == "palette-gif":
        im.convert("P").save(path)
    elif kind == "rgb-webp":
        im.convert("RGB").save(path, quality=50, method=0)
    else:
        raise ValueError(kind)


PEAK_SCRIPT = """
import sys
from toolkit.predict.decode import read_gray
from toolkit.preprocess import to_model_pixels, is_blank
pixels = to_model_pixels(read_gray(sys.argv[1]))
assert not is_blank(pixels)
with open("/proc/self/status") as f:
    print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) // 1024)
"""


# The largest of each kind the decoder accepts: Pillow's own limit for 1- and 2-byte pixels,
# else just under the decode budget (4 bytes per pixel; WebP 16).
LARGEST = [("gray16-png", 9450, 9450), ("gray-png", 9450, 9450), ("palette-gif", 9450, 9450),
           ("rgba-png", 7240, 7240), ("ink-on-transparent-png", 7240, 7240), ("rgb-tiff", 7240, 7240),
           ("int32-tiff", 7240, 7240), ("rgb-bmp", 12000, 4300), ("rgb-webp", 3600, 3600)]


@pytest.mark.slow
@pytest.mark.parametrize("kind, w, h", LARGEST)
def test_one_decode_of_the_largest_images_stays_under_300_mb(tmp_path, kind, w, h):
    path = tmp_path / f"big.{kind.rsplit('-', 1)[1].replace('tiff', 'tif')}"
    _save(kind, _digit_canvas(w, h), path)
    r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) <= 300, f"{kind} {w}x{h}: peak RSS {r.stdout.strip()} MB"


# Over the decode budget: libvips decodes them a few rows at a time, shrinking on the way. Written by
# libvips too (a small drawn digit zoomed up, streamed to disk), so the test never holds one in memory.
# Palette and 16-bit gray images take 1 and 2 bytes a pixel in Pillow and reach Pillow's bomb limit
# before the budget (see LARGEST); 16-bit RGB PNGs take 4 and come here.
HUGE = [("rgba-png", 9450, 9450), ("rgb16-png", 7400, 7400), ("gray-alpha-png", 9450, 9450),
        ("rgb-tif", 7400, 7400), ("rgba-webp", 9450, 9450)]

_BASE_SIDE = 150


def _vips_digit(pyvips, side: int):
    """A '7'-like dark stroke on white, drawn at ``side`` pixels (a multiple of _BASE_SIDE) by zooming."""
    u = _BASE_SIDE // 15
    base = (pyvips.Image.black(_BASE_SIDE, _BASE_SIDE) + 255).cast("uchar")
    base = base.draw_rect(0, 3 * u, 3 * u, 9 * u, 2 * u, fill=True).draw_rect(0, 10 * u, 3 * u, 2 * u, 10 * u, fill=True)
    return base.zoom(side // _BASE_SIDE, side // _BASE_SIDE) if side > _BASE_SIDE else base


def _vips_save(pyvips, kind: str, side: int, path: Path) -> None:
    g = _vips_digit(pyvips, side)
    if kind == "rgba-png":  # ink drawn in colour (dark red) on an opaque white canvas
        g.bandjoin([g, g + 0, 255]).copy(interpretation="srgb").pngsave(str(path), compression=1)
    elif kind == "rgb16-png":
        rgb = (g.bandjoin([g, g]).cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16")
        rgb.pngsave(str(path), compression=1, bitdepth=16)
    elif kind == "gray-alpha-png":  # the digit only in the alpha channel: black ink on a transparent canvas
        (g * 0).bandjoin(255 - g).cast("uchar").copy(interpretation="b-w").pngsave(str(path), compression=1)
    elif kind == "rgb-tif":
        g.bandjoin([g, g]).copy(interpretation="srgb").tiffsave(str(path), compression="lzw", tile=False)
    elif kind == "rgba-webp":  # the digit only in the alpha channel (libwebp decodes it already scaled)
        ink = g * 0
        ink.bandjoin([ink, ink, 255 - g]).cast("uchar").copy(interpretation="srgb").webpsave(str(path), Q=50, effort=0)
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind, w, h", HUGE)
def test_images_over_the_decode_budget_are_predicted_at_reduced_size_with_bounded_memory(tmp_path, kind, w, h):
    pyvips = pytest.importorskip("pyvips")
    big = tmp_path / f"big.{kind.rsplit('-', 1)[1]}"
    _vips_save(pyvips, kind, w, big)
    small = tmp_path / "small.png"
    _vips_digit(pyvips, _BASE_SIDE).pngsave(str(small))
    with Image.open(big) as im:
        assert im.width * im.height * (16 if im.format == "WEBP" else 4) > DECODE_BUDGET  # the budget's path
    # One decode in a fresh process: its peak RSS is what one decoding worker needs for this image.
    r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(big)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) <= 300, f"{kind} {w}x{h}: peak RSS {r.stdout.strip()} MB"
    # The reduced decode is the digit, not only bounded: the model sees the pixels of the small drawing.
    a, b = to_model_pixels(read_gray(big)).astype(int), to_model_pixels(read_gray(small)).astype(int)
    assert np.abs(a - b).mean() < 3, f"{kind}: mean difference {np.abs(a - b).mean():.2f} gray levels"
    model, out = tmp_path / "m.onnx", tmp_path / "r.csv"
    linear_onnx(model)
    result = invoke(["predict", big, small, "--model", model, "--provider", "cpu", "-o", out])
    assert result.exit_code == 0, result.output
    rows = {Path(row["path"]).name: row for row in read_csv(out)}
    assert rows["big." + kind.rsplit("-", 1)[1]]["label"] == rows["small.png"]["label"] != ""


def test_reduced_decode_by_libvips_keeps_the_exif_orientation(tmp_path):
    pyvips = pytest.importorskip("pyvips")
    digit = _vips_digit(pyvips, 9450)
    image = digit.bandjoin([digit, digit, 255]).copy(interpretation="srgb")
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    image.pngsave(str(path), compression=1)
    small = Image.fromarray(_vips_digit(pyvips, _BASE_SIDE).numpy())
    expected = np.asarray(small.resize((1050, 1050), Image.Resampling.BOX).transpose(Image.Transpose.ROTATE_270))
    unturned = np.asarray(small.resize((1050, 1050), Image.Resampling.BOX))
    got = read_gray(path).astype(int)
    assert got.shape == (1050, 1050) and np.abs(got - expected).mean() < 1 < np.abs(got - unturned).mean()


@pytest.mark.parametrize("kind", ["rgba-png", "rgb-tif", "rgba-webp"])
def test_a_truncated_image_over_the_budget_is_one_line(tmp_path, kind):
    pyvips = pytest.importorskip("pyvips")
    whole = tmp_path / f"whole.{kind.rsplit('-', 1)[1]}"
    _vips_save(pyvips, kind, 7500, whole)
    cut = tmp_path / f"cut.{kind.rsplit('-', 1)[1]}"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    out, model = tmp_path / "r.csv", tmp_path / "m.onnx"
    linear_onnx(model)
    result = invoke(["predict", cut, "--model", model, "--provider", "cpu", "-o", out])
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert f"{cut.name}: " in result.output and ("truncated" in result.output or "damaged" in result.output)


@pytest.mark.parametrize("size", [64, 7500])  # the Pillow path and the reduced decode
def test_damaged_metadata_warnings_never_reach_the_terminal(tmp_path, size):
    """Pillow warns ("Corrupt EXIF data") on a TIFF cut in half; a real process prints only its own lines."""
    pyvips = pytest.importorskip("pyvips")
    whole = tmp_path / "whole.tif"
    _vips_save(pyvips, "rgb-tif", size, whole)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    r = subprocess.run([sys.executable, "-m", "toolkit", "predict", str(cut), str(whole), "--model", str(model),
                        "--provider", "cpu", "-o", str(tmp_path / "r.csv")], capture_output=True, text=True)
    assert r.returncode == 3
    assert "Warning" not in r.stderr and "warnings.warn" not in r.stderr, r.stderr
    named = [line for line in r.stderr.splitlines() if "cut.tif" in line]
    assert len(named) == 1 and named[0].startswith("skipped ") and f"{cut}: " in named[0], r.stderr


@pytest.mark.parametrize("w, h", [(8000, 8000), (12000, 4400)])
def test_bmp_over_the_decode_budget_is_refused_with_a_reason(tmp_path, w, h):
    """libvips reads no BMP without ImageMagick: such a BMP stays a per-file refusal, one line."""
    path = tmp_path / "big.bmp"
    Image.new("RGB", (w, h), "white").save(path)
    out, model = tmp_path / "r.csv", tmp_path / "m.onnx"
    linear_onnx(model)
    result = invoke(["predict", path, "--model", model, "--provider", "cpu", "-o", out])
    assert result.exit_code == 3
    assert f"too large to decode: {w}x{h} RGB" in result.output and f"{DECODE_BUDGET >> 20} MiB" in result.output
    assert "BMP file cannot be decoded at reduced size" in result.output and "Traceback" not in result.output


NO_PYVIPS = """
import sys
sys.modules["pyvips"] = None  # what a platform without a pyvips-binary wheel has: no importable pyvips
from toolkit.cli import cli
sys.exit(cli.main(sys.argv[1:], standalone_mode=True))
"""


def test_without_libvips_an_image_over_the_budget_is_refused_per_file(tmp_path):
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    # A solid image compresses to almost nothing; the budget is judged from the header.
    Image.new("RGBA", (7300, 7300), "white").save(big, compress_level=1)
    _digit_canvas(64, 64).save(small)
    out, model = tmp_path / "r.csv", tmp_path / "m.onnx"
    linear_onnx(model)
    r = subprocess.run([sys.executable, "-c", NO_PYVIPS, "predict", str(big), str(small), "--model", str(model),
                        "--provider", "cpu", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "too large to decode: 7300x7300 RGBA" in r.stderr and "libvips (pyvips)" in r.stderr
    assert [Path(row["path"]).name for row in read_csv(out)] == ["small.png"]  # the other file is still predicted


@pytest.mark.parametrize("kind", ["rgba-png", "ink-on-transparent-png", "gray16-png", "rgb-tiff", "palette-gif"])
def test_reduced_decode_matches_a_full_size_decode(tmp_path, kind):
    """Just over REDUCE_ABOVE pixels: box-averaged by 2 while converted; the model pixels stay those of the full decode."""
    side = int(REDUCE_ABOVE ** 0.5) + 8
    path = tmp_path / f"m.{kind.rsplit('-', 1)[1].replace('tiff', 'tif')}"
    _save(kind, _digit_canvas(side, side), path)
    reduced = read_gray(path)
    assert reduced.shape == (side // 2, side // 2)
    with Image.open(path) as im:
        full = to_gray(im)
    a, b = to_model_pixels(reduced).astype(int), to_model_pixels(full).astype(int)
    assert not is_blank(a) and np.abs(a - b).mean() < 3 and np.abs(a - b).max() <= 64


def test_reduced_decode_keeps_the_exif_orientation(tmp_path):
    base = _digit_canvas(2100, 2200)
    ImageDraw.Draw(base).rectangle([200, 300, 1800, 500], fill=0)  # asymmetric: a wrong turn would show
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    base.save(path, exif=exif.tobytes())
    expected = np.asarray(base.transpose(Image.Transpose.ROTATE_270).reduce(2))
    got = read_gray(path)
    assert got.shape == expected.shape == (1050, 1100) and np.abs(got.astype(int) - expected).max() <= 1


def test_large_cmyk_jpeg_is_drafted_too(tmp_path):
    im = Image.new("CMYK", (3000, 2500), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle([1400, 500, 1600, 2000], fill=(0, 0, 0, 255))
    path = tmp_path / "cmyk.jpg"
    im.save(path)
    gray = read_gray(path)
    assert max(gray.shape) < 3000 and not is_blank(to_model_pixels(gray))


def test_images_below_the_reduction_threshold_decode_at_full_size(tmp_path):
    path = tmp_path / "a.png"
    _digit_canvas(2000, 2000).convert("RGB").save(path)
    assert 2000 * 2000 <= REDUCE_ABOVE and read_gray(path).shape == (2000, 2000)


# ---------------------------------------------------------------- item 17: blank images

def blank_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    made = {
        "white.png": Image.new("L", (64, 64), 255),
        "black.png": Image.new("L", (50, 70), 0),
        "black28.png": Image.new("L", (28, 28), 0),  # MNIST format, used as it is: still no ink
        "faint28.png": Image.new("L", (28, 28), INK_MIN - 1),
        "grey.jpg": Image.new("RGB", (90, 40), (128, 128, 128)),
        "one.png": Image.new("L", (1, 1), 200),
        "one_black.bmp": Image.new("RGB", (1, 1), 0),
        "transparent.png": Image.new("RGBA", (40, 40), (0, 0, 0, 0)),
        "transparent_white.webp": Image.new("RGBA", (40, 40), (255, 255, 255, 0)),
        "noise.png": Image.fromarray((128 + rng.integers(-2, 3, (60, 60))).astype(np.uint8)),
        "flat16.png": Image.fromarray(np.full((30, 30), 40000, np.uint16)),
        "palette.gif": Image.new("P", (33, 33), 7),
    }
    paths = []
    for name, im in made.items():
        p = folder / name
        im.save(p)
        paths.append(p)
    return paths


def test_is_blank_is_no_ink_after_preprocessing(tmp_path):
    for path in blank_images(tmp_path / "b"):
        assert is_blank(to_model_pixels(read_gray(path))), path.name
    for path in digit_images(tmp_path / "d", 4):
        assert not is_blank(to_model_pixels(read_gray(path))), path.name
    stack = np.zeros((3, 28, 28), np.uint8)
    stack[1, 5, 5] = INK_MIN
    assert is_blank(stack).tolist() == [True, False, True]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_blank_images_are_flagged_never_given_a_class(tmp_path, fmt):
    root = tmp_path / "mixed"
    blanks = {str(p) for p in blank_images(root)}
    digits = [str(p) for p in digit_images(root, 6)]
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    only_digits = tmp_path / "digits.csv"
    assert invoke(["predict", *digits, "--model", model, "--provider", "cpu", "-o", only_digits]).exit_code == 0
    reference = {r["path"]: r["label"] for r in read_csv(only_digits)}

    out = tmp_path / f"mixed.{fmt}"
    result = invoke(["predict", root, "--model", model, "--provider", "cpu", "-o", out])
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        rows = read_csv(out)
        for r in rows:
            if r["path"] in blanks:
                assert r["blank"] == "true" and r["label"] == "" and r["confidence"] == "" and r["top1_label"] == ""
            else:
                assert r["blank"] == "false" and r["label"] == reference[r["path"]] == r["top1_label"]
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        for r in rows:
            if r["path"] in blanks:
                assert r["blank"] is True and r["label"] is None and r["confidence"] is None and r["top_k"] == []
            else:
                assert r["blank"] is False and r["label"] == reference[r["path"]]
    assert {r["path"] for r in rows} == blanks | set(digits)
    assert f"{len(blanks)} blank image(s): no ink found" in result.output


def test_blank_images_in_the_terminal_table_and_accuracy(tmp_path):
    root = tmp_path / "set"
    blank_images(root / "3")  # a labelled folder: blanks are no prediction, so not counted right or wrong
    digit_images(root / "3", 2)
    model = tmp_path / "m.onnx"
    linear_onnx(model)
    result = invoke(["predict", root, "--model", model, "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if "/3/" in line]
    blank_rows = [line for line in table if line.split()[1] == "blank"]
    assert len(blank_rows) == 12 and all(":" not in line.split("/3/")[1] for line in blank_rows)
    assert "(2 images labelled" in result.output or "/2 images labelled" in result.output
    assert "12 blank image(s)" in result.output
