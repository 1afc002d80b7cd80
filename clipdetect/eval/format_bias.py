"""Format-only baseline: can the label be predicted from the file container alone?

If reals are JPEGs of one size and quality and fakes PNGs of another, a detector can
score well without looking at image content. This module measures that leak directly:
a small decision tree (depth 4) sees only container metadata (format, width, height,
mode, JPEG quality estimated from the quantisation tables, chroma subsampling, and
optionally the compressed bytes per pixel) and its cross-validated AUC / accuracy is
reported. AUC ≈ 0.5 means the container carries no label information.
"""
from __future__ import annotations

import io
import logging
import math
import os
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd
from PIL import Image

from clipdetect.core.metrics import evaluate_scores
from clipdetect.data.sources import Source

logger = logging.getLogger(__name__)

# IJG standard luminance quantisation table (natural order), the base of libjpeg's quality scale
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                      14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                      18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                      49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
                     dtype=np.float64)


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return np.clip(np.floor((_IJG_LUMA * scale + 50.0) / 100.0), 1, 255)


_IJG_SORTED = {q: np.sort(_ijg_table(q)) for q in range(1, 101)}


def estimate_jpeg_quality(img: Image.Image) -> float:
    """libjpeg quality (1-100) whose luminance table best matches ``img``'s; NaN if not a JPEG.

    Compares sorted table values, so it does not depend on the table's storage order.
    """
    tables = getattr(img, "quantization", None)
    if not tables:
        return math.nan
    luma = np.sort(np.asarray(tables[min(tables)], dtype=np.float64))
    if luma.size != 64:
        return math.nan
    errors = {q: float(np.abs(t - luma).sum()) for q, t in _IJG_SORTED.items()}
    return float(min(errors, key=errors.get))


def _bytes_of(ref) -> bytes:
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    with open(os.fspath(ref), "rb") as f:
        return f.read()


def format_record(ref) -> Dict[str, Any]:
    """Container metadata of one encoded image (path or bytes); an unreadable one gives NaNs."""
    try:
        data = _bytes_of(ref)
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        sub = math.nan
        if img.format == "JPEG":
            from PIL import JpegImagePlugin

            sub = float(JpegImagePlugin.get_sampling(img))
        return {"format": img.format or "", "mode": img.mode, "width": float(w), "height": float(h),
                "jpeg_quality": estimate_jpeg_quality(img), "subsampling": sub,
                "progressive": float(bool(img.info.get("progressive") or img.info.get("progression"))),
                "bytes_per_pixel": len(data) / max(w * h, 1)}
    except Exception as exc:  # noqa: BLE001 - a metadata probe must never stop a report
        logger.debug("format probe failed: %s", exc)
        return {"format": "unreadable", "mode": "", "width": math.nan, "height": math.nan,
                "jpeg_quality": math.nan, "subsampling": math.nan, "progressive": math.nan,
                "bytes_per_pixel": math.nan}


def source_format_table(source: Source) -> pd.DataFrame:
    """:func:`format_record` of every sample of ``source`` plus its ``label`` column."""
    rows = [{**format_record(s.image), "label": int(s.label)} for s in source.iterate(0)]
    return pd.DataFrame(rows)


def _design(features: pd.DataFrame) -> np.ndarray:
    cat = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    num = np.nan_to_num(features.drop(columns=cat).astype(float).to_numpy(), nan=-1.0)
    onehot = pd.get_dummies(features[cat].astype(str),
                            dtype=float).to_numpy() if cat else np.zeros((len(features), 0))
    return np.hstack([num, onehot])


def _model(seed: int):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=4, min_samples_leaf=2, random_state=seed)


def format_only_baseline(features: pd.DataFrame, y, *, folds: int = 5, seed: int = 0, n_boot: int = 1000,
                         train_mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """AUC / accuracy (with 95% bootstrap CIs) of predicting the label from ``features`` alone.

    With ``train_mask`` the model fits on those rows and is scored on the rest; otherwise
    stratified ``folds``-fold cross-validated probabilities are scored (missing numbers
    become -1). Categorical
    (non-numeric) columns are one-hot encoded; NaN is allowed in numeric columns.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(y).astype(np.int64)
    x = _design(features)
    if train_mask is not None:
        train_mask = np.asarray(train_mask, dtype=bool)
        model = _model(seed).fit(x[train_mask], y[train_mask])
        y_eval, p = y[~train_mask], model.predict_proba(x[~train_mask])[:, 1]
    else:
        k = int(min(folds, np.bincount(y, minlength=2).min()))
        if k < 2:
            raise ValueError("the format-only baseline needs at least 2 images of each class")
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        y_eval, p = y, cross_val_predict(_model(seed), x, y, cv=cv, method="predict_proba")[:, 1]
    row = evaluate_scores(y_eval, p, n_boot=n_boot, seed=seed).iloc[0]
    keep = ("n", "n_real", "n_fake", "auc", "auc_lo", "auc_hi", "acc@0.5", "acc@0.5_lo", "acc@0.5_hi")
    return {k: (int(row[k]) if k.startswith("n") else float(row[k])) for k in keep if k in row}
