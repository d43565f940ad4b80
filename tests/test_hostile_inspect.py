"""Files that are not what they claim (issue 10, items 7 and 9).

Item 9: `toolkit inspect` (and `toolkit export`) say what a file is from its content, whatever its suffix:
an image, a text file, a zip of something else, a damaged archive... one line, exit 1; "could execute code"
only for a real pickle that references code. Item 7: a checkpoint whose class list does not match the
network's output width is refused by export and by inspect, before anything is written.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import cli

SUFFIXES = [".pth", ".pt", ".onnx", ".bin"]  # the content decides, so every suffix must give the same answer


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result, path) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"toolkit: error: {path}: ")
    return lines[0]


def _image(fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (255, 255, 255)).save(buf, fmt, **save)
    return buf.getvalue()


def _zip(**members) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _torch_save(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Code:
    """Unpickling this would call print: the one kind of pickle that 'could execute code'."""

    def __reduce__(self):
        return (print, ("this must never be printed",))


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


# kind -> (bytes, words the one line must hold)
NOT_MODELS = {
    "random bytes": (lambda: np.random.default_rng(0).bytes(5000), "unrecognised binary content"),
    "png": (lambda: _image("PNG"), "a PNG image, not a model file (expected a .pth checkpoint"),
    "jpeg": (lambda: _image("JPEG"), "a JPEG image, not a model file"),
    "gif": (lambda: _image("GIF"), "a GIF image, not a model file"),
    "bmp": (lambda: _image("BMP"), "a BMP image, not a model file"),
    "webp": (lambda: _image("WEBP"), "a WEBP image, not a model file"),
    "tiff": (lambda: _image("TIFF"), "a TIFF image, not a model file"),
    "text": (lambda: b"epoch 1 loss 0.31\nepoch 2 loss 0.22\n", "a text file, not a model file"),
    "utf-8 text": (lambda: "classes: ä ö ü ✓ 数字\n".encode() * 500, "a text file, not a model file"),
    "json": (lambda: json.dumps({"state_dict": [1, 2]}).encode(), "a text file, not a model file"),
    "pdf": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF document, not a model file"),
    "gzip": (lambda: gzip.compress(b"x" * 100), "a gzip-compressed file, not a model file"),
    "npy": (lambda: _npy(), "a NumPy array file (.npy), not a model file"),
    "zip of text": (lambda: _zip(**{"readme.txt": "hello"}), "a zip archive holding no data.pkl"),
    "empty zip": (lambda: _zip(), "a zip archive holding no data.pkl"),
    "empty": (lambda: b"", "empty file (0 bytes)"),
    "truncated checkpoint": (lambda: _torch_save({"w": np.arange(5000.0)})[:3000], "damaged or truncated zip archive"),
    "plain pickle": (lambda: pickle.dumps({"weights": [1.0, 2.0]}), "a pickle of plain Python data"),
    "truncated pickle": (lambda: pickle.dumps({"w": list(range(500))})[:60], "damaged or truncated pickle"),
}


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("kind", NOT_MODELS)
def test_inspect_says_what_a_file_is(kind, suffix, tmp_path):
    make, words = NOT_MODELS[kind]
    path = tmp_path / f"model{suffix}"
    path.write_bytes(make())
    line = one_error_line(run("inspect", path), path)
    assert words in line
    assert "execute code" not in line
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("kind", ["png", "text", "zip of text", "truncated checkpoint", "random bytes"])
def test_export_says_what_a_file_is_too(kind, tmp_path):
    make, words = NOT_MODELS[kind]
    path = tmp_path / "model.pth"
    path.write_bytes(make())
    line = one_error_line(run("export", path, "--out-dir", tmp_path / "out"), path)
    assert words.split(", not")[0] in line and "execute code" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["bare pickle", "inside a torch.save archive"])
def test_only_a_pickle_that_references_code_is_said_to_execute_code(where, tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps(_Code()) if where == "bare pickle" else _torch_save({"state_dict": _Code()}))
    result = run("inspect", path)
    line = one_error_line(result, path)
    assert "could execute code" in line and "print" in line
    assert "this must never be printed" not in result.output


@pytest.mark.parametrize("name", ["folder", "folder.pth"])
def test_a_directory_is_named_as_one(name, tmp_path):
    path = tmp_path / name
    path.mkdir()
    assert "is a directory, not a model file" in one_error_line(run("inspect", path), path)


def test_a_missing_file(tmp_path):
    path = tmp_path / "absent.onnx"
    assert one_error_line(run("inspect", path), path).endswith(": no such file")


# ---------------------------------------------------------------- suffix lies on real model files

def _real(kind: str, tiny_ckpt: Path, tiny_onnx: Path, tmp_path: Path) -> Path:
    if kind == "onnx":
        return tiny_onnx
    if kind == "checkpoint":
        return tiny_ckpt
    from toolkit.export.torchscript_export import export_torchscript
    from toolkit.export.onnx_export import contract_for
    from toolkit.train.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(tiny_ckpt)
    path = tmp_path / "scripted.pt"
    export_torchscript(build_model(ck), path, contract_for(ck, 0))
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit: deprecated, still supported
@pytest.mark.parametrize("kind, suffix", [("onnx", ".pt"), ("onnx", ".pth"), ("checkpoint", ".onnx"),
                                          ("checkpoint", ".pt"), ("torchscript", ".pth"), ("torchscript", ".onnx")])
def test_a_model_under_another_suffix_is_described_as_what_it_is(kind, suffix, tiny_ckpt, tiny_onnx, tmp_path):
    src = _real(kind, tiny_ckpt, tiny_onnx, tmp_path)
    path = tmp_path / f"renamed{suffix}"
    path.write_bytes(src.read_bytes())
    result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kind"] == kind


@pytest.mark.parametrize("kind, words", [("onnx", "is an ONNX model, not a PyTorch checkpoint"),
                                         ("torchscript", "is a TorchScript model, not a PyTorch checkpoint")])
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_names_a_model_that_is_not_a_checkpoint(kind, words, tiny_ckpt, tiny_onnx, tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(_real(kind, tiny_ckpt, tiny_onnx, tmp_path).read_bytes())
    assert words in one_error_line(run("export", path, "--out-dir", tmp_path / "out"), path)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- item 7: class list vs output width

def _with_classes(src: Path, dst: Path, classes: list, outputs: int | None = None) -> Path:
    """The real tiny checkpoint with its class list (and optionally its output layer) edited."""
    import torch

    payload = torch.load(src, weights_only=True)
    payload["classes"] = classes
    if outputs is not None:
        payload["config"]["num_classes"] = outputs
        for key in ("model.13.weight", "model.13.bias"):
            payload["state_dict"][key] = payload["state_dict"][key][:outputs].clone()
    torch.save(payload, dst)
    return dst


LYING = {  # name -> (classes, outputs or None for the real 10)
    "2 names, 10 outputs": (["a", "b"], None),
    "no names, 10 outputs": ([], None),
    "11 names, 10 outputs": ([str(i) for i in range(11)], None),
    "10 names, 5 outputs": ([str(i) for i in range(10)], 5),
    "4 names, 5 outputs": (list("abcd"), 5),
}


@pytest.mark.parametrize("command", ["export", "inspect"])
@pytest.mark.parametrize("case", LYING)
def test_class_list_must_match_the_output_width(case, command, tiny_ckpt, tmp_path):
    classes, outputs = LYING[case]
    path = _with_classes(tiny_ckpt, tmp_path / "lying.pth", classes, outputs)
    args = ["--out-dir", tmp_path / "out"] if command == "export" else []
    line = one_error_line(run(command, path, *args), path)
    assert f"the network has {outputs or 10} outputs but the checkpoint's class list names {len(classes)} classes" \
        in line
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lying.pth", "model.pth"]


def test_a_matching_smaller_class_list_is_fine(tiny_ckpt, tmp_path):
    """The check compares, it does not insist on ten digits."""
    path = _with_classes(tiny_ckpt, tmp_path / "five.pth", list("vwxyz"), 5)
    result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["classes"] == list("vwxyz") and info["config"]["num_classes"] == 5


def test_inspect_refuses_an_onnx_contract_whose_classes_do_not_match(tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx))
    for prop in model.metadata_props:
        if prop.key == "toolkit.classes":
            prop.value = json.dumps(["a", "b"])
    onnx.save(model, str(tiny_onnx))
    line = one_error_line(run("inspect", tiny_onnx), tiny_onnx)
    assert "the model has 10 outputs but its contract names 2 classes" in line


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit: deprecated, still supported
def test_inspect_refuses_a_torchscript_contract_whose_classes_do_not_match(tiny_ckpt, tmp_path):
    import dataclasses

    from toolkit.export.onnx_export import contract_for
    from toolkit.export.torchscript_export import export_torchscript
    from toolkit.train.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(tiny_ckpt)
    path = tmp_path / "lying.pt"
    export_torchscript(build_model(ck), path, dataclasses.replace(contract_for(ck, 0), classes=list("abc")))
    line = one_error_line(run("inspect", path), path)
    assert "the model has 10 outputs but its contract names 3 classes" in line
