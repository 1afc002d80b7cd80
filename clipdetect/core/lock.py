"""Advisory inter-process locks: one writer at a time per directory.

:class:`DirLock` takes ``fcntl.flock(LOCK_EX)`` on a lock file and writes the holder's pid
and command line into it, so that a second writer can say who holds the lock. The kernel
drops the lock when the holder exits, however it exits (SIGKILL included), so a lock is
never stale. Within one process the lock is re-entrant (counted per path); forked children
(decode workers) close their inherited descriptor, so a child that outlives its parent
never keeps the lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path

from clipdetect.core.io import open_fd, read_json
from typing import Dict, List, Optional

__all__ = ["DirLock", "LockedError", "pid_alive"]

_HELD: Dict[str, List[int]] = {}  # real path → [fd, count]
_GUARD = threading.Lock()


class LockedError(RuntimeError):
    """The lock is held by another process; the message names it."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def _command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            parts = [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        parts = [sys.executable, *sys.argv]
    return " ".join(parts)


def _after_fork_in_child() -> None:
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)  # drops the child's reference only; the parent keeps its lock
    _HELD.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class DirLock:
    """An exclusive advisory lock on ``path`` (a lock file, created if needed).

    ``timeout``: seconds to wait for a busy lock (0: refuse at once). Raises
    :class:`LockedError` naming the holder's pid and command line.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 0.0, what: Optional[str] = None):
        self.path = Path(path)
        self.key = os.path.realpath(self.path)
        self.timeout = float(timeout)
        self.what = what or str(self.path.parent)
        self.held = False

    def holder(self, settle: float = 1.0) -> str:
        """``pid N (command line)`` of the process that last took the lock, as it recorded it.

        A holder records itself just after it takes the lock, so a reader may see the file
        empty (a new lock) or naming the previous, finished holder; it re-reads for up to
        ``settle`` seconds until the record names a live process.
        """
        deadline = time.monotonic() + settle
        while True:
            info = self._record()
            pid = int(info.get("pid") or 0)
            live = pid_alive(pid)
            if live or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if not pid:
            return "an unknown process"
        alive = "" if live else "; no longer running, so a child process of it holds the lock"
        return f"pid {pid} ({info.get('command', '?')}, since {info.get('since', '?')}{alive})"

    def _record(self) -> dict:
        try:  # a regular file of a few hundred bytes; anything else names no holder
            info = read_json(self.path, what="lock file", max_bytes=1 << 16)
        except (OSError, ValueError):
            return {}
        if not isinstance(info, dict) or not str(info.get("pid", "")).isdigit():
            return {}  # not a record this module wrote
        return info

    def acquire(self) -> "DirLock":
        if self.held:
            return self
        with _GUARD:
            if self.key in _HELD:
                _HELD[self.key][1] += 1
                self.held = True
                return self
            fd = open_fd(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # a regular file, never through a link
            try:
                self._wait(fd)
            except BaseException:
                os.close(fd)
                raise
            info = json.dumps({"pid": os.getpid(), "command": _command_line(),
                               "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()
            os.pwrite(fd, info, 0)  # then cut: a reader never sees the file empty
            os.ftruncate(fd, len(info))
            _HELD[self.key] = [fd, 1]
            self.held = True
        return self

    def _wait(self, fd: int) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                waited = f" (waited {self.timeout:g} s)" if self.timeout > 0 else ""
                raise LockedError(f"{self.what} is being written by another process: {self.holder()}{waited}")
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        if not self.held:
            return
        with _GUARD:
            self.held = False
            entry = _HELD.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del _HELD[self.key]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
