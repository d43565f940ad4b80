"""The whole `toolkit predict` run: decode in worker processes, predict in batches, stream results.

Pipeline: the file list is built first (cheap: names only). Decoding runs in worker
processes (one per usable CPU), each taking a chunk of paths and returning packed uint8
pixels; at most four chunks per worker are in flight, so memory stays bounded whatever
the number of images. The main process assembles batches, runs ONNX Runtime and
writes rows as they come, in input order. Small runs decode in-process: starting
workers costs more than it saves.

Ending: the workers belong to the run and are killed, never waited for, however it ends
(finished, an error, Ctrl-C/SIGTERM/SIGHUP, a worker lost): waiting on a worker is how a run
hangs. A worker whose parent is killed outright (SIGKILL, no cleanup) dies with it (Linux's
PR_SET_PDEATHSIG). Rows already written are kept when a signal or a lost worker ends the run.

Start-up order: the workers are forked first, while this process has no onnxruntime
threads (forking a process that runs ORT's thread pools is not safe), and start decoding
at once; then ORT is imported, the session built and its contract read through ORT's
metadata map, and the preprocessing it names is announced to the workers (an Event and
shared memory). Only the images decoded meanwhile wait, as gray levels, to be normalised.
Measured with `toolkit predict` over 10,000 MNIST PNGs on the 2-core build machine
(medians of 5-6 runs): 1.10 s this way; 1.21-1.29 s when the workers got their first
chunks only once the session was open; 1.59 s with a forkserver pool, which would let ORT
be imported at any time but whose workers re-import numpy and Pillow. Nothing here
imports torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_file, check_writable
from ..errors import EXIT_OK, EXIT_PARTIAL, ImageError, ToolkitError
from ..machine import usable_cpus
from ..preprocess import MNIST, PreprocessSpec, is_blank, to_model_pixels
from ..runtime import non_finite_rows
from .decode import bombs_refused, decode_gray, read_gray, read_gray_unguarded, to_gray
from .inputs import collect
from .output import ResultWriter, check_output, default_confusion_path, output_format, top_k_indices, write_confusion_png

DEFAULT_BATCH_SIZE = 256
# Below this many files, decoding in this process beats starting worker processes.
POOL_MIN_FILES = 512
MAX_CHUNK = 256
# More decoding processes than this many per usable CPU only contend for the same cores (and memory).
WORKERS_PER_CPU = 4


class NoImages(ToolkitError):
    """None of the given paths holds an image file."""


class WorkerDied(ToolkitError):
    """A decoding worker process ended abnormally; the rows predicted before its chunk are kept (``summary``)."""

    def __init__(self, message: str, start: int, summary: "Summary | None" = None):
        super().__init__(message)
        self.start, self.summary = start, summary


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM stopped the run; ``summary`` describes what was done and kept."""

    def __init__(self, summary: "Summary"):
        super().__init__()
        self.summary = summary

    def __str__(self) -> str:
        s = self.summary
        if s.output is not None:
            return f"interrupted; {s.rows_written} complete row(s) kept in {s.output}"
        return f"interrupted after {s.images} image(s); no --output file was asked for"


# ---------------------------------------------------------------- one image

def prepare(image, spec: PreprocessSpec = MNIST) -> np.ndarray:
    """Any image -> (H, W) uint8 pixels in the model's format (for the drawing pad and other callers).

    ``image``: a path, encoded bytes, a Pillow image (any mode), or a 2-D uint8 gray array.
    Raises ImageError for files/bytes that cannot be decoded.
    """
    if isinstance(image, (str, os.PathLike)):
        gray = read_gray(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        gray = decode_gray(bytes(image))
    elif isinstance(image, np.ndarray):
        gray = image
    else:
        gray = to_gray(image)
    return to_model_pixels(gray, spec)


# ---------------------------------------------------------------- results

@dataclass
class Summary:
    images: int = 0
    blank: int = 0  # of ``images``: no ink found, so no label (never counted in the confusion matrix)
    skipped: int = 0
    ignored: int = 0
    seconds: float = 0.0
    provider: str = ""
    classes: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = None
    output: Path | None = None
    rows_written: int = 0
    confusion_png: Path | None = None
    interrupted: bool = False

    @property
    def labelled(self) -> int:
        return int(self.confusion.sum()) if self.confusion is not None else 0

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion)) if self.confusion is not None else 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.skipped else EXIT_OK


