"""Evaluation protocols: leave-one-generator-out, text-leakage audit, and shared helpers.

The image-level protocols (robustness sweeps, format-bias control) live in
:mod:`clipdetect.eval.image_protocols`; the format-only baseline in
:mod:`clipdetect.eval.format_bias`. Every protocol returns tables (DataFrames) that
:func:`save_table` writes as JSON, CSV and Markdown.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from clipdetect.eval.evaluate import evaluate_detector, logit_threshold, overall_row, score_rows, score_table
from clipdetect.core.tables import records, to_markdown
from clipdetect.eval.format_bias import format_only_baseline
from clipdetect.core.io import write_csv, write_json, write_text
from clipdetect.features.splits import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, SplitSpec

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ["auc", "ap", "acc@0.5", "acc@thr", "eer", "tpr@fpr=1%", "tpr@fpr=0.1%"]


# ------------------------------------------------------------------ helpers
def load_detectors(specs: Sequence[str]) -> Dict[str, Any]:
    """``["NAME=DIR", "DIR", ...]`` → ``{name: Detector}`` (name defaults to the folder name)."""
    from clipdetect.models.detector import Detector

    out: Dict[str, Any] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name, spec
        if name in out:
            raise ValueError(f"two detectors are called {name!r}; name them with NAME=DIR")
        out[name] = Detector.load(path)
    return out


def heldout_keys(cache, *, n_real: int, n_fake: int, split: str = "test", seed: int = 0,
                 val: float = VAL_FRACTION, test: float = TEST_FRACTION, split_seed: int = SPLIT_SEED) -> List[str]:
    """A seeded random sample of ``n_real`` real and ``n_fake`` fake keys of ``split`` (in row order)."""
    from clipdetect.eval.selection import split_rows

    rows = split_rows(cache, split, SplitSpec(val, test, split_seed))
    y = cache.labels(rows)
    rng = np.random.default_rng(seed)
    picked = []
    for label, n in ((0, n_real), (1, n_fake)):
        pool = rows[y == label]
        if n > pool.size:
            raise ValueError(f"split {split!r} has {pool.size} {'real' if label == 0 else 'fake'} rows, "
                             f"fewer than the {n} asked for")
        picked.append(rng.choice(pool, size=n, replace=False))
    chosen = np.sort(np.concatenate(picked))
    return [str(k) for k in cache.meta.loc[chosen, "key"]]


def save_table(df: pd.DataFrame, out: str | Path, stem: str, *, columns: Optional[Sequence[str]] = None,
               title: str = "", notes: str = "", config: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """Write ``<stem>.json`` (config + records), ``<stem>.csv`` and ``<stem>.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{ext}" for ext in ("json", "csv", "md")]
    write_json(paths[0], {"config": dict(config or {}), "rows": records(df)})
    write_csv(paths[1], df)
    md = (f"# {title}\n\n" if title else "") + to_markdown(df, columns=columns or list(df.columns)) + "\n"
    write_text(paths[2], md + (f"\n{notes.strip()}\n" if notes else ""))
    return paths


def _overall(detector, cache, rows, *, n_boot: int, seed: int) -> Dict[str, Any]:
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    logits, probs = score_rows(detector, cache, rows)
    return overall_row(score_table(cache.labels(rows), logits, probs, threshold=logit_threshold(detector),
                                    n_boot=n_boot, seed=seed))


