"""The whole `toolkit predict` run, for every engine: checks, the model, the output, the stop guard, the
loop over the engine's batches, the confusion-matrix PNG and the Summary.

An engine (local.LocalEngine: worker processes on this machine; ray.RayEngine: a Ray cluster) lists the
inputs, opens the model where it fits its start-up, and yields input-ordered Batches of model outputs;
everything a user sees or gets from the run is decided here and in recorder.Recorder, once for all engines.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file, atomic_folder, check_writable, destination, publish
from ..errors import NoImages, OutputError, PredictInterrupted, RunFailed, WorkerDied
from ..run_guard import kept_if_stuck
from .inputs import Inputs
from .local import LocalEngine
from .output import PARQUET, ResultWriter, default_confusion_path, output_format, write_confusion_png
from .recorder import Recorder
from .results import DEFAULT_BATCH_SIZE, Reporter, Summary
from .signals import StopGuard


@dataclass(frozen=True)
class Options:
    """What `toolkit predict` is asked to do (its command-line options); see docs/predict.md."""

    model: str | os.PathLike = "model.onnx"
    provider: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    top_k: int = 3
    output: str | os.PathLike | None = None
    confusion: str | os.PathLike | None = None
    force: bool = False
    flags: object = None  # toolkit.flags.PreprocessFlags: a model that carries no toolkit contract
    engine: str = "local"  # or "ray"
    workers: int | None = None  # local engine: decoding processes (None: one per usable CPU for a large run)
    address: str | None = None  # ray engine: the cluster to join (None: a local Ray instance)
    jpeg_draft: bool = False  # local engine, image models: JPEGs decoded at a reduced DCT scale (changes pixels)
    run_timeout: float | None = None  # seconds per batch (toolkit.run_guard; None: its default, 0: no limit)


@dataclass
class Job:
    """One run's state as the engine sees it."""

    inputs: Inputs
    options: Options
    reporter: Reporter
    stop: StopGuard
    predictor: object = None  # runtime.Predictor, once the engine opened the model
    writer: object = None  # ResultWriter, a Parquet sink, or None


def predict_paths(paths, *, reporter: Reporter | None = None, **options) -> Summary:
    """Predict every image under ``paths``; ``options`` are Options' fields. See ``run``."""
    return run(paths, Options(**options), reporter)


def make_engine(options: Options):
    if options.engine == "ray":
        from .ray.engine import RayEngine

        return RayEngine(options.address)
    if options.engine != "local":
        raise ValueError("engine must be 'local' or 'ray'")
    return LocalEngine(options.workers)


def run(paths, options: Options, reporter: Reporter | None = None) -> Summary:
    """Predict every image under ``paths``; see docs/predict.md for the rules and outputs.

    Raises ModelError/OutputError/ProviderUnavailable/NoImages/ClusterUnavailable before any work when the run
    cannot succeed, WorkerDied after keeping the rows before the lost chunk, and PredictInterrupted (a
    KeyboardInterrupt) after keeping partial results.
    """
    started = time.perf_counter()
    reporter = reporter or Reporter()
    if options.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if options.top_k < 1:
        raise ValueError("top_k must be at least 1")
    engine = make_engine(options)
    out_path = engine.check_output(options.output, options.force) if options.output is not None else None
    png_path = confusion_path(options, out_path)
    inputs = engine.collect(paths)
    if out_path is not None and out_path.suffix.lower() == PARQUET:
        from .ray.parquet import refuse_inputs_inside

        refuse_inputs_inside(out_path, paths, inputs.files)
    require_files(inputs, reporter)
    with StopGuard() as stop:
        job = Job(inputs, options, reporter, stop)
        with contextlib.ExitStack() as stack:
            # Runs after the engine's own exits (the stack is last in, first out): after Ray stopped.
            stack.callback(lambda: getattr(job.writer, "sweep", lambda: None)())
            job.predictor = engine.open(job, stack)
            summary = Summary(provider=job.predictor.provider, classes=job.predictor.classes,
                              skipped=len(inputs.skipped), ignored=len(inputs.ignored), output=out_path,
                              startup_seconds=getattr(engine, "startup_seconds", 0.0))
            top_k = min(options.top_k, len(summary.classes))
            recorder = Recorder(inputs, summary, job.predictor.contract.output_kind, top_k, reporter)
            begin_report(reporter, job.predictor, inputs, top_k)
            if out_path is not None:
                # The output's temporary file is removed by the stack on any error, and renamed otherwise.
                job.writer = recorder.writer = open_writer(stack, out_path, options, summary.classes, top_k)
            with kept_if_stuck(lambda: keep_when_stuck(job.writer, out_path, options.force)):
                outcome = drive(engine, job, recorder)
            summary.interrupted = outcome is not None
            if job.writer is not None:
                end_output(job.writer, summary)
        if summary.labelled and png_path is not None and not summary.interrupted:
            write_confusion_png(png_path, summary.confusion, summary.classes,
                                f"confusion matrix: {summary.accuracy * 100:.2f}% correct of {summary.labelled} "
                                "labelled images", replace=options.force)
            summary.confusion_png = png_path
        summary.seconds = time.perf_counter() - started
        reporter.end(summary)
        if isinstance(outcome, WorkerDied):
            raise worker_lost(outcome, inputs.files, summary)
        if isinstance(outcome, RunFailed):
            raise run_lost(outcome, summary)
        if outcome:
            raise PredictInterrupted(summary)
    return summary