class Reporter:
    """What a front end hears during a run; every method is optional to override."""

    def notice(self, text: str) -> None: ...

    def begin(self, files: list[str], classes: list[str], top_k: int) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...

    def predicted(self, paths: list[str], expected: list, probs: np.ndarray, top: np.ndarray,
                  blank: np.ndarray) -> None:
        """``blank[i]``: image i has no ink; its ``probs``/``top`` row is no prediction and must not be shown as one."""

    def advance(self, files_done: int) -> None: ...

    def end(self, summary: Summary) -> None: ...


# ---------------------------------------------------------------- decoding workers

# In a worker: the parent's announcement of the model's preprocessing (an Event, and the spec's
# JSON in shared memory).
_announced = None


def _announced_spec(wait: bool) -> PreprocessSpec | None:
    spec_ready, spec_json = _announced
    if not spec_ready.wait(None if wait else 0):
        return None
    return PreprocessSpec.from_dict(json.loads(spec_json.value))


def _decode_chunk(paths: list[str], spec: PreprocessSpec | None):
    """(indices decoded, their pixels as bytes, [(index, reason)] for the rest).

    ``spec`` None (in a worker): decode now, normalise once the parent announces the spec; only
    the images decoded while its session opens wait as gray levels.
    """
    ok: list[int] = []
    pixels: list[np.ndarray] = []
    bad: list[tuple[int, str]] = []
    held: list[tuple[int, np.ndarray]] = []
    with bombs_refused():
        for i, path in enumerate(paths):
            try:
                held.append((i, read_gray_unguarded(path)))
            except ImageError as e:
                bad.append((i, e.reason))
            except Exception as e:  # one odd file must never end a run over thousands
                bad.append((i, f"could not be processed ({type(e).__name__}: {e})"))
            spec = spec or _announced_spec(wait=False)
            if spec is not None:
                _normalise(held, spec, ok, pixels, bad)
    _normalise(held, spec or _announced_spec(wait=True), ok, pixels, bad)
    return ok, b"".join(p.tobytes() for p in pixels), sorted(bad)


def _normalise(held, spec, ok, pixels, bad) -> None:
    """Move the ``held`` gray levels into ``pixels`` as model pixels (or into ``bad``)."""
    for i, gray in held:
        try:
            pixels.append(to_model_pixels(gray, spec))
            ok.append(i)
        except Exception as e:
            bad.append((i, f"could not be processed ({type(e).__name__}: {e})"))
    held.clear()


def _worker(files, tasks, results, announced, parent: int) -> None:
    """A decoding process: reads (start, stop) chunks of ``files`` from ``tasks`` until told to stop."""
    global _announced
    _announced = announced
    if sys.platform.startswith("linux"):
        import ctypes

        # A parent killed by SIGKILL runs no cleanup: the kernel then kills this worker too.
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG from <linux/prctl.h>
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)
    # Ctrl-C and a hangup reach the whole process group; only the parent decides what happens then.
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _Stop.SIGNALS)  # blocked by the parent around the fork
    try:
        while (task := tasks.recv()) is not None:
            results.send(_decode_chunk(files[task[0]:task[1]], None))
    except (EOFError, OSError):  # the parent is gone or stopped reading
        pass


