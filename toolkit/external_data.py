"""The files an ONNX model's external-data tensors name, read from the protobuf wire format itself.

The edge install has ONNX Runtime but not the onnx package, and a model must sometimes travel with its data
files (predict --engine ray sends them to the actors). Only the fields on the way to a tensor's
``external_data`` entries are followed (ONNX's onnx.proto3 numbers them): the graph's initializers and sparse
initializers, node attributes' tensors and subgraphs (Loop/If bodies), and local functions' nodes.
"""

from __future__ import annotations

import posixpath

from .errors import ModelError

# ModelProto.graph, .functions; GraphProto.node, .initializer, .sparse_initializer; NodeProto.attribute;
# AttributeProto.t, .g, .tensors, .graphs, .sparse_tensor, .sparse_tensors; FunctionProto.node;
# SparseTensorProto.values, .indices; TensorProto.external_data; StringStringEntryProto.key, .value.
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_FUNCTION = {7: "node"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_EXTERNAL = 13


def _fields(data: memoryview):
    """(field number, wire type, value) of one message: ints for varints and fixed, memoryviews for bytes."""
    i, n = 0, len(data)
    while i < n:
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        else:
            raise ValueError(f"wire type {wire}")
        if i > n:
            raise ValueError("truncated")
        yield number, wire, value


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7


_KINDS = {"model": _MODEL, "graph": _GRAPH, "node": _NODE, "attribute": _ATTRIBUTE, "function": _FUNCTION,
          "sparse": _SPARSE}


def external_data_locations(model: bytes, path="model") -> list[str]:
    """The relative file names (``location``) an ONNX model's tensors keep their data in, each once, in order.

    ModelError for a location that leaves the model's folder (absolute, or through ``..``): ONNX Runtime
    refuses those too, and nothing may be written or read outside the folder for them."""
    found: dict[str, None] = {}
    todo = [("model", memoryview(model))]
    try:
        while todo:
            kind, data = todo.pop()
            if kind == "tensor":
                for number, wire, value in _fields(data):
                    if number == _TENSOR_EXTERNAL and wire == 2:
                        entry = {k: bytes(v).decode("utf-8") for k, w, v in _fields(value) if w == 2}
                        if entry.get(1) == "location":
                            found[entry.get(2, "")] = None
                continue
            for number, wire, value in _fields(data):
                if wire == 2 and number in _KINDS[kind]:
                    todo.append((_KINDS[kind][number], value))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(path, f"is not a readable ONNX protobuf ({e})") from None
    for location in found:
        clean = posixpath.normpath(location.replace("\\", "/"))
        if not location or clean.startswith(("/", "../")) or clean == ".." or ":" in clean.split("/")[0]:
            raise ModelError(path, f"names external data outside its folder ({location!r})")
    return list(found)
