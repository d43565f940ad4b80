"""`toolkit inspect model.onnx`: graph signature, opset, parameters and the toolkit contract.

No torch here, ever: this runs on the edge install. The ``onnx`` package gives
the full picture (opsets, initializers); with only onnxruntime the description
is built from a session and says what it cannot know.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .contract import KEY_PREFIX
from .errors import ModelError


def describe_onnx(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ModelError(path, "is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(path, "empty file (0 bytes)")
    try:
        import onnx  # noqa: F401
    except ImportError:
        info = _with_onnxruntime(path)
    else:
        info = _with_onnx(path)
    return {"file": str(path), "kind": "onnx", "size_bytes": path.stat().st_size, **info}


def _metadata(props: dict[str, str]) -> dict:
    """Toolkit keys without their prefix, JSON values decoded so --json shows structure."""
    out = {}
    for key, value in sorted(props.items()):
        name = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        try:
            decoded = json.loads(value)
            out[name] = decoded if isinstance(decoded, (dict, list)) else value
        except ValueError:
            out[name] = value
    return out


def _with_onnx(path: Path) -> dict:
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends: the bytes are not an ONNX model
        raise ModelError(path, f"not an ONNX model ({type(e).__name__})") from None
    if not proto.graph.node:
        raise ModelError(path, "not an ONNX model (no graph nodes)")
    init_names = {t.name for t in proto.graph.initializer}

    def sig(values):
        return [{"name": v.name, "shape": _shape(v.type.tensor_type.shape),
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
                for v in values if v.name not in init_names]

    dtypes: dict[str, int] = {}
    for t in proto.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        dtypes[name] = dtypes.get(name, 0) + _numel(t.dims)
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {
        "inputs": sig(proto.graph.input),
        "outputs": sig(proto.graph.output),
        "opset": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "parameters": sum(dtypes.values()),
        "parameters_by_dtype": dtypes,
        "parameters_note": "elements of all initializers, BatchNorm running statistics included",
        "operators": ops,
        "metadata": _metadata({p.key: p.value for p in proto.metadata_props}),
    }


def _shape(shape) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in shape.dim]


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _with_onnxruntime(path: Path) -> dict:
    from .runtime import create_session

    session, _, _ = create_session(path, provider="cpu")
    meta = session.get_modelmeta()
    props = dict(meta.custom_metadata_map)

    def sig(values):
        return [{"name": v.name, "shape": list(v.shape), "dtype": v.type} for v in values]

    opset = props.get(KEY_PREFIX + "opset")
    return {
        "inputs": sig(session.get_inputs()),
        "outputs": sig(session.get_outputs()),
        "opset": {"ai.onnx": int(opset)} if opset else "unknown (install onnx to read it from the graph)",
        "producer": meta.producer_name,
        "parameters": None,
        "parameters_note": "install the onnx package to count parameters",
        "metadata": _metadata(props),
    }
