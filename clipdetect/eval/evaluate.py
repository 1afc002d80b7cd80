"""Evaluate a detector on a feature cache: metrics overall, per generator and per column.

Scores are the detector's logits (rank metrics are computed on logits, which never
saturate the way float probabilities do); ``acc@0.5`` thresholds the raw logit at 0 and
``acc@thr``, ``fpr@thr`` and ``tpr@thr`` use the detector's validation-chosen threshold,
mapped to the logit scale through its calibration. ECE and Brier use the calibrated
probability, i.e. :meth:`Detector.probability`. Metrics computed from fewer samples
than their guard allows (:mod:`clipdetect.core.guards`) are NaN and print as ``n/a``.

Per-generator rows are D3-style: the fakes of one generator against **all** reals of the
split. Any other metadata column (``format``, ``width`` ...) groups rows as they are.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from clipdetect.core.guards import guard
from clipdetect.core.metrics import brier_score, evaluate_scores, expected_calibration_error, group_masks
from clipdetect.core.tables import records, to_markdown
from clipdetect.core.escape import md_code, md_text
from clipdetect.core.io import write_csv, write_json, write_text
from clipdetect.eval.selection import check_both_classes, choose_rows, split_params
from clipdetect.models.thresholds import describe_target

logger = logging.getLogger(__name__)

#: columns shown in ``metrics.md`` (bootstrap bounds are folded into the metric cells)
TABLE_COLUMNS = ["group", "value", "vs", "n_real", "n_fake", "auc", "ap", "acc@0.5", "acc@thr", "fpr@thr",
                 "tpr@thr", "eer", "tpr@fpr=1%", "tpr@fpr=0.1%", "ece", "brier"]
#: columns whose real rows are left out of the groups (reals are the shared reference)
FAKE_ONLY_COLUMNS = ("generator",)


def logit_threshold(detector) -> float:
    """The detector's probability threshold on the raw logit scale (through its calibration)."""
    return float(detector.logit_threshold)


