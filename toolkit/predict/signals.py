"""How a predict run hears Ctrl-C, SIGTERM and SIGHUP (the same for every engine)."""

from __future__ import annotations

import signal
import threading

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopGuard:
    """SIGINT, SIGTERM and SIGHUP while a run goes on: the first asks it to stop after the batch in
    hand (``requested``); a second stops it at once, by a KeyboardInterrupt raised at most once, only
    while ``armed`` (batches streaming). Before that (forking, importing ORT: a KeyboardInterrupt inside a
    C extension's import surfaces as an ImportError) and after (keeping results, killing workers) signals
    are only noted. Signals ignored when the run starts (e.g. SIGHUP under nohup) stay ignored.
    ``at_once``: the first signal already stops at once (work that keeps nothing partial).
    """

    def __init__(self):
        self.requested = False
        self.armed = False
        self.at_once = False
        self.saved: dict = {}

    def _handler(self, signum, frame) -> None:
        if (self.requested or self.at_once) and self.armed:
            self.armed = False
            # Nothing is left to stop: the run now only keeps what it has and ends. Further signals are ignored
            # by the kernel, so none can land in that cleanup (Ray's, above all: a signal arriving while its
            # executor unwinds from this interrupt ended the process with no message, or a segfault).
            for s in self.saved:
                signal.signal(s, signal.SIG_IGN)
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopGuard":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self.saved[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)


def blocked_during_fork():
    """Block the stop signals (a forked child runs the parent's handlers until it sets its own); returns the
    mask to restore, or None where the platform has no pthread_sigmask."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS) if hasattr(signal, "pthread_sigmask") else None
