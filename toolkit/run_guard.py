"""Every ONNX Runtime run of the edge core, bounded in time and interruptible: a model is untrusted input.

A graph can loop 10^15 times (a ``Loop`` node), and ``session.run`` is C++ code that Python's signal handlers
never interrupt: they run only between bytecodes, after the run returns. ONNX Runtime checks
``RunOptions.terminate`` between nodes, also inside ``Loop``/``If``/``Scan`` bodies (measured: a 10^15-iteration
Loop stops within milliseconds of the flag). So one watchdog thread per process sets it:

* when a run is still going ``limit`` seconds after it started (``--run-timeout``, per batch): RunTimeout;
* when a stop signal (SIGINT, SIGTERM, SIGHUP) arrives during a run. The watchdog hears it at once through
  ``signal.set_wakeup_fd`` (CPython's C-level handler writes the signal's number to a pipe, whatever the main
  thread is doing). The first signal lets the run in hand finish within STOP_GRACE seconds (a normal batch
  does, and its rows are kept); a second one stops it at once. A stopped run raises RunInterrupted, a
  KeyboardInterrupt: the command ends as on Ctrl-C (exit 130), keeping what it had completed.

One node's own work is not always interruptible inside ONNX Runtime (a threaded MatMul is, a single-threaded
NonMaxSuppression over 300,000 boxes is not). When a stopped run has not returned STUCK_SECONDS after the flag
was set and ``exit_when_stuck`` was called (the CLI does), the process writes one line and ends with the exit
code the stop meant (1 or 130): a command must end when told to. What registered with ``kept_if_stuck`` (predict's
rows so far) is kept first.

The guard costs a few attribute writes per run (the RunOptions object is reused until a run is stopped), so
bench's timings are ONNX Runtime's own. ONNX Runtime's per-run log is silenced (severity fatal): a failing
run is reported once, in plain words, by the caller.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
import weakref

from .errors import EXIT_ERROR, EXIT_INTERRUPTED, RunFailed, RunInterrupted, RunTimeout
from .text import runtime_reason

DEFAULT_RUN_TIMEOUT = 60.0  # seconds per batch: predict, bench, draw, serve (--run-timeout; 0: no limit)
PROBE_TIMEOUT = 10.0  # seconds per probe run at open (batch sizes, softmax detection: a few images each)
STAMP_RUN_TIMEOUT = 30.0  # seconds per stamp check (export X.onnx --out Y.onnx): batches of at most 64 images
STOP_GRACE = 2.0  # after a first stop signal, the run in hand may finish within this
STUCK_SECONDS = 10.0  # a stopped run that has not returned by then: the process ends (exit_when_stuck)
POLL_SECONDS = 0.1  # how often the watchdog looks at the clock (a limit is kept within this)
STOP_SIGNALS = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
FATAL = 4  # ONNX Runtime's log severity: fatal only


def check_limit(seconds: float | None) -> float | None:
    """``--run-timeout`` as a limit: None or 0 means none; negative, NaN or infinite values are refused."""
    if seconds is None or seconds == 0:
        return None
    if not (seconds > 0 and seconds != float("inf")):
        raise ValueError(f"a run time limit must be a positive number of seconds (0: none), not {seconds!r}")
    return float(seconds)


def seconds_text(limit: float) -> str:
    return f"{limit:g} s"


class Guard:
    """Runs one session's batches under a time ``limit`` (seconds; None: none), stoppable by signals.

    ``model`` names the file in every message; ``option`` is how the user sets the limit (for the message).
    """

    def __init__(self, session, model, limit: float | None = DEFAULT_RUN_TIMEOUT, option: str = "--run-timeout"):
        self.session, self.model, self.limit, self.option = session, model, check_limit(limit), option
        self._opts = _run_options()
        self._busy = False
        _watchdog().watch(self)
        # Written by this thread around each run, read by the watchdog.
        self.started: float | None = None
        self.seq = 0
        # Written by the watchdog when it stops a run: (seq, why, when).
        self.stopped: tuple | None = None
        self.signals = 0  # stop signals seen during the run in hand
        self.stop_by: float | None = None

    def run(self, outputs, feed: dict, *, limit: float | None = ..., what: str = "a batch"):
        """``session.run(outputs, feed)`` bounded by ``limit`` (default: the guard's). ``what`` names the run in a
        message ("a batch", "the probe run"). Raises RunTimeout, RunInterrupted or RunFailed (one line each)."""
        if self._busy:  # another thread's run on the same session (a server's threads): its own guard
            return Guard(self.session, self.model, self.limit, self.option).run(outputs, feed, limit=limit,
                                                                                 what=what)
        self._busy = True
        self.active_limit = self.limit if limit is ... else check_limit(limit)
        self.seq += 1
        seq, self.signals, self.stop_by = self.seq, 0, None
        self.started = time.monotonic()
        try:
            return self.session.run(outputs, feed, self._opts)
        except Exception as e:
            self.started = None
            raise self._failure(e, seq, feed, what) from None
        finally:
            self.started = None
            self._busy = False

    def _failure(self, e: Exception, seq: int, feed: dict, what: str) -> BaseException:
        stopped, self.stopped = self.stopped, None
        if stopped is not None or self._opts.terminate:
            self._opts = _run_options()  # a set flag cannot be cleared for the next run safely: a fresh one
        rows = _rows(feed)
        if stopped is not None and stopped[0] == seq and stopped[1] == "signal":
            return RunInterrupted(f"{self.model}: the model's run on {what} ({rows} image(s)) was stopped by a signal")
        if stopped is not None and stopped[0] == seq:
            limit = self.active_limit
            how = (f"{self.option} {limit:g}; 0 for no limit" if limit == self.limit
                   else f"a probe run when the model opens may take at most {seconds_text(limit)}")
            return RunTimeout(self.model, f"{what} ({rows} image(s)) was still running after {seconds_text(limit)} "
                                          f"and was stopped ({how})", limit)
        if isinstance(e, MemoryError):
            return RunFailed(self.model, f"out of memory running {what} ({rows} image(s))")
        failed = RunFailed(self.model, f"the model failed on {what} ({rows} image(s)): {runtime_reason(e)}")
        failed.detail = runtime_reason(e)
        return failed

    # ------------------------------------------------------------------ called by the watchdog thread
    def _check(self, now: float, signals: int) -> None:
        started, seq = self.started, self.seq
        if started is None:
            return
        if self.stopped is not None and self.stopped[0] == seq:
            if now - self.stopped[2] > STUCK_SECONDS:
                _stuck(self, self.stopped[1])
            return
        if signals:
            self.signals += signals
            self.stop_by = self.stop_by or now + STOP_GRACE
        why = None
        if self.signals >= 2 or (self.stop_by is not None and now >= self.stop_by):
            why = "signal"
        elif self.active_limit is not None and now - started > self.active_limit:
            why = "timeout"
        if why is not None and self.seq == seq and self.started is not None:
            self.stopped = (seq, why, now)
            self._opts.terminate = True


def _rows(feed: dict) -> int:
    try:
        return len(next(iter(feed.values())))
    except (StopIteration, TypeError):
        return 0


def _run_options():
    from .runtime import import_ort

    opts = import_ort().RunOptions()
    opts.log_severity_level = FATAL  # a failing run is reported once, by us, not as ORT's coloured log line
    return opts


_exit_when_stuck = False
_keepers: list = []  # called before a stuck process ends: each keeps what its work produced, and says where


def exit_when_stuck() -> None:
    """Let the watchdog end the process when a stopped run does not return (the CLI's choice, not a library's)."""
    global _exit_when_stuck
    _exit_when_stuck = True


@contextlib.contextmanager
def kept_if_stuck(keep):
    """While the block runs, ``keep()`` is called (on the watchdog's thread, the main one being inside the run)
    before a stuck process ends; the sentence it returns, if any, ends the process's last line."""
    _keepers.append(keep)
    try:
        yield
    finally:
        _keepers.remove(keep)


def _stuck(guard: Guard, why: str) -> None:
    if not _exit_when_stuck:
        return
    from .text import printable

    kept = []
    for keep in list(_keepers):
        try:
            kept.append(keep())
        except Exception as e:  # the line must still be written and the process end
            kept.append(f"what was done could not be kept: {e}")
    text = (f"toolkit: error: {guard.model}: the model's run did not stop within {STUCK_SECONDS:g} s of being told "
            f"to ({'a signal' if why == 'signal' else guard.option}); ending the process"
            + "".join(f"; {k}" for k in kept if k) + "\n")
    try:
        os.write(2, printable(text.rstrip("\n")).encode("utf-8", "replace") + b"\n")
    finally:
        os._exit(EXIT_INTERRUPTED if why == "signal" else EXIT_ERROR)


class _Watchdog:
    """One daemon thread: looks at every guard's clock each POLL_SECONDS and hears stop signals via a pipe."""

    def __init__(self):
        self.guards: weakref.WeakSet[Guard] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.wakeup = self._listen()
        threading.Thread(target=self._loop, name="toolkit-run-watchdog", daemon=True).start()

    @staticmethod
    def _listen():
        """The read end of a pipe the signal module writes signal numbers to, or None (not the main thread, or the
        wakeup fd is taken, e.g. by an asyncio loop: then only time limits apply)."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "set_wakeup_fd"):
            return None
        r, w = os.pipe()
        os.set_blocking(w, False)
        try:
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(r), os.close(w)
            return None
        if old != -1:  # someone else listens: give it back
            signal.set_wakeup_fd(old)
            os.close(r), os.close(w)
            return None
        return r

    def watch(self, guard: Guard) -> None:
        with self.lock:
            self.guards.add(guard)

    def _loop(self) -> None:
        while True:
            signals = 0
            if self.wakeup is not None:
                ready, _, _ = select.select([self.wakeup], [], [], POLL_SECONDS)
                if ready:
                    signals = sum(1 for b in os.read(self.wakeup, 512) if b in STOP_SIGNALS)
            else:
                time.sleep(POLL_SECONDS)
            now = time.monotonic()
            with self.lock:
                guards = list(self.guards)
            for guard in guards:
                guard._check(now, signals)


_the_watchdog: _Watchdog | None = None
_start_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    global _the_watchdog
    with _start_lock:
        if _the_watchdog is None:
            _the_watchdog = _Watchdog()
        return _the_watchdog


__all__ = ["DEFAULT_RUN_TIMEOUT", "PROBE_TIMEOUT", "Guard", "check_limit", "exit_when_stuck", "kept_if_stuck"]
