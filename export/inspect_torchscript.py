"""`toolkit inspect model.pt`: a TorchScript file's signature, parameters and embedded toolkit contract.

Nothing is run: the module is loaded (which reads its code and tensors, not arbitrary
pickled objects) and described. A ``.pt`` written by ``torch.save`` rather than
TorchScript is a checkpoint by another name and is described as one.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from toolkit.errors import ModelError


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold compiled code and constants; torch.save archives hold only data.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def describe_torchscript(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ModelError(path, "is a directory, expected a TorchScript .pt file")
    if path.stat().st_size == 0:
        raise ModelError(path, "empty file (0 bytes)")
    if not _is_torchscript_archive(path):
        if zipfile.is_zipfile(path):
            from toolkit.inspect import describe_checkpoint

            return describe_checkpoint(path)
        raise ModelError(path, "not a TorchScript archive (damaged, truncated or another kind of file)")

    from .torchscript_export import load_torchscript

    try:
        module, meta = load_torchscript(path)
    except Exception as e:  # torch.jit.load raises RuntimeError with a C++ backtrace for bad archives
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(path, f"torch.jit.load cannot load it ({first[:200]})") from None

    from toolkit.inspect_onnx import _metadata

    meta = _metadata(meta or {})
    shape = meta.get("input_shape") if meta else None
    params = {n: tuple(p.shape) for n, p in module.named_parameters()}
    buffers = sum(b.numel() for _, b in module.named_buffers())
    return {
        "file": str(path),
        "kind": "torchscript",
        "size_bytes": path.stat().st_size,
        "signature": str(module.forward.schema),
        "inputs": [{"name": meta.get("input_name", "x"), "shape": shape or "not recorded",
                    "dtype": meta.get("input_dtype", "not recorded")}],
        "outputs": [{"name": meta.get("output_name", "output"),
                     "shape": ["batch", len(meta["classes"])] if "classes" in meta else "not recorded"}],
        "opset": "n/a (TorchScript)",
        "parameters": sum(_numel(s) for s in params.values()),
        "buffers": buffers,
        "layers": {n: list(s) for n, s in params.items()},
        "metadata": meta or "none (not exported by toolkit)",
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