def group_values(meta: pd.DataFrame, columns: Sequence[str], y: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-sample group values of ``columns``; for generator-like columns reals get None."""
    out: Dict[str, np.ndarray] = {}
    for col in columns:
        if col not in meta.columns:
            raise ValueError(f"cannot group by {col!r}: the cache metadata has columns {list(meta.columns)}")
        vals = meta[col].to_numpy(dtype=object).copy()
        vals[pd.Series(vals).isin(["", None]).to_numpy()] = None  # an empty value belongs to no group
        if col in FAKE_ONLY_COLUMNS:
            vals[y == 0] = None
        out[col] = vals
    return out


def score_table(y: np.ndarray, logits: np.ndarray, probs: np.ndarray, *,
                groups: Optional[Dict[str, np.ndarray]] = None, threshold: Optional[float] = None,
                n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`metrics.evaluate_scores` on logits plus, at the threshold (on the logit scale),
    ``fpr@thr`` (share of the selection's reals called fake) and ``tpr@thr`` (of its fakes), and
    ``ece`` and ``brier`` on ``probs``; a value its small-sample guard refuses is NaN."""
    table = evaluate_scores(y, logits, groups=groups, threshold=threshold, n_boot=n_boot, seed=seed,
                            scores_are_probs=False, reference="real")
    extra = {"fpr@thr": [], "tpr@thr": [], "ece": [], "brier": []}
    for *_, mask in group_masks(y, groups):
        ym, above = y[mask], logits[mask] > (math.inf if threshold is None else threshold)
        extra["fpr@thr"].append(float(above[ym == 0].mean()) if (ym == 0).any() else math.nan)
        extra["tpr@thr"].append(float(above[ym == 1].mean()) if (ym == 1).any() else math.nan)
        ece = expected_calibration_error(ym, probs[mask])
        extra["ece"].append(math.nan if guard("ece", {"n": int(mask.sum())}) else ece)
        extra["brier"].append(brier_score(ym, probs[mask]))
    return table.assign(**extra)


def overall_row(table: pd.DataFrame) -> Dict[str, Any]:
    """The ``overall`` row of a metric table (:func:`score_table`), without its group columns."""
    return {k: v for k, v in table.iloc[0].to_dict().items() if k not in ("group", "value", "vs")}


@dataclass
class EvalReport:
    table: pd.DataFrame
    config: Dict[str, Any]
    scores: pd.DataFrame  # key, label, group columns, logit, probability

    def to_markdown(self, *, digits: int = 3) -> str:
        c = self.config
        head = (f"Detector {md_code(c.get('detector'))} on cache {md_code(c.get('cache'))}, split "
                f"{md_code(c.get('split'))} ({len(self.scores)} images); threshold P(fake) > {c.get('threshold'):.4g} "
                f"(target: {describe_target(c.get('threshold_target'))}); calibration: "
                f"{md_text(c.get('calibration_text'))}; 95% bootstrap CIs ({c.get('n_boot')} resamples).")
        if c.get("rows_note"):
            head += f"\n\n**Note:** {md_text(c['rows_note'])}."
        return head + "\n\n" + to_markdown(self.table, columns=TABLE_COLUMNS, digits=digits) + "\n"

    def to_json(self) -> Dict[str, Any]:
        """The config and one record per table row (NaN → null), as ``metrics.json`` holds them."""
        return {"config": self.config, "metrics": records(self.table)}

    def save(self, out: str | Path) -> List[Path]:
        """Write metrics.json, metrics.csv, metrics.md and eval_config.json into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / n for n in ("metrics.json", "metrics.csv", "metrics.md", "eval_config.json")]
        write_json(paths[0], self.to_json())
        write_csv(paths[1], self.table)
        write_text(paths[2], self.to_markdown())
        write_json(paths[3], self.config)
        return paths


def score_rows(detector, cache, rows: np.ndarray) -> tuple:
    """(logits, probabilities) of ``rows``; the cache must match the detector's backbone."""
    raw = detector.logits(detector.features(cache, rows))  # the head runs once for both
    logits = np.asarray(raw, dtype=np.float64).ravel()
    return logits, np.asarray(detector.calibration.probability(raw), dtype=np.float64).ravel()


def evaluate_detector(detector, cache, *, split: str = "test", by: Sequence[str] = ("generator",),
                      n_boot: int = 1000, seed: int = 0, val: Optional[float] = None,
                      test: Optional[float] = None, split_seed: Optional[int] = None,
                      rows: Optional[np.ndarray] = None,
                      names: Optional[Dict[str, str]] = None) -> EvalReport:
    """Score ``split`` of ``cache`` (or explicit ``rows``) and tabulate the metrics.

    ``names`` (optional) records how the detector and cache are called in the report.
    ``split="auto"`` and hash subsets: see :func:`choose_rows`; a selection with one class
    is a ``ValueError`` naming the counts.
    """
    params = split_params(detector, val=val, test=test, seed=split_seed)
    note = ""
    if rows is None:
        rows, split, note = choose_rows(detector, cache, split, params)
    rows = np.asarray(rows, dtype=np.int64)
    meta = cache.meta.loc[rows].reset_index(drop=True)
    if "view" not in by and meta["view"].nunique() > 1:  # a cache extracted with --views: AUC per view too
        by = [*by, "view"]
    y = cache.labels(rows)
    check_both_classes(y, f"split {split!r} of cache {str(cache.root)!r}")
    logits, probs = score_rows(detector, cache, rows)
    table = score_table(y, logits, probs, groups=group_values(meta, list(by), y),
                        threshold=logit_threshold(detector), n_boot=n_boot, seed=seed)
    names = names or {}
    config = {"detector": names.get("detector", ""), "cache": names.get("cache", str(cache.root)),
              "split": split, "by": list(by), "n_boot": n_boot, "seed": seed,
              "val": params.val, "test": params.test, "split_seed": params.seed,
              "threshold": float(detector.threshold), "threshold_target": detector.threshold_target,
              "calibration": detector.calibration.to_json(), "calibration_text": detector.calibration.describe(),
              "feature_set": detector.feature_set, "n_rows": int(rows.size), "rows_note": note}
    scores = pd.DataFrame({"row": rows, "key": meta["key"], "label": y, "logit": logits,
                           "probability": probs})
    for col in by:
        scores[col] = meta[col].to_numpy()
    return EvalReport(table=table, config=config, scores=scores)
