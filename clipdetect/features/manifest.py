"""The feature-cache format: its name and version, the metadata and error-ledger columns, and
``manifest.json`` read with its checks (the layout is described in :mod:`clipdetect.features.cache`).

The manifest is validated against :data:`MANIFEST_FIELDS` (types, ranges, size bounds; shard
names are plain file names) before anything is built from it, and every shard file is found
through :func:`shard_file`, which keeps it inside the cache folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from clipdetect.core.inputs import contained
from clipdetect.core.io import read_json
from clipdetect.core.schema import Field, validate

FORMAT = "clipdetect-cache"
#: 2 added the ``source``/``family``/``group``/``view`` metadata columns and optional per-block
#: ``layers`` arrays; version-1 caches read with those columns derived (:func:`fill_meta_defaults`)
VERSION = 2
V1_META_COLUMNS = ["key", "label", "generator", "split", "path", "caption", "width", "height", "format", "mode"]
#: columns added in version 2; a version-1 shard gets them from :func:`fill_meta_defaults`
V2_META_COLUMNS = ["source", "family", "group", "view"]
META_COLUMNS = V1_META_COLUMNS + V2_META_COLUMNS
#: the columns that describe the decoded image (the decoder's ``info``), and the image's view;
#: the others are the source sample's fields of the same names
IMAGE_COLUMNS = ("width", "height", "format", "mode", "view")
ERROR_COLUMNS = ["key", "path", "reason", "detail"]
#: what a detector input is made of: the final image embedding, the caption embedding, and the
#: per-block CLS tokens of the image tower (``extract --layers``), flattened
FEATURE_PARTS = ("image", "text", "layers")
#: the usual detector inputs; any "+"-joined list of parts is one (concatenated in that order)
FEATURE_SETS = ("image", "text", "image+text", "layers", "image+layers")


def feature_parts(feature_set: str) -> List[str]:
    """The parts of a feature set, e.g. ``"image+layers"`` → ``["image", "layers"]``."""
    parts = str(feature_set).split("+")
    if any(p not in FEATURE_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"feature set {feature_set!r} is not a '+'-joined list of distinct parts from "
                         f"{FEATURE_PARTS} (e.g. {', '.join(FEATURE_SETS)})")
    return parts


def derived_from(column: str) -> Optional[str]:
    """The version-1 column a version-2 column defaults to (None: a constant default)."""
    return {"family": "generator", "group": "key"}.get(column)


def fill_meta_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the version-2 columns a version-1 shard lacks: ``source`` "", ``family`` = generator,
    ``group`` = key (each image its own content group), ``view`` "orig"; empty values of a
    version-2 shard (a source that knew no family or group) get the same defaults."""
    for col in V2_META_COLUMNS:
        base = derived_from(col)
        default = frame[base].astype(str) if base and base in frame else ("orig" if col == "view" else "")
        if col not in frame:
            frame[col] = default
        else:  # (for "source", whose default is "", an empty value stays as it was)
            vals = frame[col].astype(object)
            frame[col] = vals.where(vals.notna() & (vals.astype(str) != ""), default)
    return frame


def read_meta(path: str | os.PathLike, columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One shard's metadata (all columns, or ``columns``), version-1 shards completed with the
    version-2 defaults (:func:`~clipdetect.features.manifest.fill_meta_defaults`)."""
    if columns is None:
        return fill_meta_defaults(pd.read_parquet(path))
    import pyarrow.parquet as pq

    have = set(pq.read_schema(path).names)
    # a derived column's base is read too: empty values of a version-2 shard fall back to it
    need = list(dict.fromkeys([c for c in columns if c in have]
                              + [b for c in columns if (b := derived_from(c)) in have]))
    frame = fill_meta_defaults(pd.read_parquet(path, columns=need))
    return frame[list(columns)]


def row_ids(meta: pd.DataFrame) -> pd.Series:
    """What must be unique in a cache: the key, and with it the view when that is not the
    original (``extract --views`` stores one row per image and view; no view means "orig")."""
    keys = meta["key"].astype(str)
    if "view" not in meta:
        return keys
    view = meta["view"].fillna("orig").astype(str)
    return keys.where(view.isin(("", "orig")), keys + "\x00" + view)


def layers_info(names: Sequence[str], width: int) -> Dict[str, Any]:
    """The manifest's description of the ``layers`` arrays: one token per name, ``width`` wide."""
    return {"names": list(names), "tokens": len(names), "width": int(width)}


#: a shard name is a plain file name (``part-00000-1a2b3c4d``): no folder, no ``..``
SHARD_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
MAX_ROWS, MAX_SHARDS, MAX_DIM = 2**31 - 1, 1_000_000, 65536
#: |norm - 1| allowed for stored normalised embeddings (fp16 rounding is ~1e-3)
NORM_TOLERANCE = 0.02

_COUNT = Field(int, lo=0, hi=MAX_ROWS)
SHARD_FIELDS = {"name": Field(str, required=True, pattern=SHARD_NAME), "run": Field(str, required=True, max_len=256),
                "rows": Field(int, required=True, lo=0, hi=MAX_ROWS), "errors": _COUNT, "start": _COUNT,
                "stop": _COUNT, "has_text": Field(bool), "has_layers": Field(bool)}
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
    "layers": Field(dict, nullable=True, fields={
        "names": Field(list, max_len=4096, items=Field(str, max_len=64)),
        "tokens": Field(int, lo=1, hi=4096), "width": Field(int, lo=1, hi=MAX_DIM)}),
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
