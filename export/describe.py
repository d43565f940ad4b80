"""`toolkit inspect` for the torch side: a checkpoint (.pth) or a TorchScript (.pt) file, as a description dict.

Nothing is run: a TorchScript module is loaded (its code and tensors, not arbitrary pickled
objects) and described. What a file is comes from its content (toolkit.inspect.identify), not its
suffix: a ``.pt`` written by ``torch.save`` is a checkpoint by another name and is described as one.
ONNX files are the core's (toolkit.inspect).
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.contract import decode_metadata
from toolkit.inspect import identify
from toolkit.runtime import check_output_width

from .torchscript_export import load_torchscript


def describe(path: str | os.PathLike) -> dict:
    """By content, whatever the suffix says; anything but these two is refused by the checkpoint loader."""
    return describe_torchscript(Path(path)) if identify(path) == "torchscript" else describe_checkpoint(path)


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
    module, meta = load_torchscript(path)
    meta = decode_metadata(meta or {})
    params = dict(module.named_parameters())
    if "classes" in meta:  # toolkit's layout: the output layer's weight is the last matrix, one row per output
        check_output_width(path, [p.shape[0] for p in params.values() if p.dim() == 2][-1:], meta["classes"])
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
