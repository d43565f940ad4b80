"""Defaults shared by the library and the `toolkit export` command (imported at CLI start: keep it light)."""

FORMATS = ("torchscript", "onnx")
DEFAULT_OPSET = 17
# ONNX Runtime vs eager torch differ by ~1e-5 on logits of magnitude ~30 here (float32
# summation order); 1e-4 leaves headroom without hiding a real error.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5
DEFAULT_INT8_MAX_DROP = 0.3  # test-accuracy points
