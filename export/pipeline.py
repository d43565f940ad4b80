"""`toolkit export` as a library call: checkpoint -> TorchScript / ONNX / .pt2 (/ INT8) files that passed the gate.

All or nothing: every artefact is written under a temporary name in the output
directory, loaded back from disk and validated there, and only when every gate
passed are they moved onto their final names (``os.replace``). A failed gate
removes the temporaries, so no file that looks like a good export is left, and
files from an earlier export stay untouched. The JSON report is written last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from toolkit.atomic import atomic_path, check_writable, file_sha256, prepare_folder, removed_on_failure, write_json
from toolkit.machine import cpu_info
from toolkit.errors import CheckpointError, OutputError, ValidationFailed
from toolkit.train.checkpoint import versions

from . import parity
from .defaults import (DEFAULT_ATOL, DEFAULT_FORMATS, DEFAULT_INT8_MAX_DROP, DEFAULT_ONNX_EXPORTER, DEFAULT_OPSET,
                       DEFAULT_RTOL, FORMATS, ONNX_EXPORTERS, VARIANTS)
from .onnx_export import EXPORTERS, contract_for, export_onnx
from .pt2_export import EXPORTER as PT2_EXPORTER, export_pt2
from .report import ExportReport, FormatResult, Inputs, Int8Result, Tolerances
from .torchscript_export import EXPORTER as TS_EXPORTER, export_torchscript

SUFFIXES = {"torchscript": ".pt", "pt2": ".pt2", "onnx": ".onnx", "executorch": ".pte", "onnx-int8": ".int8.onnx",
            "onnx-int8-static": ".int8-static.onnx", "onnx-fp16": ".fp16.onnx", "report": ".export.json"}
VARIANT_KINDS = {"int8": "onnx-int8", "int8-static": "onnx-int8-static", "fp16": "onnx-fp16"}


CHECKPOINT_KINDS = {"toolkit": "toolkit checkpoint", "state_dict": "state_dict (seed format)",
                    "module": "state_dict for a user module (--module)"}


def _at_model_size(images: np.ndarray, spec) -> np.ndarray:
    """MNIST's 28x28 test digits as the model's preprocessing makes them for another input size (predict's rule)."""
    if (spec.height, spec.width) == images.shape[1:]:
        return images
    from toolkit.preprocess import to_model_pixels

    return np.stack([to_model_pixels(image, spec) for image in images])


def output_paths(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None, formats, int8: bool,
                 variants=()) -> dict:
    checkpoint = Path(checkpoint)
    folder = Path(out_dir) if out_dir is not None else checkpoint.parent
    chosen = [v for v in VARIANTS if v in variants or (v == "int8" and int8)]
    kinds = [f for f in FORMATS if f in formats] + [VARIANT_KINDS[v] for v in chosen] + ["report"]
    return {k: folder / f"{checkpoint.stem}{SUFFIXES[k]}" for k in kinds}


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export_checkpoint(checkpoint: str | os.PathLike, *, out_dir: str | os.PathLike | None = None,
                      formats=DEFAULT_FORMATS, opset: int = DEFAULT_OPSET,
                      onnx_exporter: str = DEFAULT_ONNX_EXPORTER, atol: float = DEFAULT_ATOL,
                      rtol: float = DEFAULT_RTOL, int8: bool = False,
                      int8_max_drop: float = DEFAULT_INT8_MAX_DROP, force: bool = False, data_dir=None,
                      latency_runs: int = 2000, source=None, variants=()) -> ExportReport:
    """Export, validate and (only if every gate passes) publish. Returns the report, also written as JSON.

    Raises CheckpointError/OutputError (exit 1) before any work, ValidationFailed (exit 4)
    carrying the report when a gate fails. ``source``: an already built (LoadedCheckpoint, model) pair,
    e.g. a user's module (user_module.load_module); ``checkpoint`` then names its weights file.
    ``variants`` names ONNX variants beyond ``int8`` (``int8-static``, ``fp16``), each judged like INT8.
    """
    from toolkit.train.checkpoint import build_model, load_checkpoint
    from toolkit.train.data import load_mnist

    started = time.perf_counter()
    formats = [f for f in FORMATS if f in formats]
    if not formats:
        raise ValueError(f"formats must name at least one of {FORMATS}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(f"onnx_exporter must be one of {ONNX_EXPORTERS}, got {onnx_exporter!r}")
    variants = [v for v in VARIANTS if v in variants or (v == "int8" and int8)]
    if variants and "onnx" not in formats:
        raise ValueError("the INT8/FP16 variants are made from the ONNX export; include onnx in formats")
    for name, value in {"atol": atol, "rtol": rtol, "int8_max_drop": int8_max_drop}.items():
        if not (math.isfinite(value) and value >= 0):  # a NaN or infinite tolerance switches its gate off
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    loaded = load_checkpoint(checkpoint) if source is None else source[0]
    paths = output_paths(checkpoint, out_dir, formats, int8, variants)
    created = prepare_folder(paths["report"].parent)
    with removed_on_failure(paths["report"].parent, created):
        for path in paths.values():
            if path.resolve() == Path(checkpoint).resolve():
                raise OutputError(path, "would overwrite the checkpoint being exported; use --out-dir")
            check_writable(path, force=force)

        model = build_model(loaded) if source is None else source[1].eval()
        data = load_mnist(data_dir, quiet=True)
        ref = parity.make_reference(model, _at_model_size(data.test_images, loaded.preprocess), data.test_labels,
                                    loaded.preprocess)
        if not np.isfinite(ref.test_logits).all():
            bad = int((~np.isfinite(ref.test_logits)).any(axis=1).sum())
            raise CheckpointError(checkpoint, f"the model computes NaN/Inf logits for {bad} test images; "
                                              "its weights are unusable")

        with contextlib.ExitStack() as stack:
            tmp = {k: stack.enter_context(atomic_path(p, replace=force)) for k, p in paths.items() if k != "report"}
            run = _Run(model, paths, tmp, ref, atol, rtol)
            # Same contract in every file; the ONNX-only fields are blank in the torch formats.
            torch_contract = dataclasses.replace(contract_for(loaded, 0), onnx_version="")
            if "torchscript" in formats:
                run.float_format("torchscript", export_torchscript,
                                 dataclasses.replace(torch_contract, exporter=TS_EXPORTER))
            if "pt2" in formats:
                run.float_format("pt2", export_pt2, dataclasses.replace(torch_contract, exporter=PT2_EXPORTER))
            if "onnx" in formats:
                run.float_format("onnx", functools.partial(export_onnx, opset=opset, exporter=onnx_exporter),
                                 contract_for(loaded, opset, exporter=EXPORTERS[onnx_exporter]))
            if "executorch" in formats:
                from .executorch_export import EXPORTER as ET_EXPORTER, export_executorch

                run.float_format("executorch", export_executorch,
                                 dataclasses.replace(torch_contract, exporter=ET_EXPORTER))
            if "int8" in variants:
                run.int8(int8_max_drop, latency_runs)
            if "int8-static" in variants:
                from .quantize import calibration_indices

                pick = calibration_indices(len(data.train_images))
                run.variant("onnx-int8-static", int8_max_drop, loaded.preprocess.normalize(
                    _at_model_size(data.train_images[pick], loaded.preprocess)))
            if "fp16" in variants:
                run.variant("onnx-fp16", int8_max_drop)
            report = ExportReport(
                checkpoint=str(checkpoint), checkpoint_sha256=loaded.sha256,
                checkpoint_kind=CHECKPOINT_KINDS[loaded.kind],
                architecture=loaded.config.describe(),
                tolerances=Tolerances(atol, rtol, int8_max_drop if variants else None),
                inputs=Inputs(test_images=int(len(ref.test_y)), random_batches=list(parity.RANDOM_BATCHES)),
                eager={"test_accuracy": ref.accuracy}, formats=run.results, passed=not run.problems,
                problems=run.problems, timings=run.timings, versions=_versions(),
                machine={**cpu_info(), "platform": platform.platform()},
            )
            if run.problems:
                more = len(run.problems) - 1
                raise ValidationFailed(run.problems[0] + (f" (and {more} more)" if more else "")
                                       + "; nothing was written", report=report)
        stale = output_paths(checkpoint, out_dir, formats, True)["onnx-int8"]
        if "int8" not in variants and stale.exists():
            # Not ours to delete, but a file from another checkpoint must not pass unnoticed.
            report.notes.append(f"{stale} is from an earlier export and was left as it is (no --int8 this time)")
        report.timings["total_s"] = time.perf_counter() - started
        report.report_file = str(paths["report"])
        write_json(paths["report"], report.to_dict(), replace=force)
        return report


class _Run:
    """One export's artefacts under their temporary names, and what validating them found."""

    def __init__(self, model, paths, tmp, ref, atol, rtol):
        self.model, self.paths, self.tmp, self.ref, self.atol, self.rtol = model, paths, tmp, ref, atol, rtol
        self.results: dict[str, FormatResult] = {}
        self.problems: list[str] = []
        self.timings: dict[str, float] = {}
        self.onnx_contract = None

    def record(self, result_type, c: parity.Comparison, problem: str | None, **extra) -> None:
        tmp = self.tmp[c.format]
        self.results[c.format] = result_type(**vars(c), file=str(self.paths[c.format]), size_bytes=tmp.stat().st_size,
                                             sha256=file_sha256(tmp), passed=problem is None, **extra)
        if problem:
            self.problems.append(f"{self.paths[c.format]}: {problem}")

    def float_format(self, kind: str, export, contract) -> None:
        t = time.perf_counter()
        # An exporter may return the contract it really wrote (ONNX: the opset the file declares).
        contract = export(self.model, self.tmp[kind], contract) or contract
        self.timings[f"{kind}_export_s"] = time.perf_counter() - t
        if kind == "onnx":
            self.onnx_contract = contract
        c = parity.validate_file(kind, self.tmp[kind], self.ref, self.atol, self.rtol)
        self.record(FormatResult, c, parity.parity_problem(c, self.atol, self.rtol), exporter=contract.exporter,
                    opset=contract.opset if kind == "onnx" else None)

    def int8(self, max_drop: float, latency_runs: int) -> None:
        from .quantize import METHOD, batch1_latency_us, latency_verdict, quantize_int8

        src, dst, f32 = self.tmp["onnx"], self.tmp["onnx-int8"], self.results["onnx"]
        if not f32.passed:
            self.results["onnx-int8"] = Int8Result(format="onnx-int8", file=str(self.paths["onnx-int8"]),
                                                   skipped="the float32 ONNX export it is made from failed its gate")
            return
        t = time.perf_counter()
        quantize_int8(src, dst, self.onnx_contract, f32.sha256)
        self.timings["int8_quantize_s"] = time.perf_counter() - t
        c = parity.validate_file("onnx-int8", dst, self.ref, self.atol, self.rtol)
        extra = {"method": METHOD, "accuracy_change_points": round((c.test_accuracy - f32.test_accuracy) * 100, 4),
                 "size_vs_float32": dst.stat().st_size / src.stat().st_size}
        if c.error is None:
            t = time.perf_counter()
            lat = batch1_latency_us({"float32": src, "int8": dst}, self.ref.random_x[1], runs=latency_runs)
            self.timings["latency_s"] = time.perf_counter() - t
            int8_us, float_us = lat["int8"]["median_us"], lat["float32"]["median_us"]
            extra.update(latency_batch1=lat, faster_than_float32=int8_us < float_us,
                         latency_verdict=latency_verdict(int8_us, float_us))
        self.record(Int8Result, c, parity.int8_problem(c, f32.test_accuracy, max_drop), **extra)

    def variant(self, kind: str, max_drop: float, calibration=None) -> None:
        """Static INT8 (QDQ) or FP16 from the float32 ONNX file, judged on test accuracy like dynamic INT8."""
        src, dst, f32 = self.tmp["onnx"], self.tmp[kind], self.results["onnx"]
        if not f32.passed:
            self.results[kind] = Int8Result(format=kind, file=str(self.paths[kind]),
                                            skipped="the float32 ONNX export it is made from failed its gate")
            return
        t = time.perf_counter()
        if kind == "onnx-fp16":
            from .fp16 import METHOD, convert_fp16

            convert_fp16(src, dst, self.onnx_contract, f32.sha256)
        else:
            from .quantize import STATIC_METHOD as METHOD, quantize_int8_static

            quantize_int8_static(src, dst, self.onnx_contract, f32.sha256, calibration)
        self.timings[f"{kind.removeprefix('onnx-')}_export_s"] = time.perf_counter() - t
        c = parity.validate_file(kind, dst, self.ref, self.atol, self.rtol)
        extra = {"method": METHOD, "accuracy_change_points": round((c.test_accuracy - f32.test_accuracy) * 100, 4),
                 "size_vs_float32": dst.stat().st_size / src.stat().st_size}
        self.record(Int8Result, c, parity.int8_problem(c, f32.test_accuracy, max_drop), **extra)
