"""Which source a spec names: a small registry of prefixes, kept as data (as open_clip keeps its configs).

``open_source("hf:NAME")`` looks ``hf`` up in :data:`SOURCE_PREFIXES` (prefix → ``"module:Class"``),
imports that module only then (``datasets`` is heavy) and builds the source with the options
it accepts (its ``OPTIONS``). Folders and ``.csv`` / ``.parquet`` manifests need no prefix.
:func:`register_source` adds a prefix (a plug-in source) without editing this module.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

from clipdetect.data.sources import ImageFolderSource, ManifestSource, Source

__all__ = ["SOURCE_PREFIXES", "register_source", "source_class", "open_source"]

#: prefix → "module:Class" (or a class, once registered at run time)
SOURCE_PREFIXES: Dict[str, Union[str, type]] = {
    "hf": "clipdetect.data.hf:HFSource",
    "d3": "clipdetect.data.d3:D3Source",
}
FOLDER_OPTIONS = ("labels", "split", "caption_template")
MANIFEST_OPTIONS = ("root", "caption_template", "split")


def register_source(prefix: str, target: Union[str, type]) -> None:
    """Make ``PREFIX:ARG`` specs open ``target(ARG, **options)`` (a class or ``"module:Class"``)."""
    if not prefix.isidentifier():
        raise ValueError(f"source prefix {prefix!r} must be a plain name such as 'hf' or 'd3'")
    SOURCE_PREFIXES[prefix] = target


def source_class(prefix: str) -> type:
    """The class registered for ``prefix``, imported on first use."""
    try:
        target = SOURCE_PREFIXES[prefix]
    except KeyError:
        raise ValueError(f"unknown source prefix {prefix!r}; known: {sorted(SOURCE_PREFIXES)}") from None
    if isinstance(target, str):
        module, _, name = target.partition(":")
        target = getattr(importlib.import_module(module), name)
    return target


def open_source(spec: str, **options) -> Source:
    """Pick a source from a spec: a folder, a ``.csv``/``.parquet`` manifest (``path`` column),
    a parquet of a Hugging Face dataset (an image column), or ``PREFIX:ARG`` (``hf:NAME``,
    ``d3:NAME_OR_PATH``, or any registered prefix). Options a source does not take are ignored."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in SOURCE_PREFIXES:
        cls = source_class(prefix)
        return cls(rest, **_only(options, getattr(cls, "OPTIONS", ())))
    p = Path(spec)
    if p.is_dir():
        return ImageFolderSource(p, **_only(options, FOLDER_OPTIONS))
    if p.suffix in (".csv", ".parquet") and p.is_file():
        if p.suffix == ".csv" or "path" in _parquet_columns(p):
            return ManifestSource(p, **_only(options, MANIFEST_OPTIONS))
        cls = source_class("hf")
        return cls(str(p), **_only(options, cls.OPTIONS))
    prefixes = ", ".join(f"'{k}:...'" for k in sorted(SOURCE_PREFIXES))
    raise ValueError(f"source {spec!r} is not a folder, a .csv/.parquet file, or one of {prefixes}")


def _parquet_columns(path: Path) -> List[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _only(options: Dict[str, Any], names: Iterable[str]) -> Dict[str, Any]:
    return {k: v for k, v in options.items() if k in names and v is not None}
