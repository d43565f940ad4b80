"""Export formats (issue 12): dynamo ONNX by default, legacy on request, .pt2 beside TorchScript, ExecuTorch .pte,
static INT8 (QDQ) and FP16 ONNX beside dynamic INT8, --formats, and bench's one table of them all.

Real tiny checkpoints, real files, the real `toolkit` command in a subprocess where stderr matters
(torch logs through handlers bound to the process's stderr, which CliRunner cannot capture).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
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


HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_executorch = pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch is not installed (the dev extra has it)")
ALL_FILES = ["model.export.json", "model.fp16.onnx", "model.int8-static.onnx", "model.int8.onnx", "model.onnx",
             "model.pt", "model.pt2"] + (["model.pte"] if HAS_EXECUTORCH else [])


def test_all_writes_every_format_and_no_torch_warning_reaches_the_user(all_formats):
    proc, out = all_formats
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES)
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
    assert report_of(tiny_ckpt.parent)["formats"]["int8"]["passed"]
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
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["model.export.json", "model.pt", "model.pt2"] + (
        ["model.pte"] if HAS_EXECUTORCH else [])

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


# ---------------------------------------------------------------- ExecuTorch, static INT8, FP16 (items 3, 4)

@needs_executorch
def test_executorch_passed_the_float_gate_through_its_own_runtime(all_formats):
    _, out = all_formats
    report = report_of(out)
    pte = report["formats"]["executorch"]
    assert pte["passed"] and pte["error"] is None and pte["outside_tolerance"] == 0
    assert pte["exporter"].startswith("executorch.exir.to_edge_transform_and_lower")
    assert pte["compared"] == (10000 + 1 + 2 + 7 + 64) * 10  # the test set and every random batch
    assert pte["size_bytes"] == (out / "model.pte").stat().st_size
    assert report["timings"]["executorch_export_s"] > 0


@needs_executorch
def test_executorch_gate_fails_on_a_corrupted_or_truncated_file(all_formats, tiny_run, mnist, tmp_path):
    """Bytes changed inside the weights: it still loads, and the gate says how far off it is; cut short: no load."""
    from toolkit.export.parity import make_reference, parity_problem, validate_file
    from toolkit.train.checkpoint import build_model, load_checkpoint

    _, out = all_formats
    ck = load_checkpoint(tiny_run[0])
    ref = make_reference(build_model(ck), mnist.test_images[:200], mnist.test_labels[:200], ck.preprocess)
    good = validate_file("executorch", out / "model.pte", ref, 1e-4, 1e-5)
    assert parity_problem(good, 1e-4, 1e-5) is None

    data = bytearray((out / "model.pte").read_bytes())
    middle = len(data) // 2  # the weights are most of the file
    data[middle:middle + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.pte").write_bytes(bytes(data))
    bad = validate_file("executorch", tmp_path / "corrupt.pte", ref, 1e-4, 1e-5)
    problem = parity_problem(bad, 1e-4, 1e-5)
    assert problem and problem.startswith("executorch"), problem

    (tmp_path / "short.pte").write_bytes((out / "model.pte").read_bytes()[:1000])
    short = validate_file("executorch", tmp_path / "short.pte", ref, 1e-4, 1e-5)
    assert short.error and "does not load" in short.error


def test_static_int8_is_qdq_calibrated_and_within_the_accuracy_gate(all_formats):
    import onnx

    _, out = all_formats
    report = report_of(out)
    static, f32 = report["formats"]["int8-static"], report["formats"]["onnx"]
    assert static["passed"] and "QDQ" in static["method"] and "1024 training images" in static["method"]
    assert static["accuracy_change_points"] == pytest.approx((static["test_accuracy"] - f32["test_accuracy"]) * 100,
                                                             abs=1e-3)
    assert -static["accuracy_change_points"] <= report["tolerances"]["int8_max_accuracy_drop_points"]
    ops = {n.op_type for n in onnx.load(str(out / "model.int8-static.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in onnx.load(str(out / "model.int8-static.onnx")).metadata_props}
    assert ModelContract.from_metadata(meta, "x").precision == "int8"


def test_static_int8_gate_fails_when_calibration_is_wrong(all_formats, tiny_run, mnist, tmp_path):
    """Calibrated on blank images, every activation range collapses: the accuracy gate must refuse it."""
    from toolkit.export.parity import int8_problem, make_reference, validate_file
    from toolkit.export.quantize import quantize_int8_static
    from toolkit.train.checkpoint import build_model, load_checkpoint

    _, out = all_formats
    ck = load_checkpoint(tiny_run[0])
    ref = make_reference(build_model(ck), mnist.test_images[:500], mnist.test_labels[:500], ck.preprocess)
    meta = {p.key: p.value for p in __import__("onnx").load(str(out / "model.onnx")).metadata_props}
    contract = ModelContract.from_metadata(meta, "model.onnx")
    blank = ck.preprocess.normalize(np.zeros((64, 28, 28), dtype=np.uint8))
    quantize_int8_static(out / "model.onnx", tmp_path / "bad.onnx", contract, "0" * 64, blank)
    c = validate_file("int8-static", tmp_path / "bad.onnx", ref, 1e-4, 1e-5)
    problem = int8_problem(c, ref.accuracy, 0.3)
    assert problem and problem.startswith("int8-static test accuracy"), problem


def test_fp16_keeps_float32_inputs_and_passes_its_accuracy_gate(all_formats):
    import onnx

    _, out = all_formats
    fp16 = report_of(out)["formats"]["fp16"]
    assert fp16["passed"] and abs(fp16["accuracy_change_points"]) <= 0.3
    assert 0 < fp16["max_abs_diff"] < 0.1  # float16 rounding, not an error
    proto = onnx.load(str(out / "model.fp16.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert fp16["size_vs_float32"] < 0.6


def test_fp16_gate_fails_on_a_model_with_wrong_weights(all_formats, tiny_run, mnist, tmp_path):
    import onnx

    from toolkit.export.fp16 import convert_fp16
    from toolkit.export.parity import int8_problem, make_reference, validate_file
    from toolkit.train.checkpoint import build_model, load_checkpoint

    _, out = all_formats
    ck = load_checkpoint(tiny_run[0])
    ref = make_reference(build_model(ck), mnist.test_images[:500], mnist.test_labels[:500], ck.preprocess)
    proto = onnx.load(str(out / "model.onnx"))
    biggest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    w = onnx.numpy_helper.to_array(biggest)
    biggest.CopyFrom(onnx.numpy_helper.from_array(np.random.default_rng(0).permutation(w.ravel()).reshape(w.shape),
                                                  biggest.name))
    onnx.save(proto, str(tmp_path / "shuffled.onnx"))
    contract = ModelContract.from_metadata({p.key: p.value for p in proto.metadata_props}, "x")
    convert_fp16(tmp_path / "shuffled.onnx", tmp_path / "bad.fp16.onnx", contract, "0" * 64)
    c = validate_file("fp16", tmp_path / "bad.fp16.onnx", ref, 1e-4, 1e-5)
    problem = int8_problem(c, ref.accuracy, 0.3)
    assert problem and problem.startswith("fp16 test accuracy"), problem


def test_executorch_without_its_package_is_listed_with_the_install_command(tiny_run, tmp_path):
    named = toolkit("export", tiny_run[0], "--formats", "onnx,executorch", "--out-dir", tmp_path / "named",
                    hide=("executorch",))
    assert named.returncode == 2
    lines = [line for line in named.stderr.splitlines() if "executorch" in line]
    assert lines == [line for line in lines if "executorch needs executorch: pip install 'toolkit[executorch]'" in line]
    assert len(lines) == 1 and "Traceback" not in named.stderr
    assert not (tmp_path / "named").exists()


def test_new_format_names_need_onnx(tiny_ckpt):
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "--formats", "torchscript,fp16"])
    assert result.exit_code == 2 and "include onnx" in result.output
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "--formats", "onnx,int9"])
    assert result.exit_code == 2 and "int8-static" in result.output


# ---------------------------------------------------------------- bench --formats: one table (item 7)

@pytest.fixture(scope="module")
def formats_bench(all_formats, tiny_run, tmp_path_factory):
    """`toolkit bench --formats all` over the exported files with their checkpoint beside them, once."""
    _, out = all_formats
    shutil.copy(tiny_run[0], out / "model.pth")
    docs = tmp_path_factory.mktemp("docs")
    result = CliRunner().invoke(cli, ["bench", "--model", str(out / "model.onnx"), "--formats", "all", "--runs", "3",
                                      "--warmup", "1", "--no-peak", "--no-progress", "--json", str(docs / "f.json"),
                                      "--markdown", str(docs / "formats.md"), "--plot", str(docs / "formats.png")])
    return result, docs, out


def test_bench_formats_table_has_every_format_with_accuracy_and_ratios(formats_bench):
    result, docs, out = formats_bench
    assert result.exit_code == 0, result.output
    doc = json.loads((docs / "f.json").read_text())
    rows = {r["engine"]: r for r in doc["formats"]["rows"]}
    expected = {"onnx", "int8", "int8-static", "fp16", "torchscript", "pt2", "eager"}
    expected |= {"executorch"} if HAS_EXECUTORCH else set()
    expected |= {"openvino"} if HAS_OPENVINO else set()
    assert set(rows) == expected
    assert {e["engine"] for e in doc["bench"]["engines"]} == expected
    assert sorted({r["batch"] for r in doc["bench"]["results"]}) == [1, 1024]
    export = report_of(out)
    for engine in ("onnx", "int8", "int8-static", "fp16", "torchscript", "pt2", "executorch"):
        fmt = engine  # one name per format: the export report's key is the bench engine's name
        if engine in rows:
            # the same files through their own runtimes: the export gate's accuracy, to a few images
            assert rows[engine]["accuracy"] == pytest.approx(export["formats"][fmt]["test_accuracy"], abs=5e-4), engine
            assert rows[engine]["size_bytes"] == export["formats"][fmt]["size_bytes"]
    assert rows["eager"]["max_abs_logit_diff"] == 0 and rows["eager"]["batch1_p50_vs_eager"] == 1
    for engine in ("onnx", "torchscript", "pt2") + (("executorch",) if HAS_EXECUTORCH else ()):
        assert rows[engine]["max_abs_logit_diff"] <= 1e-4, engine
    for row in rows.values():
        assert row["batch1_p50_ms"] > 0 and row["batch_large_ips"] > 0
        assert row["throughput_vs_eager"] == pytest.approx(row["batch_large_ips"] / rows["eager"]["batch_large_ips"])
    if HAS_OPENVINO:
        ov = next(e for e in doc["bench"]["engines"] if e["engine"] == "openvino")
        assert ov["config"]["inference_precision"] in ("f32", "bf16", "f16")
        assert "OpenVINO inference precision: " + ov["config"]["inference_precision"] in rows["openvino"]["note"]
    for engine in expected:
        assert f"\n{engine} " in "\n" + result.output


def test_bench_formats_writes_markdown_and_plot(formats_bench):
    result, docs, _ = formats_bench
    assert result.exit_code == 0, result.output
    md = (docs / "formats.md").read_text()
    assert "| engine | file | size |" in md and "toolkit bench" in md and "--formats all" in md
    assert md.count("\n| ") == 1 + len(json.loads((docs / "f.json").read_text())["formats"]["rows"])
    assert (docs / "formats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_formats_refusals(tiny_onnx, tmp_path):
    no_pth = CliRunner().invoke(cli, ["bench", "--model", str(tiny_onnx), "--formats", "all", "--no-progress"])
    assert no_pth.exit_code == 1 and "model.pth" in no_pth.output and "Traceback" not in no_pth.output
    md_alone = CliRunner().invoke(cli, ["bench", "--model", str(tiny_onnx), "--markdown", str(tmp_path / "x.md")])
    assert md_alone.exit_code == 2 and "--formats" in md_alone.output
    both = CliRunner().invoke(cli, ["bench", "--model", str(tiny_onnx), "--formats", "all", "--engines", "onnx"])
    assert both.exit_code == 2
    unknown = CliRunner().invoke(cli, ["bench", "--model", str(tiny_onnx), "--formats", "tflite"])
    assert unknown.exit_code == 2 and "executorch" in unknown.output
