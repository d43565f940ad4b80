"""ONNX graphs that are hostile by construction, built small with onnx.helper (issue 19, items 1-3).

Each is a valid model (onnx.checker passes; ONNX Runtime loads it) whose cost appears only at run time:
a Loop of 10^15 iterations (also one that loops only on real images, one behind an If), an input declared
100,000 x 100,000, a ConstantOfShape or Expand that asks for 40 GB, a graph that runs only at batch 8.
None of them is large on disk, and the tests never let one allocate what it asks for (see the test module).

``stamped=True`` writes the toolkit contract into the file (digits 0-9, MNIST's preprocessing at the
graph's size), so predict, bench and inspect take it without options and no softmax probe runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from toolkit.contract import ModelContract
from toolkit.preprocess import PreprocessSpec

DIGITS = [str(d) for d in range(10)]
FOREVER = 10**15


def _const(name: str, array) -> onnx.NodeProto:
    return h.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name + "_value"))


def _head(side: int = 28) -> list[onnx.NodeProto]:
    """input (N, 1, side, side) -> z (N, 10): Flatten + MatMul by small weights (a real classifier's shape)."""
    w = np.random.default_rng(0).standard_normal((side * side, 10)).astype(np.float32) * 0.01
    return [h.make_node("Flatten", ["input"], ["flat"], axis=1), _const("W", w),
            h.make_node("MatMul", ["flat", "W"], ["z"])]


def _save(path: Path, nodes, *, side: int = 28, batch="batch", stamped: bool = True, output: str = "logits",
          value_info=()) -> Path:
    graph = h.make_graph(nodes, "hostile", [h.make_tensor_value_info("input", T.FLOAT, [batch, 1, side, side])],
                         [h.make_tensor_value_info(output, T.FLOAT, [batch, 10])], value_info=list(value_info))
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads
    if stamped:
        contract = ModelContract(input_name="input", input_shape=[batch, 1, side, side], input_dtype="float32",
                                 output_name=output, classes=DIGITS,
                                 preprocess=PreprocessSpec(height=side, width=side))
        for key, value in contract.to_metadata().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def _loop_body() -> onnx.GraphProto:
    """(i, cond, acc) -> (cond, acc + 1): the cheapest body, so only the trip count costs."""
    return h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), _const("one", np.float32(1.0)),
         h.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("acc_in", T.FLOAT, None)],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("acc_out", T.FLOAT, None)])


def endless_loop(path, trips: int = FOREVER, **kw) -> Path:
    """A Loop of ``trips`` iterations (10^15: years) on the classifier's output, whatever the input."""
    return _save(path, [*_head(), _const("trips", np.int64(trips)), _const("go", np.bool_(True)),
                        h.make_node("Loop", ["trips", "go", "z"], ["logits"], body=_loop_body())], **kw)


def loop_on_ink(path, **kw) -> Path:
    """Loops 10^15 times when the batch holds any positive input value (a real image), not at all on zeros
    (the probe runs): a model that opens quickly and hangs at the first real batch."""
    return _save(path, [*_head(), h.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
                        h.make_node("Relu", ["peak"], ["ink"]), _const("big", np.float32(1e15)),
                        h.make_node("Mul", ["ink", "big"], ["scaled"]),
                        h.make_node("Cast", ["scaled"], ["trips"], to=T.INT64), _const("go", np.bool_(True)),
                        h.make_node("Loop", ["trips", "go", "z"], ["logits"], body=_loop_body())], **kw)


def loop_inside_if(path, **kw) -> Path:
    """The endless Loop inside an If's branch (a subgraph of a subgraph); the condition is always true."""
    then = h.make_graph([_const("trips", np.int64(FOREVER)), _const("go", np.bool_(True)),
                         h.make_node("Loop", ["trips", "go", "z"], ["looped"], body=_loop_body())], "then", [],
                        [h.make_tensor_value_info("looped", T.FLOAT, None)])
    other = h.make_graph([h.make_node("Identity", ["z"], ["same"])], "else", [],
                         [h.make_tensor_value_info("same", T.FLOAT, None)])
    return _save(path, [*_head(), h.make_node("ReduceMin", ["input"], ["low"], keepdims=0),
                        _const("floor", np.float32(-1e30)), h.make_node("Greater", ["low", "floor"], ["cond"]),
                        h.make_node("If", ["cond"], ["logits"], then_branch=then, else_branch=other)], **kw)


def huge_input(path, side: int = 100_000, **kw) -> Path:
    """Declares a (batch, 1, side, side) input: 40 GB of float32 per image at 100,000 (the file: a few KB).
    A MatMul over it would need the same as weights, so the head only averages the input."""
    return _save(path, [h.make_node("ReduceMean", ["input"], ["mean4"], axes=[1, 2, 3], keepdims=1),
                        h.make_node("Flatten", ["mean4"], ["mean"], axis=1),
                        _const("ten", np.ones((1, 10), np.float32)),
                        h.make_node("Mul", ["mean", "ten"], ["logits"])], side=side, **kw)


