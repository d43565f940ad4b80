"""`toolkit train --arch cnn`: a tiny real CNN training (seconds), then export, inspect, predict and bench on it
through the CLI, unchanged; the architecture registry, FLOPs and old-checkpoint compatibility."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.errors import EXIT_ERROR

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    result = CliRunner().invoke(cli, [*map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback the user would have seen
    return result


def realworld():
    """benchmarks/realworld_digits.py, which is a script, not a package."""
    spec = importlib.util.spec_from_file_location("realworld_digits", ROOT / "benchmarks" / "realworld_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """`toolkit train --arch cnn` for one epoch on 3,000 images (a few seconds), then `toolkit export` of it."""
    folder = tmp_path_factory.mktemp("cnn")
    ckpt = folder / "cnn.pth"
    trained = invoke("train", "--arch", "cnn", "--epochs", "1", "--train-subset", "3000", "--no-progress",
                     "--out", ckpt)
    assert trained.exit_code == 0, trained.output
    exported = invoke("export", ckpt, "--formats", "onnx,torchscript,pt2", "--onnx-exporter", "legacy")
    assert exported.exit_code == 0, exported.output
    return ckpt, trained.output, exported.output


# ---------------------------------------------------------------- registry and FLOPs (no training)

def test_cli_names_every_registered_architecture_and_recipe():
    from toolkit.cli import train as train_cli
    from toolkit.train.architectures import ARCHITECTURES, DEFAULT_ARCH
    from toolkit.train.recipes import RECIPES

    assert set(train_cli.ARCHS) == set(ARCHITECTURES) and set(train_cli.RECIPES) == set(RECIPES)
    assert DEFAULT_ARCH == "mlp" and all(a.default_recipe in RECIPES for a in ARCHITECTURES.values())
    help_text = invoke("train", "--help").output
    assert "--arch [mlp|cnn]" in help_text and "default: mlp" in help_text


def test_flop_counter_matches_the_layers_by_hand():
    from toolkit.train.flops import count_flops
    from toolkit.train.cnn import CNNConfig, LeNetCNN
    from toolkit.train.model import MLPConfig, SimpleNN

    assert count_flops(SimpleNN(), (1, 28, 28)) == MLPConfig().flops_per_image() == 2 * (
        784 * 512 + 512 * 256 + 256 * 128 + 128 * 10)
    c = CNNConfig()
    k2 = c.kernel_size ** 2
    conv1 = 28 * 28 * c.channels[0] * k2 * 1  # "same" padding: one output per input pixel
    conv2 = 14 * 14 * c.channels[1] * k2 * c.channels[0]
    fc = (7 * 7 * c.channels[1]) * c.hidden + c.hidden * 10
    assert c.flops_per_image() == count_flops(LeNetCNN(c), (1, 28, 28)) == 2 * (conv1 + conv2 + fc)


def test_cnn_config_round_trips_and_refuses_nonsense():
    from toolkit.train.cnn import CNNConfig

    c = CNNConfig(channels=(8, 16, 32), hidden=64)
    assert CNNConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for bad in ({"kernel_size": 4}, {"channels": [8, 0]}, {"channels": [4] * 6}, {"dropout": 1.5}):
        with pytest.raises(ValueError):
            CNNConfig.from_dict({**c.to_dict(), **bad})


# ---------------------------------------------------------------- checkpoints

def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_version_1_checkpoint_without_arch_loads_as_the_mlp(tiny_ckpt, tmp_path):
    from toolkit.train.checkpoint import build_model, load_checkpoint
    from toolkit.train.model import SimpleNN

    payload = _payload(tiny_ckpt)
    assert payload["arch"] == "mlp"
    del payload["arch"]  # what every checkpoint written before --arch looks like
    payload["format_version"] = 1
    old = tmp_path / "old.pth"
    torch.save(payload, old)
    model = build_model(load_checkpoint(old))
    assert isinstance(model, SimpleNN)
    x = torch.zeros(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), build_model(load_checkpoint(tiny_ckpt))(x))


@pytest.mark.parametrize("arch, expected", [
    ("resnet", "architecture this toolkit does not know ('resnet'; it knows mlp, cnn)"),
    (["cnn"], "architecture this toolkit does not know"),
    ("cnn", "missing keys features.0.weight"),  # an MLP's weights under the CNN's name
])
def test_wrong_architecture_is_one_line(tiny_ckpt, tmp_path, arch, expected):
    payload = _payload(tiny_ckpt)
    payload["arch"] = arch
    if arch == "cnn":
        from toolkit.train.cnn import CNNConfig

        payload["config"] = CNNConfig().to_dict()
    bad = tmp_path / "bad.pth"
    torch.save(payload, bad)
    result = invoke("inspect", bad)
    assert result.exit_code == EXIT_ERROR
    assert expected in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- a real tiny CNN through every command

@pytest.mark.slow
def test_train_writes_a_cnn_checkpoint_with_its_config_and_figures(cnn_run):
    from toolkit.train.checkpoint import build_model, load_checkpoint
    from toolkit.train.cnn import CNNConfig, LeNetCNN

    ckpt, output, _ = cnn_run
    assert output.startswith("cnn: test accuracy")
    payload = _payload(ckpt)
    assert payload["arch"] == "cnn" and payload["format_version"] == 2 and payload["recipe"]["name"] == "cnn"
    assert isinstance(build_model(load_checkpoint(ckpt)), LeNetCNN)
    assert load_checkpoint(ckpt).config == CNNConfig()
    metrics = json.loads(ckpt.with_suffix(".metrics.json").read_text())
    assert metrics["metrics"]["arch"] == "cnn" and metrics["metrics"]["test_accuracy"] > 0.5
    for suffix in (".samples.png", ".confusion.png"):
        assert ckpt.with_suffix(suffix).stat().st_size > 1000


@pytest.mark.slow
def test_export_gate_and_contract_for_the_cnn(cnn_run):
    import onnxruntime as ort

    from toolkit.contract import ModelContract
    from toolkit.train.cnn import CNNConfig

    ckpt, _, output = cnn_run
    report = json.loads(ckpt.with_suffix(".export.json").read_text())
    assert report["passed"] and set(report["formats"]) == {"onnx", "torchscript", "pt2"}
    assert report["architecture"] == CNNConfig().describe()
    assert all(f["top1_agreement"] == 1.0 for f in report["formats"].values()), output
    session = ort.InferenceSession(str(ckpt.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    contract = ModelContract.from_metadata(session.get_modelmeta().custom_metadata_map, ckpt.with_suffix(".onnx"))
    assert contract.flops_per_image == CNNConfig().flops_per_image()
    ops = {n.op_type for n in __import__("onnx").load(str(ckpt.with_suffix(".onnx"))).graph.node}
    assert {"Conv", "MaxPool"} <= ops


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pth", ".onnx", ".pt", ".pt2"])
def test_inspect_describes_every_cnn_file(cnn_run, suffix):
    ckpt = cnn_run[0]
    result = invoke("inspect", ckpt.with_suffix(suffix))
    assert result.exit_code == 0, result.output
    if suffix == ".pth":
        assert "arch: cnn" in result.output and "CNN conv5x5" in result.output
    else:
        assert "classes" in result.output


@pytest.mark.slow
def test_predict_real_world_like_digits_with_the_cnn(cnn_run, mnist, tmp_path):
    """Every transform of the real-world set decodes and gets a label; accuracy is the CSV's own count."""
    rw = realworld()
    folder = tmp_path / "digits"
    n = rw.write_set(folder, mnist.test_images, mnist.test_labels, 4 * len(rw.TRANSFORMS))
    out = tmp_path / "pred.csv"
    result = invoke("predict", folder, "--model", cnn_run[0].with_suffix(".onnx"), "--provider", "cpu",
                    "--workers", "0", "-o", out)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and all(r["label"] in list("0123456789") for r in rows)
    acc = rw.accuracy_by_transform(out)
    assert set(acc) == {*rw.TRANSFORMS, "all"} and acc["all"][1] == n
    correct = sum(r["label"] == r["expected"] for r in rows)
    assert acc["all"][0] == correct and f"{correct / n * 100:.2f}%" in result.output


