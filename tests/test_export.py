"""`toolkit export`: real checkpoints, real files, real ONNX Runtime and TorchScript sessions."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from toolkit.cli import cli

EXPORT_SUFFIXES = (".pt", ".onnx", ".int8.onnx", ".export.json")


def run_export(*args):
    result = CliRunner().invoke(cli, ["export", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback the user would have seen
    return result


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def exported_files(folder: Path) -> list[str]:
    """Anything that looks like an export, or a temporary left behind."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith(EXPORT_SUFFIXES) or p.name.endswith(".part"))


@pytest.fixture
def seed_state_dict(tiny_ckpt, seed_model_class) -> Path:
    """The tiny weights saved the way the seed script saves them: torch.save(model.state_dict())."""
    from toolkit.train.checkpoint import load_checkpoint

    model = seed_model_class()
    model.load_state_dict(load_checkpoint(tiny_ckpt).state_dict)
    path = tiny_ckpt.parent / "seed_model.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def reference(tiny_run, mnist):
    from toolkit.export.parity import make_reference
    from toolkit.train.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(tiny_run[0])
    return make_reference(build_model(ck), mnist.test_images, mnist.test_labels, ck.preprocess)


# ---------------------------------------------------------------- the happy path

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_export_writes_validated_files(tiny_ckpt, mnist):
    import onnx

    from toolkit.runtime import Predictor
    from toolkit.train.checkpoint import build_model, load_checkpoint

    result = run_export(tiny_ckpt)
    assert result.exit_code == 0, result.output
    folder = tiny_ckpt.parent
    assert exported_files(folder) == ["model.export.json", "model.onnx", "model.pt"]
    report = json.loads((folder / "model.export.json").read_text())
    ck = load_checkpoint(tiny_ckpt)
    assert report["passed"] and report["checkpoint_sha256"] == ck.sha256 == sha(tiny_ckpt)
    assert report["eager"]["test_accuracy"] == pytest.approx(ck.metrics["test_accuracy"], abs=5e-4)
    for fmt in ("torchscript", "onnx"):
        r = report["formats"][fmt]
        assert r["passed"] and r["outside_tolerance"] == 0 and r["compared"] > 10 * 10000
        assert r["max_abs_diff"] <= report["tolerances"]["atol"] + report["tolerances"]["rtol"] * 100
        assert set(r["random_max_abs_diff"]) == {"1", "2", "7", "64"}
        assert r["top1_agreement"] == 1.0
        assert r["test_accuracy"] == report["eager"]["test_accuracy"]
        assert r["sha256"] == sha(folder / Path(r["file"]).name)
        assert fmt in result.output
    # The ONNX file checks strictly, has a named dynamic batch axis and carries its contract:
    # onnxruntime alone, from the file alone, reproduces the reported accuracy.
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    graph_input = onnx.load(str(folder / "model.onnx")).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    predictor = Predictor.open(folder / "model.onnx", provider="cpu")
    assert predictor.contract.source_sha256 == ck.sha256
    assert predictor.contract.preprocess == ck.preprocess and predictor.classes == ck.classes
    accuracy = (predictor.probabilities(mnist.test_images).argmax(1) == mnist.test_labels).mean()
    assert accuracy == pytest.approx(report["formats"]["onnx"]["test_accuracy"], abs=1e-9)
    # The TorchScript file runs any batch size on its own, without the toolkit's classes.
    scripted = torch.jit.load(str(folder / "model.pt"))
    x = torch.from_numpy(ck.preprocess.normalize(mnist.test_images[:3]))
    with torch.inference_mode():
        assert torch.equal(scripted(x), build_model(ck)(x))


def test_seed_style_state_dict_exports(seed_state_dict, tiny_run):
    result = run_export(seed_state_dict, "--formats", "onnx")
    assert result.exit_code == 0, result.output
    report = json.loads((seed_state_dict.parent / "seed_model.export.json").read_text())
    assert report["checkpoint_kind"] == "state_dict (seed format)"
    assert report["formats"]["onnx"]["passed"]
    # same weights as the tiny toolkit checkpoint, so the same accuracy
    assert report["eager"]["test_accuracy"] == pytest.approx(tiny_run[1].test_accuracy, abs=5e-4)
    assert not (seed_state_dict.parent / "seed_model.pt").exists()


