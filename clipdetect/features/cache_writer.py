"""The write side of a feature cache: :class:`CacheWriter` appends shards, atomically.

Every file is written under a temporary name and renamed; the manifest is rewritten
(atomically) only after a shard's files are in place. A process killed at any moment
therefore leaves a cache whose manifest lists only complete shards, and a re-run resumes
from the last complete shard of its run.

One writer at a time: :class:`CacheWriter` holds an advisory lock (``.writer.lock``, see
:mod:`clipdetect.core.lock`) for its lifetime; a second writer waits up to ``lock_timeout``
seconds, then refuses naming the holder's pid and command line. Start-up clean-up removes
only temporary files whose writer process is dead; the manifest is re-read before every
change, and shard names carry the run (``part-NNNNN-RUNHASH``), so they cannot collide.

No key twice: a shard holding a key the cache already has (or holding one twice) is refused
before any of its files is written (:class:`KeyIndex`), so no run — another shard size, a
second source with the same keys — can leave the duplicates ``cache verify`` calls damage.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from clipdetect.core.io import TMP_GLOB, atomic_write, tmp_owner_pid, write_json
from clipdetect.core.lock import DirLock, LockedError, pid_alive
from clipdetect.features.identity import identities_match
from clipdetect.features.manifest import (ERROR_COLUMNS, FORMAT, NORM_TOLERANCE, VERSION, CacheError, read_manifest,
                                          read_meta, row_ids, shard_file)

LOCK_NAME = ".writer.lock"


class CacheWriter:
    """Appends shards to a cache directory; refuses a different backbone or preprocessing.

    Holds the cache's writer lock from construction to :meth:`close` (or process exit);
    ``lock_timeout`` seconds to wait for another writer (0: refuse at once).
    """

    def __init__(self, root: str | os.PathLike, *, backbone: Dict[str, Any], dtype: str = "float16",
                 lock_timeout: float = 0.0, layers: Optional[Dict[str, Any]] = None):
        self.root = Path(root)
        self._keys: Optional[KeyIndex] = None
        for sub in ("img_emb", "txt_emb", "meta", "errors") + (("layers",) if layers else ()):
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
                self._check_compatible(backbone, dtype, layers)
            else:
                self.manifest = {"format": FORMAT, "version": VERSION, "backbone": backbone,
                                 "embed_dim": backbone["embed_dim"], "dtype": dtype, "normalized": True,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": {}, "shards": []}
                if layers:
                    self.manifest["layers"] = dict(layers)
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
            if pid is None or (pid != os.getpid() and not pid_alive(pid)):
                p.unlink(missing_ok=True)

    def _check_compatible(self, backbone: Dict[str, Any], dtype: str, layers: Optional[Dict[str, Any]]) -> None:
        have = self.manifest["backbone"]
        if not identities_match(have, backbone):
            diff = {k: (have.get(k), backbone.get(k)) for k in set(have) | set(backbone)
                    if have.get(k) != backbone.get(k) and k not in ("open_clip_version", "checkpoint",
                                                                               "checkpoint_path", "spec")}
            raise CacheError(f"cache {str(self.root)!r} holds embeddings of another backbone or preprocessing "
                             f"(cache vs new: {diff}); extract into a new --out directory")
        if self.manifest["dtype"] != dtype:
            raise CacheError(f"cache {str(self.root)!r} stores {self.manifest['dtype']}, not {dtype}")
        have_layers = self.manifest.get("layers")
        if (have_layers or None) != (dict(layers) if layers else None):
            what = "with" if have_layers else "without"
            raise CacheError(f"cache {str(self.root)!r} was extracted {what} per-block features (--layers); "
                             f"every run into one cache must match it: {'add' if have_layers else 'drop'} "
                             "--layers, or extract into a new --out directory")

    def begin_run(self, run_id: str, info: Dict[str, Any]) -> Dict[str, Any]:
        runs = self._reload()["runs"]
        if run_id not in runs:
            runs[run_id] = {**info, "position": 0, "complete": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_json(self.root / "manifest.json", self.manifest)
        return runs[run_id]

    def write_shard(self, run_id: str, *, start: int, stop: int, img: np.ndarray, txt: Optional[np.ndarray],
                    meta: pd.DataFrame, errors: pd.DataFrame, layers: Optional[np.ndarray] = None) -> str:
        """Write one shard covering source positions [start, stop) and record it."""
        if len(meta) != len(img) or any(a is not None and len(a) != len(img) for a in (txt, layers)):
            raise CacheError(f"shard arrays are not row-aligned: img {len(img)}, meta {len(meta)}, "
                             f"txt {None if txt is None else len(txt)}, "
                             f"layers {None if layers is None else len(layers)}")
        if (layers is not None) != bool(self.manifest.get("layers")):
            raise CacheError(f"cache {str(self.root)!r}: a shard {'with' if layers is not None else 'without'} "
                             "per-block features does not fit its manifest")
        self._reload()
        if self._keys is None:
            self._keys = KeyIndex(self._stored_keys)
        try:
            self._keys.check(row_ids(meta), str(self.root))
        except CacheError:
            self._forget_if_empty(run_id)
            raise
        name = shard_name(len(self.manifest["shards"]), run_id)
        dtype = np.dtype(self.manifest["dtype"])
        for sub, arr in (("img_emb", img), ("txt_emb", txt), ("layers", layers)):
            if arr is not None:
                arr = np.asarray(arr).astype(dtype)
                if sub != "layers" and self.manifest.get("normalized") and not unit_rows(arr):  # the embeddings' flag
                    self.manifest["normalized"] = False
                atomic_write(self.root / sub / f"{name}.npy", lambda f, a=arr: np.save(f, a),
                             nbytes=arr.nbytes + 128)  # + the .npy header
        atomic_write(self.root / "meta" / f"{name}.parquet", lambda f: meta.to_parquet(f, index=False))
        atomic_write(self.root / "errors" / f"{name}.parquet",
                     lambda f: errors.reindex(columns=ERROR_COLUMNS).to_parquet(f, index=False))
        self.manifest["shards"].append({"name": name, "run": run_id, "rows": int(len(img)),
                                        "errors": int(len(errors)), "start": start, "stop": stop,
                                        "has_text": txt is not None,
                                        **({"has_layers": True} if layers is not None else {})})
        self.manifest["runs"][run_id]["position"] = stop
        write_json(self.root / "manifest.json", self.manifest)
        self._keys.add(row_ids(meta))
        return name

    def _forget_if_empty(self, run_id: str) -> None:
        """Drop the record of a run that wrote nothing (its first shard was refused)."""
        runs = self.manifest["runs"]
        if run_id in runs and not runs[run_id].get("position") and not any(
                s["run"] == run_id for s in self.manifest["shards"]):
            del runs[run_id]
            write_json(self.root / "manifest.json", self.manifest)

    def _stored_keys(self) -> pd.Series:
        frames = [row_ids(read_meta(shard_file(self.root, "meta", s["name"], "parquet"), ["key", "view"]))
                  for s in self.manifest["shards"]]
        return pd.concat(frames, ignore_index=True) if frames else pd.Series([], dtype=str)

    def earlier_run(self, rid: str, source: Dict[str, Any], *, wants_text: Callable[[], bool]) -> Optional[str]:
        """The run that already extracted ``source`` (its ``describe()``) under other options
        (``--shard-size``, ``--text``), if any: a complete one whose rows serve the request makes
        a new run a no-op (its id is returned); anything else is refused, since running would
        extract the same images a second time. ``wants_text()``: whether the new run would embed
        captions (asked only when such a run exists)."""
        ident = json.loads(json.dumps(source, sort_keys=True, default=str))
        for other, run in self.manifest["runs"].items():
            shards = [s for s in self.manifest["shards"] if s["run"] == other]
            if other == rid or run.get("source") != ident or not shards:
                continue
            old = run.get("config") or {}
            opts = " ".join(f"--{k.replace('_', '-')} {old.get(k)}" for k in ("shard_size", "text"))
            if not all(s.get("has_text") for s in shards) and wants_text():
                raise CacheError(f"cache {str(self.root)!r} already holds this source without caption embeddings "
                                 f"(run {other}, {opts}); they cannot be added to its rows: extract into a new --out")
            if not run.get("complete"):
                raise CacheError(f"cache {str(self.root)!r} holds part of this source from a run with {opts}; re-run "
                                 "with those options to resume it (others would extract its images a second time)")
            return other
        return None

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


def unit_rows(arr: np.ndarray) -> bool:
    """Whether every finite row of ``arr`` has norm 1 (within :data:`NORM_TOLERANCE`)."""
    x = np.asarray(arr, dtype=np.float32)
    norms = np.linalg.norm(np.where(np.isfinite(x), x, 0.0), axis=1)
    return bool(np.all(np.abs(norms[np.isfinite(x).all(axis=1)] - 1.0) <= NORM_TOLERANCE))


def _hashes(keys: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(keys, index=False).to_numpy(np.uint64)


class KeyIndex:
    """64-bit hashes of the keys a cache holds (a sorted array plus a small sorted tail, merged
    now and then), to refuse a shard that would repeat a key. A hash hit is confirmed against
    the keys themselves before anything is refused."""

    def __init__(self, stored: Callable[[], pd.Series]):
        self.stored = stored  # reads the keys from disk: only when a hash hits
        self.base = np.sort(_hashes(stored()))
        self.tail: List[np.ndarray] = []

    def _hits(self, h: np.ndarray) -> np.ndarray:
        hit = np.zeros(h.shape, dtype=bool)
        for arr in [self.base, *self.tail]:
            if arr.size:
                pos = np.minimum(np.searchsorted(arr, h), arr.size - 1)
                hit |= arr[pos] == h
        return hit

    def check(self, keys: pd.Series, root: str) -> None:
        twice = keys[keys.duplicated()]
        if len(twice):
            raise CacheError(f"the source yields key {twice.iloc[0]!r} more than once ({len(twice)} repeats in one "
                             f"shard); keys must be unique in cache {root!r} (give the manifest a unique key column)")
        hit = self._hits(_hashes(keys))
        if hit.any():
            held = set(self.stored().tolist())
            dup = [k for k in keys[hit].tolist() if k in held]
            if dup:
                raise CacheError(f"cache {root!r} already holds key {dup[0]!r} ({len(dup)} of this shard's "
                                 f"{len(keys)} keys): these images were extracted into it before; nothing was "
                                 "written. Re-run the command that made it to resume, or use another --out")

    def add(self, keys: pd.Series) -> None:
        self.tail.append(np.sort(_hashes(keys)))
        if sum(t.size for t in self.tail) > max(1 << 18, self.base.size // 8):
            self.base = np.sort(np.concatenate([self.base, *self.tail]))
            self.tail = []
