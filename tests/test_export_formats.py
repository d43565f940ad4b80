"""Export formats (issue 12): dynamo ONNX by default, legacy on request, .pt2 beside TorchScript, --formats.

Real tiny checkpoints, real files, the real `toolkit` command in a subprocess where stderr matters
(torch logs through handlers bound to the process's stderr, which CliRunner cannot capture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.contract import ModelContract


def toolkit(*args, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`toolkit ARGS` in a fresh process; ``hide`` makes those modules unimportable there."""
    code = "".join(f"import sys; sys.modules[{m!r}] = None\n" for m in hide)
    code += "from toolkit.cli import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "default"})  # as a user with warnings on sees it


@pytest.fixture(scope="module")
def all_formats(tiny_run, tmp_path_factory):
    """`toolkit export model.pth --formats all`, once: (process, folder)."""
    out = tmp_path_factory.mktemp("all")
    proc = toolkit("export", tiny_run[0], "--formats", "all", "--out-dir", out)
    return proc, out


def report_of(folder: Path) -> dict:
    return json.loads((folder / "model.export.json").read_text())


def test_all_writes_every_format_and_no_torch_warning_reaches_the_user(all_formats):
    proc, out = all_formats
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.export.json", "model.int8.onnx", "model.onnx",
                                                     "model.pt", "model.pt2"]
    noise = [line for line in proc.stderr.splitlines() if "warning" in line.lower() or "deprecat" in line.lower()]
    assert noise == [], proc.stderr
    assert proc.stderr.strip() == ""  # nor progress lines or log records
    report = report_of(out)
    assert report["passed"] and all(r["passed"] for r in report["formats"].values())


def test_default_onnx_exporter_is_dynamo_and_the_opset_is_the_files(all_formats):
    import onnx

    _, out = all_formats
    onnx_result = report_of(out)["formats"]["onnx"]
    assert onnx_result["exporter"] == "torch.onnx.export(dynamo=True)"
    proto = onnx.load(str(out / "model.onnx"))
    declared = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    meta = ModelContract.from_metadata({p.key: p.value for p in proto.metadata_props}, out / "model.onnx")
    assert declared == [onnx_result["opset"]] == [meta.opset]
    assert meta.exporter == onnx_result["exporter"]
    # Dynamic batch: the input's first dimension is a symbol, not a number.
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_pt2_passed_the_same_gate_on_the_test_set_and_every_random_batch(all_formats):
    _, out = all_formats
    report = report_of(out)
    pt2 = report["formats"]["pt2"]
    assert pt2["exporter"] == "torch.export.export" and pt2["error"] is None
    assert pt2["outside_tolerance"] == 0
    assert sorted(map(int, pt2["random_max_abs_diff"])) == [1, 2, 7, 64] == report["inputs"]["random_batches"]
    assert pt2["compared"] == report["formats"]["torchscript"]["compared"] == (10000 + 1 + 2 + 7 + 64) * 10
    assert pt2["max_abs_diff"] <= report["tolerances"]["atol"]
    assert pt2["test_accuracy"] == report["eager"]["test_accuracy"]


def test_pt2_loads_with_torch_alone_and_carries_the_contract(all_formats):
    """A user with torch and no toolkit: torch.export.load, extra_files for the contract, any batch size."""
    _, out = all_formats
    code = f"""
import json, sys, torch
extra = {{"toolkit_contract.json": ""}}
program = torch.export.load({str(out / "model.pt2")!r}, extra_files=extra)
scripted = torch.jit.load({str(out / "model.pt")!r})
contract = json.loads(extra["toolkit_contract.json"])
module = program.module()
diffs = []
for b in (1, 3, 64):
    x = torch.rand(b, 1, 28, 28)
    with torch.inference_mode():
        y = module(x)
        diffs.append([list(y.shape), float((y - scripted(x)).abs().max())])
print(json.dumps({{"contract": contract, "diffs": diffs, "toolkit": any(m.startswith("toolkit") for m in sys.modules)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["toolkit"]
    assert result["contract"]["toolkit.exporter"] == "torch.export.export"
    assert json.loads(result["contract"]["toolkit.classes"]) == [str(i) for i in range(10)]
    assert [d[0] for d in result["diffs"]] == [[1, 10], [3, 10], [64, 10]]
    assert max(d[1] for d in result["diffs"]) < 1e-4


def test_legacy_exporter_on_request(tiny_ckpt):
    import onnx

    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "--formats", "onnx", "--onnx-exporter", "legacy"])
    assert result.exit_code == 0, result.output
    report = report_of(tiny_ckpt.parent)
    assert report["formats"]["onnx"]["exporter"] == "torch.onnx.export(dynamo=False)"
    assert report["formats"]["onnx"]["passed"]
    meta = {p.key: p.value for p in onnx.load(str(tiny_ckpt.parent / "model.onnx")).metadata_props}
    assert ModelContract.from_metadata(meta, "model.onnx").exporter == "torch.onnx.export(dynamo=False)"


def test_an_opset_the_dynamo_exporter_cannot_convert_to_is_refused(tiny_ckpt):
    """Asked for opset 13, torch 2.14's dynamo exporter keeps 18: a file with another opset than asked is not written."""
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "--formats", "onnx", "--opset", "13"])
    assert result.exit_code == 1
    assert "opset 13" in result.output and "--onnx-exporter legacy" in result.output
    assert not (tiny_ckpt.parent / "model.onnx").exists()