def test_int8_variant_is_judged_and_measured(tiny_export):
    import onnx

    from toolkit.runtime import Predictor

    r = tiny_export.formats["int8"]
    f32 = tiny_export.formats["onnx"]
    path = Path(r.file)
    assert path.name == "model.int8.onnx" and path.exists()
    assert r.passed and r.accuracy_change_points >= -tiny_export.tolerances.int8_max_accuracy_drop_points
    assert r.accuracy_change_points == pytest.approx((r.test_accuracy - f32.test_accuracy) * 100)
    assert 0.5 < r.top1_agreement <= 1.0
    # int8 weights: a quarter of the float32 bytes plus scales and graph
    assert r.size_bytes < 0.5 * f32.size_bytes
    lat = r.latency_batch1
    assert lat["int8"]["median_us"] > 0 and lat["float32"]["median_us"] > 0
    assert r.faster_than_float32 == (lat["int8"]["median_us"] < lat["float32"]["median_us"])
    assert ("NOT faster" in r.latency_verdict) != r.faster_than_float32
    onnx.checker.check_model(str(path), full_check=True)
    contract = Predictor.open(path, provider="cpu").contract
    assert contract.precision == "int8" and contract.extra["float_model_sha256"] == f32.sha256
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMulInteger" in ops


def test_int8_cli_prints_latency_verdict(tiny_ckpt):
    result = run_export(tiny_ckpt, "--int8", "--formats", "onnx")
    assert result.exit_code == 0, result.output
    assert "batch-1 latency" in result.output and "faster" in result.output
    assert (tiny_ckpt.parent / "model.int8.onnx").exists()


def test_formats_and_opset(tiny_ckpt):
    import onnx

    # torch 2.14's dynamo exporter cannot write opset 13 for this graph; the legacy one can.
    result = run_export(tiny_ckpt, "--formats", "onnx", "--opset", "13", "--onnx-exporter", "legacy")
    assert result.exit_code == 0, result.output
    assert exported_files(tiny_ckpt.parent) == ["model.export.json", "model.onnx"]
    proto = onnx.load(str(tiny_ckpt.parent / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]


@pytest.mark.parametrize("args, message", [
    (["--formats", "keras"], "keras"),
    (["--formats", "torchscript", "--int8"], "--int8"),
    (["--opset", "5"], "opset"),
    (["--atol", "-1"], "atol"),
])
def test_usage_errors(tiny_ckpt, args, message):
    result = run_export(tiny_ckpt, *args)
    assert result.exit_code == 2 and message in result.output
    assert exported_files(tiny_ckpt.parent) == []


def test_help():
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0 and "--int8" in result.output and "exit code is 4" in result.output


# ---------------------------------------------------------------- the gate fails, loudly, and leaves nothing

def test_too_tight_tolerance_fails_and_writes_nothing(tiny_ckpt):
    result = run_export(tiny_ckpt, "--atol", "0", "--rtol", "0", "--int8")
    assert result.exit_code == 4, result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith("toolkit: error:")]
    assert len(line) == 1 and "model.onnx: onnx logits differ" in line[0] and "exceed atol 0" in line[0]
    assert "nothing was written" in line[0] and "Traceback" not in result.output
    assert exported_files(tiny_ckpt.parent) == []


def test_failed_forced_export_keeps_previous_good_files(tiny_ckpt):
    assert run_export(tiny_ckpt).exit_code == 0
    folder = tiny_ckpt.parent
    before = {name: sha(folder / name) for name in exported_files(folder)}
    result = run_export(tiny_ckpt, "--force", "--atol", "0", "--rtol", "0")
    assert result.exit_code == 4
    assert {name: sha(folder / name) for name in exported_files(folder)} == before


def _export_one(fmt, model, ck, path):
    from toolkit.export.onnx_export import contract_for, export_onnx
    from toolkit.export.torchscript_export import export_torchscript

    if fmt == "onnx":
        export_onnx(model, path, contract_for(ck, 17))
    else:
        export_torchscript(model, path, contract_for(ck, 0))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_gate_catches_a_small_weight_error(fmt, tiny_run, reference, tmp_path):
    """A file whose one bias is off by 0.01 must fail; the same file without the error must pass."""
    from toolkit.export.parity import parity_problem, validate_file
    from toolkit.train.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(tiny_run[0])
    good, bad = tmp_path / f"good.{fmt}", tmp_path / f"bad.{fmt}"
    _export_one(fmt, build_model(ck), ck, good)
    model = build_model(ck)
    with torch.no_grad():
        model.model[13].bias[3] += 0.01
    _export_one(fmt, model, ck, bad)
    ok = validate_file(fmt, good, reference, 1e-4, 1e-5)
    assert parity_problem(ok, 1e-4, 1e-5) is None
    c = validate_file(fmt, bad, reference, 1e-4, 1e-5)
    problem = parity_problem(c, 1e-4, 1e-5)
    assert problem and problem.startswith(f"{fmt} logits differ")
    assert c.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert c.outside_tolerance >= 10000  # class 3's logit of every test image


