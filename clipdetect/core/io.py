"""The one home of file writing and guarded reading.

Every file the toolkit creates is created here, exclusively and never through a link:

* :func:`atomic_write` / :func:`atomic_open` / :class:`AtomicFile` — write to an unpredictable
  temporary name next to the target (``.NAME.tmp-PID-RANDOM``, created with ``O_CREAT | O_EXCL
  | O_NOFOLLOW``: a file or link planted under that name is never opened), ``fsync``, then
  ``os.replace``: a reader sees the old file or the new one, never a torn one, and a link at the
  target is replaced, not written through. The pid in the name lets clean-up code tell a live
  writer's file from a dead one's (:func:`tmp_owner_pid`). On any failure the temporary file
  is removed; a full disk becomes a :class:`WriteError` naming the path and the bytes.
* :func:`staged_output` — a whole output folder built in a temporary sibling, then moved in.
* :func:`open_new` — a file written in place while it grows (a training log), created
  exclusively after removing what was there; :func:`open_fd` — a lock or append-only ledger
  opened without following a link.
* :func:`write_json` / :func:`read_json` — JSON with sorted keys (strict on request), and reads
  that are capped, name the file and never follow a FIFO (:mod:`clipdetect.core.inputs`).
* :func:`write_csv` — a table as CSV with spreadsheet formulas neutralised
  (:func:`clipdetect.core.escape.csv_safe`).

Tensor files (safetensors, checkpoints) are read and written by :mod:`clipdetect.core.tensorfile`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Type

from clipdetect.core.inputs import MAX_JSON_BYTES, InputError, read_input

__all__ = ["WriteError", "AtomicFile", "atomic_write", "atomic_open", "write_bytes", "write_text", "write_json",
           "write_csv", "read_json", "tmp_name", "tmp_owner_pid", "TMP_GLOB", "staged_output", "open_new",
           "open_fd", "not_an_input"]

#: glob matching every temporary file :func:`atomic_write` creates
TMP_GLOB = ".*.tmp-*"
_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)(?:-[0-9a-f]+)?$")
#: a new file: exclusive (a planted file or link under the name fails) and never through a link
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TRIES = 16


class WriteError(OSError):
    """A write that could not complete (disk full, quota, read-only); nothing was left behind."""


def tmp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` unique to this process and call."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")


def tmp_owner_pid(path: Path) -> Optional[int]:
    """The pid of the process that created temporary file ``path`` (None if it is not one)."""
    m = _TMP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def _fail(path: Path, exc: OSError, nbytes: Optional[int], written: Optional[int] = None) -> WriteError:
    need = (f" ({nbytes:,} bytes to write)" if nbytes else
            f" (it failed after {written:,} bytes)" if written else "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(exc.errno, f"no space left on the device writing {str(path)!r}{need}; "
                                     "free space and re-run the same command: it resumes where it stopped")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return WriteError(exc.errno, f"cannot write {str(path)!r}: {exc.strerror}")
    return WriteError(exc.errno or errno.EIO, f"writing {str(path)!r}{need} failed: {exc}")


class _CountingFile:
    """File wrapper that turns a short write into an ``ENOSPC`` error."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.written = 0

    def write(self, data) -> int:
        n = self.f.write(data)
        size = len(memoryview(data).cast("B")) if not isinstance(data, str) else len(data)
        if n is not None and n < size:
            raise OSError(errno.ENOSPC, f"{size} requested and {n} written")
        self.written += size
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)


def _exclusive(path, flags: int) -> int:
    """An opener for ``open``: create ``path`` exclusively, never through a link (``flags`` are
    ``open``'s own, replaced by the toolkit's)."""
    return os.open(path, _CREATE, 0o666)


def _new_temporary(path: Path, make: Callable[[Path], Any]):
    """``(tmp, make(tmp))`` for a fresh temporary name; a name already taken (a planted file or
    link) is skipped, never opened."""
    for _ in range(_TRIES):
        tmp = tmp_name(path)
        try:
            return tmp, make(tmp)
        except FileExistsError:
            continue
    raise WriteError(errno.EEXIST, f"cannot create a temporary name next to {str(path)!r}: {_TRIES} random "
                                   "names were all taken (something is planting files there)")


