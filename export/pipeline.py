"""`toolkit export` as a library call: checkpoint -> the files of the formats asked for (toolkit.formats: one row
each, naming its exporter and runtime), each of which passed its gate.

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

from toolkit import formats as registry
from toolkit.atomic import atomic_path, check_writable, file_sha256, prepare_folder, removed_on_failure, write_json
from toolkit.machine import cpu_info
from toolkit.errors import CheckpointError, OutputError, ValidationFailed
from toolkit.train.checkpoint import versions

from . import parity
from .defaults import (DEFAULT_ATOL, DEFAULT_FORMATS, DEFAULT_INT8_MAX_DROP, DEFAULT_ONNX_EXPORTER, DEFAULT_OPSET,
                       DEFAULT_RTOL, ONNX_EXPORTERS)
from .job import Job
from .onnx_export import contract_for
from .report import ExportReport, FormatResult, Inputs, Tolerances, VariantResult

REPORT_SUFFIX = ".export.json"
SUFFIXES = {**{f.name: f.suffix for f in registry.FORMATS}, "report": REPORT_SUFFIX}


CHECKPOINT_KINDS = {"toolkit": "toolkit checkpoint", "state_dict": "state_dict (seed format)",
                    "module": "state_dict for a user module (--module)"}


def _at_model_size(images: np.ndarray, spec) -> np.ndarray:
    """MNIST's 28x28 test digits as the model's preprocessing makes them for another input size (predict's rule)."""
    if (spec.height, spec.width) == images.shape[1:]:
        return images
    from toolkit.preprocess import to_model_pixels

    return np.stack([to_model_pixels(image, spec) for image in images])


def chosen_formats(formats, int8: bool = False, variants=()) -> list[registry.Format]:
    """The rows named (any format name, an earlier name with a warning; ``int8``/``variants``: the older way of
    naming the variants), in the registry's order, so a float file is written before what is made from it."""
    names = {registry.get(n).name for n in (*formats, *variants)} | ({"int8"} if int8 else set())
    return [f for f in registry.FORMATS if f.name in names]


def output_paths(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None, formats, int8: bool = False,
                 variants=()) -> dict:
    """Format name (and "report") -> the file it is written to."""
    checkpoint = Path(checkpoint)
    folder = Path(out_dir) if out_dir is not None else checkpoint.parent
    names = [f.name for f in chosen_formats(formats, int8, variants)] + ["report"]
    return {k: folder / f"{checkpoint.stem}{SUFFIXES[k]}" for k in names}


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What `toolkit export` writes and the gates each file must pass (its defaults are the command's).

    ``formats`` names any rows of toolkit.formats; ``int8`` and ``variants`` are the older way to name the
    variants (``int8``, ``int8-static``, ``fp16``), each judged on accuracy against the file it is made from."""

    formats: tuple = DEFAULT_FORMATS
    opset: int = DEFAULT_OPSET
    onnx_exporter: str = DEFAULT_ONNX_EXPORTER
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    int8_max_drop: float = DEFAULT_INT8_MAX_DROP  # test-accuracy points a variant may lose
    latency_runs: int = 2000  # batch-1 runs per file when a variant is timed against its float file
    int8: bool = False
    variants: tuple = ()


def export_checkpoint(checkpoint: str | os.PathLike, options: ExportOptions = ExportOptions(), *,
                      out_dir: str | os.PathLike | None = None, force: bool = False, data_dir=None,
                      source=None) -> ExportReport:
    """Export, validate and (only if every gate passes) publish. Returns the report, also written as JSON.

    Raises CheckpointError/OutputError (exit 1) before any work, ValidationFailed (exit 4)
    carrying the report when a gate fails. ``source``: an already built (LoadedCheckpoint, model) pair,
    e.g. a user's module (user_module.load_module); ``checkpoint`` then names its weights file.
    """
    from toolkit.train.checkpoint import build_model, load_checkpoint
    from toolkit.train.data import load_mnist

    started = time.perf_counter()
    chosen = chosen_formats(options.formats, options.int8, options.variants)
    if not any(f.made_from is None for f in chosen):
        raise ValueError("formats must name at least one of "
                         f"{', '.join(f.name for f in registry.FORMATS if f.made_from is None)}")
    if options.onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(f"onnx_exporter must be one of {ONNX_EXPORTERS}, got {options.onnx_exporter!r}")
    names = [f.name for f in chosen]
    for f in chosen:
        if f.made_from and f.made_from not in names:
            raise ValueError(f"the {f.name} variant is made from the {f.made_from} export; include {f.made_from} "
                             "in formats")
    for name, value in {"atol": options.atol, "rtol": options.rtol, "int8_max_drop": options.int8_max_drop}.items():
        if not (math.isfinite(value) and value >= 0):  # a NaN or infinite tolerance switches its gate off
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    loaded = load_checkpoint(checkpoint) if source is None else source[0]
    paths = output_paths(checkpoint, out_dir, names)
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
            run = _Run(paths, tmp, ref, options)
            # Same contract in every file; the ONNX-only fields are blank in the torch formats.
            base = Job(model, Path(), loaded, dataclasses.replace(contract_for(loaded, 0), onnx_version=""),
                       options.opset, options.onnx_exporter,
                       calibration=functools.partial(_calibration, data.train_images, loaded.preprocess))
            for row in chosen:
                run.write(row, base)
            report = ExportReport(
                checkpoint=str(checkpoint), checkpoint_sha256=loaded.sha256,
                checkpoint_kind=CHECKPOINT_KINDS[loaded.kind],
                architecture=loaded.config.describe(),
                tolerances=Tolerances(options.atol, options.rtol,
                                      options.int8_max_drop if any(f.made_from for f in chosen) else None),
                inputs=Inputs(test_images=int(len(ref.test_y)), random_batches=list(parity.RANDOM_BATCHES)),
                eager={"test_accuracy": ref.accuracy}, formats=run.results, passed=not run.problems,
                problems=run.problems, timings=run.timings, versions=_versions(),
                machine={**cpu_info(), "platform": platform.platform()},
            )
            if run.problems:
                more = len(run.problems) - 1
                raise ValidationFailed(run.problems[0] + (f" (and {more} more)" if more else "")
                                       + "; nothing was written", report=report)
        for stale in (f for f in registry.FORMATS if f.made_from and f.name not in names):
            # Not ours to delete, but a variant made from another checkpoint's file must not pass unnoticed.
            path = paths["report"].with_name(Path(checkpoint).stem + stale.suffix)
            if path.exists():
                report.notes.append(f"{path} is from an earlier export and was left as it is ({stale.name} was not "
                                    "written this time)")
        report.timings["total_s"] = time.perf_counter() - started
        report.report_file = str(paths["report"])
        write_json(paths["report"], report.to_dict(), replace=force)
        return report


def _calibration(train_images, spec) -> np.ndarray:
    """The static quantizer's calibration inputs: a seeded slice of the training images, normalised."""
    from .quantize import calibration_indices

    return spec.normalize(_at_model_size(train_images[calibration_indices(len(train_images))], spec))


class _Run:
    """One export's artefacts under their temporary names, and what validating them found."""

    def __init__(self, paths, tmp, ref, options: ExportOptions):
        self.paths, self.tmp, self.ref, self.latency_runs = paths, tmp, ref, options.latency_runs
        self.atol, self.rtol, self.max_drop = options.atol, options.rtol, options.int8_max_drop
        self.results: dict[str, FormatResult] = {}
        self.problems: list[str] = []
        self.timings: dict[str, float] = {}
        self.contracts = {}  # format name -> the contract its file carries, for what is made from it

    def record(self, result_type, c: parity.Comparison, problem: str | None, **extra) -> None:
        tmp = self.tmp[c.format]
        self.results[c.format] = result_type(**vars(c), file=str(self.paths[c.format]), size_bytes=tmp.stat().st_size,
                                             sha256=file_sha256(tmp), passed=problem is None, **extra)
        if problem:
            self.problems.append(f"{self.paths[c.format]}: {problem}")

    def write(self, row: registry.Format, base: Job) -> None:
        """Write ``row``'s file with its exporter, load it back with its runtime and judge it by its kind."""
        name, job = row.name, dataclasses.replace(base, path=self.tmp[row.name])
        if row.made_from:
            f32 = self.results[row.made_from]
            if not f32.passed:
                self.results[name] = VariantResult(format=name, file=str(self.paths[name]),
                                                   skipped=f"the {row.made_from} file it is made from failed its gate")
                return
            job = dataclasses.replace(job, source=self.tmp[row.made_from], source_sha256=f32.sha256,
                                      source_contract=self.contracts[row.made_from])
        t = time.perf_counter()
        written = registry.load(row.exporter)(job)
        self.timings[f"{name}_export_s"] = time.perf_counter() - t
        self.contracts[name] = written.contract
        c = parity.validate_file(name, job.path, self.ref, self.atol, self.rtol)
        if not row.made_from:
            self.record(FormatResult, c, parity.parity_problem(c, self.atol, self.rtol),
                        exporter=written.contract.exporter, opset=written.contract.opset or None)
            return
        extra = {"method": written.method, "size_vs_float32": job.path.stat().st_size / job.source.stat().st_size,
                 "accuracy_change_points": round((c.test_accuracy - f32.test_accuracy) * 100, 4)}
        if written.timed and c.error is None:
            from .quantize import batch1_latency_us, latency_verdict

            t = time.perf_counter()
            lat = batch1_latency_us({"float32": job.source, row.precision: job.path}, self.ref.random_x[1],
                                    runs=self.latency_runs)
            self.timings["latency_s"] = time.perf_counter() - t
            fast_us, float_us = lat[row.precision]["median_us"], lat["float32"]["median_us"]
            extra.update(latency_batch1=lat, faster_than_float32=fast_us < float_us,
                         latency_verdict=latency_verdict(fast_us, float_us))
        self.record(VariantResult, c, parity.variant_problem(c, f32.test_accuracy, self.max_drop), **extra)