def test_gate_catches_a_frozen_batch_dimension(tiny_run, reference, tmp_path):
    """An ONNX file exported without a dynamic batch axis works at batch 2 only: the random batches catch it."""
    import warnings

    from toolkit.export.onnx_export import contract_for, embed_contract
    from toolkit.export.parity import parity_problem, validate_file
    from toolkit.train.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(tiny_run[0])
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build_model(ck), (torch.zeros(2, 1, 28, 28),), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    embed_contract(path, contract_for(ck, 17))
    c = validate_file("onnx", path, reference, 1e-4, 1e-5)
    assert c.error and "shape [10000, 1, 28, 28]" in c.error
    assert "broken" in parity_problem(c, 1e-4, 1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_gate_reports_a_file_that_does_not_load(fmt, tiny_onnx, reference, tmp_path):
    from toolkit.export.parity import parity_problem, validate_file

    path = tmp_path / f"cut.{fmt}"
    data = tiny_onnx.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    c = validate_file(fmt, path, reference, 1e-4, 1e-5)
    assert c.error and c.error.startswith("the written file does not load")
    assert parity_problem(c, 1e-4, 1e-5).startswith(f"{fmt} export is broken")


def test_int8_gate_fails_on_a_model_that_lost_accuracy(reference, tiny_run, tmp_path):
    """An 'INT8' file that is really an untrained network must fail the accuracy gate."""
    from toolkit.export.onnx_export import contract_for, export_onnx
    from toolkit.export.parity import int8_problem, validate_file
    from toolkit.train.checkpoint import load_checkpoint
    from toolkit.train.model import SimpleNN as ToolkitNN

    torch.manual_seed(1)
    path = tmp_path / "untrained.int8.onnx"
    export_onnx(ToolkitNN().eval(), path, contract_for(load_checkpoint(tiny_run[0]), 17, precision="int8"))
    c = validate_file("int8", path, reference, 1e-4, 1e-5)
    problem = int8_problem(c, reference.accuracy, 0.3)
    assert c.error is None and problem and "points lost, the gate allows 0.3" in problem
    assert int8_problem(c, c.test_accuracy, 0.3) is None


# ---------------------------------------------------------------- bad inputs: one line, exit 1, nothing run or written

class _Payload:
    """Unpickling this would create the marker file: proof that the loader executed code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_checkpoint(kind: str, folder: Path, good: Path, onnx_file: Path) -> Path:
    from toolkit.train.checkpoint import load_checkpoint
    from toolkit.train.model import MLPConfig
    from toolkit.train.model import SimpleNN as ToolkitNN

    path = folder / f"{kind}.pth"
    marker = folder / "MARKER"
    if kind == "code_in_archive":
        torch.save({"state_dict": _Payload(marker)}, path)
    elif kind == "code_in_pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("epoch 1 loss 0.31\nepoch 2 loss 0.22\n")
    elif kind == "onnx":
        path.write_bytes(onnx_file.read_bytes())
    elif kind == "other_architecture":
        torch.save(ToolkitNN(MLPConfig(hidden=(256, 128, 64))).state_dict(), path)
    elif kind == "other_keys":
        torch.save(nn.Linear(784, 10).state_dict(), path)
    elif kind == "nan":
        sd = load_checkpoint(good).state_dict
        sd["model.5.weight"][0, :3] = float("nan")
        torch.save(sd, path)
    elif kind == "inf":
        sd = load_checkpoint(good).state_dict
        sd["model.13.bias"][0] = float("inf")
        torch.save(sd, path)
    elif kind == "negative_variance":
        sd = load_checkpoint(good).state_dict
        sd["model.6.running_var"][7] = -1.0
        torch.save(sd, path)
    elif kind == "overflowing":  # finite weights whose logits are not
        sd = load_checkpoint(good).state_dict
        sd["model.13.weight"].fill_(3e38)
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("code_in_archive", "refused: the pickle references code"),
    ("code_in_pickle", "refused: the pickle references code"),
    ("empty", "empty file"),
    ("truncated", "truncated"),
    ("text", "not a PyTorch checkpoint"),
    ("onnx", "is an ONNX model"),
    ("other_architecture", "shape mismatch model.1.weight is (256, 784), expected (512, 784)"),
    ("other_keys", "missing keys model.1.weight"),
    ("nan", "tensor model.5.weight has 3 NaN/Inf"),
    ("inf", "tensor model.13.bias has 1 NaN/Inf"),
    ("negative_variance", "tensor model.6.running_var has negative variances"),
    ("overflowing", "the model computes NaN/Inf logits"),
])
def test_bad_checkpoint_is_one_clear_line(kind, reason, tiny_ckpt, tiny_onnx, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = _bad_checkpoint(kind, src, tiny_ckpt, tiny_onnx)
    out = tmp_path / "out"
    result = run_export(path, "--out-dir", out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"toolkit: error: {path}: ") and reason in lines[0]
    if kind == "other_keys":
        assert "unexpected keys weight, bias" in lines[0]
    assert not (src / "MARKER").exists()
    assert not out.exists() or exported_files(out) == []


def test_missing_checkpoint(tmp_path):
    result = run_export(tmp_path / "nope.pth")
    assert result.exit_code == 1 and result.output.strip() == f"toolkit: error: {tmp_path / 'nope.pth'}: no such file"


# ---------------------------------------------------------------- outputs

def test_existing_outputs_need_force_and_are_replaced_atomically(tiny_ckpt):
    folder = tiny_ckpt.parent
    assert run_export(tiny_ckpt).exit_code == 0
    before = {name: (sha(folder / name), (folder / name).stat().st_ino) for name in exported_files(folder)}

    refused = run_export(tiny_ckpt)
    assert refused.exit_code == 1
    # the first file in the formats' order (toolkit.formats) is the one named
    assert refused.output.strip() == f"toolkit: error: {folder / 'model.onnx'}: already exists; pass --force to replace it"
    assert {n: (sha(folder / n), (folder / n).stat().st_ino) for n in exported_files(folder)} == before

    forced = run_export(tiny_ckpt, "--force")
    assert forced.exit_code == 0, forced.output
    after = {name: (sha(folder / name), (folder / name).stat().st_ino) for name in exported_files(folder)}
    assert after.keys() == before.keys()
    # a new inode for every file: each was renamed into place, never rewritten in place
    assert all(after[n][1] != before[n][1] for n in before)
    # the models are byte-identical re-exports of the same checkpoint
    assert after["model.onnx"][0] == before["model.onnx"][0]


def test_output_dir_that_cannot_be_created(tiny_ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = run_export(tiny_ckpt, "--out-dir", blocker / "sub")
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"toolkit: error: {blocker / 'sub'}: cannot create the output directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir(tiny_ckpt, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = run_export(tiny_ckpt, "--out-dir", ro)
    finally:
        ro.chmod(0o755)
    assert result.exit_code == 1 and "not writable" in result.output


@pytest.mark.parametrize("folder", ["/proc/self", "/sys/kernel"])
def test_output_dir_the_kernel_refuses(tiny_ckpt, folder):
    if not Path(folder).is_dir():
        pytest.skip(f"{folder} does not exist on this system")
    result = run_export(tiny_ckpt, "--out-dir", folder)
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"toolkit: error: {folder}: output directory is not writable")


def test_refuses_to_overwrite_its_own_checkpoint(tiny_ckpt):
    pt = tiny_ckpt.with_suffix(".pt")
    tiny_ckpt.rename(pt)
    result = run_export(pt, "--force")
    assert result.exit_code == 1 and "would overwrite the checkpoint" in result.output
    assert pt.stat().st_size > 0 and exported_files(pt.parent) == ["model.pt"]


def test_report_and_outputs_in_out_dir(tiny_ckpt, tmp_path):
    out = tmp_path / "new" / "dir"
    result = run_export(tiny_ckpt, "--out-dir", out, "--formats", "torchscript")
    assert result.exit_code == 0, result.output
    assert exported_files(out) == ["model.export.json", "model.pt"]
    assert exported_files(tiny_ckpt.parent) == []
    assert np.isfinite(json.loads((out / "model.export.json").read_text())["timings"]["total_s"])


def test_failed_export_leaves_no_folder_it_created(tiny_ckpt, tmp_path):
    target = tmp_path / "new" / "nested"
    result = run_export(tiny_ckpt, "--out-dir", target, "--atol", "0", "--rtol", "0", "--formats", "onnx")
    assert result.exit_code == 4
    assert not (tmp_path / "new").exists()
    ok = run_export(tiny_ckpt, "--out-dir", target, "--formats", "onnx")
    assert ok.exit_code == 0, ok.output
    assert (target / "model.onnx").is_file()
