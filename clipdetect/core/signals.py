"""One clean shutdown for Ctrl-C (SIGINT), SIGTERM and SIGHUP.

Schedulers, containers and ``timeout`` stop a job with SIGTERM; a closed terminal sends
SIGHUP. :func:`shutdown_signals` (installed by the command line around a command) turns
both into :class:`Terminated`, a ``KeyboardInterrupt``, so every clean-up written for
Ctrl-C runs for them too: decode workers stopped, temporary files and staged folders
removed, a cache left resumable. The first signal wins; later ones are ignored until the
clean-up is done (SIGKILL still ends the process). The exit status is ``128 + signal``:
130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP (:func:`exit_status`).

:func:`deferred` holds those signals back for a moment that must not be cut (forking a
worker), then delivers them.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Terminated", "shutdown_signals", "deferred", "exit_status", "signal_name", "SHUTDOWN_SIGNALS"]

#: the signals that stop a command cleanly
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's ``KeyboardInterrupt``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def exit_status(exc: BaseException) -> int:
    """128 + the signal that stopped the command (130 for a plain ``KeyboardInterrupt``)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def shutdown_signals() -> Iterator[None]:
    """While inside: SIGINT raises ``KeyboardInterrupt``, SIGTERM and SIGHUP raise
    :class:`Terminated`; after the first, further ones are ignored. Handlers are restored on
    exit (a no-op outside the main thread, where handlers cannot be set)."""
    if not _in_main_thread():
        yield
        return

    def stop(signum, frame):
        for s in SHUTDOWN_SIGNALS:  # the first signal wins: the clean-up it starts is not cut short
            signal.signal(s, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous = {s: signal.signal(s, stop) for s in SHUTDOWN_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the shutdown signals back, then deliver them to the handlers that were in place.

    Blocking them with ``pthread_sigmask`` alone is not enough: the kernel hands a
    process-group signal to any thread that does not block it (torch's or a queue's helper
    threads), and Python then runs the handler in the main thread wherever it is — possibly
    inside ``Process.start()`` after the fork, before the parent has recorded the child,
    which then outlives it. A handler that only records the signal closes that window.
    Processes forked inside start with the signals blocked (they unblock them themselves)."""
    if not _in_main_thread():
        yield
        return
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in SHUTDOWN_SIGNALS}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(SHUTDOWN_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    for signum in dict.fromkeys(caught):
        signal.raise_signal(signum)
