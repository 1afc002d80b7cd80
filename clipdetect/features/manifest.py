"""The feature-cache format: its name and version, the metadata and error-ledger columns, and
``manifest.json`` read with its checks (the layout is described in :mod:`clipdetect.features.cache`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from clipdetect.core.io import read_json

FORMAT = "clipdetect-cache"
VERSION = 1
META_COLUMNS = ["key", "label", "generator", "split", "path", "caption", "width", "height", "format", "mode",
                "source"]
#: metadata columns that caches written by earlier versions lack; read as "" there
OPTIONAL_META_COLUMNS = ("source",)
ERROR_COLUMNS = ["key", "path", "reason", "detail"]
FEATURE_SETS = ("image", "text", "image+text")


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
