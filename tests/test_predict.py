"""`toolkit predict` end to end: real PNG/JPEG files, a real exported model, real ONNX Runtime sessions."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import cli
from toolkit.predict import PredictInterrupted, Reporter, predict_paths, prepare
from toolkit.runtime import Predictor

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers

def write_labelled(root: Path, mnist, count: int, start: int = 0) -> list[tuple[str, int]]:
    """MNIST test images as root/<label>/<index>.png; returns (path, label) in the walk's order."""
    items = []
    for i in range(start, start + count):
        label = int(mnist.test_labels[i])
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.png"
        Image.fromarray(mnist.test_images[i]).save(path)
        items.append((str(path), label))
    return sorted(items, key=lambda item: (Path(item[0]).parent.name, Path(item[0]).name))


def run(args, **kw):
    result = CliRunner().invoke(cli, ["predict", *map(str, args)], catch_exceptions=False, **kw)
    return result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_labels(model: Path, paths) -> list[str]:
    """What the model says about these files, computed without the predict pipeline's batching or workers."""
    predictor = Predictor.open(model, "cpu")
    pixels = np.stack([prepare(p) for p in paths])
    return [predictor.classes[i] for i in predictor.probabilities(pixels).argmax(axis=1)]


@pytest.fixture
def labelled(tmp_path, mnist):
    root = tmp_path / "digits"
    return root, write_labelled(root, mnist, 120)


# ---------------------------------------------------------------- help and usage

def test_help_documents_rule_outputs_and_exit_codes():
    result = run(["--help"])
    assert result.exit_code == 0
    text = result.output
    for phrase in ("20x20", "centre of", "mass", "--output", "--top-k", "--provider", "--batch-size", "--force",
                   "--confusion", "PNG, JPEG, BMP, GIF", "Exit codes", "130"):
        assert phrase in text, phrase
    assert re.search(r"^\s*3\s+finished, but some files were skipped", text, re.M)


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--top-k", "0"], "--top-k"),
    (["--output", "results.txt"], ".csv or .jsonl"),
    (["--confusion", "cm.jpg"], ".png"),
    (["--provider", "tpu"], "--provider"),
])
def test_usage_errors_exit_2(tiny_onnx, labelled, args, message):
    result = run([labelled[0], "--model", tiny_onnx, *args])
    assert result.exit_code == 2
    assert message in result.output


def test_no_paths_is_a_usage_error():
    assert run([]).exit_code == 2


# ---------------------------------------------------------------- the good path

