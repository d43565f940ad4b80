"""The local engine of `toolkit predict`: decoding in worker processes, the model in this process.

The file list is built first (cheap: names only). Decoding runs in worker processes (one per usable
CPU), each taking a chunk of paths and returning model pixels; at most four chunks per worker are in
flight, so memory stays bounded whatever the number of images. This process assembles batches in input
order and runs ONNX Runtime on them. Small runs decode in-process: starting workers costs more than it saves.

Ending: the workers belong to the run and are killed, never waited for, however it ends (finished, an
error, Ctrl-C/SIGTERM/SIGHUP, a worker lost): waiting on a worker is how a run hangs. A worker whose parent
is killed outright (SIGKILL, no cleanup) dies with it (Linux's PR_SET_PDEATHSIG).

Start-up order: the workers are forked first, while this process has no onnxruntime threads (forking a
process that runs ORT's thread pools is not safe), and start decoding at once; then ORT is imported, the
session built and its contract read through ORT's metadata map, and the preprocessing it names is
announced to the workers (an Event and shared memory). Only the images decoded meanwhile wait, as gray
levels (or RGB images, when the options already say --preprocess image), to be normalised; one decoded for
the other pipeline than the model's is decoded again. Image mode hands over (n, H, W, C) uint8 pixels. Measured with `toolkit predict` over 10,000 MNIST PNGs on the 2-core build
machine (medians of 5-6 runs): 1.10 s this way; 1.21-1.29 s when the workers got their first chunks only
once the session was open; 1.59 s with a forkserver pool, which would let ORT be imported at any time but
whose workers re-import numpy and Pillow.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import sys
from typing import Iterator

import numpy as np

from ..errors import ImageError, WorkerDied
from ..machine import usable_cpus
from ..preprocess import PreprocessSpec, blank_images, model_input, to_model_pixels
from .decode import bombs_refused, read_image_unguarded
from .inputs import collect
from .output import check_output
from .results import Batch
from .signals import SIGNALS, blocked_during_fork

# Below this many files, decoding in this process beats starting worker processes.
POOL_MIN_FILES = 512
MAX_CHUNK = 256
# More decoding processes than this many per usable CPU only contend for the same cores (and memory).
WORKERS_PER_CPU = 4
# How often a run waiting on a worker's chunk looks whether a signal asked it to stop.
POLL_SECONDS = 0.05

# In a worker: the parent's announcement of the model's preprocessing (an Event, and the spec's
# JSON in shared memory).
_announced = None


def _announced_spec(wait: bool) -> PreprocessSpec | None:
    spec_ready, spec_json = _announced
    if not spec_ready.wait(None if wait else 0):
        return None
    return PreprocessSpec.from_dict(json.loads(spec_json.value))


def decode_chunk(paths: list[str], spec: PreprocessSpec | None, mode: str = "digit", draft: bool = False):
    """(positions decoded, their model pixels as one uint8 array (n, ...), [(position, reason)] for the rest).

    ``spec`` None (in a worker): decode now for the pipeline ``mode`` (the options' guess), normalise once the
    parent announces the spec; only the images decoded while its session opens wait, decoded. ``draft``
    (--jpeg-draft): image-mode JPEGs decoded at a reduced DCT scale once the spec is known.
    """
    ok: list[int] = []
    pixels: list[np.ndarray] = []
    bad: list[tuple[int, str]] = []
    held: list[tuple[int, str, object]] = []  # (position, the mode it was decoded for, decoded image)
    with bombs_refused():
        for i, path in enumerate(paths):
            mode = spec.mode if spec is not None else mode
            _decoded(paths, i, (mode, spec if draft else None), held, bad)
            spec = spec or _announced_spec(wait=False)
            if spec is not None:
                _normalise(paths, held, spec, (ok, pixels, bad))
        spec = spec or _announced_spec(wait=True)
        _normalise(paths, held, spec, (ok, pixels, bad))
    stacked = np.stack(pixels) if pixels else np.zeros((0, *spec.pixel_shape), dtype=np.uint8)
    return ok, stacked, sorted(bad)


def _decoded(paths: list[str], i: int, how: tuple, held, bad) -> None:
    """Decode ``paths[i]`` for ``how`` = (mode, the spec a JPEG may be drafted for, or None) into ``held``, or its
    reason into ``bad``."""
    mode, draft = how
    try:
        held.append((i, mode, read_image_unguarded(paths[i], mode, draft)))
    except ImageError as e:
        bad.append((i, e.reason))
    except Exception as e:  # one odd file must never end a run over thousands
        bad.append((i, f"could not be processed ({type(e).__name__}: {e})"))


def _normalise(paths, held, spec, into) -> None:
    """Move the ``held`` decoded images into ``into`` = (ok, pixels, bad) as model pixels (or as reasons); one
    decoded for the other pipeline (before the spec was known) is decoded again for the model's."""
    ok, pixels, bad = into
    while held:
        i, mode, decoded = held.pop(0)
        if mode != spec.mode:
            _decoded(paths, i, (spec.mode, None), held, bad)
            continue
        try:
            pixels.append(to_model_pixels(decoded, spec))
            ok.append(i)
        except Exception as e:
            bad.append((i, f"could not be processed ({type(e).__name__}: {e})"))


def _worker(files, pipes, announced, parent: int, how: tuple) -> None:
    """A decoding process: reads (start, stop) chunks of ``files`` from its task pipe until told to stop."""
    global _announced
    _announced = announced
    tasks, results = pipes
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
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # blocked by the parent around the fork
    try:
        while (task := tasks.recv()) is not None:
            ok, pixels, bad = decode_chunk(files[task[0]:task[1]], None, *how)
            # The pixels go as raw bytes, straight from the array: pickling them would copy a chunk's pixels
            # (38 MB of 224x224 RGB images) once more on each side.
            results.send((ok, pixels.shape, bad))
            results.send_bytes(np.ascontiguousarray(pixels).reshape(-1))  # one byte per element, as sent
    except (EOFError, OSError):  # the parent is gone or stopped reading
        pass


class Decoder:
    """Decodes ``files`` in chunks, yielded in file order: in worker processes, or here when ``workers`` is 0.

    The workers belong to this run alone: each gets its chunks round-robin through its own pipe
    (a chunk is two indices: forked workers already hold the file list) and answers through
    another, at most AHEAD chunks each in flight, so memory stays bounded whatever the number of
    images. ``close`` kills them: never waiting for a worker is what keeps an interrupted run, or
    one whose worker died, from hanging. A worker the parent loses (SIGKILL) dies with it.
    """

    AHEAD = 4

    def __init__(self, files: list[str], workers: int, mode: str = "digit", draft: bool = False):
        """``mode``: the pipeline the workers decode for until the model's spec is announced (the options' guess);
        ``draft``: --jpeg-draft."""
        self.files, self.spec, self.mode, self.draft = files, None, mode, draft
        self.size = max(8, min(MAX_CHUNK, math.ceil(len(files) / max(1, workers * self.AHEAD))))
        self.starts = range(0, len(files), self.size)
        self.workers: list[tuple] = []  # (process, task sender, result receiver)
        if workers == 0:
            return
        # fork is cheap and needs no re-import; elsewhere (Windows, macOS) spawn is the safe default.
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.spec_ready, self.spec_json = ctx.Event(), ctx.Array("c", 1 << 16)  # a spec's JSON: a few hundred bytes
        import ctypes  # noqa: F401  (imported once here rather than in every forked worker)

        masked = blocked_during_fork()
        try:
            for _ in range(workers):
                task_recv, task_send = ctx.Pipe(duplex=False)
                result_recv, result_send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, daemon=True, args=(
                    files, (task_recv, result_send), (self.spec_ready, self.spec_json), os.getpid(), (mode, draft)))
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

    def chunks(self, stop) -> Iterator[tuple]:
        """Yield (start, ok, pixels, bad) per chunk, in file order, until ``stop.requested``; WorkerDied when
        a worker is lost."""
        for k, start in enumerate(self.starts):
            if stop.requested:
                return
            if not self.workers:
                yield (start, *decode_chunk(self.files[start:start + self.size], self.spec, self.mode, self.draft))
                continue
            if k + len(self.workers) * self.AHEAD < len(self.starts):
                self._send(k + len(self.workers) * self.AHEAD)
            chunk = self._receive(k, start, stop)
            if chunk is None:
                return
            yield (start, *chunk)

    def _receive(self, k: int, start: int, stop):
        from multiprocessing.connection import wait

        proc, _, results = self.workers[k % len(self.workers)]
        # An answer, or the worker's end; a stalled worker (a slow disk) does not keep a stop request waiting.
        while not wait([results, proc.sentinel], POLL_SECONDS):
            if stop.requested:
                return None
        try:
            ok, shape, bad = results.recv()
            return ok, np.frombuffer(results.recv_bytes(), dtype=np.uint8).reshape(shape), bad
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