class AtomicFile:
    """A file written under a fresh temporary name that replaces ``path`` on :meth:`commit`
    (flushed and fsynced first) and disappears on :meth:`discard`; :attr:`stream` is what to
    write to. For writers that stream rows over a long run; :func:`atomic_open` wraps it."""

    def __init__(self, path: str | os.PathLike, mode: str = "wb", *, nbytes: Optional[int] = None, **kwargs):
        self.path, self.nbytes = Path(path), nbytes
        try:
            self.tmp, self.file = _new_temporary(self.path, lambda p: self._open(p, mode, kwargs))
        except WriteError:
            raise
        except OSError as exc:
            raise _fail(self.path, exc, nbytes) from exc
        self._counted = _CountingFile(self.file) if "b" in mode else None

    @staticmethod
    def _open(tmp: Path, mode: str, kwargs: dict) -> IO:
        # The file object creates its descriptor through the opener, so exactly one owner ever
        # closes it: an interrupt while the object is being built (a text wrapper runs Python
        # code) cannot leave a descriptor to be closed twice. open(), not os.fdopen: one name to
        # patch in tests.
        try:
            return open(tmp, mode, opener=_exclusive, **kwargs)
        except FileExistsError:
            raise  # a name already taken: not ours to remove
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @property
    def stream(self) -> IO:
        return self._counted or self.file

    @property
    def written(self) -> Optional[int]:
        return self._counted.written if self._counted else None

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            raise _fail(self.path, exc, self.nbytes, self.written) from exc
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the temporary file (a failed or interrupted run leaves nothing behind)."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, nbytes: Optional[int] = None,
                **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path``, on error it is removed."""
    f = AtomicFile(path, mode, nbytes=nbytes, **kwargs)
    try:
        yield f.stream
    except OSError as exc:
        f.discard()
        if isinstance(exc, WriteError):
            raise
        raise _fail(Path(path), exc, nbytes, f.written) from exc
    except BaseException:
        f.discard()
        raise
    f.commit()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, nbytes: Optional[int] = None) -> None:
    """Call ``write(f)`` on a binary temporary file, then move it over ``path`` atomically."""
    with atomic_open(path, "wb", nbytes=nbytes) as f:
        write(f)


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder to write ``out``'s files into; on success they are moved
    into ``out`` (created if needed; other files there are kept), on any failure (Ctrl-C
    included) the temporary folder is removed, so a failed run leaves no partial output."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, _ = _new_temporary(out, lambda p: p.mkdir())  # mkdir never reuses a planted folder or link
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for p in sorted(tmp.rglob("*"), key=lambda q: len(q.parts)):
            dest = out / p.relative_to(tmp)
            if p.is_dir() and not p.is_symlink():
                dest.mkdir(exist_ok=True)
            else:
                os.replace(p, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_new(path: str | os.PathLike, mode: str = "w", **kwargs) -> IO:
    """``path`` opened for writing in place (readers see it grow, e.g. a training log): what was
    there is removed first (a link is removed, not followed), then the file is created exclusively."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        if not path.is_dir() or path.is_symlink():
            path.unlink()
    try:
        return open(path, mode, opener=_exclusive, **kwargs)
    except OSError as exc:
        raise _fail(path, exc, None) from exc


def open_fd(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a regular file (a lock file, an append-only ledger) that never follows a link
    at ``path`` and never blocks on, or writes into, a FIFO or a device planted there."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WriteError(exc.errno, f"refusing to open {str(path)!r}: it is a symbolic link (a file "
                                        "the toolkit writes is never opened through a link); remove it") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO with no reader, a dead device, a folder
            raise _not_regular(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_regular(path)
    return fd


def _not_regular(path) -> WriteError:
    return WriteError(errno.EINVAL, f"refusing to open {str(path)!r}: it is not a regular file (a FIFO, "
                                    "a device or a folder); remove it and run again")


def not_an_input(out: str | os.PathLike, inputs, *, what: str = "output") -> None:
    """Refuse an output path that is one of ``inputs`` (the same file, by any name): writing it
    would destroy what the run reads (e.g. a manifest overwritten by its own predictions)."""
    target = Path(out)
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            continue
        p = Path(item)
        if target.resolve() == p.resolve() or (target.exists() and p.exists() and os.path.samefile(target, p)):
            raise ValueError(f"{what} {str(out)!r} is the input {str(item)!r} itself: writing it would replace "
                             "what is being read; write to another file")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), nbytes=len(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, allow_nan: bool = True) -> None:
    """Pretty, key-sorted JSON written atomically; ``allow_nan=False`` refuses NaN/inf (strict JSON)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=allow_nan, default=_default) + "\n")


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_csv(path: str | os.PathLike, df, **kwargs) -> None:
    """``df`` as CSV (no index unless asked), written atomically, with every text cell that a
    spreadsheet would run as a formula neutralised (:func:`clipdetect.core.escape.csv_safe`)."""
    from clipdetect.core.escape import csv_safe

    kwargs.setdefault("index", False)
    atomic_write(path, lambda f: csv_safe(df).to_csv(f, **kwargs))


def read_json(path: str | os.PathLike, *, what: str = "JSON file", error: Type[Exception] = ValueError,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse ``path`` (a regular file of at most ``max_bytes``); a missing, special, oversized or
    malformed file raises ``error`` naming the file and the position."""
    path = Path(path)
    try:
        text = read_input(path, max_bytes=max_bytes).decode("utf-8")
    except InputError as exc:
        if exc.reason == "missing":
            raise error(f"{what} {str(path)!r} does not exist") from None
        raise error(f"{what} {str(path)!r} cannot be read: {exc.detail}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start}); it is damaged") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg}); it is damaged — restore it or re-create it") from None
    except (ValueError, RecursionError) as exc:  # 5000-digit integers, 100,000 nested lists
        raise error(f"{what} {str(path)!r} cannot be parsed: {type(exc).__name__}: {str(exc)[:120]}") from None
