"""Checking a feature cache: what is damaged, in which shard, at which rows.

:func:`verify_cache` with ``full=False`` is the cheap part (manifest, file presence, ``.npy``
headers against the manifest's rows, dims and dtype, file sizes against the headers,
parquet row counts from their footers — nothing is read in full); training and evaluation
run it when they open a cache (:func:`open_verified`). ``full=True`` (``clipdetect cache
verify``) also reads every embedding (finite, norm ≈ 1 when the cache says it is
normalised), every metadata table (columns, unique keys, labels 0/1) and the error ledger.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from clipdetect.core.inputs import InputError, check_regular
from clipdetect.features.cache import FeatureCache
from clipdetect.features.manifest import (ERROR_COLUMNS, NORM_TOLERANCE, V1_META_COLUMNS, CacheError,
                                          manifest_problems, read_manifest, row_ids, shard_file)

__all__ = ["Problem", "VerifyReport", "verify_cache", "open_verified", "npy_header"]

_CHUNK = 65536


@dataclass
class Problem:
    file: str
    what: str
    shard: Optional[str] = None
    rows: List[int] = field(default_factory=list)  # shard-local row numbers (first few)
    n_rows: int = 0  # how many rows are affected in all

    def __str__(self) -> str:
        where = f" (shard {self.shard})" if self.shard else ""
        rows = ""
        if self.rows:
            more = f" … ({self.n_rows} rows)" if self.n_rows > len(self.rows) else ""
            rows = f" at rows {', '.join(map(str, self.rows))}{more}"
        return f"{self.file}{where}: {self.what}{rows}"


@dataclass
class VerifyReport:
    root: str
    shards: int = 0
    rows: int = 0
    full: bool = False
    problems: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self, limit: int = 5) -> str:
        head = "; ".join(str(p) for p in self.problems[:limit])
        more = f"; and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return (f"cache {self.root!r} is damaged: {head}{more}. Run `clipdetect cache verify {self.root}` "
                "for the full list; re-extract the damaged shards (delete the cache, or its run) to repair")


def npy_header(path: Path):
    """(shape, dtype, data offset) of a ``.npy`` file, reading only its header."""
    with open(path, "rb") as f:
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
        return shape, dtype, f.tell()


def _file(root: Path, sub: str, name: str, ext: str, out: List[Problem], required: bool = True):
    """The shard file if it is a regular file inside the cache; otherwise a problem (or None)."""
    rel = f"{sub}/{name}.{ext}"
    try:
        path = shard_file(root, sub, name, ext)
        check_regular(path)
    except CacheError as exc:
        out.append(Problem(rel, str(exc), name))
        return None
    except InputError as exc:
        if required or exc.reason != "missing":
            out.append(Problem(rel, "missing" if exc.reason == "missing" else exc.detail, name))
        return None
    return path


def _check_npy(root: Path, sub: str, shard: Dict[str, Any], manifest: Dict[str, Any], out: List[Problem]):
    rel, name = f"{sub}/{shard['name']}.npy", shard["name"]
    path = _file(root, sub, name, "npy", out)
    if path is None:
        return None
    try:
        shape, dtype, offset = npy_header(path)
    except (ValueError, OSError, SyntaxError) as exc:
        out.append(Problem(rel, f"unreadable .npy header ({exc})", name))
        return None
    layers = manifest.get("layers") or {}
    want = ((int(shard["rows"]), int(layers.get("tokens", 0)), int(layers.get("width", 0))) if sub == "layers"
            else (int(shard["rows"]), int(manifest["embed_dim"])))
    if tuple(shape) != want:
        dims = "(rows, tokens, width)" if sub == "layers" else "(rows, dim)"
        out.append(Problem(rel, f"holds shape {tuple(shape)} but the manifest says {want} {dims}", name))
    if dtype != np.dtype(manifest["dtype"]):
        out.append(Problem(rel, f"dtype {dtype} but the manifest says {manifest['dtype']}", name))
    need = offset + int(np.prod(shape)) * dtype.itemsize
    size = os.path.getsize(path)
    if size != need:
        kind = "truncated" if size < need else "has trailing bytes"
        out.append(Problem(rel, f"{kind}: {size:,} bytes, its header needs {need:,}", name))
        return None
    return path if tuple(shape) == want else None


def _check_parquet(root: Path, sub: str, shard: Dict[str, Any], rows: Optional[int], out: List[Problem]):
    import pyarrow.parquet as pq

    rel = f"{sub}/{shard['name']}.parquet"
    path = _file(root, sub, shard["name"], "parquet", out, required=sub == "meta")
    if path is None:
        return None
    try:
        n = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # pyarrow raises its own error types
        out.append(Problem(rel, f"unreadable parquet ({type(exc).__name__}: {exc})", shard["name"]))
        return None
    if rows is not None and n != rows:
        out.append(Problem(rel, f"has {n} rows but the manifest says {rows}", shard["name"]))
        return None
    return path


def _bad_rows(problems: List[Problem], rel: str, shard: str, what: str, rows: np.ndarray) -> None:
    if len(rows):
        problems.append(Problem(rel, what, shard, rows[:10].tolist(), int(len(rows))))


def _scan_embeddings(path: Path, rel: str, shard: str, normalized: bool, out: List[Problem]) -> None:
    arr = np.load(path, mmap_mode="r")
    bad, off = [np.zeros(0, int)], [np.zeros(0, int)]
    for i in range(0, len(arr), _CHUNK):
        x = np.asarray(arr[i:i + _CHUNK], dtype=np.float32).reshape(min(_CHUNK, len(arr) - i), -1)
        finite = np.isfinite(x).all(axis=1)
        bad.append(np.flatnonzero(~finite) + i)
        if normalized:
            norms = np.linalg.norm(np.where(np.isfinite(x), x, 0.0), axis=1)
            off.append(np.flatnonzero(finite & (np.abs(norms - 1.0) > NORM_TOLERANCE)) + i)
    _bad_rows(out, rel, shard, "NaN or inf values", np.concatenate(bad))
    _bad_rows(out, rel, shard, f"norm differs from 1 by more than {NORM_TOLERANCE}",
              np.concatenate(off))


def _scan_meta(path: Path, rel: str, shard: str, seen: Dict[str, str], out: List[Problem]) -> None:
    meta = pd.read_parquet(path)
    missing = [c for c in V1_META_COLUMNS if c not in meta.columns]
    if missing:
        out.append(Problem(rel, f"lacks metadata column(s) {missing}", shard))
        return
    keys = row_ids(meta)  # one row per image and view
    dup = [i for i, k in enumerate(keys.to_numpy()) if k in seen or seen.setdefault(k, shard) != shard]
    _bad_rows(out, rel, shard, "duplicate keys (also earlier in the cache or this shard; per view)",
              np.array(dup, int))
    labels = pd.to_numeric(meta["label"], errors="coerce").to_numpy()
    _bad_rows(out, rel, shard, "labels other than 0/1", np.flatnonzero(~np.isin(labels, (0, 1))))


def _scan_ledger(path: Path, rel: str, shard: str, out: List[Problem]) -> None:
    led = pd.read_parquet(path)
    missing = [c for c in ERROR_COLUMNS if c not in led.columns]
    if missing and len(led):
        out.append(Problem(rel, f"error ledger lacks column(s) {missing}", shard))
    elif len(led):
        _bad_rows(out, rel, shard, "ledger rows without a reason", np.flatnonzero(led["reason"].isna().to_numpy()))


def verify_cache(root: str | os.PathLike, *, full: bool = True) -> VerifyReport:
    """Check the cache at ``root``; ``full=False`` skips reading the data itself."""
    root = Path(root)
    report = VerifyReport(str(root), full=full)
    try:
        manifest = read_manifest(root, consistent=False)
    except CacheError as exc:
        report.problems.append(Problem("manifest.json", str(exc)))
        return report
    out, seen = report.problems, {}
    out += [Problem("manifest.json", what, shard) for shard, what in manifest_problems(manifest)]
    for s in manifest["shards"]:
        report.shards += 1
        report.rows += int(s["rows"])
        wanted = {"img_emb": True, "txt_emb": s.get("has_text"),
                  "layers": manifest.get("layers") or s.get("has_layers")}
        arrays = [(sub, _check_npy(root, sub, s, manifest, out)) for sub in wanted if wanted[sub]]
        meta = _check_parquet(root, "meta", s, int(s["rows"]), out)
        ledger = _check_parquet(root, "errors", s, int(s.get("errors", 0)), out)
        if not full:
            continue
        for sub, path in arrays:
            if path is not None:
                _scan_embeddings(path, f"{sub}/{path.name}", s["name"],
                                 bool(manifest.get("normalized")) and sub != "layers", out)
        if meta is not None:
            _scan_meta(meta, f"meta/{meta.name}", s["name"], seen, out)
        if ledger is not None:
            _scan_ledger(ledger, f"errors/{ledger.name}", s["name"], out)
    return report


def open_verified(root: str | os.PathLike) -> FeatureCache:
    """Open a cache after the cheap checks; a damaged one raises :class:`CacheError` saying where."""
    report = verify_cache(root, full=False)
    if not report.ok:
        raise CacheError(report.message())
    return FeatureCache(root)
