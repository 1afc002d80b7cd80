"""The feature cache: sharded embeddings on disk, written atomically, read memory-mapped.

Layout of one cache directory (one backbone per cache)::

    manifest.json                 backbone identity, dims, dtype, runs, shard list (written last)
    img_emb/part-00000.npy        [rows, D] image embeddings (fp16 by default, L2-normalised)
    txt_emb/part-00000.npy        [rows, D] caption embeddings (only when captions were given)
    layers/part-00000.npy         [rows, T, W] per-block CLS tokens of the image tower and the
                                  pre-projection token (only with ``extract --layers``)
    meta/part-00000.parquet       row-aligned: key, label, generator, split, path, caption,
                                  width, height, format, mode, source, family, group, view
    errors/part-00000.parquet     the error ledger: key, path, reason, detail

Every file is written under a temporary name and renamed, and the manifest lists only
complete shards: see :mod:`clipdetect.features.cache_writer` (:class:`CacheWriter`, one
writer at a time). :class:`FeatureCache` is the read side; the format's constants and
manifest checks are in :mod:`clipdetect.features.manifest`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from clipdetect.core.errors import MissingKeyError
from clipdetect.core.inputs import InputError, check_regular
from clipdetect.features.manifest import (ERROR_COLUMNS, META_COLUMNS, NORM_TOLERANCE, CacheError, feature_parts,
                                          read_manifest, read_meta, row_ids, shard_file)
from clipdetect.features.splits import check_stored_split

#: where each kind of array lives
ARRAY_DIRS = {"image": "img_emb", "text": "txt_emb", "layers": "layers"}


@dataclass
class _Shard:
    name: str
    rows: int
    has_text: bool
    has_layers: bool = False


class FeatureCache:
    """Read side of a cache: metadata in a DataFrame, embeddings memory-mapped per shard.

    Rows are addressed by their global index (shard order, then row order), which is the
    index of :attr:`meta`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.shards = [_Shard(s["name"], s["rows"], s.get("has_text", False),
                              s.get("has_layers", False)) for s in self.manifest["shards"]]
        self._offsets = np.cumsum([0] + [s.rows for s in self.shards], dtype=np.int64)
        self.n_rows = int(self._offsets[-1])
        self._mmaps: Dict[tuple, np.ndarray] = {}
        self._meta: Optional[pd.DataFrame] = None
        self._columns: Dict[str, pd.Series] = {}

    @property
    def backbone(self) -> Dict[str, Any]:
        return self.manifest["backbone"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def has_text(self) -> bool:
        return bool(self.shards) and all(s.has_text for s in self.shards if s.rows)

    @property
    def layers(self) -> Optional[Dict[str, Any]]:
        """The per-block token layout (names, tokens, width) when extracted with ``--layers``."""
        return self.manifest.get("layers")

    @property
    def has_layers(self) -> bool:
        return bool(self.layers) and bool(self.shards) and all(s.has_layers for s in self.shards if s.rows)

    def feature_dim(self, feature_set: str = "image") -> int:
        """Width of the detector input for ``feature_set`` (see :meth:`features`)."""
        dim = 0
        for part in feature_parts(feature_set):
            if part == "layers":
                if not self.layers:
                    raise CacheError(f"cache {str(self.root)!r} has no per-block features; extract with --layers")
                dim += int(self.layers["tokens"]) * int(self.layers["width"])
            else:
                dim += self.embed_dim
        return dim

    def __len__(self) -> int:
        return self.n_rows

    @property
    def meta(self) -> pd.DataFrame:
        if self._meta is None:
            self._meta = self._read_meta(None)
        return self._meta

    def _damaged(self, what: str) -> CacheError:
        return CacheError(f"{what}; the cache is damaged "
                          f"(run `clipdetect cache verify {self.root}`)")

    def _file(self, sub: str, shard: _Shard, ext: str) -> Path:
        """A shard's file: inside the cache and a regular file, or :class:`CacheError`."""
        path = shard_file(self.root, sub, shard.name, ext)
        try:
            check_regular(path)
        except InputError as exc:
            state = "missing" if exc.reason == "missing" else "unusable: " + exc.detail
            raise self._damaged(f"cache {str(self.root)!r}: {sub}/{shard.name}.{ext} "
                                f"is {state}") from None
        return path

    def _read_meta(self, columns: Optional[List[str]]) -> pd.DataFrame:
        """Metadata of every shard (only ``columns`` if given), checked as ``cache verify`` checks
        it: each shard's row count, unique (key, view) pairs, labels 0/1."""
        # key and view are always read: a (key, view) pair must be unique (a key repeats once per view)
        read = None if columns is None else list(dict.fromkeys(list(columns) + ["key", "view"]))
        frames = []
        for s in self.shards:
            path = self._file("meta", s, "parquet")
            try:
                frame = read_meta(path, read)
            except Exception as exc:  # pyarrow raises its own error types
                raise self._damaged(f"{str(path)!r} ({s.name}) is an unreadable parquet file "
                                    f"({type(exc).__name__})") from None
            if len(frame) != s.rows:
                raise self._damaged(f"{str(path)!r} has {len(frame)} rows but the manifest "
                                    f"says {s.rows}")
            frames.append(frame)
        got = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=read or META_COLUMNS)
        if "key" in got and len(got):
            dup = row_ids(got).duplicated()
            if dup.any():
                raise CacheError(f"cache {str(self.root)!r} holds key {got['key'][dup].iloc[0]!r} more than once "
                                 f"in one view ({int(dup.sum())} duplicate rows): the same images were extracted "
                                 f"twice; run `clipdetect cache verify {self.root}`")
        if "label" in got and len(got) and not got["label"].isin((0, 1)).all():
            raise CacheError(f"cache {str(self.root)!r} holds labels other than 0/1; run "
                             f"`clipdetect cache verify {self.root}`")
        return got if columns is None else got[list(columns)]

    def columns(self, *names: str) -> pd.DataFrame:
        """Only the named metadata columns, row-aligned like :attr:`meta`. Reads just those
        columns of each shard's parquet (a D3-scale cache's paths and captions are GBs that
        training never needs) and keeps them for the next call."""
        unknown = [n for n in names if n not in META_COLUMNS]
        if unknown:
            raise MissingKeyError(f"no metadata column(s) {unknown}; the cache has {list(META_COLUMNS)}")
        missing = [n for n in names if n not in self._columns]
        if missing:
            got = self._meta if self._meta is not None else self._read_meta(missing)
            self._columns.update({n: got[n] for n in missing})
        return pd.DataFrame({n: self._columns[n] for n in names})

    def errors(self) -> pd.DataFrame:
        frames = [pd.read_parquet(self._file("errors", s, "parquet")) for s in self.shards
                  if shard_file(self.root, "errors", s.name, "parquet").exists()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ERROR_COLUMNS)

    def select(self, *, split: str | Sequence[str] | None = None, generator: str | Sequence[str] | None = None,
               label: int | None = None) -> np.ndarray:
        """Global row indices matching every given filter (a value or a list of values).

        ``split`` filters the *stored* split column. A cache extracted as all "train" rows
        has no stored val/test rows (they are derived by key hash when training and
        evaluating), so asking for them raises instead of returning nothing; use
        :func:`clipdetect.features.splits.resolve_split_rows` or ``clipdetect.evaluate``.
        """
        m = self.columns("split", "generator", "label")
        mask = np.ones(len(m), dtype=bool)
        for col, val in (("split", split), ("generator", generator)):
            if val is not None:
                vals = [val] if isinstance(val, str) else list(val)
                mask &= m[col].isin(vals).to_numpy()
        if split is not None:
            check_stored_split(self.root, split, m["split"])
        if label is not None:
            mask &= (m["label"].to_numpy() == int(label))
        return np.flatnonzero(mask)

    def _shape(self, kind: str, rows: int) -> tuple:
        if kind == "layers":
            return (rows, int(self.layers["tokens"]), int(self.layers["width"]))
        return (rows, self.embed_dim)

    def _array(self, kind: str, shard: _Shard) -> np.ndarray:
        k = (kind, shard.name)
        if k not in self._mmaps:
            sub = ARRAY_DIRS[kind]
            if not shard_file(self.root, sub, shard.name, "npy").exists():
                why = {"text": " (extracted without captions)", "layers": " (extracted without --layers)"}
                raise CacheError(f"cache {str(self.root)!r} has no {kind} embeddings for {shard.name}"
                                 + why.get(kind, ""))
            path = self._file(sub, shard, "npy")
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise CacheError(f"{str(path)!r} ({shard.name}) cannot be read, it is truncated or damaged ({exc}; "
                                 f"run `clipdetect cache verify {self.root}`)") from None
            if arr.shape != self._shape(kind, shard.rows):
                raise self._damaged(f"{str(path)!r} holds shape {arr.shape}, but the manifest says "
                                    f"{self._shape(kind, shard.rows)}")
            size = os.path.getsize(path)
            if arr.dtype != np.dtype(self.manifest["dtype"]) or size != arr.offset + arr.nbytes:
                raise self._damaged(f"{str(path)!r} holds {arr.dtype} in {size:,} bytes, but the "
                                    f"manifest says {self.manifest['dtype']} "
                                    f"({arr.offset + arr.nbytes:,} bytes)")
            self._mmaps[k] = arr
        return self._mmaps[k]

    def embeddings(self, kind: str = "image", rows: Optional[np.ndarray] = None) -> np.ndarray:
        """float32 embeddings of ``kind`` ('image', 'text' [N, D], or 'layers' [N, T, W]) for ``rows``
        (default: all), in order."""
        if kind not in ARRAY_DIRS:
            raise ValueError(f"embedding kind {kind!r} is not one of {sorted(ARRAY_DIRS)}")
        if kind == "layers":
            self.feature_dim("layers")  # a clear error when the cache has none
        rows = np.arange(self.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty(self._shape(kind, len(rows)), dtype=np.float32)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.n_rows:
            raise IndexError(f"row index out of range [0, {self.n_rows})")
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for si in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == si)
            local = rows[sel] - self._offsets[si]
            order = np.argsort(local, kind="stable")  # sequential reads from the memory map
            out[sel[order]] = self._array(kind, self.shards[si])[local[order]]
        if not np.isfinite(out).all():  # cheap next to the gather; a NaN would only surface in the metrics
            bad = rows[~np.isfinite(out.reshape(len(out), -1)).all(axis=1)]
            shard_of = np.searchsorted(self._offsets, bad, side="right") - 1
            where = ", ".join(f"{self.shards[s].name} row {r - self._offsets[s]}" for s, r in zip(shard_of[:5], bad))
            raise CacheError(f"cache {str(self.root)!r} holds NaN/inf {kind} embeddings ({where}"
                             f"{' …' if len(bad) > 5 else ''}); run `clipdetect cache verify {self.root}`")
        if self.manifest.get("normalized") and kind != "layers":  # per-block tokens are not unit vectors
            off = np.flatnonzero(np.abs(np.linalg.norm(out, axis=1) - 1.0) > NORM_TOLERANCE)
            if off.size:
                shard_of = np.searchsorted(self._offsets, rows[off[:1]], side="right") - 1
                raise CacheError(f"cache {str(self.root)!r} says its {kind} embeddings are normalised, but "
                                 f"{off.size} rows are not (first: {self.shards[shard_of[0]].name} row "
                                 f"{rows[off[0]] - self._offsets[shard_of[0]]}); run "
                                 f"`clipdetect cache verify {self.root}`")
        return out

    def features(self, feature_set: str = "image", rows: Optional[np.ndarray] = None) -> np.ndarray:
        """The detector input for ``feature_set``: its parts (image, text, layers — the per-block
        tokens flattened to [N, T*W]) concatenated in order, e.g. ``image+text``."""
        arrays = [self.embeddings(part, rows) for part in feature_parts(feature_set)]
        arrays = [a.reshape(len(a), -1) for a in arrays]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)

    def labels(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        y = self.columns("label")["label"].to_numpy().astype(np.int64)
        return y if rows is None else y[np.asarray(rows)]

    def summary(self) -> Dict[str, Any]:
        m = self.columns("label", "split", "generator")
        errs = self.errors()
        return {"root": str(self.root), "backbone": self.backbone, "rows": self.n_rows,
                "shards": len(self.shards), "embed_dim": self.embed_dim, "dtype": self.manifest["dtype"],
                "has_text": self.has_text, "layers": self.layers,
                "views": {str(k): int(v) for k, v in self.columns("view")["view"].value_counts().items()},
                "labels": {("fake" if int(k) else "real"): int(v) for k, v in m["label"].value_counts().items()},
                "splits": {str(k): int(v) for k, v in m["split"].value_counts().items()},
                "generators": {str(k): int(v) for k, v in m["generator"].value_counts().items()},
                "errors": {str(k): int(v) for k, v in errs["reason"].value_counts().items()} if len(errs) else {},
                "runs": {k: {kk: v.get(kk) for kk in ("source", "position", "complete")}
                         for k, v in self.manifest["runs"].items()}}
