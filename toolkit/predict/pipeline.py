"""The whole `toolkit predict` run: decode in worker processes, predict in batches, stream results.

Pipeline: the file list is built first (cheap: names only). Decoding runs in worker
processes (one per usable CPU), each taking a chunk of paths and returning packed uint8
pixels; at most four chunks per worker are in flight, so memory stays bounded whatever
the number of images. The main process assembles batches, runs ONNX Runtime and
writes rows as they come, in input order. Small runs decode in-process: starting
workers costs more than it saves.

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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_file, check_writable
from ..errors import EXIT_OK, EXIT_PARTIAL, ImageError, ToolkitError
from ..machine import usable_cpus
from ..preprocess import MNIST, PreprocessSpec, is_blank, to_model_pixels
from ..runtime import softmax
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
    """A decoding worker process ended abnormally."""


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM stopped the run; ``summary`` describes what was done and kept."""

    def __init__(self, summary: "Summary"):
        super().__init__()
        self.summary = summary


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
# JSON in shared memory; empty when the run was abandoned before the session opened).
_announced = None


def _worker_init(announced) -> None:
    global _announced
    _announced = announced
    # Ctrl-C reaches the whole process group; only the parent decides what happens then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _announced_spec(wait: bool) -> PreprocessSpec | None:
    spec_ready, spec_json = _announced
    if not spec_ready.wait(None if wait else 0) or not spec_json.value:
        return None
    return PreprocessSpec.from_dict(json.loads(spec_json.value))


