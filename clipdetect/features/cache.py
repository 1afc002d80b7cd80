"""The feature cache: sharded embeddings on disk, written atomically, read memory-mapped.

Layout of one cache directory (one backbone per cache)::

    manifest.json                 backbone identity, dims, dtype, runs, shard list (written last)
    img_emb/part-00000.npy        [rows, D] image embeddings (fp16 by default, L2-normalised)
    txt_emb/part-00000.npy        [rows, D] caption embeddings (only when captions were given)
    meta/part-00000.parquet       row-aligned: key, label, generator, split, path, caption,
                                  width, height, format, mode
    errors/part-00000.parquet     the error ledger: key, path, reason, detail

Every file is written under a temporary name and renamed; the manifest is rewritten
(atomically) only after a shard's files are in place. A process killed at any moment
therefore leaves a cache whose manifest lists only complete shards, and a re-run resumes
from the last complete shard of its run.

One writer at a time: :class:`CacheWriter` holds an advisory lock (``.writer.lock``, see
:mod:`clipdetect.core.lock`) for its lifetime; a second writer waits up to ``lock_timeout``
seconds, then refuses naming the holder's pid and command line. Start-up clean-up removes
only temporary files whose writer process is dead; the manifest is re-read before every
change, and shard names carry the run (``part-NNNNN-RUNHASH``), so they cannot collide.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd

from clipdetect.core.io import TMP_GLOB, atomic_write, read_json, tmp_owner_pid, write_json
from clipdetect.core.lock import DirLock, LockedError, pid_alive
from clipdetect.features.backbones import identities_match

logger = logging.getLogger(__name__)

FORMAT = "clipdetect-cache"
VERSION = 1
META_COLUMNS = ["key", "label", "generator", "split", "path", "caption", "width", "height", "format", "mode"]
ERROR_COLUMNS = ["key", "path", "reason", "detail"]
FEATURE_SETS = ("image", "text", "image+text")
LOCK_NAME = ".writer.lock"


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


class CacheWriter:
    """Appends shards to a cache directory; refuses a different backbone or preprocessing.

    Holds the cache's writer lock from construction to :meth:`close` (or process exit);
    ``lock_timeout`` seconds to wait for another writer (0: refuse at once).
    """

    def __init__(self, root: str | os.PathLike, *, backbone: Dict[str, Any], dtype: str = "float16",
                 lock_timeout: float = 0.0):
        self.root = Path(root)
        for sub in ("img_emb", "txt_emb", "meta", "errors"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = DirLock(self.root / LOCK_NAME, timeout=lock_timeout, what=f"cache {str(self.root)!r}")
        try:
            self._lock.acquire()
        except LockedError as exc:
            raise CacheError(f"{exc}; wait for it to finish, pass --lock-timeout SECONDS to wait for it, "
                             "or write to another --out") from None
        try:
            self._clean_tmp()
            if (self.root / "manifest.json").exists():
                self.manifest = read_manifest(self.root)
                self._check_compatible(backbone, dtype)
            else:
                self.manifest = {"format": FORMAT, "version": VERSION, "backbone": backbone,
                                 "embed_dim": backbone["embed_dim"], "dtype": dtype, "normalized": True,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": {}, "shards": []}
                write_json(self.root / "manifest.json", self.manifest)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the writer lock (also released when the process exits)."""
        self._lock.release()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self.close()

    def _reload(self) -> Dict[str, Any]:
        """The manifest as on disk (under the lock, so nobody else changes it meanwhile)."""
        self.manifest = read_manifest(self.root)
        return self.manifest

    def _clean_tmp(self) -> None:
        """Remove temporary files left by dead writers; a live process's files are kept."""
        for p in self.root.rglob(TMP_GLOB):
            pid = tmp_owner_pid(p)
            if pid is not None and (pid == os.getpid() or pid_alive(pid)):
                continue
            p.unlink(missing_ok=True)

    def _check_compatible(self, backbone: Dict[str, Any], dtype: str) -> None:
        have = self.manifest["backbone"]
        if not identities_match(have, backbone):
            diff = {k: (have.get(k), backbone.get(k)) for k in set(have) | set(backbone)
                    if have.get(k) != backbone.get(k) and k not in ("open_clip_version", "checkpoint",
                                                                               "checkpoint_path", "spec")}
            raise CacheError(f"cache {str(self.root)!r} holds embeddings of another backbone or preprocessing "
                             f"(cache vs new: {diff}); extract into a new --out directory")
        if self.manifest["dtype"] != dtype:
            raise CacheError(f"cache {str(self.root)!r} stores {self.manifest['dtype']}, not {dtype}")

    def begin_run(self, run_id: str, info: Dict[str, Any]) -> Dict[str, Any]:
        runs = self._reload()["runs"]
        if run_id not in runs:
            runs[run_id] = {**info, "position": 0, "complete": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_json(self.root / "manifest.json", self.manifest)
        return runs[run_id]

    def write_shard(self, run_id: str, *, start: int, stop: int, img: np.ndarray, txt: Optional[np.ndarray],
                    meta: pd.DataFrame, errors: pd.DataFrame) -> str:
        """Write one shard covering source positions [start, stop) and record it."""
        if len(meta) != len(img) or (txt is not None and len(txt) != len(img)):
            raise CacheError(f"shard arrays are not row-aligned: img {len(img)}, meta {len(meta)}, "
                             f"txt {None if txt is None else len(txt)}")
        self._reload()
        name = shard_name(len(self.manifest["shards"]), run_id)
        dtype = np.dtype(self.manifest["dtype"])
        for sub, arr in (("img_emb", img), ("txt_emb", txt)):
            if arr is not None:
                arr = np.asarray(arr).astype(dtype)
                atomic_write(self.root / sub / f"{name}.npy", lambda f, a=arr: np.save(f, a),
                             nbytes=arr.nbytes + 128)  # + the .npy header
        atomic_write(self.root / "meta" / f"{name}.parquet", lambda f: meta.to_parquet(f, index=False))
        atomic_write(self.root / "errors" / f"{name}.parquet",
                     lambda f: errors.reindex(columns=ERROR_COLUMNS).to_parquet(f, index=False))
        self.manifest["shards"].append({"name": name, "run": run_id, "rows": int(len(img)),
                                        "errors": int(len(errors)), "start": start, "stop": stop,
                                        "has_text": txt is not None})
        run = self.manifest["runs"][run_id]
        run["position"] = stop
        write_json(self.root / "manifest.json", self.manifest)
        return name

    def finish_run(self, run_id: str, summary: Dict[str, Any], *, complete: bool) -> None:
        """Record a run's summary; ``complete`` when the source was read to its end."""
        run = self._reload()["runs"][run_id]
        run["complete"] = bool(complete)
        run.setdefault("summaries", []).append(summary)
        write_json(self.root / "manifest.json", self.manifest)


def shard_name(index: int, run_id: str) -> str:
    """``part-NNNNN-RUNHASH``: the shard's position in the manifest and its run, so that two
    runs appending to one cache can never write the same file names."""
    return f"part-{index:05d}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}"


@dataclass
class _Shard:
    name: str
    rows: int
    offset: int
    has_text: bool


class FeatureCache:
    """Read side of a cache: metadata in a DataFrame, embeddings memory-mapped per shard.

    Rows are addressed by their global index (shard order, then row order), which is the
    index of :attr:`meta`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.shards: List[_Shard] = []
        offset = 0
        for s in self.manifest["shards"]:
            self.shards.append(_Shard(s["name"], s["rows"], offset, s.get("has_text", False)))
            offset += s["rows"]
        self.n_rows = offset
        self._offsets = np.array([s.offset for s in self.shards] + [offset], dtype=np.int64)
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

    def __len__(self) -> int:
        return self.n_rows

    @property
    def meta(self) -> pd.DataFrame:
        if self._meta is None:
            frames = [pd.read_parquet(self.root / "meta" / f"{s.name}.parquet") for s in self.shards]
            self._meta = (pd.concat(frames, ignore_index=True) if frames
                          else pd.DataFrame(columns=META_COLUMNS))
        return self._meta

    def columns(self, *names: str) -> pd.DataFrame:
        """Only the named metadata columns, row-aligned like :attr:`meta`. Reads just those
        columns of each shard's parquet (a D3-scale cache's paths and captions are GBs that
        training never needs) and keeps them for the next call."""
        unknown = [n for n in names if n not in META_COLUMNS]
        if unknown:
            raise KeyError(f"no metadata column(s) {unknown}; the cache has {list(META_COLUMNS)}")
        missing = [n for n in names if n not in self._columns]
        if missing and self._meta is not None:
            self._columns.update({n: self._meta[n] for n in missing})
        elif missing:
            frames = [pd.read_parquet(self.root / "meta" / f"{s.name}.parquet", columns=missing) for s in self.shards]
            got = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=missing)
            self._columns.update({n: got[n] for n in missing})
        return pd.DataFrame({n: self._columns[n] for n in names})

    def errors(self) -> pd.DataFrame:
        frames = [pd.read_parquet(p) for s in self.shards if (p := self.root / "errors" / f"{s.name}.parquet").exists()]
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
            self._check_stored_split(split, m["split"])
        if label is not None:
            mask &= (m["label"].to_numpy() == int(label))
        return np.flatnonzero(mask)

    def _check_stored_split(self, split: str | Sequence[str], stored: pd.Series) -> None:
        from clipdetect.features.splits import TEST_NAMES, VAL_NAMES, has_heldout_splits

        wanted = [split] if isinstance(split, str) else list(split)
        derived = [s for s in wanted if str(s).lower() in VAL_NAMES + TEST_NAMES]
        if derived and len(stored) and not has_heldout_splits(stored):
            raise ValueError(
                f"cache {str(self.root)!r} stores no {derived[0]!r} rows: all its rows say 'train', and "
                "validation/test rows are derived from their keys when training and evaluating. Use "
                f"clipdetect.features.splits.resolve_split_rows(cache, {derived[0]!r}, val=..., test=..., "
                f"seed=...) with the detector's split fractions, or clipdetect.evaluate(detector, cache, "
                f"split={derived[0]!r}), which resolves it as `clipdetect evaluate --split` does")

    def _array(self, kind: str, shard: _Shard) -> np.ndarray:
        k = (kind, shard.name)
        if k not in self._mmaps:
            sub = "img_emb" if kind == "image" else "txt_emb"
            path = self.root / sub / f"{shard.name}.npy"
            if not path.exists():
                raise CacheError(f"cache {str(self.root)!r} has no {kind} embeddings for {shard.name}"
                                 + (" (extracted without captions)" if kind == "text" else ""))
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise CacheError(f"{str(path)!r} ({shard.name}) cannot be read: {exc}; it is damaged "
                                 f"(run `clipdetect cache verify {self.root}`)") from None
            if arr.ndim != 2 or arr.shape != (shard.rows, self.embed_dim):
                raise CacheError(f"{str(path)!r} holds shape {arr.shape}, but the manifest says "
                                 f"({shard.rows}, {self.embed_dim}); the cache is damaged "
                                 f"(run `clipdetect cache verify {self.root}`)")
            self._mmaps[k] = arr
        return self._mmaps[k]

    def embeddings(self, kind: str = "image", rows: Optional[np.ndarray] = None) -> np.ndarray:
        """float32 embeddings of ``kind`` ('image' or 'text') for ``rows`` (default: all), in order."""
        rows = np.arange(self.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.embed_dim), dtype=np.float32)
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
            bad = rows[~np.isfinite(out).all(axis=1)]
            shard_of = np.searchsorted(self._offsets, bad, side="right") - 1
            where = ", ".join(f"{self.shards[s].name} row {r - self._offsets[s]}" for s, r in zip(shard_of[:5], bad))
            raise CacheError(f"cache {str(self.root)!r} holds NaN/inf {kind} embeddings ({where}"
                             f"{' …' if len(bad) > 5 else ''}); run `clipdetect cache verify {self.root}`")
        return out

    def features(self, feature_set: str = "image", rows: Optional[np.ndarray] = None) -> np.ndarray:
        """The detector input for ``feature_set``: image, text, or image+text (concatenated)."""
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"feature set {feature_set!r} is not one of {FEATURE_SETS}")
        if feature_set == "image+text":
            return np.concatenate([self.embeddings("image", rows), self.embeddings("text", rows)], axis=1)
        return self.embeddings(feature_set, rows)

    def labels(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        y = self.columns("label")["label"].to_numpy().astype(np.int64)
        return y if rows is None else y[np.asarray(rows)]

    def iter_batches(self, rows: np.ndarray, batch_size: int, feature_set: str = "image") -> Iterator[np.ndarray]:
        for i in range(0, len(rows), batch_size):
            yield self.features(feature_set, rows[i:i + batch_size])

    def summary(self) -> Dict[str, Any]:
        m = self.columns("label", "split", "generator")
        errs = self.errors()
        return {"root": str(self.root), "backbone": self.backbone, "rows": self.n_rows,
                "shards": len(self.shards), "embed_dim": self.embed_dim, "dtype": self.manifest["dtype"],
                "has_text": self.has_text,
                "labels": {("fake" if int(k) else "real"): int(v) for k, v in m["label"].value_counts().items()},
                "splits": {str(k): int(v) for k, v in m["split"].value_counts().items()},
                "generators": {str(k): int(v) for k, v in m["generator"].value_counts().items()},
                "errors": {str(k): int(v) for k, v in errs["reason"].value_counts().items()} if len(errs) else {},
                "runs": {k: {kk: v.get(kk) for kk in ("source", "position", "complete")}
                         for k, v in self.manifest["runs"].items()}}


def open_cache(root: str | os.PathLike) -> FeatureCache:
    return FeatureCache(root)
