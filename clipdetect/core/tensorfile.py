"""Tensor files: safetensors written atomically and read without ever unpickling, and
checkpoints (``.safetensors`` / ``.pt`` / ``.bin``) loaded with ``weights_only``.

* :func:`save_safetensors` / :func:`read_safetensors` — tensors only; a pickle or zip is
  refused before parsing.
* :func:`safetensors_header` — names, dtypes and shapes from the header alone (capped), so a
  reader can check a file against what it expects before any tensor is allocated.
* :func:`load_state_dict` — a state dict from a checkpoint file, ``module.`` prefixes dropped.
* :func:`file_sha256` — the hex digest of a file (a checkpoint's identity).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Type

from clipdetect.core.inputs import InputError, check_regular
from clipdetect.core.io import write_bytes

__all__ = ["save_safetensors", "read_safetensors", "safetensors_header", "load_state_dict", "file_sha256",
           "MAX_SAFETENSORS_HEADER"]

#: bytes of a safetensors header (names, dtypes, shapes) read before anything else
MAX_SAFETENSORS_HEADER = 16 * 2**20


def save_safetensors(tensors: Dict[str, Any], path: str | os.PathLike,
                     metadata: Optional[Dict[str, str]] = None) -> None:
    """Write CPU-contiguous copies of ``tensors`` as safetensors, atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_bytes(path, data)


def safetensors_header(path: str | os.PathLike, *, error: Type[Exception] = ValueError) -> Dict[str, Any]:
    """``{name: {"dtype", "shape", "data_offsets"}}`` of a safetensors file, read from its header
    alone (at most :data:`MAX_SAFETENSORS_HEADER` bytes); a pickle, a zip, a special file or a
    header whose offsets do not fit the file is refused before any tensor is read."""
    path = Path(path)
    try:
        size = check_regular(path).st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            raw = f.read(n) if 2 <= n <= min(MAX_SAFETENSORS_HEADER, size - 8) else b""
    except InputError as exc:
        raise error(f"{str(path)!r} cannot be read: {exc.detail}") from None
    if not raw.startswith(b"{"):
        kind = ("; it looks like a pickle" if head[:1] == b"\x80" else
                "; it looks like a zip archive (torch.save)" if head[:2] == b"PK" else "")
        raise error(f"{str(path)!r} is not a safetensors file{kind}; weights are only read "
                    "from safetensors and are never unpickled")
    try:
        header = json.loads(raw)
        header.pop("__metadata__", None)
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        ok = all(isinstance(v["shape"], list) and isinstance(v["dtype"], str) for v in header.values())
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise error(f"{str(path)!r} is a corrupt safetensors file: its header is not a table of tensors") from None
    if not ok or 8 + n + end != size:
        raise error(f"{str(path)!r} is a corrupt safetensors file: its header describes {end:,} bytes of "
                    f"tensors, the file holds {size - 8 - n:,}")
    return header


def read_safetensors(path: str | os.PathLike, *, error: Type[Exception] = ValueError) -> Dict[str, Any]:
    """Tensors of a safetensors file; anything else (a pickle, a zip) is refused before parsing."""
    from safetensors.torch import load_file

    safetensors_header(path, error=error)
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
    return {k.removeprefix("module."): v for k, v in sd.items()}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
