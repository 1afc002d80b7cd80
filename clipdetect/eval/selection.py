"""Which rows of a cache an evaluation scores: the detector's split, ``auto``, and the checks."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from clipdetect.features.splits import SplitSpec

logger = logging.getLogger(__name__)


def split_params(detector, *, val: Optional[float] = None, test: Optional[float] = None,
                 seed: Optional[int] = None) -> SplitSpec:
    """The detector's split: explicit values, else those recorded at training, else defaults."""
    return SplitSpec.of(detector, val=val, test=test, seed=seed)


def split_rows(cache, split: str, spec: Optional[SplitSpec] = None) -> np.ndarray:
    """Row ids of ``split`` in ``cache`` ("all" = every row); see :class:`SplitSpec`."""
    if split == "all":
        return np.arange(len(cache), dtype=np.int64)
    rows = (spec or SplitSpec()).rows(cache, split)
    if rows.size == 0:
        raise ValueError(f"split {split!r} of cache {str(cache.root)!r} is empty; "
                         "pick another with --split (train, val, test or all)")
    return rows


def is_training_cache(detector, cache) -> bool:
    """Whether ``cache`` is the cache ``detector`` was trained on (path and creation stamp)."""
    extra = dict(getattr(detector, "extra", None) or {})
    if not extra.get("cache"):
        return False
    same = Path(str(extra["cache"])).resolve() == Path(str(cache.root)).resolve()
    created = extra.get("cache_created")
    return same and (created is None or created == cache.manifest.get("created"))


def choose_rows(detector, cache, split: str, spec: Optional[SplitSpec] = None) -> tuple:
    """``(rows, split, note)``: the rows to score, the split actually used and a note (or "").

    ``split="auto"``: "test" when the cache names held-out rows or is the detector's training
    cache, else "all" (a held-out set extracted as "train" is scored whole). A hash-derived
    subset of a cache the detector was not trained on is scored only when asked for, and
    then with a loud warning: it silently drops most of the rows. A detector trained on every
    row of ``cache`` (``split="all"``) is refused: nothing there is held out.
    """
    from clipdetect.features.splits import has_heldout_splits

    heldout = has_heldout_splits(cache.columns("split")["split"].astype(str).str.lower().unique())
    own = is_training_cache(detector, cache)
    if own and (getattr(detector, "train_config", None) or {}).get("split") == "all":
        raise ValueError(f"this detector was trained on every row of {str(cache.root)!r} (train --split all): "
                         "nothing in it is held out; evaluate it on another cache")
    note = ""
    if split == "auto":
        split = "test" if heldout or own else "all"
        if split == "all":
            note = (f"cache {str(cache.root)!r} holds no val/test rows and is not the cache this detector was "
                    f"trained on: scoring all {len(cache)} rows")
            logger.info(note)
    rows = split_rows(cache, split, spec)
    if split != "all" and not heldout and not own:
        note = (f"scoring a hash subset: {rows.size} of {len(cache)} rows of {str(cache.root)!r} (the rows its "
                f"key hash assigns to {split!r}; val={spec.val}, test={spec.test}); this is not "
                "the detector's training cache, so --split all (or auto) scores every row")
        logger.warning(note)
    return rows, split, note


def check_both_classes(y: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` with the counts unless ``y`` holds reals and fakes."""
    n_fake = int(np.sum(np.asarray(y) == 1))
    n_real = int(np.size(y) - n_fake)
    if n_real == 0 or n_fake == 0:
        raise ValueError(f"{what} holds {n_real} real and {n_fake} fake rows: AUC, EER and TPR at FPR are "
                         "undefined with one class; evaluate a selection holding both (another --split, "
                         "a cache with both labels)")
