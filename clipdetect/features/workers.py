"""Decode worker processes for extraction and prediction: ordered results, bounded memory,
and a shutdown that cannot hang.

Each worker has its own task queue and its own result pipe; nothing is shared between
workers, so none can die holding a lock the others (or the parent) need. Workers ignore
SIGINT — Ctrl-C reaches the whole process group, and the parent stops them itself — and
die at once on SIGTERM or SIGHUP (the parent's clean-up, :mod:`clipdetect.core.signals`,
stops the rest). A worker whose parent is gone (killed with SIGKILL) exits within a second
instead of living on as an orphan.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue
import signal
import weakref
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Tuple

from clipdetect.core.signals import SHUTDOWN_SIGNALS, deferred

__all__ = ["ordered_map", "abort_all"]

#: pools not yet stopped; stopped at interpreter exit at the latest (before multiprocessing's own
#: exit handler, which would otherwise wait on a queue feeder thread blocked on a full pipe)
_LIVE: "weakref.WeakSet[_Workers]" = weakref.WeakSet()


def abort_all() -> None:
    """Stop every decode pool of this process that is still running (Ctrl-C, exit)."""
    for pool in list(_LIVE):
        pool.abort()


atexit.register(abort_all)


#: seconds between a waiting worker's checks that its parent is still alive
PARENT_CHECK = 1.0


def _worker_main(fn: Callable, initializer, initargs, tasks, results, parent: int, read_ends=()) -> None:
    """One decode process: tasks from its own queue, results down its own pipe, in order.

    Ctrl-C reaches the whole process group; workers ignore it and the parent stops them,
    so no worker dies half-way through a queue operation. SIGTERM and SIGHUP end a worker at
    once (the parent's handlers, inherited through the fork, are dropped first); the signals
    arrive blocked (see :func:`clipdetect.core.signals.deferred`) and are unblocked here.
    ``read_ends``: the parent's ends of the result pipes, inherited through the fork and closed
    here, so that a dead parent's pipe breaks instead of blocking a worker forever."""
    for r in read_ends:
        r.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in SHUTDOWN_SIGNALS[1:]:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(SHUTDOWN_SIGNALS))
    if initializer:
        initializer(*initargs)
    while True:
        try:
            task = tasks.get(timeout=PARENT_CHECK)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without stopping us: do not linger
                return
            continue
        if task is None:
            return
        try:
            reply = (True, fn(task))
        except Exception as exc:  # sent to the parent, which re-raises it
            reply = (False, exc)
        try:
            results.send(reply)
        except OSError:  # the parent is gone (a broken pipe)
            return
        except Exception:  # an exception that cannot be pickled
            results.send((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))


class _Workers:
    """Decode processes with one task queue and one result pipe each (no shared locks), so
    that stopping them — normally, on an error or on Ctrl-C — can never hang."""

    def __init__(self, n: int, fn: Callable, initializer, initargs):
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.procs, self.tasks, self.results = [], [], []
        _LIVE.add(self)
        try:
            with deferred():  # no KeyboardInterrupt half-way through a fork
                for i in range(n):
                    q, (r, w) = ctx.Queue(), ctx.Pipe(duplex=False)
                    self.tasks.append(q)
                    self.results.append(r)
                    proc = ctx.Process(target=_worker_main, daemon=True, name=f"clipdetect-decode-{i}",
                                       args=(fn, initializer, initargs, q, w, os.getpid(), list(self.results)))
                    self.procs.append(proc)
                    proc.start()
                    w.close()  # the worker holds the only write end: its death is an EOF here
        except BaseException:
            self.abort()
            raise

    def submit(self, k: int, task) -> None:
        self.tasks[k].put(task)

    def result(self, k: int):
        try:
            ok, value = self.results[k].recv()
        except EOFError:
            proc = self.procs[k]
            proc.join(1)
            raise RuntimeError(f"decode worker {proc.pid} died (exit code {proc.exitcode}); "
                               "out of memory? try fewer --workers or a smaller --batch-size") from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for proc in self.procs:
            proc.join(10)
        self.abort()

    def abort(self) -> None:
        _LIVE.discard(self)
        for proc in self.procs:
            if proc.pid is not None and proc.exitcode is None:
                proc.terminate()
        for proc in self.procs:
            if proc.pid is not None:
                proc.join(5)
                if proc.exitcode is None:
                    proc.kill()
                    proc.join()
        for q in self.tasks:
            q.cancel_join_thread()
            q.close()
        for r in self.results:
            r.close()
        self.procs, self.tasks, self.results = [], [], []


def ordered_map(fn: Callable, tasks: Iterable, *, workers: int, window: int, initializer=None,
                initargs=()) -> Iterator[Tuple[Any, Any]]:
    """Yield (task, fn(task)) in order, running ahead on ``workers`` processes with at most
    ``window`` tasks in flight (so memory stays bounded on endless sources). Task i runs on
    worker i mod ``workers``. Closing the generator (or an exception, Ctrl-C included) stops
    the workers within seconds."""
    if workers == 0:
        if initializer:
            initializer(*initargs)
        for t in tasks:
            yield t, fn(t)
        return
    pool = _Workers(workers, fn, initializer, initargs)
    try:
        pending: deque = deque()
        for i, t in enumerate(tasks):
            pool.submit(i % workers, t)
            pending.append((t, i % workers))
            if len(pending) >= window:
                t0, k0 = pending.popleft()
                yield t0, pool.result(k0)
        while pending:
            t0, k0 = pending.popleft()
            yield t0, pool.result(k0)
    except BaseException:  # an error, Ctrl-C or the generator closed early
        pool.abort()
        raise
    pool.close()
