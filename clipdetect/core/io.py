"""The one home of file writing and guarded reading.

* :func:`atomic_write` — write to a temporary name next to the target, ``fsync``, then
  ``os.replace``: a reader sees the old file or the new one, never a torn one. The temporary
  name carries the writer's pid (``.NAME.tmp-PID-RANDOM``) so that clean-up code can tell a
  live writer's file from a dead one's (:func:`tmp_owner_pid`). On any failure the temporary
  file is removed; a full disk becomes a :class:`WriteError` naming the path and the bytes.
* :func:`write_json` / :func:`read_json` — JSON with sorted keys (strict on request), and read
  errors that name the file.
* :func:`save_safetensors` / :func:`read_safetensors` — tensors only; a pickle or zip is
  refused before parsing, so nothing is ever unpickled.
* :func:`load_state_dict` — a ``.safetensors`` / ``.pt`` / ``.bin`` state dict loaded with
  ``weights_only`` (no arbitrary code).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import struct
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, Optional, Type

__all__ = ["WriteError", "atomic_write", "atomic_open", "write_bytes", "write_text", "write_json",
           "read_json", "save_safetensors", "read_safetensors", "load_state_dict", "tmp_name",
           "tmp_owner_pid", "TMP_GLOB", "staged_output"]

#: glob matching every temporary file :func:`atomic_write` creates
TMP_GLOB = ".*.tmp-*"
_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)(?:-[0-9a-f]+)?$")


class WriteError(OSError):
    """A write that could not complete (disk full, quota, read-only); nothing was left behind."""


def tmp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` unique to this process and call."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, nbytes: Optional[int] = None,
                **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = tmp_name(path)
    counted = None
    try:
        with open(tmp, mode, **kwargs) as f:
            counted = _CountingFile(f) if "b" in mode else None
            yield counted or f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, WriteError):
            raise
        raise _fail(path, exc, nbytes, counted.written if counted else None) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
    tmp = tmp_name(out)
    tmp.mkdir()
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for p in sorted(tmp.rglob("*"), key=lambda q: len(q.parts)):
            dest = out / p.relative_to(tmp)
            if p.is_dir():
                dest.mkdir(exist_ok=True)
            else:
                os.replace(p, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), nbytes=len(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, allow_nan: bool = True) -> None:
    """Pretty, key-sorted JSON written atomically; ``allow_nan=False`` refuses NaN/inf (strict JSON)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=allow_nan, default=_default) + "\n")


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_json(path: str | os.PathLike, *, what: str = "JSON file", error: Type[Exception] = ValueError) -> Any:
    """Parse ``path``; a missing or malformed file raises ``error`` naming the file and the position."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg}); it is damaged — restore it or re-create it") from None


# ------------------------------------------------------------------ tensors
def save_safetensors(tensors: Dict[str, Any], path: str | os.PathLike,
                     metadata: Optional[Dict[str, str]] = None) -> None:
    """Write CPU-contiguous copies of ``tensors`` as safetensors, atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_bytes(path, data)


def read_safetensors(path: str | os.PathLike, *, error: Type[Exception] = ValueError) -> Dict[str, Any]:
    """Tensors of a safetensors file; anything else (a pickle, a zip) is refused before parsing."""
    from safetensors.torch import load_file

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    ok = len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size
    if not ok:
        kind = ("; it looks like a pickle" if head[:1] == b"\x80" else
                "; it looks like a zip archive (torch.save)" if head[:2] == b"PK" else "")
        raise error(f"{str(path)!r} is not a safetensors file{kind}; weights are only read "
                    "from safetensors and are never unpickled")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type
        raise error(f"{str(path)!r} is a corrupt safetensors file: {exc}") from exc


def load_state_dict(path: str | os.PathLike, *, error: Type[Exception] = ValueError) -> Dict[str, Any]:
    """A state dict from ``.safetensors`` or a ``weights_only`` torch file; ``module.`` prefixes dropped."""
    import torch

    path = str(path)
    if path.endswith(".safetensors"):
        sd = read_safetensors(path, error=error)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle payloads beyond tensors are refused
            raise error(f"could not load checkpoint {path!r} safely (weights only): {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise error(f"checkpoint {path!r} does not hold a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
