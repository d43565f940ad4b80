"""`toolkit inspect` for the torch side: a checkpoint (.pth) or a TorchScript (.pt) file, as a description dict.

Nothing is run: a TorchScript module is loaded (its code and tensors, not arbitrary pickled
objects) and described. A ``.pt`` written by ``torch.save`` rather than TorchScript is a
checkpoint by another name and is described as one. ONNX files are the core's (toolkit.inspect).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from toolkit.contract import decode_metadata
from toolkit.errors import ModelError

from .torchscript_export import load_torchscript


def describe(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.suffix.lower() == ".pt" and not _is_torch_save_archive(path):
        return describe_torchscript(path)
    return describe_checkpoint(path)


def _is_torch_save_archive(path: Path) -> bool:
    """Both are zip archives; only TorchScript's holds compiled code (``<archive>/code/...``)."""
    try:
        with zipfile.ZipFile(path) as z:
            return not any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def describe_checkpoint(path: str | os.PathLike) -> dict:
    from toolkit.train.checkpoint import load_checkpoint
    from toolkit.train.model import SimpleNN, parameter_count

    ck = load_checkpoint(path)
    return {
        "file": str(path),
        "kind": "checkpoint" if ck.kind == "toolkit" else "state_dict (seed format)",
        "size_bytes": ck.path.stat().st_size,
        "sha256": ck.sha256,
        "architecture": ck.config.describe(),
        "config": ck.config.to_dict(),
        "parameters": parameter_count(SimpleNN(ck.config)),
        "classes": ck.classes,
        "preprocess": ck.preprocess.to_dict(),
        "recipe": ck.recipe,
        "metrics": {k: v for k, v in ck.metrics.items() if k != "history"},
        "versions": ck.versions,
        "created": ck.created,
    }


def describe_torchscript(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(path, "is a directory, expected a TorchScript .pt file" if path.exists() else "no such file")
    if not zipfile.is_zipfile(path):
        raise ModelError(path, "empty file (0 bytes)" if path.stat().st_size == 0
                         else "not a TorchScript archive (damaged, truncated or another kind of file)")
    module, meta = load_torchscript(path)
    meta = decode_metadata(meta or {})
    params = dict(module.named_parameters())
    return {
        "file": str(path),
        "kind": "torchscript",
        "size_bytes": path.stat().st_size,
        "signature": str(module.forward.schema),
        "inputs": [{"name": meta.get("input_name", "x"), "shape": meta.get("input_shape", "not recorded"),
                    "dtype": meta.get("input_dtype", "not recorded")}],
        "outputs": [{"name": meta.get("output_name", "output"),
                     "shape": ["batch", len(meta["classes"])] if "classes" in meta else "not recorded"}],
        "opset": "n/a (TorchScript)",
        "parameters": sum(p.numel() for p in params.values()),
        "buffers": sum(b.numel() for b in module.buffers()),
        "layers": {n: list(p.shape) for n, p in params.items()},
        "metadata": meta or "none (not exported by toolkit)",
    }