class LocalEngine:
    """This machine's processes: ``workers`` decoding processes (None: one per usable CPU for a large run)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers
        self.decoder: Decoder | None = None

    collect = staticmethod(collect)

    @staticmethod
    def check_output(path, force: bool):
        return check_output(path, force=force)

    def open(self, job, stack):
        """Fork the decoding workers, then open the model (see the module's docstring); returns the Predictor."""
        from ..runtime import OpenOptions, Predictor

        files, options = job.inputs.files, job.options
        workers = self.workers
        if workers is None:
            workers = usable_cpus() if len(files) >= POOL_MIN_FILES else 0
        elif workers > WORKERS_PER_CPU * usable_cpus():
            cap = WORKERS_PER_CPU * usable_cpus()
            job.reporter.notice(f"--workers {workers} capped at {cap} ({WORKERS_PER_CPU} per usable CPU, "
                                f"{usable_cpus()} usable): more decoding processes only contend for the same cores")
            workers = cap
        # Forked before ORT is imported; killed, never awaited, however the run ends.
        flags = options.flags
        guess = flags.mode if flags is not None and flags.given else "digit"
        self.decoder = Decoder(files, workers if len(files) > 1 else 0, guess, options.jpeg_draft)
        stack.callback(self.decoder.close)
        # With decoding workers on every core, more ORT threads only contend with them: one
        # thread per four cores measured faster than ORT's default on the 2-core build machine.
        threads = max(1, usable_cpus() // 4) if self.decoder.workers else None
        predictor = Predictor.open(options.model, options.provider, threads, flags=options.flags,
                                   options=OpenOptions(run_timeout=options.run_timeout))
        self.decoder.announce(predictor.contract.preprocess)
        return predictor

    def batches(self, job) -> Iterator[Batch]:
        """Model outputs in input order, ``batch_size`` images at a time; files that failed to decode at once.

        A lost worker: every image decoded before its chunk is still predicted, then WorkerDied is raised.
        """
        predictor, stop = job.predictor, job.stop
        size = predictor.rows_per_batch(job.options.batch_size)
        if size < job.options.batch_size:
            job.reporter.notice(shrunk_batch(predictor, job.options.batch_size, size))
        spec = predictor.contract.preprocess
        table = spec.lookup_table()

        def run(picked: list[int], pixels: np.ndarray) -> Batch:
            return Batch(picked, predictor.logits(model_input(pixels, spec, table)), blank_images(pixels, spec))

        pending: list[int] = []  # file indices decoded but not yet predicted
        held: list[np.ndarray] = []
        chunks = self.decoder.chunks(stop)
        while True:
            try:
                chunk = next(chunks, None)
            except WorkerDied:
                if stop.requested:  # a signal to the whole process group reached the worker too
                    return
                if pending:
                    yield run(pending, np.concatenate(held))
                raise
            if chunk is None:
                break
            start, ok, pixels, bad = chunk
            if bad:
                yield Batch([], np.zeros((0, len(predictor.classes)), np.float32), np.zeros(0, bool),
                            [(start + i, reason) for i, reason in bad])
            if ok:
                pending += [start + i for i in ok]
                held.append(pixels)
            while len(pending) >= size:
                pixels = np.concatenate(held) if len(held) > 1 else held[0]
                yield run(pending[:size], pixels[:size])
                pending = pending[size:]
                held = [pixels[size:]] if pending else []
        if pending and not stop.requested:
            yield run(pending, np.concatenate(held))


def shrunk_batch(predictor, asked: int, size: int) -> str:
    """The notice of a batch shrunk to what the free memory holds (toolkit.batch_limits)."""
    from ..batch_limits import gigabytes, row_bytes

    per_row = row_bytes(predictor.contract.input_shape, predictor.contract.preprocess.pixel_shape)
    return (f"--batch-size {asked} shrunk to {size}: each image of {predictor.path} needs about "
            f"{gigabytes(per_row)} in a batch, and only so many fit in the free memory")
