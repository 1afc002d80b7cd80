"""The feature-cache format: its name and version, the metadata and error-ledger columns, and
``manifest.json`` read with its checks (the layout is described in :mod:`clipdetect.features.cache`).

The manifest is validated against :data:`MANIFEST_FIELDS` (types, ranges, size bounds; shard
names are plain file names) before anything is built from it, and every shard file is found
through :func:`shard_file`, which keeps it inside the cache folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from clipdetect.core.inputs import contained
from clipdetect.core.io import read_json
from clipdetect.core.schema import Field, validate

FORMAT = "clipdetect-cache"
VERSION = 1
META_COLUMNS = ["key", "label", "generator", "split", "path", "caption", "width", "height", "format", "mode",
                "source"]
#: metadata columns that caches written by earlier versions lack; read as "" there
OPTIONAL_META_COLUMNS = ("source",)
ERROR_COLUMNS = ["key", "path", "reason", "detail"]
FEATURE_SETS = ("image", "text", "image+text")
#: a shard name is a plain file name (``part-00000-1a2b3c4d``): no folder, no ``..``
SHARD_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
MAX_ROWS, MAX_SHARDS, MAX_DIM = 2**31 - 1, 1_000_000, 65536
#: |norm - 1| allowed for stored normalised embeddings (fp16 rounding is ~1e-3)
NORM_TOLERANCE = 0.02

_COUNT = Field(int, lo=0, hi=MAX_ROWS)
SHARD_FIELDS = {"name": Field(str, required=True, pattern=SHARD_NAME), "run": Field(str, required=True, max_len=256),
                "rows": Field(int, required=True, lo=0, hi=MAX_ROWS), "errors": _COUNT, "start": _COUNT,
                "stop": _COUNT, "has_text": Field(bool)}
RUN_FIELDS = {"position": _COUNT, "complete": Field(bool)}  # "source", "config", "summaries": as the run recorded them
#: manifest.json, field by field; unknown keys are tolerated (as they always were)
MANIFEST_FIELDS = {
    "format": Field(str, required=True, choices=(FORMAT,)),
    "version": Field(int, lo=0, hi=VERSION),
    "backbone": Field(dict, required=True),
    "embed_dim": Field(int, required=True, lo=1, hi=MAX_DIM),
    "dtype": Field(str, required=True, choices=("float16", "float32")),
    "normalized": Field(bool),
    "created": Field(str, nullable=True, max_len=64),
    "runs": Field(dict, required=True, max_len=MAX_SHARDS, items=Field(dict, fields=RUN_FIELDS)),
    "shards": Field(list, required=True, max_len=MAX_SHARDS, items=Field(dict, fields=SHARD_FIELDS)),
}


class CacheError(ValueError):
    """A cache that cannot be opened, or an incompatible write."""


def read_manifest(root: str | os.PathLike, *, consistent: bool = True) -> Dict[str, Any]:
    """``manifest.json`` of the cache at ``root``, validated; with ``consistent`` (readers and
    writers) also its shard list against its runs (:func:`manifest_problems`)."""
    path = Path(root) / "manifest.json"
    if not path.exists():
        raise CacheError(f"{str(root)!r} is not a feature cache (no manifest.json); create one with `clipdetect extract`")
    manifest = read_json(path, what="cache manifest", error=CacheError)
    if isinstance(manifest, dict) and manifest.get("format") == FORMAT and isinstance(manifest.get("version"), int) \
            and manifest["version"] > VERSION:
        raise CacheError(f"cache format version {manifest['version']} is newer than this clipdetect reads ({VERSION})")
    validate(manifest, MANIFEST_FIELDS, what=f"cache manifest {str(path)!r}", error=CacheError)
    problems = manifest_problems(manifest) if consistent else []
    if problems:
        shard, what = problems[0]
        raise CacheError(f"cache manifest {str(path)!r}: shard {shard}: {what}; the cache is damaged (run "
                         f"`clipdetect cache verify {root}`)")
    return manifest


def manifest_problems(manifest: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(shard, problem) for each shard listed twice, of an unknown run, or past its run's position."""
    runs, names, out = manifest["runs"], set(), []
    for s in manifest["shards"]:
        if s["name"] in names:
            out.append((s["name"], "lists this shard twice"))
        names.add(s["name"])
        if s["run"] not in runs:
            out.append((s["name"], f"shard of run {s['run']!r}, which the manifest lacks"))
        elif int(s.get("stop", 0)) > int(runs[s["run"]].get("position", 0)):
            out.append((s["name"], f"shard ends at source position {s['stop']} beyond its run's "
                                   f"position {runs[s['run']].get('position')}"))
    return out


def shard_file(root: str | os.PathLike, sub: str, name: str, ext: str) -> Path:
    """``root/sub/name.ext``, refused (:class:`CacheError`) when it would lie outside ``root``."""
    try:
        return contained(root, f"{sub}/{name}.{ext}", what="shard file")
    except ValueError as exc:
        raise CacheError(f"cache {str(root)!r}: {exc}") from None
