"""Defaults shared by the library and the `toolkit export` command (imported at CLI start: keep it light)."""

import importlib.util

FORMATS = ("torchscript", "onnx", "pt2", "executorch")
# Made from the float32 ONNX file and judged on test accuracy against it (at most --int8-max-drop points lost).
VARIANTS = ("int8", "int8-static", "fp16")
DEFAULT_FORMATS = ("torchscript", "onnx")  # README command 1: pt2 costs a second torch.export trace
# What each format needs beyond torch, and how to get it; a format whose modules are missing is listed as
# unavailable with this command instead of failing half-way. The ONNX entry is for the default exporter.
REQUIREMENTS = {
    "onnx": (("onnx", "onnxscript"), "pip install 'toolkit[train]'"),
    "torchscript": ((), ""),
    "pt2": ((), ""),
    "executorch": (("executorch",), "pip install 'toolkit[executorch]'"),
    "int8": (("onnx", "onnxscript"), "pip install 'toolkit[train]'"),
    "int8-static": (("onnx", "onnxscript"), "pip install 'toolkit[train]'"),
    "fp16": (("onnx", "onnxscript", "onnxconverter_common"), "pip install 'toolkit[train]'"),
}
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
    modules, install = REQUIREMENTS[fmt]
    if onnx_exporter == "legacy":
        modules = tuple(m for m in modules if m != "onnxscript")  # the TorchScript-based exporter does not use onnxscript
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(absent)}: {install}" if absent else None
