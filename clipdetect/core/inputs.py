"""Guarded reading of files the toolkit did not write: the one home of the input-file checks.

Any path handed to the toolkit (an image in a folder or manifest, a cache shard, a bundle's
JSON) may be a FIFO that never ends, a link to ``/dev/zero``, a huge sparse file or a name
that climbs out of its folder. Every input goes through here:

* :func:`read_input` — the bytes of a **regular file** (after following links), refused
  before reading when it is larger than ``max_bytes``, read in chunks with a deadline of
  ``timeout`` seconds; a FIFO is opened without blocking, so it is refused rather than
  waited on. Failures raise :class:`InputError` with a short ``reason`` (``missing``,
  ``unreadable``, which includes a path that is not a regular file, ``too_large``, ``read_timeout``).
* :func:`check_regular` — the same type and size checks for a file another library opens
  (memory-mapped ``.npy``, parquet, safetensors).
* :func:`contained` — a relative name read from a manifest, joined to its folder, that must
  stay inside it (no absolute path, no ``..``, no link leading out).
"""
from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Dict, Iterable, Optional

__all__ = ["InputError", "read_input", "check_regular", "contained", "parse_bytes", "format_bytes",
           "MAX_IMAGE_BYTES", "MAX_JSON_BYTES", "READ_TIMEOUT", "READ_FAILURES", "none_readable"]

#: default byte cap of one image file (``--max-bytes`` on extract and predict)
MAX_IMAGE_BYTES = 256 * 2**20
#: byte cap of a JSON description (detector.json, manifest.json): a real one is kilobytes
MAX_JSON_BYTES = 64 * 2**20
#: default seconds to read one input file (``--read-timeout``)
READ_TIMEOUT = 60.0
#: reasons meaning a file could not be read at all (its path is wrong), not that its content was refused
READ_FAILURES = ("missing", "unreadable")
_CHUNK = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class InputError(ValueError):
    """An input file that cannot be read safely; ``reason`` is a short tag, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def parse_bytes(text: str) -> int:
    """``"256M"``, ``"2G"``, ``"1048576"`` → bytes (K/M/G are powers of 1024)."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; use bytes or a number with K, M or G (e.g. 256M)") from None
    if n < 1:
        raise ValueError(f"a size must be at least 1 byte, got {text!r}")
    return n


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise InputError("missing", f"{path}: no such file") from None
    except OSError as exc:
        why = "a symbolic link loop" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise InputError("unreadable", f"{path}: {why}") from None


def check_regular(path: str | os.PathLike, *, max_bytes: Optional[int] = None) -> os.stat_result:
    """``stat`` of ``path`` (links followed) when it is a regular file of at most ``max_bytes``."""
    path = os.fspath(path)
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise InputError("unreadable", f"{path} is {_kind(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError("too_large", f"{path} holds {format_bytes(st.st_size)}, more than the "
                                      f"{format_bytes(max_bytes)} allowed")
    return st


def read_input(path: str | os.PathLike, *, max_bytes: int = MAX_IMAGE_BYTES,
               timeout: Optional[float] = READ_TIMEOUT) -> bytes:
    """The bytes of regular file ``path``: at most ``max_bytes``, read within ``timeout`` seconds."""
    path = os.fspath(path)
    check_regular(path, max_bytes=max_bytes)
    try:  # O_NONBLOCK: a FIFO swapped in after the check is opened at once, then refused below
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError("unreadable", f"{path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError("unreadable", f"{path} is {_kind(st.st_mode)}, not a regular file")
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks, total = [], 0
        while True:
            block = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not block:
                return b"".join(chunks)
            chunks.append(block)
            total += len(block)
            if total > max_bytes:
                raise InputError("too_large", f"{path} grew past the {format_bytes(max_bytes)} allowed "
                                              "while it was read")
            if deadline is not None and time.monotonic() > deadline:
                raise InputError("read_timeout", f"{path} was not read within {timeout:g} s "
                                                 f"({format_bytes(total)} so far)")
    except OSError as exc:
        raise InputError("unreadable", f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def contained(root: str | os.PathLike, name: str, *, what: str = "name") -> Path:
    """``root / name`` for a relative ``name`` read from a file, refused (``ValueError`` naming it)
    when it is absolute, climbs out with ``..``, or resolves (through links) outside ``root``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{what} {name!r} is not a usable file name")
    parts = Path(name).parts
    if Path(name).is_absolute() or os.path.isabs(name) or ".." in parts or name.startswith("~"):
        raise ValueError(f"{what} {name!r} points outside {str(root)!r}; only names inside it are read")
    base = Path(root).resolve()
    target = (Path(root) / name).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"{what} {name!r} resolves to {str(target)!r}, outside {str(base)!r} (a link "
                         "leads out); only files inside it are read")
    return Path(root) / name


def none_readable(seen: int, usable: int, errors) -> bool:
    """Whether a run of ``seen`` images could read not a single one: nothing ``usable`` and
    every error a read failure (a wrong path or folder, not a limit the user set)."""
    return bool(seen) and not usable and bool(errors) and all(r in READ_FAILURES for r in errors)


def count_reasons(counts: Dict[str, int], reasons: Iterable[str]) -> Dict[str, int]:
    """Add one to ``counts[reason]`` for each of ``reasons`` (the tally of a run's errors); returns ``counts``."""
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return counts
