"""Deterministic train / validation / test splits for a feature cache.

A split is a pure function of the row's content group and a seed: ``blake2b(f"{seed}:{group}")`` is
mapped to a number in [0, 1) and compared with the validation and test fractions. The
assignment therefore does not depend on row order, process, platform or ``PYTHONHASHSEED``,
and a key keeps its split when rows are added to or removed from the cache. The group is
the ``group`` column (one prompt's real image and its fakes, set by the source), which
defaults to the row's key: every view of an image, and every image of a content group,
lands in the same split, so no split ever cuts a group.

:func:`resolve_split_rows` is what training and evaluation use: a cache whose ``split``
column already names held-out data ("val"/"validation"/"test") is used as extracted; a
cache extracted as all-"train" gets validation and test sets carved out of its "train"
rows by key hash.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("train", "val", "test")
VAL_NAMES = ("val", "validation", "valid", "dev")
TEST_NAMES = ("test",)
TRAIN_NAMES = ("train",)
#: the default shares of derived validation and test rows and seed of the key hash, for every
#: config that cuts splits (:class:`SplitSpec`, training, distillation, probes, protocols)
VAL_FRACTION, TEST_FRACTION, SPLIT_SEED = 0.15, 0.15, 0


def _check_fractions(val: float, test: float) -> None:
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ValueError(f"split fractions val={val}, test={test} must be in [0, 1) and sum to < 1 "
                         "(some rows must remain for training)")


def key_unit(key: object, seed: int = 0) -> float:
    """A stable pseudo-uniform number in [0, 1) for ``key`` under ``seed``."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def assign_splits(keys: Iterable[object], *, val: float = VAL_FRACTION, test: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> np.ndarray:
    """Assign each key to "train", "val" or "test" from a stable hash of ``f"{seed}:{key}"``.

    A key lands in "test" when its hash value u < ``test``, in "val" when
    ``test <= u < test + val``, and in "train" otherwise. Deterministic across processes
    and runs; the expected fractions are ``val`` and ``test``.
    """
    _check_fractions(val, test)
    u = np.fromiter((key_unit(k, seed) for k in keys), dtype=np.float64)
    out = np.full(len(u), "train", dtype=object)
    out[u < test + val] = "val"
    out[u < test] = "test"
    return out.astype(str) if len(out) else np.array([], dtype=str)


def has_heldout_splits(split_column: Iterable[object]) -> bool:
    """True when the split column already names validation or test rows."""
    names = {str(s).lower() for s in split_column}
    return bool(names & set(VAL_NAMES + TEST_NAMES))


def check_stored_split(root, split: str | Sequence[str], stored: Iterable[object]) -> None:
    """Refuse to filter the *stored* ``split`` column of the cache at ``root`` for validation or
    test rows when it names none: they are derived from the keys (:func:`resolve_split_rows`)."""
    wanted = [split] if isinstance(split, str) else list(split)
    derived = [s for s in wanted if str(s).lower() in VAL_NAMES + TEST_NAMES]
    if derived and len(stored) and not has_heldout_splits(stored):
        raise ValueError(
            f"cache {str(root)!r} stores no {derived[0]!r} rows: all its rows say 'train', and "
            "validation/test rows are derived from their keys when training and evaluating. Use "
            f"clipdetect.features.splits.resolve_split_rows(cache, {derived[0]!r}, val=..., test=..., "
            f"seed=...) with the detector's split fractions, or clipdetect.evaluate(detector, cache, "
            f"split={derived[0]!r}), which resolves it as `clipdetect evaluate --split` does")

