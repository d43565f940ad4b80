"""The FP16 ONNX variant: weights and compute in float16, inputs and outputs still float32.

``onnxconverter_common.float16.convert_float_to_float16`` is the conversion ONNX Runtime's own
documentation names for float16 models. ``keep_io_types=True`` puts a Cast at the input and the output, so
callers (predict, bench, draw) feed float32 exactly as for the float32 file. FP16 is for GPUs; on a CPU
without native float16 arithmetic ONNX Runtime runs it slower than float32 (toolkit bench measures it).
It is judged like INT8, on test accuracy against the float32 ONNX file.
"""

from __future__ import annotations

import dataclasses
import os

from toolkit.contract import ModelContract
from toolkit.errors import ModelError
from toolkit.text import first_line

from .job import Job, Written
from .onnx_export import embed_contract, graph_opset

METHOD = "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True): float16 weights and compute"
INSTALL = "pip install 'toolkit[train]'"


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike, float_contract: ModelContract,
                 float_sha256: str) -> ModelContract:
    """Convert the float32 ONNX file ``src`` into ``dst`` (caller handles atomicity) and label it."""
    import warnings

    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ModelError(dst, f"FP16 conversion needs onnxconverter-common: {INSTALL}") from None
    model = onnx.load(str(src))
    try:
        with warnings.catch_warnings():
            # it warns for every weight it clips to float16's range; the accuracy gate judges the result
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as e:  # the converter raises plain exceptions for graphs it cannot handle
        raise ModelError(dst, f"float16 conversion failed: {first_line(e)}") from None
    onnx.save(converted, str(dst))
    contract = dataclasses.replace(
        float_contract, precision="float16", opset=graph_opset(dst),
        exporter=f"{float_contract.exporter} + onnxconverter_common.float16",
        extra={**float_contract.extra, "conversion": METHOD, "float_model_sha256": float_sha256})
    embed_contract(dst, contract)
    return contract


def export(job: Job) -> Written:
    """The fp16 row's exporter (toolkit.formats): float16 from the float32 ONNX file."""
    return Written(convert_fp16(job.source, job.path, job.source_contract, job.source_sha256), METHOD)