def test_labelled_folders_csv_accuracy_and_confusion_png(tiny_onnx, labelled, tmp_path):
    root, items = labelled
    out = tmp_path / "results.csv"
    result = run([root, "--model", tiny_onnx, "--provider", "cpu", "--output", out, "--top-k", "3"])
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert [r["path"] for r in rows] == [p for p, _ in items]  # every image, in the sorted walk order
    assert list(rows[0]) == ["path", "label", "confidence", "expected", "blank", "top1_label", "top1_prob",
                             "top2_label", "top2_prob", "top3_label", "top3_prob", "path_display"]
    expected_labels = reference_labels(tiny_onnx, [p for p, _ in items])
    assert [r["label"] for r in rows] == expected_labels
    for r, (_, label) in zip(rows, items):
        assert r["expected"] == str(label)
        assert r["label"] == r["top1_label"] and r["confidence"] == r["top1_prob"]
        probs = [float(r[f"top{i}_prob"]) for i in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.00001

    correct = sum(lbl == str(true) for lbl, (_, true) in zip(expected_labels, items))
    m = re.search(r"accuracy (\d+\.\d+)% \((\d+)/(\d+) images labelled", result.stderr)
    assert m and (int(m.group(2)), int(m.group(3))) == (correct, len(items))
    summary = re.search(r"(\d+) image\(s\) predicted, (\d+) skipped, [\d.]+ s \(([\d,]+) images/s\), provider cpu",
                        result.stderr)
    assert summary and summary.group(1, 2) == (str(len(items)), "0")

    png = tmp_path / "results.confusion.png"
    assert f"wrote {png}" in result.stderr
    check_confusion_png(png, rows)


def check_confusion_png(png: Path, rows: list[dict]) -> None:
    """Cells are shaded by the share of their row; an empty cell is white, a full diagonal dark."""
    im = Image.open(png)
    assert im.format == "PNG" and im.mode == "RGB" and im.size == (86 + 10 * 44 + 20, 78 + 10 * 44 + 20)
    cm = np.zeros((10, 10), dtype=int)
    for r in rows:
        cm[int(r["expected"]), int(r["label"])] += 1
    for i in range(10):
        for j in range(10):
            corner = im.getpixel((86 + j * 44 + 3, 78 + i * 44 + 3))
            if cm[i, j] == 0:
                assert corner == (255, 255, 255)
            elif i == j and cm[i, j] == cm[i].sum():
                assert corner[0] < 100  # the deepest blue


def test_jsonl_output_and_top_k_capped_at_the_number_of_classes(tiny_onnx, labelled, tmp_path):
    root, items = labelled
    out = tmp_path / "results.jsonl"
    result = run([root, "--model", tiny_onnx, "--output", out, "--top-k", "25", "--confusion", tmp_path / "cm.png"])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == len(items)
    for line, (path, label) in zip(lines, items):
        row = json.loads(line)
        assert row["path"] == path and row["expected"] == str(label)
        assert len(row["top_k"]) == 10
        assert sorted(t["label"] for t in row["top_k"]) == [str(i) for i in range(10)]
        assert row["label"] == row["top_k"][0]["label"] and row["confidence"] == row["top_k"][0]["probability"]
        assert abs(sum(t["probability"] for t in row["top_k"]) - 1) < 1e-4
    assert (tmp_path / "cm.png").is_file()


def test_few_images_print_a_table(tiny_onnx, mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: the table shortens long ones
    items = write_labelled(Path("s"), mnist, 4)
    loose = Path("loose.png")
    Image.fromarray(255 - mnist.test_images[50]).resize((90, 90)).save(loose)  # dark on light, large
    result = run(["s", loose, "--model", tiny_onnx, "--top-k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["path", "label", "confidence", "expected", "top-2"]
    body = lines[1:]
    assert [line.split()[0] for line in body] == [p for p, _ in items] + [str(loose)]
    labels = reference_labels(tiny_onnx, [p for p, _ in items] + [loose])
    assert [line.split()[1] for line in body] == labels
    assert "labelled by their folder name" in result.stderr
    assert "write it as a PNG" in result.stderr  # no --output: accuracy but no PNG written


def test_batch_size_does_not_change_results(tiny_onnx, labelled, tmp_path):
    root, items = labelled
    outputs = []
    for bs in (1, 7, 256):
        out = tmp_path / f"bs{bs}.csv"
        assert run([root, "--model", tiny_onnx, "--batch-size", bs, "--output", out]).exit_code == 0
        outputs.append(read_csv(out))
    for rows in outputs[1:]:
        assert [r["label"] for r in rows] == [r["label"] for r in outputs[0]]
        assert np.allclose([float(r["confidence"]) for r in rows], [float(r["confidence"]) for r in outputs[0]],
                           atol=2e-6)


def test_photos_of_digits_are_normalised_like_mnist(tiny_onnx, mnist, tmp_path):
    """Dark ink on light paper, large, off-centre, in JPEG: predicted about as well as the MNIST originals."""
    rng = np.random.default_rng(0)
    count = 150
    for i in range(count):
        digit = Image.fromarray(mnist.test_images[i]).resize((112, 112), Image.Resampling.BICUBIC)
        paper = Image.new("L", (220, 170), 0)
        paper.paste(digit, (int(rng.integers(0, 108)), int(rng.integers(0, 58))))
        photo = Image.fromarray(255 - np.asarray(paper)).convert("RGB")
        folder = tmp_path / "photos" / str(int(mnist.test_labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        photo.save(folder / f"{i}.jpg", quality=80)
    result = run([tmp_path / "photos", "--model", tiny_onnx, "--output", tmp_path / "p.csv"])
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "p.csv")
    photo_acc = np.mean([r["label"] == r["expected"] for r in rows])
    predictor = Predictor.open(tiny_onnx, "cpu")
    original_acc = np.mean(predictor.probabilities(mnist.test_images[:count]).argmax(1) == mnist.test_labels[:count])
    assert photo_acc >= original_acc - 0.05


def test_prepare_accepts_paths_bytes_pil_and_arrays(mnist, tmp_path):
    a = 255 - mnist.test_images[7]
    path = tmp_path / "d.png"
    Image.fromarray(a).save(path)
    expected = prepare(a)
    assert expected.shape == (28, 28) and expected.dtype == np.uint8
    for form in (path, str(path), path.read_bytes(), Image.open(path), Image.open(path).convert("RGB")):
        assert np.array_equal(prepare(form), expected)


# ---------------------------------------------------------------- providers

def _cuda_works(model: Path) -> bool:
    from toolkit.runtime import create_session

    try:
        create_session(model, "cuda")
        return True
    except Exception:
        return False


def test_cuda_request_fails_with_a_reason_and_exit_5(tiny_onnx, labelled):
    if _cuda_works(tiny_onnx):
        pytest.skip("CUDA works on this machine")
    result = run([labelled[0], "--model", tiny_onnx, "--provider", "cuda"])
    assert result.exit_code == 5
    assert "toolkit: error: --provider cuda: CUDA provider could not be loaded" in result.stderr
    assert "\x1b[" not in result.output and "[E:onnxruntime" not in result.output
    assert result.stdout == ""


def test_auto_says_it_uses_cpu_and_why(tiny_onnx, labelled):
    if _cuda_works(tiny_onnx):
        pytest.skip("CUDA works on this machine")
    result = run([labelled[0], "--model", tiny_onnx, "--provider", "auto"])
    assert result.exit_code == 0
    assert re.search(r"toolkit: CUDA not usable \(.+\); using CPU", result.stderr)
    assert "provider cpu" in result.stderr
    assert "\x1b[" not in result.output and "[E:onnxruntime" not in result.output


# ---------------------------------------------------------------- bad inputs

def make_bomb(width: int, height: int) -> bytes:
    """A real PNG of width x height black pixels, ~100 kB on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(b"\x00" * (width + 1)) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def make_bad_files(root: Path, mnist) -> dict[str, str]:
    """Each bad file -> a phrase its skip reason must contain."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    photo = Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8))
    png, jpg = io.BytesIO(), io.BytesIO()
    photo.save(png, "PNG")
    photo.save(jpg, "JPEG", quality=90)
    files = {
        "notimage.png": (b"this is a text file\n", "text, not an image"),
        "zero.png": (b"", "empty file"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "truncated"),
        "truncated.jpg": (jpg.getvalue()[: len(jpg.getvalue()) // 2], "truncated"),
        "bomb.png": (make_bomb(9600, 9600), "decompression bomb"),
        "photoshop.png": (b"8BPS\x00\x01" + b"\x00" * 60, "Photoshop PSD"),
    }
    reasons = {}
    for name, (data, reason) in files.items():
        (root / name).write_bytes(data)
        reasons[str(root / name)] = reason
    return reasons


def test_bad_inputs_are_listed_good_ones_all_written_exit_3(tiny_onnx, mnist, tmp_path):
    good_root = tmp_path / "in"
    items = write_labelled(good_root, mnist, 30)
    reasons = make_bad_files(good_root / "bad", mnist)
    # named on the command line: tried whatever their suffix, refused by content
    psd, eps, pdf = tmp_path / "layers.psd", tmp_path / "figure.eps", tmp_path / "scan.pdf"
    psd.write_bytes(b"8BPS\x00\x01" + b"\x00" * 60)
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n")
    Image.fromarray(mnist.test_images[0]).save(pdf)
    reasons.update({str(psd): "Photoshop PSD", str(eps): "EPS", str(pdf): "PDF"})
    # a folder named like an image is a folder: its image is predicted
    (good_root / "x.png").mkdir()
    inside = good_root / "x.png" / "inside.png"
    Image.fromarray(mnist.test_images[40]).save(inside)
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing.png"
    reasons.update({str(empty): "folder holds no image files", str(missing): "no such file or directory"})
    (good_root / "notes.txt").write_text("not read: no image suffix")

    out = tmp_path / "out.csv"
    result = run([good_root, psd, eps, pdf, empty, missing, "--model", tiny_onnx, "--output", out])
    assert result.exit_code == 3, result.output
    skipped = dict(re.findall(r"^skipped (.+?): (.+)$", result.stderr, re.M))
    assert set(skipped) == set(reasons)
    for path, phrase in reasons.items():
        assert phrase in skipped[path], (path, skipped[path])
    rows = read_csv(out)
    predicted = {r["path"] for r in rows}
    assert predicted == {p for p, _ in items} | {str(inside)}
    assert f", {len(reasons)} skipped" in result.stderr
    assert "1 non-image file(s) in the folders ignored" in result.stderr
    assert "decompression" not in result.output.lower().replace("decompression bomb", "")  # no Pillow warning text


@pytest.mark.parametrize("make", ["empty-folder", "missing", "folder-of-non-images", "empty-folder-named-x.png"])
def test_nothing_to_predict_is_fatal_exit_1(tiny_onnx, tmp_path, make):
    target = tmp_path / ("x.png" if make == "empty-folder-named-x.png" else "target")
    if make != "missing":
        target.mkdir()
    if make == "folder-of-non-images":
        (target / "a.txt").write_text("x")
    result = run([target, "--model", tiny_onnx])
    assert result.exit_code == 1
    assert "nothing to predict" in result.stderr
    assert f"skipped {target}:" in result.stderr


def test_symlink_loops_do_not_hang(tiny_onnx, mnist, tmp_path):
    root = tmp_path / "loopy"
    items = write_labelled(root, mnist, 6)
    os.symlink(".", root / "again")
    os.symlink("..", Path(items[0][0]).parent / "up")
    os.symlink(root, root / "abs")
    out = tmp_path / "o.csv"
    result = run([root, "--model", tiny_onnx, "--output", out])
    assert result.exit_code == 0, result.output
    assert sorted(r["path"] for r in read_csv(out)) == sorted(p for p, _ in items)
    assert "already visited" in result.stderr


def test_broken_symlink_in_a_folder_is_skipped(tiny_onnx, mnist, tmp_path):
    root = tmp_path / "in"
    write_labelled(root, mnist, 2)
    os.symlink(tmp_path / "nowhere.png", root / "dangling.png")
    result = run([root, "--model", tiny_onnx])
    assert result.exit_code == 3
    assert f"skipped {root / 'dangling.png'}: broken symbolic link" in result.stderr


# ---------------------------------------------------------------- bad models

def test_default_model_missing_says_how_to_make_one(labelled, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = run([labelled[0]])
    assert result.exit_code == 1
    assert "model.onnx: no such model file; create one with `toolkit export model.pth`" in result.stderr


@pytest.mark.parametrize("content,phrase", [
    (b"\x00\x01garbage" * 100, "not a loadable ONNX model"),
    (b"", "empty file"),
    ("png", "not a loadable ONNX model"),
    ("half", "not a loadable ONNX model"),
])
def test_corrupt_or_non_onnx_models_exit_1(tiny_onnx, labelled, tmp_path, content, phrase):
    bad = tmp_path / "bad.onnx"
    if content == "png":
        Image.new("L", (28, 28)).save(bad, "PNG")
    elif content == "half":
        data = tiny_onnx.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(content)
    result = run([labelled[0], "--model", bad])
    assert result.exit_code == 1
    assert f"toolkit: error: {bad}: {phrase}" in result.stderr


def test_model_without_toolkit_metadata_exit_1(tiny_onnx, labelled, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_onnx))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    result = run([labelled[0], "--model", bare])
    assert result.exit_code == 1 and "has no toolkit metadata" in result.stderr


def test_model_whose_input_name_differs_from_its_metadata(tiny_onnx, labelled, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_onnx))
    for entry in proto.metadata_props:
        if entry.key == "toolkit.input_name":
            entry.value = "pixels"
    edited = tmp_path / "renamed.onnx"
    onnx.save(proto, str(edited))
    result = run([labelled[0], "--model", edited])
    assert result.exit_code == 1
    assert "graph input is named 'input' but the metadata says 'pixels'" in result.stderr


def test_model_whose_input_shape_differs_from_its_metadata(tiny_onnx, labelled, tmp_path):
    """A real graph taking 32x32 images, carrying the 28x28 model's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.zeros((32 * 32, 10), dtype=np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 32 * 32], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "wrong_size",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[weights, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for entry in onnx.load(str(tiny_onnx)).metadata_props:
        model.metadata_props.add(key=entry.key, value=entry.value)
    onnx.checker.check_model(model)
    path = tmp_path / "wrong.onnx"
    onnx.save(model, str(path))
    result = run([labelled[0], "--model", path])
    assert result.exit_code == 1
    assert "graph input shape ['batch', 1, 32, 32] does not match the metadata" in result.stderr


# ---------------------------------------------------------------- output paths

def test_existing_output_is_refused_without_force(tiny_onnx, labelled, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    result = run([labelled[0], "--model", tiny_onnx, "--output", out])
    assert result.exit_code == 1
    assert f"{out}: already exists; pass --force to replace it" in result.stderr
    assert out.read_text() == "precious\n"
    assert run([labelled[0], "--model", tiny_onnx, "--output", out, "--force"]).exit_code == 0
    assert len(read_csv(out)) == len(labelled[1])


def test_existing_confusion_png_beside_the_output_is_refused_without_force(tiny_onnx, labelled, tmp_path):
    (tmp_path / "out.confusion.png").write_bytes(b"old")
    result = run([labelled[0], "--model", tiny_onnx, "--output", tmp_path / "out.csv"])
    assert result.exit_code == 1 and "out.confusion.png: already exists" in result.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("case", ["missing-dir", "is-a-dir", "parent-is-a-file", "read-only-dir"])
def test_unwritable_output_exit_1_before_any_work(tiny_onnx, labelled, tmp_path, case):
    if case == "missing-dir":
        out, phrase = tmp_path / "no" / "such" / "out.csv", "does not exist"
    elif case == "is-a-dir":
        out, phrase = tmp_path / "dir.csv", "is a directory"
        out.mkdir()
    elif case == "parent-is-a-file":
        (tmp_path / "plain").write_text("a file, not a folder")
        out, phrase = tmp_path / "plain" / "out.csv", "not writable"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write into read-only directories")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out, phrase = locked / "out.csv", "is not writable"
    result = run([labelled[0], "--model", tiny_onnx, "--output", out])
    assert result.exit_code == 1
    assert phrase in result.stderr
    assert "predicted" not in result.stderr


# ---------------------------------------------------------------- interruption

class StopAfter(Reporter):
    """A front end whose user presses Ctrl-C after `batches` batches have been written."""

    def __init__(self, batches: int):
        self.batches = batches

    def predicted(self, paths, expected, probs, top, blank):
        self.batches -= 1
        if self.batches == 0:
            raise KeyboardInterrupt


def test_interrupt_keeps_complete_rows(tiny_onnx, labelled, tmp_path):
    root, items = labelled
    out = tmp_path / "partial.csv"
    with pytest.raises(PredictInterrupted) as info:
        predict_paths([root], model=tiny_onnx, provider="cpu", batch_size=16, output=out, workers=0,
                      reporter=StopAfter(3))
    rows = read_csv(out)
    assert [r["path"] for r in rows] == [p for p, _ in items[:48]]
    assert info.value.summary.rows_written == 48 and info.value.summary.interrupted
    assert not list(tmp_path.glob(".partial.csv.*"))


def test_sigint_mid_run_leaves_a_readable_prefix(tiny_onnx, mnist, tmp_path):
    root = tmp_path / "many"
    items = write_labelled(root, mnist, 2500)
    out = tmp_path / "live.csv"
    cmd = [sys.executable, "-m", "toolkit", "predict", str(root), "--model", str(tiny_onnx), "--provider", "cpu",
           "--output", str(out), "--batch-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(tmp_path.glob(".live.csv.*.part"))
        if parts and parts[0].stat().st_size > 5000:  # a few dozen rows are out
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    rows = read_csv(out)
    assert 20 < len(rows) < len(items)
    assert [r["path"] for r in rows] == [p for p, _ in items[: len(rows)]]
    assert all(len(r) == 12 and None not in r.values() for r in rows)
    assert out.read_bytes().endswith(b"\n")
    assert not list(tmp_path.glob(".live.csv.*"))


# ---------------------------------------------------------------- no torch, parallel decoding

BLOCK_TORCH = """
import importlib.abc, json, sys
attempts = []
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            attempts.append(name)
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
from toolkit.cli import cli
codes = []
for args in json.loads(sys.argv[1]):
    try:
        cli.main(args, prog_name="toolkit", standalone_mode=False)
        codes.append(0)
    except SystemExit as e:
        codes.append(e.code)
print(json.dumps({"codes": codes, "attempts": attempts,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))}))
"""


def test_predict_runs_with_torch_unavailable_and_workers_match_in_process(tiny_onnx, mnist, tmp_path):
    root = tmp_path / "d"
    items = write_labelled(root, mnist, 600)  # above the pool threshold: decoding runs in worker processes
    parallel, serial = tmp_path / "parallel.csv", tmp_path / "serial.csv"
    runs = [["predict", "--help"],
            ["predict", str(root), "--model", str(tiny_onnx), "--provider", "cpu", "--output", str(parallel)]]
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"))
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, json.dumps(runs)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0], "attempts": [], "loaded": []}

    assert run([root, "--model", tiny_onnx, "--provider", "cpu", "--output", serial, "--workers", "0"]).exit_code == 0
    assert parallel.read_bytes() == serial.read_bytes()
    assert len(read_csv(parallel)) == len(items)


def test_workers_skip_bad_files_like_the_in_process_path(tiny_onnx, mnist, tmp_path):
    """Workers start decoding before the session has read the preprocessing: same rows, same skips, same order."""
    root = tmp_path / "in"
    write_labelled(root, mnist, 40)
    make_bad_files(root / "bad", mnist)
    results = []
    for workers in ("2", "0"):
        out = tmp_path / f"w{workers}.csv"
        result = run([root, "--model", tiny_onnx, "--provider", "cpu", "--output", out, "--workers", workers])
        assert result.exit_code == 3, result.output
        results.append((out.read_bytes(), re.findall(r"^skipped .+$", result.stderr, re.M)))
    assert results[0] == results[1]
    assert len(results[0][1]) == 6


def test_unusable_model_with_workers_started_exits_1_without_hanging(labelled, tmp_path):
    """The workers are forked and decoding before the model is opened; a bad model must release them."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    proc = subprocess.run([sys.executable, "-m", "toolkit", "predict", str(labelled[0]), "--model", str(bad),
                           "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "not a loadable ONNX model" in proc.stderr


def test_cli_subprocess_with_torch_shadowed(tiny_onnx, mnist, tmp_path):
    """The installed command line itself, with an importable `torch` that fails on import."""
    root = tmp_path / "d"
    write_labelled(root, mnist, 5)
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"))
    proc = subprocess.run([sys.executable, "-m", "toolkit", "predict", str(root), "--model", str(tiny_onnx),
                           "--provider", "cpu"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 6  # header + five rows
