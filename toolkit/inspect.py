"""`toolkit inspect`: one description dict per file kind, rendered as text or JSON."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FileProblem


def describe(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileProblem(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .inspect_onnx import describe_onnx

        return describe_onnx(path)
    if suffix == ".pt":
        from toolkit.export.inspect_torchscript import describe_torchscript

        return describe_torchscript(path)
    return describe_checkpoint(path)


def describe_checkpoint(path: Path) -> dict:
    from toolkit.train.checkpoint import load_checkpoint
    from toolkit.train.model import parameter_count, SimpleNN

    ck = load_checkpoint(path)
    return {
        "file": str(path),
        "kind": "checkpoint" if ck.kind == "toolkit" else "state_dict (seed format)",
        "size_bytes": path.stat().st_size,
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


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return str(value)


def render_text(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            if not value:
                lines.append(f"{key}: (none)")
                continue
            lines.append(f"{key}:")
            for k, v in value.items():
                if isinstance(v, dict):
                    v = ", ".join(f"{kk}={_fmt(vv)}" for kk, vv in v.items())
                lines.append(f"  {k}: {_fmt(v)}")
        else:
            if key == "metrics":
                continue
            lines.append(f"{key}: {_fmt(value)}")
    acc = info.get("metrics", {}).get("test_accuracy")
    if isinstance(acc, float):
        lines.append(f"test accuracy: {acc * 100:.2f}%")
    return "\n".join(lines)
