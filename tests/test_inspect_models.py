"""`toolkit inspect` on exported files: .onnx (float and INT8) and TorchScript .pt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.export.defaults import DEFAULT_OPSET

ROOT = Path(__file__).resolve().parent.parent


def inspect(*args):
    result = CliRunner().invoke(cli, ["inspect", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _files(report) -> dict[str, Path]:
    return {fmt: Path(r.file) for fmt, r in report.formats.items()}


def _expected_counts(ckpt_path):
    """Trainable parameters, and every float the ONNX graph keeps: the Linear layers' weights and biases, since
    the dynamo exporter's optimizer folds each BatchNorm (statistics included) into the Gemm before it."""
    from toolkit.train.checkpoint import load_checkpoint
    from toolkit.train.model import SimpleNN, parameter_count

    ck = load_checkpoint(ckpt_path)
    floats = sum(v.numel() + v.shape[0] for v in ck.state_dict.values() if v.dim() == 2)
    return ck, parameter_count(SimpleNN(ck.config)), floats


def test_inspect_onnx_json(tiny_export, tiny_run):
    ck, _, floats = _expected_counts(tiny_run[0])
    path = _files(tiny_export)["onnx"]
    result = inspect(path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["kind"] == "onnx" and info["size_bytes"] == path.stat().st_size
    assert info["inputs"] == [{"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    assert info["opset"] == {"ai.onnx": DEFAULT_OPSET}
    assert info["parameters_by_dtype"]["float32"] == floats  # besides them, the Reshape's int64 target shape
    meta = info["metadata"]
    assert meta["source_sha256"] == ck.sha256 and meta["precision"] == "float32"
    assert meta["classes"] == ck.classes and meta["preprocess"] == ck.preprocess.to_dict()


def test_inspect_int8_onnx_shows_int8_weights(tiny_export):
    info = json.loads(inspect(_files(tiny_export)["int8"], "--json").output)
    assert info["metadata"]["precision"] == "int8"
    assert info["parameters_by_dtype"]["int8"] > info["parameters_by_dtype"]["float32"]
    assert "MatMulInteger" in info["operators"]


def test_inspect_torchscript_json(tiny_export, tiny_run):
    ck, params, _ = _expected_counts(tiny_run[0])
    path = _files(tiny_export)["torchscript"]
    info = json.loads(inspect(path, "--json").output)
    assert info["kind"] == "torchscript" and info["size_bytes"] == path.stat().st_size
    assert info["parameters"] == params
    assert info["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert info["outputs"][0]["shape"] == ["batch", 10]
    assert info["metadata"]["source_sha256"] == ck.sha256 and info["metadata"]["exporter"] == "torch.jit.script"


@pytest.mark.parametrize("fmt, words", [("onnx", ["opset:", f"ai.onnx: {DEFAULT_OPSET}", "parameters:", "size_bytes:"]),
                                        ("torchscript", ["signature: forward(", "parameters:", "size_bytes:"])])
def test_inspect_text(tiny_export, fmt, words):
    result = inspect(_files(tiny_export)[fmt])
    assert result.exit_code == 0
    for word in words:
        assert word in result.output


def test_onnx_description_without_the_onnx_package(tiny_export):
    """The edge install has onnxruntime only: same signature and contract, from a session."""
    from toolkit.inspect import _with_onnx, _with_onnxruntime

    path = _files(tiny_export)["onnx"]
    ort_info, onnx_info = _with_onnxruntime(path), _with_onnx(path)
    assert ort_info["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert ort_info["metadata"] == onnx_info["metadata"]
    assert ort_info["opset"] == onnx_info["opset"]
    assert ort_info["parameters"] is None and "onnx" in ort_info["parameters_note"]


def test_inspect_onnx_does_not_import_torch(tiny_export):
    code = ("import sys, json; from toolkit.inspect import describe_onnx; "
            f"info = describe_onnx({str(_files(tiny_export)['onnx'])!r}); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'inputs': info['inputs']}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["torch"] is False and result["inputs"][0]["name"] == "input"


def test_pt_that_is_a_checkpoint_is_described_as_one(tiny_ckpt):
    pt = tiny_ckpt.with_suffix(".pt")
    tiny_ckpt.rename(pt)
    info = json.loads(inspect(pt, "--json").output)
    assert info["kind"] == "checkpoint"


@pytest.mark.parametrize("name", ["broken.onnx", "broken.pt", "empty.onnx", "empty.pt"])
def test_bad_model_files_are_one_line(name, tmp_path, tiny_export):
    path = tmp_path / name
    if name.startswith("broken.onnx"):
        path.write_text("not a model\n")
    elif name.startswith("broken"):
        data = _files(tiny_export)["torchscript"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    result = inspect(path)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"toolkit: error: {path}: ")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save: deprecated, still supported
def test_scripted_module_loads_without_toolkit_metadata(tmp_path):
    """A TorchScript file from elsewhere is still described, with what can be known."""
    from toolkit.train.model import SimpleNN

    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(SimpleNN().eval()), str(path))
    info = json.loads(inspect(path, "--json").output)
    assert info["kind"] == "torchscript" and info["metadata"] == "none (not exported by toolkit)"
    assert info["parameters"] == sum(p.numel() for p in SimpleNN().parameters())
    assert os.path.getsize(path) == info["size_bytes"]
