"""`toolkit inspect model.onnx`: what a file is, by its content; graph signature, opset, parameters and the
toolkit contract of an ONNX file; text rendering.

No torch here, ever: this runs on the edge install (checkpoints and TorchScript files are
described by toolkit.export.describe). The ``onnx`` package gives the full picture (opsets,
initializers); with only onnxruntime the description is built from a session and says what it cannot know.
"""

from __future__ import annotations

import codecs
import math
import os
import zipfile
from collections import Counter
from pathlib import Path

from .contract import KEY_PREFIX, decode_metadata
from .errors import FileProblem, ModelError
from .formats import FORMATS, of_file
from .text import runtime_reason

MODEL_KINDS = {"checkpoint": "a PyTorch checkpoint", "torchscript": "a TorchScript model",
               "pt2": "a torch.export program (.pt2)", "onnx": "an ONNX model"}
# The files inspect describes: a checkpoint and what export writes, as toolkit.formats names them.
DESCRIBED = [f for f in FORMATS if f.container in MODEL_KINDS]
MODEL_FILE = f"a model file (expected a .pth checkpoint or an export's {', '.join(f.suffix for f in DESCRIBED)})"
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # what predict reads: the likeliest mix-up
SIGNATURES = {  # leading bytes of other files often mistaken for a model
    b"%PDF-": "a PDF document",
    b"\x1f\x8b": "a gzip-compressed file",
    b"\x93NUMPY": "a NumPy array file (.npy)",
    b"\x89HDF\r\n\x1a\n": "an HDF5 file",
    b"\x7fELF": "an executable (ELF)",
}
# An ONNX ModelProto starts with ir_version (field 1, a varint: tag 0x08, a one-byte value today), followed by
# one of fields 2-8 (producer, domain, model_version, doc_string, graph, opset_import) as protobuf writes them.
ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}


def identify(path: str | os.PathLike, error: type[FileProblem] = ModelError, expected: str = MODEL_FILE) -> str:
    """What a model file is by its first bytes, whatever its suffix says: a key of MODEL_KINDS.

    "checkpoint" is a torch.save zip archive or a bare pickle (what it holds is judged by the loader,
    which alone may say it would execute code). Any other file raises ``error`` saying what it is instead.
    """
    path = Path(path)
    if not path.exists():
        raise error(path, "no such file")
    if not path.is_file():
        raise error(path, f"is a directory, not {expected}" if path.is_dir() else "is not a regular file")
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise error(path, "empty file (0 bytes)")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (the second: an empty one)
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise error(path, "a damaged or truncated zip archive (PyTorch checkpoints and TorchScript files are "
                              "zip archives; this one cannot be read)") from None
        if any(n == "archive_format" or n.endswith("/archive_format") for n in names):  # torch.export.save
            return "pt2"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torchscript" if any("/code/" in n for n in names) else "checkpoint"
        raise error(path, f"a zip archive holding no data.pkl (not written by PyTorch), not {expected}")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5 header
        return "checkpoint"
    if len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in ONNX_SECOND_TAGS:
        return "onnx"
    raise error(path, f"{_what(path, head)}, not {expected}")


def _what(path: Path, head: bytes) -> str:
    """What a file that is not a model is, in a few words."""
    for signature, what in SIGNATURES.items():
        if head.startswith(signature):
            return what
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            return f"a {image.format} image"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    try:  # an incremental decoder accepts a character cut at the end of the head
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\n\r\f\v" for c in text):
        return "a text file"
    return f"unrecognised binary content (starting {head[:8].hex(' ')})"


def describe_onnx(path: str | os.PathLike, flags=None) -> dict:
    """``flags`` (toolkit.flags.PreprocessFlags): also describe the contract predict would use ("contract")."""
    path = Path(path)
    kind = identify(path, expected="an ONNX model")
    if kind != "onnx":
        raise ModelError(path, f"{MODEL_KINDS[kind]}, not an ONNX model")
    try:
        import onnx  # noqa: F401
    except ImportError:
        info = _with_onnxruntime(path)
    else:
        info = _with_onnx(path)
    meta = info["metadata"]
    output = next((o for o in info["outputs"] if o["name"] == meta.get("output_name")), None)
    if output and isinstance(meta.get("classes"), list):
        from .runtime import check_output_width

        check_output_width(path, output["shape"][-1:], meta["classes"])
    info = {"file": str(path), "kind": "onnx", **format_field(path, "onnx"), "size_bytes": path.stat().st_size, **info}
    if flags is not None and flags.given:
        info["contract"] = _contract(path, flags)
    elif "contract_version" not in meta:
        info["contract"] = ("none: predict, bench and draw need --labels, --mean and --std for this file, "
                            "or a stamped copy (toolkit export FILE --labels ... --out stamped.onnx)")
    return info


def format_field(path: Path, kind: str) -> dict:
    """{"format": its name in toolkit.formats} for a file whose name and content fit a row (model.int8.onnx holding
    ONNX is int8); nothing for one that fits none."""
    row = of_file(Path(path).name, kind)
    return {"format": row.name} if row else {}


def _contract(path: Path, flags) -> dict:
    """The contract as predict would use it: the file's own (options checked against it) or one from options."""
    from .flags import DESCRIBED
    from .runtime import Predictor

    contract = Predictor.open(path, "cpu", flags=flags).contract
    spec = contract.preprocess
    info = {"source": "options" if contract.exporter == DESCRIBED else "file",
            "classes": contract.classes, "input": contract.input_name, "layout": spec.layout,
            "channels": spec.channels, "height": spec.height, "width": spec.width,
            "batch": contract.input_shape[0], "scale": spec.pixel_scale, "mean": spec.mean, "std": spec.std,
            "polarity": spec.polarity, "output": contract.output_name, "output_kind": contract.output_kind}
    if spec.mode == "image":  # every resolved value of the image pipeline, as the contract stores it
        image = spec.to_dict()
        info.pop("polarity")
        info.update(preprocess="image", **{k: image[k] for k in ("fit", "resize", "crop_pct", "interpolation",
                                                                 "channel_order", "pad_value", "crop_offset",
                                                                 "version")})
    return info


def _with_onnx(path: Path) -> dict:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: the bytes are not an ONNX model
        raise ModelError(path, f"not an ONNX model ({type(e).__name__}: {runtime_reason(e)})") from None
    try:  # tensors kept in other files: onnx refuses locations outside the model's folder, devices, links
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as e:
        raise ModelError(path, f"an ONNX model whose external data is refused ({runtime_reason(e)})") from None
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