def drive(engine, job: Job, recorder: Recorder):
    """Record the engine's batches until the last, or a stop. Returns None when every file was accounted for,
    "interrupted" when a signal stopped the run first, or the WorkerDied that lost a chunk."""
    stop = job.stop
    try:
        try:
            stop.armed = True
            for batch in engine.batches(job):
                recorder.record(batch)
                if stop.requested:
                    break
        finally:
            stop.armed = False
    except KeyboardInterrupt:  # the second signal (the first, for output that keeps nothing partial)
        pass
    except WorkerDied as died:
        return "interrupted" if stop.requested else died
    except RunFailed as failed:  # the model stopped (--run-timeout) or failed on a batch: the rows before it stay
        return failed
    return None if recorder.done == len(job.inputs.files) else "interrupted"


def confusion_path(options: Options, out_path: Path | None) -> Path | None:
    """--confusion, or NAME.confusion.png beside --output; checked now, before any work."""
    if options.confusion is not None:
        return check_writable(options.confusion, force=options.force)
    if out_path is None:
        return None
    path = default_confusion_path(out_path)
    return check_writable(path, force=options.force) if path.exists() else path


def open_writer(stack, out_path: Path, options: Options, classes: list[str], top_k: int):
    if out_path.suffix.lower() == PARQUET:  # rows written on the cluster (--engine ray)
        from .ray.parquet import ParquetSink

        from .ray.parquet import not_an_earlier_output

        return ParquetSink(stack.enter_context(atomic_folder(out_path, replace=options.force,
                                                             replaceable=not_an_earlier_output)))
    return ResultWriter(stack.enter_context(atomic_file(out_path, replace=options.force)), output_format(out_path),
                        classes, top_k)


def end_output(writer, summary: Summary) -> None:
    """Keep whole rows only; an interrupted output that cannot keep a part (Parquet) is dropped, and said so."""
    if summary.interrupted and not writer.keeps_partial:
        writer.discard()
        summary.discarded = writer.discarded
        summary.output = None
    writer.finish()
    summary.rows_written = writer.rows


def keep_when_stuck(writer, out_path: Path | None, force: bool) -> str | None:
    """The rows written before a model run that would not stop, kept as an interrupted run keeps them; called
    by the run guard just before it ends the process (no exit handler of the main thread runs then)."""
    if writer is None or not writer.keeps_partial:
        return None
    writer.finish()
    tmp = Path(writer.file.name)
    if destination(out_path).stream:  # a device or descriptor gets the file's bytes only at the end
        return f"the {writer.rows} row(s) before it are in {tmp}"
    try:
        publish(tmp, out_path, replace=force)
    except OutputError as e:
        return str(e)
    return rows_kept(writer.rows, out_path)


def rows_kept(rows: int, output: Path) -> str:
    return f"the {rows} row(s) before it are kept in {output}"


def worker_lost(died: WorkerDied, files: list[str], summary: Summary) -> WorkerDied:
    rest = len(files) - died.start
    kept = f"; the {summary.rows_written} row(s) before them are in {summary.output}" if summary.output else ""
    return WorkerDied(f"{died}; {rest} file(s) not processed, {files[died.start]} to {files[-1]} in input "
                      f"order{kept}; --workers 0 decodes in this process and shows which file it is", died.start,
                      summary)


def run_lost(failed: RunFailed, summary: Summary) -> RunFailed:
    """The model's failure, saying what was kept of the rows before it."""
    if summary.output is not None:
        failed.reason += "; " + rows_kept(summary.rows_written, summary.output)
        failed.args = (f"{failed.path}: {failed.reason}",)
    return failed


def require_files(inputs: Inputs, reporter: Reporter) -> None:
    """NoImages (with the skipped paths reported) when there is nothing to predict."""
    if not inputs.files:
        for path, reason in inputs.skipped:
            reporter.skipped(path, reason)
        raise NoImages("nothing to predict: no image files in the given path(s)"
                       + (f" ({len(inputs.ignored)} non-image file(s) ignored)" if inputs.ignored else ""))


def begin_report(reporter: Reporter, predictor, inputs: Inputs, top_k: int) -> None:
    """What a run says before its first row: notices, the table's head, the files already skipped."""
    if predictor.notice:
        reporter.notice(predictor.notice)
    for note in inputs.notes:
        reporter.notice(note)
    reporter.begin(inputs.files, predictor.classes, top_k)
    for path, reason in inputs.skipped:
        reporter.skipped(path, reason)

