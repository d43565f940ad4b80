"""Model contracts that lie, and models that misbehave, met by real ONNX Runtime sessions.

The models are built here with onnx.helper (a Flatten + Gemm classifier with the toolkit contract
in its metadata), so each case is exactly the defect it names: a class list that does not match the
output width, a graph frozen at batch 1, a model whose outputs are NaN.
"""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.contract import ModelContract
from toolkit.errors import ModelError, NonFiniteOutput
from toolkit.preprocess import PreprocessSpec
from toolkit.runtime import Predictor

DIGITS = [str(i) for i in range(10)]


def linear_onnx(path, *, batch="batch", outputs: int = 10, classes=DIGITS, weight=None, width_symbolic=False):
    """Flatten + Gemm: a real (if simple) classifier, saved with the toolkit contract."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((784, outputs)).astype(np.float32) * 0.05 if weight is None else weight
    b = np.zeros(outputs, dtype=np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W", "B"], ["gemm" if width_symbolic else "logits"])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if width_symbolic:
        # Reshape to a shape computed at run time: no static inference can know the width.
        nodes += [helper.make_node("Shape", ["input"], ["in_shape"], start=0, end=1),
                  helper.make_node("Concat", ["in_shape", "minus1"], ["new_shape"], axis=0),
                  helper.make_node("Reshape", ["gemm", "new_shape"], ["logits"])]
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1"))
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, "classes" if width_symbolic else outputs])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = ModelContract(input_name="input", input_shape=[batch, 1, 28, 28], input_dtype="float32",
                             output_name="logits", classes=list(classes), preprocess=PreprocessSpec())
    for k, v in contract.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return w


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("outputs, classes", [(10, ["a", "b"]), (5, DIGITS), (2, DIGITS), (11, DIGITS)])
def test_class_list_must_match_the_output_width(tmp_path, outputs, classes):
    path = tmp_path / "m.onnx"
    linear_onnx(path, outputs=outputs, classes=classes)
    with pytest.raises(ModelError) as e:
        Predictor.open(path, "cpu")
    assert f"has {outputs} outputs but its contract names {len(classes)} classes" in str(e.value)
    assert str(path) in str(e.value)


def test_output_width_known_only_at_run_time_is_checked_on_the_first_run(tmp_path):
    path = tmp_path / "m.onnx"
    linear_onnx(path, outputs=10, classes=["a", "b", "c"], width_symbolic=True)
    predictor = Predictor.open(path, "cpu")
    with pytest.raises(ModelError, match=r"returned shape \[4, 10\], expected \[4, 3\]"):
        predictor.probabilities(pixels(4))


@pytest.mark.parametrize("fixed, n", [(1, 5), (4, 10), (4, 4), (4, 3), (3, 1)])
def test_fixed_batch_graph_runs_in_chunks_with_the_last_padded(tmp_path, fixed, n):
    w = linear_onnx(tmp_path / "fixed.onnx", batch=fixed)
    linear_onnx(tmp_path / "dynamic.onnx", weight=w)
    fixed_p = Predictor.open(tmp_path / "fixed.onnx", "cpu")
    dynamic_p = Predictor.open(tmp_path / "dynamic.onnx", "cpu")
    assert fixed_p.fixed_batch == fixed and dynamic_p.fixed_batch is None
    x = pixels(n)
    got, want = fixed_p.probabilities(x), dynamic_p.probabilities(x)
    assert got.shape == (n, 10)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # and the same by hand: the expected logits of a linear model, computed without toolkit code
    flat = (x.reshape(n, -1).astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(fixed_p.logits(flat.reshape(n, 1, 28, 28)), flat @ w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_are_an_error_naming_the_rows(tmp_path, poison):
    w = np.zeros((784, 10), dtype=np.float32)
    w[0, 3] = poison  # only images whose first pixel is not 0 are affected (0 * inf is NaN, so all are)
    path = tmp_path / "nan.onnx"
    linear_onnx(path, weight=w)
    predictor = Predictor.open(path, "cpu")
    with pytest.raises(NonFiniteOutput) as e:
        predictor.probabilities(pixels(6))
    assert e.value.rows == list(range(6))
    assert str(path) in str(e.value) and "not finite" in str(e.value)