def constant_of_shape_bomb(path, gigabytes: int = 40, **kw) -> Path:
    """A ConstantOfShape of ``gigabytes`` GB of float32 at run time, reduced to one number added to the output."""
    side = int((gigabytes * 1e9 / 4) ** 0.5)
    return _save(path, [*_head(), _const("shape", np.array([side, side], np.int64)),
                        h.make_node("ConstantOfShape", ["shape"], ["big"],
                                    value=numpy_helper.from_array(np.array([1.0], np.float32))),
                        h.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
                        h.make_node("Add", ["z", "total"], ["logits"])], **kw)


def expand_bomb(path, gigabytes: int = 40, **kw) -> Path:
    """The classifier's (N, 10) output Expanded to (side, N, 10) with side chosen for ``gigabytes`` GB at
    batch 1, then averaged back: the size comes from a constant, the memory from the run."""
    side = int(gigabytes * 1e9 / 4 / 10)
    return _save(path, [*_head(), h.make_node("Shape", ["z"], ["zshape"]), _const("lead", np.array([side], np.int64)),
                        h.make_node("Concat", ["lead", "zshape"], ["shape"], axis=0),
                        h.make_node("Expand", ["z", "shape"], ["big"]),
                        h.make_node("ReduceMean", ["big"], ["logits"], axes=[0], keepdims=0)], **kw)


def batch_only(path, size: int = 8, **kw) -> Path:
    """A dynamic batch dimension, but a Reshape to [size, -1] before the MatMul: it runs at batch ``size`` only."""
    w = np.random.default_rng(0).standard_normal((784, 10)).astype(np.float32) * 0.05
    return _save(path, [_const("shape", np.array([size, -1], np.int64)),
                        h.make_node("Reshape", ["input", "shape"], ["flat"]), _const("W", w),
                        h.make_node("MatMul", ["flat", "W"], ["logits"])], **kw)


def no_batch_works(path, **kw) -> Path:
    """A Reshape to [3, -1]: no power of two up to 256 is accepted, so the model is refused at open."""
    return batch_only(path, size=3, **kw)



def one_slow_node_on_ink(path, boxes: int = 300_000, **kw) -> Path:
    """One NonMaxSuppression over ``boxes`` disjoint boxes when the batch holds a positive input value, over none
    on zeros (the probe runs). Nothing is suppressed, so every box is compared with every box kept before it:
    n^2/2 comparisons in one thread (40,000 boxes: 0.8 s; 300,000: about 45 s), during which ONNX Runtime does
    not look at RunOptions.terminate (it does between nodes, and even inside a threaded MatMul)."""
    axis0, axis1 = _const("axis0", np.array([0], np.int64)), _const("axis1", np.array([1], np.int64))
    return _save(path, [*_head(), h.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
                        h.make_node("Relu", ["peak"], ["ink"]), _const("count", np.float32(boxes)),
                        h.make_node("Mul", ["ink", "count"], ["scaled"]),
                        h.make_node("Cast", ["scaled"], ["n"], to=T.INT64), _const("start", np.int64(0)),
                        _const("step", np.int64(1)), h.make_node("Range", ["start", "n", "step"], ["index"]),
                        h.make_node("Cast", ["index"], ["i"], to=T.FLOAT), _const("nil", np.float32(0)),
                        h.make_node("Mul", ["i", "nil"], ["y0"]), _const("one", np.float32(1)),
                        h.make_node("Add", ["y0", "one"], ["y1"]), _const("two", np.float32(2)),
                        h.make_node("Mul", ["i", "two"], ["x0"]), h.make_node("Add", ["x0", "one"], ["x1"]),
                        axis0, axis1,
                        *[h.make_node("Unsqueeze", [c, "axis1"], [c + "_u"]) for c in ("y0", "x0", "y1", "x1")],
                        h.make_node("Concat", ["y0_u", "x0_u", "y1_u", "x1_u"], ["box_rows"], axis=1),
                        h.make_node("Unsqueeze", ["box_rows", "axis0"], ["all_boxes"]),
                        h.make_node("Neg", ["i"], ["score_row"]), _const("axes01", np.array([0, 1], np.int64)),
                        h.make_node("Unsqueeze", ["score_row", "axes01"], ["scores"]),
                        h.make_node("Unsqueeze", ["n", "axis0"], ["keep"]), _const("iou", np.array([0.5], np.float32)),
                        h.make_node("NonMaxSuppression", ["all_boxes", "scores", "keep", "iou"], ["kept"]),
                        h.make_node("ReduceSum", ["kept"], ["kept_sum"], keepdims=0),
                        h.make_node("Cast", ["kept_sum"], ["kept_f"], to=T.FLOAT),
                        h.make_node("Mul", ["kept_f", "nil"], ["nothing"]),
                        h.make_node("Add", ["z", "nothing"], ["logits"])], **kw)
