"""Evaluate a detector on a feature cache: metrics overall, per generator and per column.

Scores are the detector's logits (rank metrics are computed on logits, which never
saturate the way float probabilities do); ``acc@0.5`` thresholds ``P(fake) = 0.5`` (logit 0)
and ``acc@thr`` the detector's validation-chosen threshold, mapped to the logit scale as
``T * logit(threshold)``. ECE and Brier use the temperature-scaled probability
``sigmoid(logit / T)``, i.e. :meth:`Detector.fake_probability`.

Per-generator rows are D3-style: the fakes of one generator against **all** reals of the
split. Any other metadata column (``format``, ``width`` ...) groups rows as they are.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from clipdetect.core.metrics import brier_score, evaluate_scores, expected_calibration_error, to_markdown
from clipdetect.core.io import atomic_write, write_json, write_text
from clipdetect.eval.selection import check_both_classes, choose_rows, split_params

logger = logging.getLogger(__name__)

#: columns shown in ``metrics.md`` (bootstrap bounds are folded into the metric cells)
TABLE_COLUMNS = ["group", "value", "vs", "n_real", "n_fake", "auc", "ap", "acc@0.5", "acc@thr", "eer",
                 "tpr@fpr=1%", "tpr@fpr=0.1%", "ece", "brier"]
#: columns whose real rows are left out of the groups (reals are the shared reference)
FAKE_ONLY_COLUMNS = ("generator",)


@dataclass
class EvalConfig:
    """Options of one evaluation; saved as ``eval_config.json`` next to the metrics."""

    detector: str = ""
    cache: str = ""
    split: str = "test"
    by: List[str] = field(default_factory=lambda: ["generator"])
    n_boot: int = 1000
    seed: int = 0
    val: Optional[float] = None  # split fractions; None: the detector's training values
    test: Optional[float] = None
    split_seed: Optional[int] = None


def logit_threshold(detector) -> float:
    """The detector's probability threshold on the (un-tempered) logit scale."""
    p = float(detector.threshold)
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return float(detector.temperature) * math.log(p / (1.0 - p))


def group_values(meta: pd.DataFrame, columns: Sequence[str], y: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-sample group values of ``columns``; for generator-like columns reals get None."""
    out: Dict[str, np.ndarray] = {}
    for col in columns:
        if col not in meta.columns:
            raise ValueError(f"cannot group by {col!r}: the cache metadata has columns {list(meta.columns)}")
        vals = meta[col].to_numpy(dtype=object).copy()
        if col in FAKE_ONLY_COLUMNS:
            vals[y == 0] = None
        out[col] = vals
    return out


def group_masks(y: np.ndarray, groups: Dict[str, np.ndarray]):
    """(group, value, mask) in the order :func:`metrics.evaluate_scores` emits rows."""
    yield "overall", "all", np.ones(y.size, dtype=bool)
    for col, values in groups.items():
        s = pd.Series(values)
        for value in sorted(s[s.notna()].unique(), key=str):
            mask = (s == value).to_numpy()
            if (y[mask] == 1).all():
                mask = mask | (y == 0)
            yield col, value, mask


def score_table(y: np.ndarray, logits: np.ndarray, probs: np.ndarray, *,
                groups: Optional[Dict[str, np.ndarray]] = None, threshold: Optional[float] = None,
                n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`metrics.evaluate_scores` on logits plus ``ece`` and ``brier`` on ``probs``."""
    groups = groups or {}
    table = evaluate_scores(y, logits, groups=groups, threshold=threshold, n_boot=n_boot, seed=seed,
                            scores_are_probs=False, reference="real")
    ece, brier = [], []
    for _, _, mask in group_masks(y, groups):
        ece.append(expected_calibration_error(y[mask], probs[mask]))
        brier.append(brier_score(y[mask], probs[mask]))
    table["ece"], table["brier"] = ece, brier
    return table


@dataclass
class EvalReport:
    table: pd.DataFrame
    config: Dict[str, Any]
    scores: pd.DataFrame  # key, label, group columns, logit, probability

    def to_markdown(self, *, digits: int = 3) -> str:
        cols = [c for c in TABLE_COLUMNS if c in self.table.columns]
        c = self.config
        head = (f"Detector `{c.get('detector')}` on cache `{c.get('cache')}`, split `{c.get('split')}` "
                f"({len(self.scores)} images); threshold P(fake) > {c.get('threshold'):.4g}, "
                f"temperature {c.get('temperature'):.4g}; 95% bootstrap CIs ({c.get('n_boot')} resamples).")
        if c.get("rows_note"):
            head += f"\n\n**Note:** {c['rows_note']}."
        return head + "\n\n" + to_markdown(self.table, columns=cols, digits=digits) + "\n"

    def save(self, out: str | Path) -> List[Path]:
        """Write metrics.json, metrics.csv, metrics.md and eval_config.json into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        records = json.loads(self.table.to_json(orient="records"))
        paths = [out / n for n in ("metrics.json", "metrics.csv", "metrics.md", "eval_config.json")]
        write_json(paths[0], {"config": self.config, "metrics": records})
        atomic_write(paths[1], lambda f: self.table.to_csv(f, index=False))
        write_text(paths[2], self.to_markdown())
        write_json(paths[3], self.config)
        return paths


def score_rows(detector, cache, rows: np.ndarray) -> tuple:
    """(logits, probabilities) of ``rows``; the cache must match the detector's backbone."""
    x = detector.features(cache, rows)
    logits = np.asarray(detector.decision_function(x), dtype=np.float64).ravel()
    probs = np.asarray(detector.fake_probability(x), dtype=np.float64).ravel()
    return logits, probs


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
    groups = group_values(meta, list(by), y)
    table = score_table(y, logits, probs, groups=groups, threshold=logit_threshold(detector),
                        n_boot=n_boot, seed=seed)
    names = names or {}
    config = {**asdict(EvalConfig(detector=names.get("detector", ""),
                                  cache=names.get("cache", str(cache.root)), split=split, by=list(by),
                                  n_boot=n_boot, seed=seed)),
              "val": params.val, "test": params.test, "split_seed": params.seed,
              "threshold": float(detector.threshold), "temperature": float(detector.temperature),
              "feature_set": detector.feature_set, "n_rows": int(rows.size), "rows_note": note}
    scores = pd.DataFrame({"row": rows, "key": meta["key"], "label": y, "logit": logits,
                           "probability": probs})
    for col in by:
        scores[col] = meta[col].to_numpy()
    return EvalReport(table=table, config=config, scores=scores)
