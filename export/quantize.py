"""The INT8 ONNX variants (dynamic and static QDQ) and their batch-1 latency against float32.

Dynamic quantization (``onnxruntime.quantization.quantize_dynamic``): weights of
the four MatMul/Gemm layers stored as int8 (per tensor), activations quantized to
uint8 per batch at run time; BatchNorm and LeakyReLU stay float. Measured on the
2-core AMD EPYC build machine (a 3-epoch seed checkpoint) against the alternatives:
  dynamic, per tensor     97.07% (float 97.05%), 99.86% top-1 agreement, 22 us vs 43 us
  dynamic, per channel    97.06%, 99.83%, 25 us
  static QDQ, calibrated  97.02%, 99.75%, 27 us
  static QOperator        97.00%, 99.73%, 24 us
so the simplest one is also the most accurate and the fastest here; it needs no
calibration data. ``quant_pre_process`` took 3 s and changed neither number.

Static QDQ (``quantize_static``, QuantFormat.QDQ, calibrated with MinMax on CALIBRATION_IMAGES images of the
training set) is written beside it as its own format: QuantizeLinear/DequantizeLinear pairs around each
MatMul/Gemm with scales fixed at export time, which is the form NPUs and most edge accelerators take.
Which of the two is faster on the CPU is measured by `toolkit bench --formats all` (docs/formats.md).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from toolkit.contract import ModelContract
from toolkit.errors import ModelError
from toolkit.text import first_line

from .job import Job, Written
from .onnx_export import embed_contract, graph_opset

CALIBRATION_IMAGES = 1024  # a random slice of the training set (seeded): never the test images it is judged on
CALIBRATION_SEED = 0
STATIC_METHOD = (f"static QDQ: onnxruntime.quantization.quantize_static, QuantFormat.QDQ, int8 weights and "
                 f"activations, MinMax calibration on {CALIBRATION_IMAGES} training images")
METHOD = ("dynamic: onnxruntime.quantization.quantize_dynamic, MatMul/Gemm weights int8 per tensor, "
          "activations uint8 quantized per batch at run time")


def _float_graph(src):
    import onnx

    model = onnx.load(str(src))
    # The dynamo exporter records each weight's shape in value_info; the quantizer transposes Gemm weights
    # and its shape inference then trips over the stale entries. They are a cache: checker re-infers them.
    del model.graph.value_info[:]
    return model


def _quantize(dst, quantize) -> None:
    import logging

    # The quantizer logs a "consider pre-processing" hint on the root logger at every call;
    # it was measured to make no difference for this model (see module docstring).
    logging.disable(logging.WARNING)
    try:
        quantize()
    except Exception as e:  # the quantizer raises plain exceptions for graphs it cannot handle
        raise ModelError(dst, f"ONNX Runtime quantization failed: {first_line(e)}") from None
    finally:
        logging.disable(logging.NOTSET)


def _label(dst, float_contract: ModelContract, float_sha256: str, tool: str, method: str, **extra) -> ModelContract:
    contract = dataclasses.replace(
        float_contract,
        precision="int8",
        opset=graph_opset(dst),
        exporter=f"{float_contract.exporter} + onnxruntime.quantization.{tool}",
        extra={**float_contract.extra, "quantization": method, "float_model_sha256": float_sha256, **extra},
    )
    embed_contract(dst, contract)  # also runs onnx.checker with full_check
    return contract


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, float_contract: ModelContract,
                  float_sha256: str) -> ModelContract:
    """Quantize the float ONNX file ``src`` into ``dst`` (caller handles atomicity) and label it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _float_graph(src)
    _quantize(dst, lambda: quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8))
    return _label(dst, float_contract, float_sha256, "quantize_dynamic", METHOD)


def calibration_indices(n_train: int, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Which training images calibrate the static quantizer: ``n`` drawn without replacement (seeded)."""
    return np.sort(np.random.default_rng(seed).choice(n_train, size=min(n, n_train), replace=False))


def quantize_int8_static(src: str | os.PathLike, dst: str | os.PathLike, float_contract: ModelContract,
                         float_sha256: str, calibration_x: np.ndarray, batch: int = 64) -> ModelContract:
    """Static QDQ quantization of ``src`` into ``dst``, calibrated on ``calibration_x`` (preprocessed inputs)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = float_contract.input_name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calibration_x[i:i + batch] for i in range(0, len(calibration_x), batch)])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: x}

    model = _float_graph(src)
    _quantize(dst, lambda: quantize_static(model, str(dst), Reader(), quant_format=QuantFormat.QDQ,
                                           activation_type=QuantType.QInt8, weight_type=QuantType.QInt8))
    return _label(dst, float_contract, float_sha256, "quantize_static", STATIC_METHOD,
                  calibration_images=str(len(calibration_x)))


def export_dynamic(job: Job) -> Written:
    """The int8 row's exporter (toolkit.formats): dynamic INT8 from the float ONNX file, timed at batch 1."""
    return Written(quantize_int8(job.source, job.path, job.source_contract, job.source_sha256), METHOD, timed=True)


def export_static(job: Job) -> Written:
    """The int8-static row's exporter: static QDQ from the float ONNX file, calibrated on training images."""
    return Written(quantize_int8_static(job.source, job.path, job.source_contract, job.source_sha256,
                                        job.calibration()), STATIC_METHOD)


def batch1_latency_us(paths: dict[str, str | os.PathLike], x1: np.ndarray, runs: int = 2000, warmup: int = 200,
                      threads: int = 1) -> dict[str, dict]:
    """Median and p90 latency of one-image inference per model, ORT CPU.

    The models take turns in several rounds so that load from other processes on a
    shared machine falls on all of them alike; one thread because a batch of one
    image gains nothing from more, and the number is steadier.
    """
    from toolkit.runtime import create_session
    from toolkit.timing import measure, summarize

    runs_of = {}
    for name, path in paths.items():
        session = create_session(path, provider="cpu", threads=threads)[0]
        feed = {session.get_inputs()[0].name: x1}
        runs_of[name] = lambda session=session, feed=feed: session.run(None, feed)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    rounds = 4
    for i in range(rounds):
        for name, run in runs_of.items():
            samples[name] += measure(run, warmup=warmup if i == 0 else 0, runs=max(1, runs // rounds))[1]
    stats = {name: summarize(v).latency_ms for name, v in samples.items()}
    return {name: {"median_us": s.p50 * 1e3, "p90_us": s.p90 * 1e3, "runs": len(samples[name]), "threads": threads}
            for name, s in stats.items()}


def latency_verdict(int8_us: float, float_us: float) -> str:
    """One plain sentence, including when INT8 does not pay off on this machine."""
    if int8_us < float_us:
        return f"INT8 is {float_us / int8_us:.2f}x faster than float32 at batch 1 here"
    return (f"INT8 is NOT faster than float32 here: {int8_us:.1f} us vs {float_us:.1f} us at batch 1 "
            f"(this CPU may lack fast int8 instructions); it is only smaller")
