"""Markdown tables of metric rows (:func:`clipdetect.core.metrics.evaluate_scores` and the like)."""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import pandas as pd

from clipdetect.core.escape import md_text
from clipdetect.core.guards import ci_note, guard
from clipdetect.core.metrics import COUNTS


def _cell(df: pd.DataFrame, i: int, col: str, digits: int) -> str:
    v = df[col].iloc[i]
    counts = {k: df[k].iloc[i] for k in COUNTS if k in df}
    why = guard(col, counts)
    if why:  # e.g. the smallest non-zero FPR, 1 / n_real, is coarser than the target
        return f"n/a ({why})"
    if isinstance(v, (float, np.floating)) and not isinstance(v, bool):
        if math.isnan(v):
            return "nan"
        if col in COUNTS:
            return str(int(v))
        text = f"{v:.{digits}f}"
        if f"{col}_lo" in df and f"{col}_hi" in df:
            lo, hi = df[f"{col}_lo"].iloc[i], df[f"{col}_hi"].iloc[i]
            text += f" [{lo:.{digits}f}, {hi:.{digits}f}]{ci_note(lo, hi, counts)}"
        return text
    return md_text(v)


def to_markdown(df: pd.DataFrame, *, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Markdown table of ``df``; a metric with ``_lo``/``_hi`` columns shows ``0.953 [0.941, 0.962]``.

    A metric its small-sample guard refuses (:func:`clipdetect.core.guards.guard`: e.g. a TPR
    at an FPR finer than 1 / ``n_real`` of its row) reads ``n/a (needs ≥ N reals)``, and a CI
    wider than :data:`~clipdetect.core.guards.WIDE_CI` says so.

    ``columns`` picks and orders the shown columns, leaving out those ``df`` lacks (default: all
    but the CI bound columns).
    """
    bounds = {f"{c}{sfx}" for c in df.columns for sfx in ("_lo", "_hi")}
    cols = [c for c in df.columns if c not in bounds] if columns is None else [c for c in columns if c in df]
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for i in range(len(df)):
        lines.append("| " + " | ".join(_cell(df, i, c, digits) for c in cols) + " |")
    return "\n".join(lines)


def records(df: pd.DataFrame) -> list:
    """The rows of ``df`` as JSON records (NaN → null), as the result files hold them."""
    return json.loads(df.to_json(orient="records"))
