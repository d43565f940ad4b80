"""Batched inference over image files on ONNX Runtime: decode in parallel, predict in batches, stream results.

Library entry points:
  prepare(image)            any image (path, bytes, PIL image, 2-D array) -> 28x28 uint8 model pixels
  predict_paths(paths, ...) the whole `toolkit predict` run; returns a Summary, raises toolkit errors

Pipeline: the file list is built first (cheap: names only). Decoding runs in worker
processes (one per core), each taking a chunk of paths and returning packed uint8
pixels; at most four chunks per worker are in flight, so memory stays bounded whatever
the number of images. The main process assembles batches, runs ONNX Runtime and
writes rows as they come, in input order. Small runs decode in-process: starting
workers costs more than it saves.

Start-up order matters for speed and safety: the workers are forked before onnxruntime
is imported (forking a process that runs ORT's thread pools is not safe), and they get
their first chunks straight away, with the preprocessing read from the model file's
metadata by a small protobuf reader, so decoding overlaps the ORT import and session
creation. The session then validates the contract as always. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
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

from .errors import EXIT_OK, EXIT_PARTIAL, ImageError, ModelError, ToolkitError
from .images import decode_gray, read_gray, to_gray
from .predict_inputs import collect, expected_label
from .predict_output import ResultWriter, check_output, default_confusion_path, top_k_indices, write_confusion_png
from .preprocess import MNIST, PreprocessSpec, to_model_pixels
from .runtime import softmax

DEFAULT_BATCH_SIZE = 256
# Below this many files, decoding in this process beats starting worker processes.
POOL_MIN_FILES = 512
MAX_CHUNK = 256


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


def prepare_file(path: str, spec: PreprocessSpec = MNIST) -> np.ndarray:
    return to_model_pixels(read_gray(path), spec)


# ---------------------------------------------------------------- results

@dataclass
class Summary:
    images: int = 0
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

    def predicted(self, paths: list[str], expected: list, probs: np.ndarray, top: np.ndarray) -> None: ...

    def advance(self, files_done: int) -> None: ...

    def end(self, summary: Summary) -> None: ...


# ---------------------------------------------------------------- decoding workers

def _worker_init() -> None:
    # Ctrl-C reaches the whole process group; only the parent decides what happens then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decode_chunk(paths: list[str], spec_json: str):
    """Runs in a worker: (indices decoded, their pixels as bytes, [(index, reason)] for the rest)."""
    spec = _spec(spec_json)
    out = np.empty((len(paths), spec.height, spec.width), dtype=np.uint8)
    ok: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            out[len(ok)] = prepare_file(path, spec)
            ok.append(i)
        except ImageError as e:
            bad.append((i, e.reason))
        except Exception as e:  # one odd file must never end a run over thousands
            bad.append((i, f"could not be processed ({type(e).__name__}: {e})"))
    return ok, out[:len(ok)].tobytes(), bad


_SPECS: dict[str, PreprocessSpec] = {}


def _spec(spec_json: str) -> PreprocessSpec:
    spec = _SPECS.get(spec_json)
    if spec is None:
        import json

        spec = _SPECS[spec_json] = PreprocessSpec.from_dict(json.loads(spec_json))
    return spec


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _start_pool(workers: int):
    # A ProcessPoolExecutor rather than multiprocessing.Pool: when a worker dies (killed, out of
    # memory) its futures fail with BrokenProcessPool instead of waiting forever.
    from concurrent.futures import ProcessPoolExecutor

    # fork is cheap and needs no re-import; elsewhere (Windows, macOS) spawn is the safe default.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init)
    # With fork the executor starts all workers at its first task: make that happen now, while
    # this process has no onnxruntime threads that a fork could catch holding a lock.
    pool.submit(int)
    return pool


class _ChunkDecoder:
    """Decodes ``files`` in chunks, in order; with a pool, submission starts at construction."""

    def __init__(self, files: list[str], spec_json: str, pool, workers: int):
        self.files, self.spec_json, self.pool = files, spec_json, pool
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
        self.pending.append((start, self.pool.submit(_decode_chunk, chunk, self.spec_json)))
        return True

    def __iter__(self):
        """Yield (start, ok, pixel bytes, bad) per chunk, in file order."""
        if self.pool is None:
            for start in self.starts:
                yield (start, *_decode_chunk(self.files[start:start + self.size], self.spec_json))
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
        from .atomic import check_writable

        check_writable(png_path, force=force)

    inputs = collect(paths)
    files = inputs.files
    if not files:
        for path, reason in inputs.skipped:
            reporter.skipped(path, reason)
        raise NoImages("nothing to predict: no image files in the given path(s)"
                       + (f" ({len(inputs.ignored)} non-image file(s) ignored)" if inputs.ignored else ""))
    if workers is None:
        workers = default_workers() if len(files) >= POOL_MIN_FILES else 0
    pool = _start_pool(workers) if workers > 0 and len(files) > 1 else None
    try:
        # Head start: the preprocessing read straight from the file lets the workers decode
        # while onnxruntime is imported and the session built (the contract is checked below).
        early = _early_spec(model)
        decoder = _ChunkDecoder(files, early.to_json(), pool, workers) if early and pool else None
        from .runtime import Predictor

        # With decoding workers on every core, more ORT threads only contend with them: one
        # thread per four cores measured faster than ORT's default on the 2-core build machine.
        threads = max(1, default_workers() // 4) if pool is not None else None
        predictor = Predictor.open(model, provider, threads)
        spec = predictor.contract.preprocess
        if decoder is None:
            decoder = _ChunkDecoder(files, spec.to_json(), pool, workers)
        elif spec != early:
            raise ModelError(model, "its metadata changed while it was being loaded; run again")
        summary = Summary(provider=predictor.provider, classes=predictor.classes, skipped=len(inputs.skipped),
                          ignored=len(inputs.ignored), output=out_path)
        if predictor.notice:
            reporter.notice(predictor.notice)
        for note in inputs.notes:
            reporter.notice(note)
        reporter.begin(files, predictor.classes, min(top_k, len(predictor.classes)))
        for path, reason in inputs.skipped:
            reporter.skipped(path, reason)
        writer = ResultWriter(out_path, predictor.classes, min(top_k, len(predictor.classes))).open() if out_path else None
        try:
            with _deferred_interrupts() as stop_requested:
                _stream(files, decoder, predictor, batch_size, min(top_k, len(predictor.classes)),
                        summary, writer, reporter, stop_requested)
                summary.interrupted = stop_requested()
        except KeyboardInterrupt:
            summary.interrupted = True
        except BaseException:
            if writer:
                writer.discard()
            raise
        if writer:
            writer.commit()
            summary.rows_written = writer.rows
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
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


def _early_spec(model) -> PreprocessSpec | None:
    from .contract import ModelContract
    from .predict_meta import read_metadata_props

    meta = read_metadata_props(model)
    if not meta:
        return None
    try:
        return ModelContract.from_metadata(meta, model).preprocess
    except ToolkitError:
        return None  # the session path below reports the problem properly


def _stream(files, decoder, predictor, batch_size, top_k, summary, writer, reporter, stop_requested):
    spec = predictor.contract.preprocess
    classes = predictor.classes
    index = {c: i for i, c in enumerate(classes)}
    summary.confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    folder_labels: dict[str, str | None] = {}

    def labels_by_folder(path: str) -> str | None:
        # one lookup per folder, not per image: paths under a folder share its label
        folder = path[:max(path.rfind("/"), path.rfind(os.sep))]
        if folder not in folder_labels:
            folder_labels[folder] = expected_label(path, index)
        return folder_labels[folder]

    pending_paths: list[str] = []
    pending_pixels: list[np.ndarray] = []
    pending_count = 0

    lookup = spec.lookup_table()

    def run_batch(paths: list[str], pixels: np.ndarray) -> None:
        # == predictor.probabilities(pixels), with normalisation by table (bit-identical, cheaper)
        probs = softmax(predictor.logits(lookup[pixels][:, None, :, :]).astype(np.float32))
        top = top_k_indices(probs, top_k)
        expected = [labels_by_folder(p) for p in paths]
        labelled = [i for i, e in enumerate(expected) if e is not None]
        if labelled:
            np.add.at(summary.confusion, ([index[expected[i]] for i in labelled], top[labelled, 0]), 1)
        if writer:
            writer.write(paths, expected, probs, top)
        summary.images += len(paths)
        reporter.predicted(paths, expected, probs, top)

    for start, ok, pixel_bytes, bad in decoder:
        for i, reason in bad:
            reporter.skipped(files[start + i], reason)
        summary.skipped += len(bad)
        if ok:
            pending_paths += [files[start + i] for i in ok]
            pending_pixels.append(np.frombuffer(pixel_bytes, dtype=np.uint8).reshape(len(ok), spec.height, spec.width))
            pending_count += len(ok)
        while pending_count >= batch_size:
            pixels = np.concatenate(pending_pixels) if len(pending_pixels) > 1 else pending_pixels[0]
            run_batch(pending_paths[:batch_size], pixels[:batch_size])
            pending_paths = pending_paths[batch_size:]
            pending_pixels = [pixels[batch_size:]] if pending_count > batch_size else []
            pending_count -= batch_size
        reporter.advance(len(ok) + len(bad))
        if stop_requested():
            return
    if pending_count:
        run_batch(pending_paths, np.concatenate(pending_pixels))
