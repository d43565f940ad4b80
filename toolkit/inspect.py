"""`toolkit inspect model.onnx`: graph signature, opset, parameters and the toolkit contract; text rendering.

No torch here, ever: this runs on the edge install (checkpoints and TorchScript files are
described by toolkit.export.describe). The ``onnx`` package gives the full picture (opsets,
initializers); with only onnxruntime the description is built from a session and says what it cannot know.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from .contract import KEY_PREFIX, decode_metadata
from .errors import ModelError


def describe_onnx(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "is a directory, expected an .onnx file" if path.exists() else "no such file")
    if path.stat().st_size == 0:
        raise ModelError(path, "empty file (0 bytes)")
    try:
        import onnx  # noqa: F401
    except ImportError:
        info = _with_onnxruntime(path)
    else:
        info = _with_onnx(path)
    return {"file": str(path), "kind": "onnx", "size_bytes": path.stat().st_size, **info}


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
        return [{"name": v.name, "shape": [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                                           for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
                for v in values if v.name not in init_names]

    dtypes: Counter[str] = Counter()
    for t in proto.graph.initializer:
        dtypes[onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name] += math.prod(t.dims)
    return {
        "inputs": sig(proto.graph.input),
        "outputs": sig(proto.graph.output),
        "opset": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "parameters": sum(dtypes.values()),
        "parameters_by_dtype": dict(dtypes),
        "parameters_note": "elements of all initializers, BatchNorm running statistics included",
        "operators": dict(Counter(n.op_type for n in proto.graph.node)),
        "metadata": decode_metadata({p.key: p.value for p in proto.metadata_props}),
    }


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
        "metadata": decode_metadata(props),
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return str(value)


def render_text(info: dict) -> str:
    """Any description (ONNX, TorchScript, checkpoint) as indented lines; test accuracy as a percentage."""
    lines = []
    for key, value in info.items():
        if not isinstance(value, dict):
            lines.append(f"{key}: {_fmt(value)}")
        elif not value:
            lines.append(f"{key}: (none)")
        else:
            lines.append(f"{key}:")
            for k, v in value.items():
                if isinstance(v, dict):
                    v = ", ".join(f"{kk}={_fmt(vv)}" for kk, vv in v.items())
                lines.append(f"  {k}: {_fmt(v)}")
    acc = info.get("metrics", {}).get("test_accuracy")
    if isinstance(acc, float):
        lines.append(f"test accuracy: {acc * 100:.2f}%")
    return "\n".join(lines)