class _Decoder:
    """Decodes ``files`` in chunks, yielded in file order: in worker processes, or here when ``workers`` is 0.

    The workers belong to this run alone: each gets its chunks round-robin through its own pipe
    (a chunk is two indices: forked workers already hold the file list) and answers through
    another, at most AHEAD chunks each in flight, so memory stays bounded whatever the number of
    images. ``close`` kills them: never waiting for a worker is what keeps an interrupted run, or
    one whose worker died, from hanging. A worker the parent loses (SIGKILL) dies with it.
    """

    AHEAD = 4

    def __init__(self, files: list[str], workers: int):
        self.files, self.spec = files, None
        self.size = max(8, min(MAX_CHUNK, math.ceil(len(files) / max(1, workers * self.AHEAD))))
        self.starts = range(0, len(files), self.size)
        self.workers: list[tuple] = []  # (process, task sender, result receiver)
        if workers == 0:
            return
        # fork is cheap and needs no re-import; elsewhere (Windows, macOS) spawn is the safe default.
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.spec_ready, self.spec_json = ctx.Event(), ctx.Array("c", 1 << 16)  # a spec's JSON: a few hundred bytes
        import ctypes  # noqa: F401  (imported once here rather than in every forked worker)

        # Blocked while forking: a forked child runs the parent's signal handlers (and would print
        # the parent's stack in a traceback) until _worker has set its own.
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, _Stop.SIGNALS) if hasattr(signal, "pthread_sigmask") else None
        try:
            for _ in range(workers):
                task_recv, task_send = ctx.Pipe(duplex=False)
                result_recv, result_send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, daemon=True, args=(
                    files, task_recv, result_send, (self.spec_ready, self.spec_json), os.getpid()))
                proc.start()
                # Only the worker keeps its ends: when it dies, reading its results gives EOF at once.
                task_recv.close()
                result_send.close()
                self.workers.append((proc, task_send, result_recv))
            # Enough chunks to keep every worker busy (also while this process is still loading the model).
            for k in range(min(len(self.starts), workers * self.AHEAD)):
                self._send(k)
        except BaseException:
            self.close()
            raise
        finally:
            if masked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, masked)

    def announce(self, spec: PreprocessSpec) -> None:
        """Tell the workers the model's preprocessing (they decode meanwhile and wait for it to normalise)."""
        if self.workers:
            self.spec_json.value = spec.to_json().encode()
            self.spec_ready.set()
        else:
            self.spec = spec

    def _send(self, k: int) -> None:
        start = self.starts[k]
        with contextlib.suppress(OSError):  # a dead worker: reported when its next chunk is awaited
            self.workers[k % len(self.workers)][1].send((start, min(start + self.size, len(self.files))))

    def __iter__(self):
        """Yield (start, ok, pixel bytes, bad) per chunk, in file order; WorkerDied when a worker is lost."""
        for k, start in enumerate(self.starts):
            if not self.workers:
                yield (start, *_decode_chunk(self.files[start:start + self.size], self.spec))
                continue
            if k + len(self.workers) * self.AHEAD < len(self.starts):
                self._send(k + len(self.workers) * self.AHEAD)
            yield (start, *self._receive(k, start))

    def _receive(self, k: int, start: int):
        from multiprocessing.connection import wait

        proc, _, results = self.workers[k % len(self.workers)]
        wait([results, proc.sentinel])  # an answer, or the worker's end
        try:
            return results.recv()
        except (EOFError, OSError):
            proc.join(1)
            code = proc.exitcode
            how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"ended (exit code {code})")
            raise WorkerDied(f"a decoding worker process (pid {proc.pid}) {how} while reading {self.files[start]}",
                             start) from None

    def close(self) -> None:
        """Kill the workers (idle or not) and reap them; safe to call twice."""
        for proc, tasks, results in self.workers:
            with contextlib.suppress(Exception):
                proc.kill()
            tasks.close()
            results.close()
        for proc, _, _ in self.workers:
            proc.join(5)
        self.workers = []


# ---------------------------------------------------------------- interrupts