# ------------------------------------------------------------------ leave one generator out
def leave_one_generator_out(cache, *, feature_set: str = "image", config=None,
                            generators: Optional[Sequence[str]] = None, n_boot: int = 1000, seed: int = 0,
                            progress: bool = False) -> pd.DataFrame:
    """Train without generator g, test on g's fakes vs held-out reals; one row per g.

    Reals follow the cache's train/val/test split (test reals are never trained on). For
    fold g the detector trains on train-split reals and the train-split fakes of the other
    generators (validation likewise), and is tested on **all** of g's fakes (g is unseen)
    against the test-split reals. ``in_auc`` is the same detector on the test-split fakes
    of the generators it did see, against the same reals: the gap is the cost of novelty.
    """
    from clipdetect.models.detector import Detector
    from clipdetect.models.train import TrainConfig

    config = config or TrainConfig()
    tr, va, te = SplitSpec.of(config).all(cache)
    y = cache.labels()
    gen = cache.meta["generator"].astype(str).to_numpy()
    fake_gens = sorted(set(gen[y == 1]))
    generators = list(generators) if generators else fake_gens
    unknown = set(generators) - set(fake_gens)
    if unknown:
        raise ValueError(f"generator(s) {sorted(unknown)} have no fakes in the cache (it has {fake_gens})")
    if len(fake_gens) < 2:
        raise ValueError(f"leave-one-generator-out needs fakes of >= 2 generators; the cache has {fake_gens}")
    test_reals = te[y[te] == 0]
    rows = []
    for g in generators:
        keep = lambda r: r[(y[r] == 0) | (gen[r] != g)]  # noqa: E731
        logger.info("leave-one-generator-out: holding out %s", g)
        det = Detector.fit_rows(cache, keep(tr), keep(va), feature_set=feature_set, config=config,
                                progress=progress)
        held = np.concatenate([test_reals, np.flatnonzero((y == 1) & (gen == g))])
        seen = np.concatenate([test_reals, te[(y[te] == 1) & (gen[te] != g)]])
        row = {"held_out": g, "n_train": int(len(keep(tr))),
               **_overall(det, cache, held, n_boot=n_boot, seed=seed)}
        ins = _overall(det, cache, seen, n_boot=n_boot, seed=seed)
        row.update({"in_auc": ins["auc"], "in_auc_lo": ins.get("auc_lo"), "in_auc_hi": ins.get("auc_hi")})
        row["auc_drop"] = row["in_auc"] - row["auc"]
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ text leakage
def caption_overlap(cache, rows) -> Dict[str, Any]:
    """How much the captions alone could tell reals from fakes on ``rows``."""
    m = cache.meta.loc[np.asarray(rows)]
    cap = m["caption"].fillna("").astype(str)
    real, fake = cap[m["label"] == 0], cap[m["label"] == 1]
    rs, fs = set(real), set(fake)
    return {"n_real": int(len(real)), "n_fake": int(len(fake)), "unique_real_captions": len(rs),
            "unique_fake_captions": len(fs),
            "fakes_with_a_real_caption": float(fake.isin(rs).mean()) if len(fake) else float("nan"),
            "reals_with_a_fake_caption": float(real.isin(fs).mean()) if len(real) else float("nan")}


def text_leakage_audit(cache, *, config=None, feature_sets: Sequence[str] = ("text", "image", "image+text"),
                       n_boot: int = 1000, seed: int = 0, progress: bool = False) -> Dict[str, Any]:
    """Train/evaluate text-only, image-only and image+text detectors on the same splits.

    A text-only detector far above chance means the captions carry the label (e.g. reals
    paired with their alt-text, fakes with their generation prompt), so an image+text
    detector's score partly measures the captions, not the images.
    """
    from clipdetect.models.detector import Detector
    from clipdetect.models.train import TrainConfig

    config = config or TrainConfig()
    if "text" in " ".join(feature_sets) and not cache.has_text:
        raise ValueError(f"cache {str(cache.root)!r} has no text embeddings; extract it with captions "
                         "(--caption-template/--caption-column) and a backbone with a text tower")
    rows = []
    for fs in feature_sets:
        logger.info("text-leakage audit: training on %s features", fs)
        det = Detector.fit_cache(cache, feature_set=fs, config=config, progress=progress)
        rep = evaluate_detector(det, cache, split="test", by=(), n_boot=n_boot, seed=seed)
        rows.append({"features": fs, **overall_row(rep.table)})
    test_rows = SplitSpec.of(config).rows(cache, "test")
    return {"table": pd.DataFrame(rows), "captions": caption_overlap(cache, test_rows)}


def cache_format_baseline(cache, *, config=None, n_boot: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """Format-only baseline on a cache's metadata (width, height, format, mode): fit on the
    train split, score the test split. AUC ≈ 0.5: the container does not give the label away."""
    from clipdetect.models.train import TrainConfig

    config = config or TrainConfig()
    s = SplitSpec.of(config).labels(cache)
    keep = np.isin(s, ("train", "test"))
    m = cache.meta.loc[keep, ["width", "height", "format", "mode"]].reset_index(drop=True)
    m = m.astype({"format": str, "mode": str, "width": float, "height": float})
    y = cache.labels()[keep]
    return format_only_baseline(m, y, train_mask=(s[keep] == "train"), n_boot=n_boot, seed=seed)
