"""The feature-cache format: its name and version, the metadata and error-ledger columns, and
``manifest.json`` read with its checks (the layout is described in :mod:`clipdetect.features.cache`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from clipdetect.core.io import read_json

FORMAT = "clipdetect-cache"
#: 2 added the ``source``/``family``/``group``/``view`` metadata columns and optional per-block
#: ``layers`` arrays; version-1 caches read with those columns derived (:func:`fill_meta_defaults`)
VERSION = 2
V1_META_COLUMNS = ["key", "label", "generator", "split", "path", "caption", "width", "height", "format", "mode"]
#: columns added in version 2; a version-1 shard gets them from :func:`fill_meta_defaults`
V2_META_COLUMNS = ["source", "family", "group", "view"]
META_COLUMNS = V1_META_COLUMNS + V2_META_COLUMNS
ERROR_COLUMNS = ["key", "path", "reason", "detail"]
#: what a detector input is made of: the final image embedding, the caption embedding, and the
#: per-block CLS tokens of the image tower (``extract --layers``), flattened
FEATURE_PARTS = ("image", "text", "layers")
#: the usual detector inputs; any "+"-joined list of parts is one (concatenated in that order)
FEATURE_SETS = ("image", "text", "image+text", "layers", "image+layers")


def feature_parts(feature_set: str) -> List[str]:
    """The parts of a feature set, e.g. ``"image+layers"`` → ``["image", "layers"]``."""
    parts = str(feature_set).split("+")
    if not parts or any(p not in FEATURE_PARTS for p in parts) or len(set(parts)) != len(parts):
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
        elif base or col == "view":
            vals = frame[col].astype(object)
            frame[col] = vals.where(vals.notna() & (vals.astype(str) != ""), default)
        else:
            frame[col] = frame[col].astype(object).where(frame[col].notna(), default)
    return frame


def layers_info(names: Sequence[str], width: int) -> Dict[str, Any]:
    """The manifest's description of the ``layers`` arrays: one token per name, ``width`` wide."""
    return {"names": list(names), "tokens": len(names), "width": int(width)}


class CacheError(ValueError):
    """A cache that cannot be opened, or an incompatible write."""


def read_manifest(root: str | os.PathLike) -> Dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise CacheError(f"{str(root)!r} is not a feature cache (no manifest.json); create one with `clipdetect extract`")
    manifest = read_json(path, what="cache manifest", error=CacheError)
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{str(path)!r} is not a {FORMAT} manifest")
    if manifest.get("version", 0) > VERSION:
        raise CacheError(f"cache format version {manifest['version']} is newer than this clipdetect reads ({VERSION})")
    return manifest
