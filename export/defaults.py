"""Defaults shared by the library and the `toolkit export` command (imported at CLI start: keep it light).

The formats themselves (names, suffixes, what each needs) are the rows of toolkit.formats."""

from toolkit import formats as _registry

FORMATS = tuple(f.name for f in _registry.FORMATS if not f.made_from)  # written from the model itself
# Made from the float32 ONNX file and judged on test accuracy against it (at most --int8-max-drop points lost).
VARIANTS = tuple(f.name for f in _registry.FORMATS if f.made_from)
DEFAULT_FORMATS = _registry.DEFAULTS  # README command 1: pt2 costs a second torch.export trace
ONNX_EXPORTERS = ("dynamo", "legacy")  # legacy: torch's TorchScript-based exporter, while torch still has it
DEFAULT_ONNX_EXPORTER = "dynamo"
DEFAULT_OPSET = 18  # the lowest opset the dynamo exporter targets without a version conversion
# ONNX Runtime vs eager torch differ by ~1e-5 on logits of magnitude ~30 here (float32
# summation order); 1e-4 leaves headroom without hiding a real error.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5
DEFAULT_INT8_MAX_DROP = 0.3  # test-accuracy points


def missing_requirement(fmt: str, onnx_exporter: str = DEFAULT_ONNX_EXPORTER) -> str | None:
    """Why ``fmt`` cannot be written here, with the install command; None when it can."""
    return _registry.missing(_registry.get(fmt), onnx_exporter)
