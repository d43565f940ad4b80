"""`toolkit inspect` for the torch side: a checkpoint (.pth), TorchScript (.pt) or .pt2 file, as a description dict.

Nothing is run: a TorchScript module or a torch.export program is loaded (its code or graph and
tensors, not arbitrary pickled objects) and described. What a file is comes from its content
(toolkit.inspect.identify), not its suffix: a ``.pt`` written by ``torch.save`` is a checkpoint by another
name and is described as one. ONNX files are the core's (toolkit.inspect).
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.contract import decode_metadata
from toolkit.inspect import format_field, identify
from toolkit.runtime import check_output_width

from .pt2_export import load_pt2
from .torchscript_export import load_torchscript


def describe(path: str | os.PathLike) -> dict:
    """By content, whatever the suffix says; anything but these three is refused by the checkpoint loader."""
    kind = identify(path)
    if kind in ("torchscript", "pt2"):
        return describe_program(Path(path), kind)
    return describe_checkpoint(path)


def describe_checkpoint(path: str | os.PathLike) -> dict:
    from toolkit.train.checkpoint import load_checkpoint
    from toolkit.train.architectures import build
    from toolkit.train.model import parameter_count

    ck = load_checkpoint(path)
    return {
        "file": str(path),
        "kind": "checkpoint" if ck.kind == "toolkit" else "state_dict (seed format)",
        "size_bytes": ck.path.stat().st_size,
        "sha256": ck.sha256,
        "arch": ck.config.arch,
        "architecture": ck.config.describe(),
        "config": ck.config.to_dict(),
        "parameters": parameter_count(build(ck.config)),
        "classes": ck.classes,
        "preprocess": ck.preprocess.to_dict(),
        "recipe": ck.recipe,
        "metrics": {k: v for k, v in ck.metrics.items() if k != "history"},
        "versions": ck.versions,
        "created": ck.created,
    }


def describe_program(path: Path, kind: str) -> dict:
    """A TorchScript module or an ExportedProgram: its signature, tensors and embedded contract."""
    if kind == "pt2":
        program, meta = load_pt2(path)
        module, signature, opset = program.module(), _program_signature(program), "n/a (torch.export program)"
    else:
        module, meta = load_torchscript(path)
        signature, opset = str(module.forward.schema), "n/a (TorchScript)"
    meta = decode_metadata(meta or {})
    params = dict(module.named_parameters())
    if "classes" in meta:  # toolkit's layout: the output layer's weight is the last matrix, one row per output
        check_output_width(path, [p.shape[0] for p in params.values() if p.dim() == 2][-1:], meta["classes"])
    return {
        "file": str(path),
        "kind": kind,
        **format_field(path, kind),
        "size_bytes": path.stat().st_size,
        "signature": signature,
        "inputs": [{"name": meta.get("input_name", "x"), "shape": meta.get("input_shape", "not recorded"),
                    "dtype": meta.get("input_dtype", "not recorded")}],
        "outputs": [{"name": meta.get("output_name", "output"),
                     "shape": ["batch", len(meta["classes"])] if "classes" in meta else "not recorded"}],
        "opset": opset,
        "parameters": sum(p.numel() for p in params.values()),
        "buffers": sum(b.numel() for b in module.buffers()),
        "layers": {n: list(p.shape) for n, p in params.items()},
        "metadata": meta or "none (not exported by toolkit)",
    }


def _program_signature(program) -> str:
    """The user inputs with their traced shapes (symbols for dynamic sizes) and outputs, and the symbols' ranges."""
    shapes = {n.name: list(n.meta["val"].shape) for n in program.graph.nodes
              if n.op == "placeholder" and "val" in n.meta}
    sig = program.graph_signature
    inputs = ", ".join(f"{name}: {shapes.get(name, '?')}" for name in sig.user_inputs)
    ranges = ", ".join(f"{symbol} in [{r.lower}, {r.upper}]" for symbol, r in program.range_constraints.items())
    return f"({inputs}) -> ({', '.join(sig.user_outputs)})" + (f"; {ranges}" if ranges else "")