class _Stop:
    """SIGINT, SIGTERM and SIGHUP while a run goes on: the first asks it to stop after the chunk in
    hand; a second stops it at once, by a KeyboardInterrupt raised at most once, only while armed
    (images streaming). Before that (forking, importing ORT: a KeyboardInterrupt inside a C
    extension's import surfaces as an ImportError) and after (keeping results, killing workers)
    signals are only noted. Signals ignored when the run starts (e.g. SIGHUP under nohup) stay ignored.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.requested = False
        self.armed = False
        self.saved: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and self.armed:
            self.armed = False
            raise KeyboardInterrupt
        self.requested = True


    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self.saved[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- the run

def predict_paths(paths, *, model: str | os.PathLike = "model.onnx", provider: str = "auto",
                  batch_size: int = DEFAULT_BATCH_SIZE, top_k: int = 3, output: str | os.PathLike | None = None,
                  confusion: str | os.PathLike | None = None, force: bool = False, workers: int | None = None,
                  reporter: Reporter | None = None, flags=None) -> Summary:
    """Predict every image under ``paths``; see docs/predict.md for the rules and outputs.

    ``flags`` (toolkit.flags.PreprocessFlags) describe a model that carries no toolkit contract.

    Raises ModelError/OutputError/ProviderUnavailable/NoImages before any work when the run
    cannot succeed, and PredictInterrupted (a KeyboardInterrupt) after keeping partial results.
    """
    started = time.perf_counter()
    reporter = reporter or Reporter()
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    out_path = check_output(output, force=force) if output is not None else None
    png_path = Path(confusion) if confusion is not None else (default_confusion_path(out_path) if out_path else None)
    if png_path is not None and (confusion is not None or png_path.exists()):
        check_writable(png_path, force=force)

    inputs = collect(paths)
    files = require_files(inputs, reporter)
    if workers is None:
        workers = usable_cpus() if len(files) >= POOL_MIN_FILES else 0
    elif workers > WORKERS_PER_CPU * usable_cpus():
        cap = WORKERS_PER_CPU * usable_cpus()
        reporter.notice(f"--workers {workers} capped at {cap} ({WORKERS_PER_CPU} per usable CPU, {usable_cpus()} "
                        "usable): more decoding processes only contend for the same cores")
        workers = cap
    outcome = None
    with _Stop() as stop:
        with contextlib.ExitStack() as stack:
            # Forked before ORT is imported (see the module's docstring); killed, never awaited, however the run ends.
            decoder = _Decoder(files, workers if len(files) > 1 else 0)
            stack.callback(decoder.close)
            from ..runtime import Predictor

            # With decoding workers on every core, more ORT threads only contend with them: one
            # thread per four cores measured faster than ORT's default on the 2-core build machine.
            threads = max(1, usable_cpus() // 4) if decoder.workers else None
            predictor = Predictor.open(model, provider, threads, flags=flags)
            decoder.announce(predictor.contract.preprocess)
            classes = predictor.classes
            top_k = min(top_k, len(classes))
            summary = Summary(provider=predictor.provider, classes=classes, skipped=len(inputs.skipped),
                              ignored=len(inputs.ignored), output=out_path)
            begin_report(reporter, predictor, inputs, classes, top_k)
            writer = None
            if out_path is not None:
                # The output's temporary file is removed by the stack on any error, and renamed otherwise.
                writer = ResultWriter(stack.enter_context(atomic_file(out_path, replace=force)), output_format(out_path),
                                      classes, top_k)
            try:
                try:
                    stop.armed = True
                    outcome = _stream(inputs, decoder, predictor, batch_size, top_k, summary, writer, reporter, stop)
                finally:
                    stop.armed = False
            except KeyboardInterrupt:  # the second signal
                outcome = "interrupted"
            decoder.close()
            summary.interrupted = outcome is not None
            if writer:
                writer.finish()
                summary.rows_written = writer.rows
        if summary.labelled and png_path is not None and not summary.interrupted:
            acc = summary.accuracy * 100
            write_confusion_png(png_path, summary.confusion, summary.classes,
                                f"confusion matrix: {acc:.2f}% correct of {summary.labelled} labelled images",
                                replace=force)
            summary.confusion_png = png_path
        summary.seconds = time.perf_counter() - started
        reporter.end(summary)
        if isinstance(outcome, WorkerDied):
            rest = len(files) - outcome.start
            kept = f"; the {summary.rows_written} row(s) before them are in {out_path}" if out_path else ""
            raise WorkerDied(f"{outcome}; {rest} file(s) not processed, {files[outcome.start]} to {files[-1]} in "
                             f"input order{kept}; --workers 0 decodes in this process and shows which file it is",
                             outcome.start, summary)
        if outcome:
            raise PredictInterrupted(summary)
    return summary


def _stream(inputs, decoder, predictor, batch_size, top_k, summary, writer, reporter, stop):
    """Predict and write every decoded chunk in order. Returns None when all were read, "interrupted"
    when a signal asked to stop (the chunk in hand is finished), or the WorkerDied that lost a chunk
    (every image decoded before it is still predicted)."""
    files = inputs.files
    spec = predictor.contract.preprocess
    index = {c: i for i, c in enumerate(predictor.classes)}
    # A file's true label is its folder's name when that is a class (see inputs.expected_label).
    labels = [name if name in index else None for name in inputs.parents]
    summary.confusion = np.zeros((len(index), len(index)), dtype=np.int64)
    lookup = spec.lookup_table()

    def run_batch(picked: list[int], pixels: np.ndarray) -> None:
        # == predictor.probabilities(pixels), with normalisation by table (bit-identical, cheaper)
        logits = predictor.logits(spec.arrange(lookup[pixels]))
        record_batch(files, labels, index, top_k, summary, writer, reporter, predictor, picked, logits, is_blank(pixels))

    pending: list[int] = []  # file indices decoded but not yet predicted
    pending_pixels: list[np.ndarray] = []
    chunks = iter(decoder)
    while not stop.requested:
        try:
            start, ok, pixel_bytes, bad = next(chunks, (None,) * 4)
        except WorkerDied as died:
            if stop.requested:  # a signal to the whole process group reached the worker too
                return "interrupted"
            if pending:
                run_batch(pending, np.concatenate(pending_pixels))
            return died
        if start is None:
            break
        for i, reason in bad:
            reporter.skipped(files[start + i], reason)
        summary.skipped += len(bad)
        if ok:
            pending += [start + i for i in ok]
            pending_pixels.append(np.frombuffer(pixel_bytes, dtype=np.uint8).reshape(len(ok), spec.height, spec.width))
        while len(pending) >= batch_size:
            pixels = np.concatenate(pending_pixels) if len(pending_pixels) > 1 else pending_pixels[0]
            run_batch(pending[:batch_size], pixels[:batch_size])
            pending = pending[batch_size:]
            pending_pixels = [pixels[batch_size:]] if pending else []
        reporter.advance(len(ok) + len(bad))
    else:
        return "interrupted"
    if pending:
        run_batch(pending, np.concatenate(pending_pixels))
    return None


def record_batch(files, labels, index, top_k, summary, writer, reporter, predictor, picked: list[int],
                 logits: np.ndarray, blank: np.ndarray) -> None:
    """Turn one batch of model outputs into rows, counts and the confusion matrix (every engine calls this).

    ``picked``: the batch's file indices, in output order; ``labels[i]``: file i's expected class or None;
    ``index``: class name -> column; ``blank[j]``: no ink in image j (no label, whatever the model said);
    ``predictor``: only its ``to_probabilities`` is used (the model itself may have run elsewhere).
    """
    bad = non_finite_rows(logits)
    if bad:  # NaN/Inf is no prediction, whatever its argmax: those images are skipped, the others kept
        for i in bad:
            kind = "NaN" if np.isnan(logits[i]).any() else "Inf"
            reporter.skipped(files[picked[i]], f"the model's output for this image is {kind}, not a prediction")
        summary.skipped += len(bad)
        keep = np.ones(len(picked), dtype=bool)
        keep[bad] = False
        picked, blank, logits = [f for f, k in zip(picked, keep) if k], blank[keep], logits[keep]
        if not picked:
            return
    probs = predictor.to_probabilities(logits)
    top = top_k_indices(probs, top_k)
    paths = [files[i] for i in picked]
    expected = [labels[i] for i in picked]
    labelled = [i for i, e in enumerate(expected) if e is not None and not blank[i]]
    if labelled:
        np.add.at(summary.confusion, ([index[expected[i]] for i in labelled], top[labelled, 0]), 1)
    if writer:
        writer.write(paths, expected, probs, top, blank)
    summary.images += len(paths)
    summary.blank += int(blank.sum())
    reporter.predicted(paths, expected, probs, top, blank)


def require_files(inputs, reporter) -> list:
    """The files to predict; NoImages (with the skipped ones reported) when there are none."""
    if not inputs.files:
        for path, reason in inputs.skipped:
            reporter.skipped(path, reason)
        raise NoImages("nothing to predict: no image files in the given path(s)"
                       + (f" ({len(inputs.ignored)} non-image file(s) ignored)" if inputs.ignored else ""))
    return inputs.files


def begin_report(reporter, predictor, inputs, classes: list[str], top_k: int) -> None:
    """What every engine says before its first row: notices, the table's head, the files already skipped."""
    if predictor.notice:
        reporter.notice(predictor.notice)
    for note in inputs.notes:
        reporter.notice(note)
    reporter.begin(inputs.files, classes, top_k)
    for path, reason in inputs.skipped:
        reporter.skipped(path, reason)