def test_realworld_set_is_deterministic_and_covers_every_format(mnist, tmp_path):
    from PIL import Image, ImageOps

    rw = realworld()
    a, b = tmp_path / "a", tmp_path / "b"
    count = len(rw.TRANSFORMS)
    rw.write_set(a, mnist.test_images, mnist.test_labels, count)
    rw.write_set(b, mnist.test_images, mnist.test_labels, count)
    files = sorted(a.rglob("*.*"))
    assert len(files) == count and all((b / f.relative_to(a)).read_bytes() == f.read_bytes() for f in files)
    modes = {f.stem.split("_", 1)[1]: Image.open(f) for f in files}
    assert modes["rgba"].mode == "RGBA" and modes["gray16"].mode == "I;16" and modes["palette"].mode == "P"
    assert modes["canvas280"].size == (280, 280) and modes["photo"].format == "JPEG"
    exif = modes["exif"]
    assert exif.getexif().get(0x0112) in (3, 6, 8)
    upright = ImageOps.exif_transpose(exif)
    assert upright.width > upright.height  # drawn landscape; stored turned unless the orientation is 3


@pytest.mark.slow
def test_bench_times_the_cnn_export(cnn_run, tmp_path):
    out = tmp_path / "bench.json"
    result = invoke("bench", "--model", cnn_run[0].with_suffix(".onnx"), "--provider", "cpu", "--engines",
                    "onnx,eager", "--batch-sizes", "1,8", "--runs", "5", "--json", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    from toolkit.train.cnn import CNNConfig

    assert doc["model"]["flops_per_image"] == CNNConfig().flops_per_image()
    engines = {(r["engine"], r["batch"]) for r in doc["results"]}
    assert engines == {("onnx", 1), ("onnx", 8), ("eager", 1), ("eager", 8)}
    assert all(np.isfinite(r["throughput_ips"]) and r["throughput_ips"] > 0 for r in doc["results"])
