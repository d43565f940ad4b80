"""The image pipeline's options and config files on every command: usage errors that name the option, the
contract a stamp writes (every resolved value, a version), and config files refused in one line (exit 2)
whenever the toolkit would have to guess.

The models here are small real ONNX graphs built with onnx.helper (mean colour -> a linear layer): what is
tested is how the toolkit describes and feeds them, not their accuracy (tests/test_image_models.py trains
real ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE

onnx = pytest.importorskip("onnx")

IMAGE_OPTIONS = [("--fit", "letterbox"), ("--resize", "256"), ("--crop-pct", "0.9"), ("--interpolation", "bicubic"),
                 ("--channel-order", "bgr"), ("--pad-value", "114")]


def colour_model(path: Path, size=(32, 32), classes=3, layout="NCHW") -> Path:
    """A real graph: per-channel mean over the image, then a fixed linear layer to ``classes`` logits."""
    from onnx import TensorProto, helper, numpy_helper

    h, w = size
    shape = ["N", 3, h, w] if layout == "NCHW" else ["N", h, w, 3]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    weight = np.random.default_rng(0).normal(size=(3, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["y"])],
        "colour", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(np.array(axes, np.int64), "axes"), numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == EXIT_USAGE, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith(("toolkit: error", "Error"))]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.mark.parametrize("option,value", IMAGE_OPTIONS)
@pytest.mark.parametrize("command", [["predict", "x.png"], ["bench"], ["draw"], ["inspect", "m.onnx"],
                                     ["export", "m.onnx", "--out", "s.onnx"]])
def test_image_option_needs_preprocess_image(tmp_path, command, option, value):
    result = run(*command, option, value, "--labels", "a,b,c", "--mean", "0.5", "--std", "0.5")
    one_line_error(result, option, "--preprocess image")


@pytest.mark.parametrize("args,says", [
    (["--resize", "256", "--crop-pct", "0.9"], "give one"),
    (["--fit", "letterbox", "--resize", "256"], "--resize sets the shorter side for --fit crop"),
    (["--polarity", "dark-on-light"], "--polarity is a digit-pipeline option"),
    (["--pad-value", "1,2"], "--pad-value"),
    (["--pad-value", "256"], "--pad-value"),
    (["--crop-pct", "1.5"], "--crop-pct"),
    (["--resize", "0"], "--resize"),
])
def test_image_option_values_refused(tmp_path, args, says):
    result = run("inspect", "m.onnx", "--preprocess", "image", *args, "--labels", "a,b,c", "--mean", "0.5",
                 "--std", "0.5")
    one_line_error(result, says)


def stamped_contract(path: Path) -> dict:
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(meta["toolkit.preprocess"])


def test_stamp_records_every_resolved_value_and_inspect_shows_it(tmp_path):
    model = colour_model(tmp_path / "m.onnx", size=(48, 64))
    out = tmp_path / "stamped.onnx"
    result = run("export", model, "--out", out, "--preprocess", "image", "--labels", "red,green,blue",
                 "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--fit", "letterbox",
                 "--pad-value", "114", "--interpolation", "bicubic")
    assert result.exit_code == EXIT_OK, result.output
    assert "image pipeline: rgb, letterbox (fit in 48x64, pad 114,114,114, crop_pct 1) to 48x64, bicubic" in result.output
    spec = stamped_contract(out)
    assert spec == {"version": 2, "mode": "image", "fit": "letterbox", "resize": [48, 64], "crop_pct": 1.0,
                    "interpolation": "bicubic", "channel_order": "rgb", "pad_value": [114, 114, 114],
                    "crop_offset": "round", "height": 48, "width": 64, "channels": 3, "layout": "NCHW",
                    "pixel_scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                    "polarity": "light-on-dark"}
    shown = run("inspect", out, "--json")
    assert shown.exit_code == EXIT_OK, shown.output
    assert json.loads(shown.output)["metadata"]["preprocess"] == spec
    # The stamped file needs no options; options given must agree with it.
    agree = run("inspect", out, "--json", "--preprocess", "image", "--fit", "letterbox")
    assert json.loads(agree.output)["contract"]["fit"] == "letterbox"
    one_line_error(run("inspect", out, "--preprocess", "image", "--fit", "crop"), "--fit crop vs letterbox")
    one_line_error(run("inspect", out, "--preprocess", "image", "--crop-pct", "0.875"), "--crop-pct 0.875")


def test_crop_defaults_resolved_in_the_contract(tmp_path):
    model = colour_model(tmp_path / "m.onnx", size=(224, 224))
    result = run("inspect", model, "--json", "--preprocess", "image", "--labels", "a,b,c", "--mean", "0.5",
                 "--std", "0.5")
    contract = json.loads(result.output)["contract"]
    assert (contract["preprocess"], contract["fit"], contract["resize"], contract["crop_pct"],
            contract["interpolation"], contract["channel_order"], contract["version"]) == \
        ("image", "crop", 256, 0.875, "bilinear", "rgb", 2)
    contract = json.loads(run("inspect", model, "--json", "--preprocess", "image", "--labels", "a,b,c", "--mean",
                              "0.5", "--std", "0.5", "--resize", "232").output)["contract"]
    assert (contract["resize"], contract["crop_pct"]) == (232, None)


# ---------------------------------------------------------------- config files

VIT = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
       "image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 2,
       "rescale_factor": 0.00392156862745098, "size": {"height": 32, "width": 32}}
TIMM = {"architecture": "resnet18", "num_classes": 3, "label_names": ["cat", "dog", "owl"],
        "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.95,
                           "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "num_classes": 3, "first_conv": "conv1", "classifier": "fc"}}


def write_json(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("config,says", [
    ({**VIT, "do_flip_channel_order": True}, "'do_flip_channel_order' is not understood"),
    ({**VIT, "image_processor_type": "LevitImageProcessor"}, "'LevitImageProcessor' is not one the toolkit"),
    ({k: v for k, v in VIT.items() if k != "resample"}, "does not say 'resample'"),
    ({**VIT, "size": {"shortest_edge": 32, "longest_edge": 64}}, "longest_edge"),
    ({**VIT, "resample": 7}, "resample 7"),
    ({**VIT, "do_resize": False}, "do_resize is not true"),
    ({**VIT, "size": {"height": 48, "width": 48}}, "describes Cx48x48"),
    ("{not json", "is not valid JSON"),
    ([1, 2], "holds a JSON list"),
    ({"foo": 1}, "is neither a Hugging Face"),
    ({**TIMM, "pretrained_cfg": {**TIMM["pretrained_cfg"], "mystery": 1}}, "pretrained_cfg key 'mystery'"),
    ({**TIMM, "pretrained_cfg": {**TIMM["pretrained_cfg"], "crop_mode": "random"}}, "crop_mode 'random'"),
    ({**TIMM, "pretrained_cfg": {**TIMM["pretrained_cfg"], "interpolation": "random"}}, "interpolation 'random'"),
    ({**TIMM, "label_names": ["a", "b"]}, "2 labels"),
])
def test_config_refused_in_one_line(tmp_path, config, says):
    model = colour_model(tmp_path / "m.onnx")
    config_path = write_json(tmp_path / "preprocessor_config.json", config)
    result = run("inspect", model, "--preprocess-config", config_path, "--labels", "a,b,c")
    if "label_names" in str(config) and says == "2 labels":
        result = run("inspect", model, "--preprocess-config", config_path)
    one_line_error(result, says)


def test_labels_beside_a_config(tmp_path):
    model = colour_model(tmp_path / "m.onnx")
    config = write_json(tmp_path / "config.json", TIMM)
    shown = json.loads(run("inspect", model, "--json", "--preprocess-config", config).output)["contract"]
    assert shown["classes"] == ["cat", "dog", "owl"] and shown["resize"] == 33  # floor(32 / 0.95)
    assert (shown["interpolation"], shown["crop_pct"], shown["mean"]) == ("bicubic", 0.95, [0.485, 0.456, 0.406])
    renamed = json.loads(run("inspect", model, "--json", "--preprocess-config", config, "--labels", "a,b,c").output)
    assert renamed["contract"]["classes"] == ["a", "b", "c"]
    one_line_error(run("inspect", model, "--preprocess-config", config, "--labels", "a,b,c,d"),
                   "--labels names 4 labels but", "names 3")


def test_optimum_folder_needs_no_option(tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    colour_model(folder / "model.onnx")
    write_json(folder / "preprocessor_config.json", VIT)
    write_json(folder / "config.json", {"architectures": ["ViTForImageClassification"],
                                        "id2label": {"0": "cat", "1": "dog", "2": "owl"}})
    result = run("inspect", folder, "--json")
    assert result.exit_code == EXIT_OK, result.output
    contract = json.loads(result.output)["contract"]
    assert (contract["classes"], contract["fit"], contract["resize"], contract["crop_offset"]) == \
        (["cat", "dog", "owl"], "stretch", [32, 32], "floor")
    (folder / "model.onnx").unlink()
    result = run("inspect", folder)
    assert result.exit_code == EXIT_ERROR and "it has no model.onnx" in result.output


def test_stamp_checks_your_images(tmp_path):
    """An image model's stamp runs the user's own images through its pipeline and names what it predicted."""
    from PIL import Image

    model = colour_model(tmp_path / "m.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250), (200, 200, 0)]):
        Image.new("RGB", (90, 60), colour).save(photos / f"{i}.jpg")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "stamped.onnx"
    result = run("export", model, "--out", out, "--preprocess", "image", "--labels", "red,green,blue",
                 "--mean", "0.5", "--std", "0.25", "--images", photos)
    assert result.exit_code == EXIT_OK, result.output
    line = next(x for x in result.output.splitlines() if "of your images" in x)
    assert line.startswith("finite outputs on 4 of your images (1 could not be decoded); predicted: ")
    assert "MNIST" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = run("export", model, "--out", tmp_path / "other.onnx", "--preprocess", "image", "--labels",
                  "red,green,blue", "--mean", "0.5", "--std", "0.25", "--images", empty)
    assert refused.exit_code == 4 and "no image files there" in refused.output
    assert not (tmp_path / "other.onnx").exists()


def test_bench_times_the_image_pipeline_with_the_model(tmp_path):
    """An image model's bench has, beside the model alone (e2e), the pipeline from decoded images at the model's
    size plus the model (preprocess+e2e), which cannot be faster than the model alone."""
    model = colour_model(tmp_path / "m.onnx", size=(64, 64))
    out = tmp_path / "bench.json"
    result = run("bench", "--model", model, "--provider", "cpu", "--preprocess", "image", "--labels", "a,b,c",
                 "--mean", "0.5", "--std", "0.5", "--batch-sizes", "4", "--no-peak", "--runs", "20", "--json", out)
    assert result.exit_code == EXIT_OK, result.output
    rows = {r["mode"]: r for r in json.loads(out.read_text())["results"] if r["engine"] == "onnx"}
    assert set(rows) == {"e2e", "preprocess+e2e"}
    assert rows["preprocess+e2e"]["latency_ms"]["min"] > rows["e2e"]["latency_ms"]["min"]
    digit = run("bench", "--model", model, "--provider", "cpu", "--labels", "a,b,c", "--mean", "0.5", "--std", "0.5",
                "--batch-sizes", "4", "--no-peak", "--runs", "20", "--json", tmp_path / "digit.json")
    assert digit.exit_code == EXIT_OK, digit.output
    assert {r["mode"] for r in json.loads((tmp_path / "digit.json").read_text())["results"]} == {"e2e"}