def test_default_formats_stay_onnx_and_torchscript(tiny_ckpt):
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["model.export.json", "model.onnx", "model.pt",
                                                                  "model.pth"]


def test_int8_as_a_format_name(tiny_ckpt):
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "--formats", "onnx,int8"])
    assert result.exit_code == 0, result.output
    assert report_of(tiny_ckpt.parent)["formats"]["onnx-int8"]["passed"]
    alone = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "--formats", "int8", "--force"])
    assert alone.exit_code == 2 and "include onnx" in alone.output


def test_a_format_whose_package_is_missing_is_listed_with_the_install_command(tiny_run, tmp_path):
    """Without onnxscript the dynamo exporter cannot run: `all` writes the rest and says so; naming it is refused."""
    named = toolkit("export", tiny_run[0], "--formats", "onnx", "--out-dir", tmp_path / "named", hide=("onnxscript",))
    assert named.returncode == 2
    assert "onnx needs onnxscript: pip install 'toolkit[train]'" in named.stderr
    assert not (tmp_path / "named").exists()

    everything = toolkit("export", tiny_run[0], "--formats", "all", "--out-dir", tmp_path / "all",
                         hide=("onnxscript",))
    assert everything.returncode == 0, everything.stderr
    assert "onnx not written: it needs onnxscript: pip install 'toolkit[train]'" in everything.stderr
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["model.export.json", "model.pt", "model.pt2"]

    legacy = toolkit("export", tiny_run[0], "--formats", "onnx", "--onnx-exporter", "legacy", "--out-dir",
                     tmp_path / "legacy", hide=("onnxscript",))
    assert legacy.returncode == 0, legacy.stderr


def test_gate_catches_a_pt2_with_a_frozen_batch_dimension(tiny_run, mnist, tmp_path):
    """Exported without dynamic_shapes, the program only takes batch 2: the gate names the failing input."""
    from toolkit.export.parity import make_reference, parity_problem, validate_file
    from toolkit.train.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(tiny_run[0])
    model = build_model(ck)
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(2, 1, 28, 28),)), str(path))
    ref = make_reference(model, mnist.test_images[:100], mnist.test_labels[:100], ck.preprocess)
    c = validate_file("pt2", path, ref, 1e-4, 1e-5)
    assert c.error and "shape [100, 1, 28, 28]" in c.error
    assert "broken" in parity_problem(c, 1e-4, 1e-5)


def test_inspect_describes_a_pt2(all_formats):
    _, out = all_formats
    result = CliRunner().invoke(cli, ["inspect", str(out / "model.pt2"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["kind"] == "pt2"
    assert info["metadata"]["exporter"] == "torch.export.export"
    assert info["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert info["parameters"] == sum(np.prod(s) for n, s in info["layers"].items())
    assert "[1, int_oo]" in info["signature"] or "[1," in info["signature"]  # the dynamic batch's range


def test_bench_lists_a_pt2_engine(all_formats, tmp_path):
    _, out = all_formats
    json_path = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--model", str(out / "model.onnx"), "--batch-sizes", "1,7",
                                      "--runs", "3", "--warmup", "0", "--no-peak", "--no-progress",
                                      "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    text = json.dumps(report)
    assert '"pt2"' in text
    assert "pt2 on cpu" in result.output