def cache_splits(cache, *, val: float = VAL_FRACTION, test: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> np.ndarray:
    """The effective split ("train"/"val"/"test"/other) of every row of ``cache``.

    If the cache's ``split`` column contains validation/test names they are used as is
    (normalised: "validation"/"valid"/"dev" → "val"). Otherwise rows whose split is
    "train" are re-assigned with :func:`assign_splits` on their content groups (the key when
    the source gave none); rows with any other split value keep it (they belong to no
    derived split).
    """
    meta = cache.columns("split", "group")
    split = meta["split"].astype(str).str.lower().to_numpy().astype(object)
    out = split.copy()
    if has_heldout_splits(split):
        out[np.isin(split, VAL_NAMES)] = "val"
        return out.astype(str)
    is_train = np.isin(split, TRAIN_NAMES)
    out[is_train] = assign_splits(meta["group"].to_numpy()[is_train], val=val, test=test, seed=seed)
    return out.astype(str)


def resolve_split_rows(cache, split: str, *, val: float = VAL_FRACTION, test: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> np.ndarray:
    """Global row ids of ``split`` ("train", "val"/"validation" or "test") in ``cache``.

    Uses the cache's own validation/test rows when it has any; otherwise derives
    validation and test sets from the "train" rows' keys (see :func:`cache_splits`).
    Returns sorted int64 row ids (possibly empty).
    """
    name = "val" if str(split).lower() in VAL_NAMES else str(split).lower()
    if name not in SPLITS:
        raise ValueError(f"split {split!r} is not one of train, val (validation), test")
    _check_fractions(val, test)
    return np.flatnonzero(cache_splits(cache, val=val, test=test, seed=seed) == name).astype(np.int64)


def resolve_all(cache, *, val: float = VAL_FRACTION, test: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row ids of ``cache`` in one pass (see :func:`resolve_split_rows`)."""
    _check_fractions(val, test)
    s = cache_splits(cache, val=val, test=test, seed=seed)
    return tuple(np.flatnonzero(s == n).astype(np.int64) for n in SPLITS)  # type: ignore[return-value]


@dataclass(frozen=True)
class SplitSpec:
    """How a cache's "train" rows are cut into train / val / test: one object, one naming.

    ``val`` and ``test`` are the shares of derived validation and test rows, ``seed`` the seed
    of the key hash (see :func:`assign_splits`). Training configs store the same three values
    as ``val_fraction``, ``test_fraction`` and ``split_seed``; :meth:`of` reads them from a
    config (or a detector's recorded one), so every command resolves the same rows.
    """

    val: float = VAL_FRACTION
    test: float = TEST_FRACTION
    seed: int = SPLIT_SEED

    def __post_init__(self) -> None:
        _check_fractions(self.val, self.test)

    @classmethod
    def of(cls, config: Any = None, *, val: Optional[float] = None, test: Optional[float] = None,
           seed: Optional[int] = None) -> "SplitSpec":
        """Explicit values, else those of ``config`` (a TrainConfig, its dict, a detector or a
        SplitSpec), else the defaults."""
        if isinstance(config, SplitSpec):
            recorded: Mapping[str, Any] = {"val_fraction": config.val, "test_fraction": config.test,
                                           "split_seed": config.seed}
        elif hasattr(config, "train_config") and not hasattr(config, "val_fraction"):  # a detector
            recorded = dict(config.train_config or {})
        elif hasattr(config, "to_dict"):
            recorded = config.to_dict()
        else:
            recorded = dict(config or {})

        def pick(given, name, default):
            return given if given is not None else (recorded.get(name) if recorded.get(name) is not None else default)

        return cls(val=float(pick(val, "val_fraction", VAL_FRACTION)),
                   test=float(pick(test, "test_fraction", TEST_FRACTION)), seed=int(pick(seed, "split_seed", SPLIT_SEED)))

    def assign(self, keys: Iterable[object]) -> np.ndarray:
        return assign_splits(keys, val=self.val, test=self.test, seed=self.seed)

    def labels(self, cache) -> np.ndarray:
        """The effective split of every row (:func:`cache_splits`)."""
        return cache_splits(cache, val=self.val, test=self.test, seed=self.seed)

    def rows(self, cache, split: str) -> np.ndarray:
        """Row ids of ``split`` (:func:`resolve_split_rows`)."""
        return resolve_split_rows(cache, split, val=self.val, test=self.test, seed=self.seed)

    def all(self, cache) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, val, test) row ids (:func:`resolve_all`)."""
        return resolve_all(cache, val=self.val, test=self.test, seed=self.seed)


def view_rows(cache, rows: np.ndarray, views: Optional[Iterable[str]]) -> np.ndarray:
    """The rows of ``rows`` whose ``view`` (``extract --views``) is one of ``views`` (None: all);
    an unknown view is an error naming the cache's views."""
    rows = np.asarray(rows, dtype=np.int64)
    if views is None:
        return rows
    have = cache.columns("view")["view"].astype(str).to_numpy()
    wanted = list(views)
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ValueError(f"view(s) {missing} are not in cache {str(cache.root)!r}, which holds "
                         f"{sorted(set(have))}; extract them with --views or choose among those")
    return rows[np.isin(have[rows], wanted)]
