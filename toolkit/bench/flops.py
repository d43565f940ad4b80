"""FLOPs per image from an ONNX file's matrix-multiply weights, without the onnx package.

The edge install has onnxruntime but not onnx (and must not need torch), so this reads
the few protobuf fields it needs directly: graph nodes (inputs, op type) and the dims of
initializers and Constant tensors. Each Gemm/MatMul-like node whose weight is a 2-D
constant costs 2*K*N FLOPs per image (a multiply and an add per weight). That is the same
count as train.model.MLPConfig.flops_per_image(): BatchNorm folds away, activations are
negligible. Quantized variants (MatMulInteger, QLinearMatMul, QDQ) are counted the same,
so their "GFLOP/s" are float-equivalent operations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..protowire import iter_fields as _fields, read_varint as _varint

# op type -> index of the weight input
_WEIGHT_INPUT = {"Gemm": 1, "MatMul": 1, "FusedMatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "QGemm": 3,
                 "MatMulNBits": 1}
# ops that pass a weight through unchanged in shape (or transposed) on its way to the matmul
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity", "Transpose"}
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
              "QGemm", "ConvInteger", "QLinearConv", "DynamicQuantizeMatMul"}

# protobuf field numbers (onnx.proto3)
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 1, 2, 4, 5
_ATTR_T = 5
_TENSOR_DIMS, _TENSOR_NAME = 1, 8


@dataclass
class FlopCount:
    flops_per_image: int
    matmul_nodes: int
    unresolved: list[str] = field(default_factory=list)  # op types whose weight shape was not a constant
    quantized: bool = False  # the graph holds 8-bit quantization ops


def _tensor(buf: bytes) -> tuple[str, list[int]]:
    name, dims = "", []
    for number, wire, value in _fields(buf):
        if number == _TENSOR_DIMS:
            if wire == 0:
                dims.append(value)
            else:  # packed repeated int64
                j = 0
                while j < len(value):
                    d, j = _varint(value, j)
                    dims.append(d)
        elif number == _TENSOR_NAME:
            name = value.decode("utf-8", "replace")
    return name, dims


def _node(buf: bytes) -> tuple[str, list[str], list[str], list[list[int]]]:
    op, inputs, outputs, tensors = "", [], [], []
    for number, _, value in _fields(buf):
        if number == _NODE_INPUT:
            inputs.append(value.decode("utf-8", "replace"))
        elif number == _NODE_OUTPUT:
            outputs.append(value.decode("utf-8", "replace"))
        elif number == _NODE_OP_TYPE:
            op = value.decode("utf-8", "replace")
        elif number == _NODE_ATTRIBUTE:
            for n2, _, v2 in _fields(value):
                if n2 == _ATTR_T:
                    tensors.append(_tensor(v2)[1])
    return op, inputs, outputs, tensors


def count_flops(path: str | os.PathLike) -> FlopCount:
    path = Path(path)
    try:
        data = path.read_bytes()
        graph = b"".join(v for n, w, v in _fields(data) if n == _MODEL_GRAPH and w == 2)
        shapes: dict[str, list[int]] = {}
        producers: dict[str, tuple[str, list[str]]] = {}
        nodes = []
        for number, wire, value in _fields(graph):
            if number == _GRAPH_INITIALIZER and wire == 2:
                name, dims = _tensor(value)
                shapes[name] = dims
            elif number == _GRAPH_NODE and wire == 2:
                op, inputs, outputs, tensors = _node(value)
                nodes.append((op, inputs))
                for out in outputs:
                    producers[out] = (op, inputs)
                if op == "Constant" and outputs and tensors:
                    shapes[outputs[0]] = tensors[0]
    except (OSError, ValueError) as e:
        raise ModelError(path, f"cannot read the ONNX graph to count FLOPs ({e})") from None

    def weight_shape(name: str, depth: int = 0) -> list[int] | None:
        if name in shapes:
            return shapes[name]
        producer = producers.get(name)
        if producer and producer[0] in _PASS_THROUGH and producer[1] and depth < 4:
            return weight_shape(producer[1][0], depth + 1)
        return None

    total, count, unresolved = 0, 0, []
    for op, inputs in nodes:
        idx = _WEIGHT_INPUT.get(op)
        if idx is None:
            continue
        count += 1
        dims = weight_shape(inputs[idx]) if len(inputs) > idx else None
        if dims is None or len(dims) != 2 or op == "MatMulNBits":
            unresolved.append(op)
            continue
        total += 2 * dims[0] * dims[1]
    quantized = any(op in _QUANT_OPS for op, _ in nodes)
    return FlopCount(flops_per_image=total, matmul_nodes=count, unresolved=unresolved, quantized=quantized)
