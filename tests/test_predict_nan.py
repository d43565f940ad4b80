"""A model whose output is NaN or Inf for some images, through `toolkit predict`: those images are
skipped with the reason, counted, exit 3; every other image of the same batch keeps its row.

The models are test_runtime_contracts' linear classifier plus one term that depends on the centre
pixel: Sqrt of it (NaN where the pixel is dark), Log of it + 1 (-Inf) or its Reciprocal + 1 (+Inf),
added to every logit. Images with a lit centre stay finite; images with a dark centre do not.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from test_runtime_contracts import linear_onnx
from toolkit.cli import cli
from toolkit.runtime import Predictor

CENTRE = 14 * 28 + 14  # index of pixel (14, 14) in the flattened image; normalised to -1 when dark, 1 when lit
REASON = {"nan": "the model's output for this image is NaN, not a prediction",
          "-inf": "the model's output for this image is Inf, not a prediction",
          "+inf": "the model's output for this image is Inf, not a prediction"}


def poisoned_onnx(path, kind: str) -> None:
    """linear_onnx's Flatten + Gemm, with logits = Gemm + f(centre pixel) where f is not finite at -1."""
    import onnx
    from onnx import helper, numpy_helper

    linear_onnx(path)
    model = onnx.load(str(path))
    graph = model.graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    gemm.output[0] = "gemm"
    graph.initializer.extend([numpy_helper.from_array(np.array([CENTRE], dtype=np.int64), "centre"),
                              numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")])
    nodes = [helper.make_node("Gather", ["flat", "centre"], ["pixel"], axis=1)]  # (N, 1)
    if kind == "nan":
        nodes.append(helper.make_node("Sqrt", ["pixel"], ["term"]))  # sqrt(-1) = NaN
    else:
        nodes.append(helper.make_node("Add", ["pixel", "one"], ["shifted"]))  # 0 where dark
        nodes.append(helper.make_node("Log" if kind == "-inf" else "Reciprocal", ["shifted"], ["term"]))
    nodes.append(helper.make_node("Add", ["gemm", "term"], ["logits"]))
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def digit(lit_centre: bool, shift: int) -> np.ndarray:
    """A 28x28 MNIST-format image (dark border, used as it is) with a stroke through the centre or beside it."""
    a = np.zeros((28, 28), np.uint8)
    column = 14 if lit_centre else 8 + shift % 3
    a[6:22, column:column + 2] = 255
    a[6, 10:18] = 200 + shift
    return a


def make_images(root, pattern: str) -> list[tuple[str, bool]]:
    """One PNG per letter of ``pattern`` ('f' finite, 'x' not), in walk order; returns (path, finite)."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, c in enumerate(pattern):
        path = root / f"{i:03d}.png"
        Image.fromarray(digit(c == "f", i)).save(path)
        items.append((str(path), c == "f"))
    return items


def predict(*args):
    return CliRunner().invoke(cli, ["predict", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("kind", ["nan", "-inf", "+inf"])
def test_model_itself_is_finite_only_where_the_centre_is_lit(tmp_path, kind):
    """The fixture does what it claims, checked on ONNX Runtime's raw output."""
    path = tmp_path / "m.onnx"
    poisoned_onnx(path, kind)
    predictor = Predictor.open(path, "cpu")
    x = np.stack([digit(True, 0), digit(False, 1)])
    logits = predictor.logits(predictor.contract.preprocess.normalize(x))
    assert np.isfinite(logits[0]).all()
    assert (np.isnan(logits[1]) if kind == "nan" else np.isinf(logits[1])).all()


@pytest.mark.parametrize("kind", ["nan", "-inf", "+inf"])
@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("batch", ["3", "256"])
def test_non_finite_images_are_skipped_and_the_rest_of_the_batch_kept(tmp_path, kind, workers, batch):
    model = tmp_path / "m.onnx"
    poisoned_onnx(model, kind)
    # batches of 3: mixed, all bad (xxx), all good (fff); and one batch of everything
    items = make_images(tmp_path / "in", "fxf" + "xxx" + "fff" + "xf")
    out = tmp_path / "out.csv"
    result = predict(tmp_path / "in", "--model", model, "--provider", "cpu", "--batch-size", batch,
                     "--workers", workers, "--output", out)
    assert result.exit_code == 3, result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    finite = [p for p, ok in items if ok]
    assert [r["path"] for r in rows] == finite
    assert all(r["label"] and 0 < float(r["confidence"]) <= 1 for r in rows)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped == [f"skipped {p}: {REASON[kind]}" for p, ok in items if not ok]
    assert f"{len(finite)} image(s) predicted, {len(items) - len(finite)} skipped" in result.stderr
    assert "nan" not in out.read_text().lower() and "inf" not in out.read_text().lower()


def test_every_image_non_finite_writes_no_row_and_the_table_shows_none(tmp_path):
    model = tmp_path / "m.onnx"
    poisoned_onnx(model, "nan")
    items = make_images(tmp_path / "in", "xxxx")
    out = tmp_path / "out.jsonl"
    result = predict(tmp_path / "in", "--model", model, "--provider", "cpu", "--output", out)
    assert result.exit_code == 3, result.output
    assert out.read_text() == ""
    assert "0 image(s) predicted, 4 skipped" in result.stderr
    assert len([line for line in result.stderr.splitlines() if REASON["nan"] in line]) == len(items)
    # the few-images table on stdout: a header and no row that looks like a result
    assert result.stdout.strip().splitlines()[1:] == []


def test_table_and_jsonl_hold_only_finite_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: the table shows them whole
    model = tmp_path / "m.onnx"
    poisoned_onnx(model, "+inf")
    items = make_images(Path("in"), "xfxf")
    out = tmp_path / "out.jsonl"
    result = predict("in", "--model", model, "--provider", "cpu", "--output", out)
    assert result.exit_code == 3, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [p for p, ok in items if ok]
    assert all(np.isfinite(r["confidence"]) for r in records)
    table = result.stdout.strip().splitlines()[1:]
    assert [line.split()[0] for line in table] == [p for p, ok in items if ok]