def _decode_chunk(paths: list[str], spec: PreprocessSpec | None):
    """Runs in a worker: (indices decoded, their pixels as bytes, [(index, reason)] for the rest).

    ``spec`` None: decode now, normalise once the parent announces the spec; only the images
    decoded while its session opens wait as gray levels.
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
    spec = spec or _announced_spec(wait=True)
    if spec is None:
        return [], b"", []  # the run was abandoned before its session opened
    _normalise(held, spec, ok, pixels, bad)
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


def _start_pool(workers: int):
    # A ProcessPoolExecutor rather than multiprocessing.Pool: when a worker dies (killed, out of
    # memory) its futures fail with BrokenProcessPool instead of waiting forever.
    from concurrent.futures import ProcessPoolExecutor

    # fork is cheap and needs no re-import; elsewhere (Windows, macOS) spawn is the safe default.
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    announced = ctx.Event(), ctx.Array("c", 1 << 16)  # a spec's JSON takes a few hundred bytes
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(announced,))
    return pool, announced


class _ChunkDecoder:
    """Decodes ``files`` in chunks, in order; with a pool, submission starts at construction."""

    def __init__(self, files: list[str], spec: PreprocessSpec | None, pool, workers: int):
        self.files, self.spec, self.pool = files, spec, pool
        self.size = max(8, min(MAX_CHUNK, math.ceil(len(files) / max(1, workers * 4))))
        self.starts = iter(range(0, len(files), self.size))
        self.pending: deque = deque()
        if pool is not None:
            # Enough chunks to keep every worker busy (also while the main process is still loading
            # the model), few enough that memory stays bounded whatever the number of images.
            for _ in range(workers * 4):
                if not self._submit():
                    break

    def _submit(self) -> bool:
        start = next(self.starts, None)
        if start is None:
            return False
        chunk = self.files[start:start + self.size]
        self.pending.append((start, self.pool.submit(_decode_chunk, chunk, self.spec)))
        return True

    def __iter__(self):
        """Yield (start, ok, pixel bytes, bad) per chunk, in file order."""
        if self.pool is None:
            for start in self.starts:
                yield (start, *_decode_chunk(self.files[start:start + self.size], self.spec))
            return
        from concurrent.futures.process import BrokenProcessPool

        while self.pending:
            start, future = self.pending.popleft()
            try:
                ok, pixels, bad = future.result()
                self._submit()
            except BrokenProcessPool:
                last = min(start + self.size, len(self.files)) - 1
                raise WorkerDied(f"a decoding worker process died (killed, or out of memory?) while reading "
                                 f"{self.files[start]} ... {self.files[last]}; --workers 0 decodes in this "
                                 "process and shows which file it is") from None
            yield start, ok, pixels, bad


# ---------------------------------------------------------------- interrupts

@contextlib.contextmanager
def _deferred_interrupts():
    """First Ctrl-C/SIGTERM asks the loop to stop at the next batch boundary; a second one stops at once."""
    state = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True

    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: state["requested"]
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- the run

def predict_paths(paths, *, model: str | os.PathLike = "model.onnx", provider: str = "auto",
                  batch_size: int = DEFAULT_BATCH_SIZE, top_k: int = 3, output: str | os.PathLike | None = None,
                  confusion: str | os.PathLike | None = None, force: bool = False, workers: int | None = None,
                  reporter: Reporter | None = None) -> Summary:
    """Predict every image under ``paths``; see docs/predict.md for the rules and outputs.

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
    files = inputs.files
    if not files:
        for path, reason in inputs.skipped:
            reporter.skipped(path, reason)
        raise NoImages("nothing to predict: no image files in the given path(s)"
                       + (f" ({len(inputs.ignored)} non-image file(s) ignored)" if inputs.ignored else ""))
    if workers is None:
        workers = usable_cpus() if len(files) >= POOL_MIN_FILES else 0
    elif workers > WORKERS_PER_CPU * usable_cpus():
        cap = WORKERS_PER_CPU * usable_cpus()
        reporter.notice(f"--workers {workers} capped at {cap} ({WORKERS_PER_CPU} per usable CPU, {usable_cpus()} "
                        "usable): more decoding processes only contend for the same cores")
        workers = cap
    with contextlib.ExitStack() as stack:
        pool = decoder = None
        if workers > 0 and len(files) > 1:
            pool, (spec_ready, spec_json) = _start_pool(workers)
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            stack.callback(spec_ready.set)  # on failure, workers waiting for a spec get none and stop
            decoder = _ChunkDecoder(files, None, pool, workers)  # forks the workers: no ORT threads yet
        from ..runtime import Predictor

        # With decoding workers on every core, more ORT threads only contend with them: one
        # thread per four cores measured faster than ORT's default on the 2-core build machine.
        threads = max(1, usable_cpus() // 4) if pool is not None else None
        predictor = Predictor.open(model, provider, threads)
        if pool is None:
            decoder = _ChunkDecoder(files, predictor.contract.preprocess, None, 0)
        else:
            spec_json.value = predictor.contract.preprocess.to_json().encode()
            spec_ready.set()
        classes = predictor.classes
        top_k = min(top_k, len(classes))
        summary = Summary(provider=predictor.provider, classes=classes, skipped=len(inputs.skipped),
                          ignored=len(inputs.ignored), output=out_path)
        if predictor.notice:
            reporter.notice(predictor.notice)
        for note in inputs.notes:
            reporter.notice(note)
        reporter.begin(files, classes, top_k)
        for path, reason in inputs.skipped:
            reporter.skipped(path, reason)
        writer = None
        if out_path is not None:
            # The output's temporary file is removed by the stack on any error, and renamed otherwise.
            writer = ResultWriter(stack.enter_context(atomic_file(out_path)), output_format(out_path), classes, top_k)
        try:
            with _deferred_interrupts() as stop_requested:
                _stream(inputs, decoder, predictor, batch_size, top_k, summary, writer, reporter, stop_requested)
                summary.interrupted = stop_requested()
        except KeyboardInterrupt:
            summary.interrupted = True
        if writer:
            writer.finish()
            summary.rows_written = writer.rows
    if summary.labelled and png_path is not None and not summary.interrupted:
        acc = summary.accuracy * 100
        write_confusion_png(png_path, summary.confusion, summary.classes,
                            f"confusion matrix: {acc:.2f}% correct of {summary.labelled} labelled images")
        summary.confusion_png = png_path
    summary.seconds = time.perf_counter() - started
    reporter.end(summary)
    if summary.interrupted:
        raise PredictInterrupted(summary)
    return summary


def _stream(inputs, decoder, predictor, batch_size, top_k, summary, writer, reporter, stop_requested):
    files = inputs.files
    spec = predictor.contract.preprocess
    index = {c: i for i, c in enumerate(predictor.classes)}
    # A file's true label is its folder's name when that is a class (see inputs.expected_label).
    labels = [name if name in index else None for name in inputs.parents]
    summary.confusion = np.zeros((len(index), len(index)), dtype=np.int64)
    lookup = spec.lookup_table()

    def run_batch(picked: list[int], pixels: np.ndarray) -> None:
        # == predictor.probabilities(pixels), with normalisation by table (bit-identical, cheaper)
        probs = softmax(predictor.logits(lookup[pixels][:, None, :, :]).astype(np.float32))
        top = top_k_indices(probs, top_k)
        paths = [files[i] for i in picked]
        expected = [labels[i] for i in picked]
        blank = is_blank(pixels)
        labelled = [i for i, e in enumerate(expected) if e is not None and not blank[i]]
        if labelled:
            np.add.at(summary.confusion, ([index[expected[i]] for i in labelled], top[labelled, 0]), 1)
        if writer:
            writer.write(paths, expected, probs, top, blank)
        summary.images += len(paths)
        summary.blank += int(blank.sum())
        reporter.predicted(paths, expected, probs, top, blank)

    pending: list[int] = []  # file indices decoded but not yet predicted
    pending_pixels: list[np.ndarray] = []
    for start, ok, pixel_bytes, bad in decoder:
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
        if stop_requested():
            return
    if pending:
        run_batch(pending, np.concatenate(pending_pixels))
