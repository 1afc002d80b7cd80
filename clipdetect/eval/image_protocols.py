"""Protocols that change the images themselves, then re-extract: robustness and format bias.

Both take a held-out subset of a source (by key), transform every image identically for
reals and fakes, extract each condition into its own cache directory with the
detectors' backbone (resumable: re-running reuses finished caches) and evaluate every
detector on every condition.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import pandas as pd

from clipdetect.features.backbones import Backbone
from clipdetect.features.identity import identities_match
from clipdetect.features.cache import FeatureCache
from clipdetect.eval.evaluate import evaluate_detector, overall_row
from clipdetect.data.perturb import DEFAULT_SEVERITIES, PERTURBATIONS, NormalizedSource, PerturbedSource
from clipdetect.eval.format_bias import format_only_baseline, source_format_table
from clipdetect.data.sources import Source

logger = logging.getLogger(__name__)

#: x position of the unperturbed images on each sweep's axis (JPEG has no identity: 100)
CLEAN_SEVERITY = {name: (100.0 if ident is None else ident) for name, (_, ident, _) in PERTURBATIONS.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def shared_backbone(detectors: Mapping[str, Any], backbone: Optional[Backbone] = None) -> Backbone:
    """One backbone for all ``detectors`` (their identities must agree)."""
    from clipdetect.models.predict import resolve_backbone

    items = list(detectors.items())
    if not items:
        raise ValueError("no detectors given")
    first_name, first = items[0]
    for name, det in items[1:]:
        if not identities_match(first.backbone, det.backbone):
            raise ValueError(f"detectors {first_name!r} and {name!r} were trained on different backbones; "
                             "run the protocol once per backbone")
    return backbone or resolve_backbone(first)


def extract_condition(source: Source, out: Path, backbone: Backbone, *, batch_size: int = 32,
                      workers: int = 1, progress: bool = True) -> FeatureCache:
    """Extract ``source`` into ``out`` with ``backbone`` (resumes / skips a finished run)."""
    from clipdetect.features.runner import ExtractConfig
    from clipdetect.features.extract import extract

    config = ExtractConfig(backbone=backbone.identity.get("spec") or backbone.spec, out=str(out),
                           batch_size=batch_size, workers=workers, shard_size=4096)
    summary = extract(source, config, backbone=backbone, progress=progress)
    if summary.errors:
        logger.warning("%s: %s images could not be decoded: %s", out, sum(summary.errors.values()),
                       summary.errors)
    return FeatureCache(out)


def _evaluate_all(detectors: Mapping[str, Any], cache: FeatureCache, *, n_boot: int, seed: int,
                  extra: Dict[str, Any]) -> list:
    reports = {name: evaluate_detector(det, cache, split="all", by=(), n_boot=n_boot, seed=seed)
               for name, det in detectors.items()}
    return [{"detector": name, **extra, **overall_row(rep.table)} for name, rep in reports.items()]


def robustness_sweep(detectors: Mapping[str, Any], source: Source, work: str | Path, *,
                     perturbations: Optional[Mapping[str, Sequence[float]]] = None, seed: int = 0,
                     n_boot: int = 1000, batch_size: int = 32, workers: int = 1,
                     backbone: Optional[Backbone] = None, progress: bool = True) -> pd.DataFrame:
    """Metric per (detector, perturbation, severity) on ``source`` (a held-out subset).

    Every condition, plus the unperturbed images (``perturbation="clean"``, re-encoded as
    lossless PNG), is extracted into ``work/<condition>``. Rows carry the metrics of
    :func:`metrics.binary_metrics` with bootstrap bounds.
    """
    work = Path(work)
    perturbations = dict(perturbations or DEFAULT_SEVERITIES)
    for name in perturbations:
        if name not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}")
    backbone = shared_backbone(detectors, backbone)
    kw = dict(batch_size=batch_size, workers=workers, progress=progress)
    clean = extract_condition(NormalizedSource(source, fmt="PNG"), work / "clean", backbone, **kw)
    rows = _evaluate_all(detectors, clean, n_boot=n_boot, seed=seed,
                         extra={"perturbation": "clean", "severity": math.nan})
    for name, severities in perturbations.items():
        for sev in severities:
            logger.info("robustness: %s at %s", name, sev)
            cache = extract_condition(PerturbedSource(source, name, float(sev), seed=seed),
                                      work / _slug(f"{name}-{float(sev):g}"), backbone, **kw)
            rows += _evaluate_all(detectors, cache, n_boot=n_boot, seed=seed,
                                  extra={"perturbation": name, "severity": float(sev)})
    return pd.DataFrame(rows)


def sweep_curves(table: pd.DataFrame) -> pd.DataFrame:
    """The sweep with the clean row repeated in every perturbation at its identity severity
    (JPEG at quality 100), ready for :func:`plots.plot_metric_curves`."""
    clean = table[table["perturbation"] == "clean"]
    parts = [table[table["perturbation"] != "clean"]]
    for name in dict.fromkeys(table.loc[table["perturbation"] != "clean", "perturbation"]):
        c = clean.copy()
        c["perturbation"], c["severity"] = name, CLEAN_SEVERITY[name]
        parts.append(c)
    return pd.concat(parts, ignore_index=True).sort_values(["perturbation", "detector", "severity"])


def format_bias_control(detectors: Mapping[str, Any], source: Source, work: str | Path, *,
                        size: Optional[int] = None, fmt: str = "JPEG", quality: int = 90, seed: int = 0,
                        n_boot: int = 1000, folds: int = 5, batch_size: int = 32, workers: int = 1,
                        backbone: Optional[Backbone] = None,
                        progress: bool = True) -> Dict[str, pd.DataFrame]:
    """Detectors on the original encoding vs on an identical re-encoding of both classes,
    plus a format-only baseline (container metadata alone) for each encoding.

    Caches go to ``work/original`` and ``work/normalized-...``.
    Returns ``{"detectors": ..., "format_only": ...}``. ``size`` resizes every image to a
    square of that side before re-encoding (None keeps the size).
    """
    work = Path(work)
    backbone = shared_backbone(detectors, backbone)
    kw = dict(batch_size=batch_size, workers=workers, progress=progress)
    norm_name = (fmt.lower() + (f"-q{quality}" if fmt.upper() == "JPEG" else "")
                 + (f"-{size}px" if size else ""))
    conditions = {"original": source,
                  f"normalized ({norm_name})": NormalizedSource(source, size=size, fmt=fmt, quality=quality)}
    det_rows, fmt_rows = [], []
    for cond, src in conditions.items():
        folder = "original" if src is source else _slug(f"normalized-{norm_name}")
        cache = extract_condition(src, work / folder, backbone, **kw)
        det_rows += _evaluate_all(detectors, cache, n_boot=n_boot, seed=seed, extra={"encoding": cond})
        table = source_format_table(src)
        y = table.pop("label").to_numpy()
        for feats in ("container", "container+bytes"):
            cols = [c for c in table.columns if feats == "container+bytes" or c != "bytes_per_pixel"]
            res = format_only_baseline(table[cols], y, folds=folds, seed=seed, n_boot=n_boot)
            fmt_rows.append({"encoding": cond, "features": feats, "columns": ",".join(cols), **res})
    det = pd.DataFrame(det_rows)
    base = det[det["encoding"] == "original"].set_index("detector")
    det["delta_auc"] = det["auc"].to_numpy() - base.loc[det["detector"], "auc"].to_numpy()
    return {"detectors": det, "format_only": pd.DataFrame(fmt_rows)}
