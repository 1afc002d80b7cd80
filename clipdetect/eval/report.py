"""One honest report on a cache: per-generator metrics, ROC, leave-one-generator-out,
format-only baseline and calibration, written as ``report.md`` + ``report.json`` (and, on
request, ``report.html``: one self-contained file, :mod:`~clipdetect.eval.report_html`).

Every number comes from the existing pieces: :func:`~clipdetect.eval.evaluate.evaluate_detector`
(per-generator AUC / AP / TPR@1% FPR with bootstrap CIs, ECE, Brier),
:func:`~clipdetect.eval.figures.plot_detectors` (ROC, one curve per generator),
:func:`~clipdetect.eval.protocols.leave_one_generator_out` (trained with the detector's own
training config), :func:`~clipdetect.eval.protocols.cache_format_baseline` and
:func:`~clipdetect.core.metrics.reliability_table`. A section that cannot run on this cache
(one generator only, no format metadata) says why instead of failing the report.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from clipdetect.core.io import write_json, write_text
from clipdetect.core.metrics import reliability_table, to_markdown
from clipdetect.eval.evaluate import EvalReport, evaluate_detector
from clipdetect.eval.figures import plot_detectors
from clipdetect.eval.protocols import SUMMARY_METRICS, cache_format_baseline, leave_one_generator_out

logger = logging.getLogger(__name__)

GENERATOR_COLUMNS = ["generator", "n_real", "n_fake", "auc", "ap", "tpr@fpr=1%", "eer", "ece", "brier"]
LOGO_COLUMNS = ["held_out", "n_train", "n_real", "n_fake", *SUMMARY_METRICS, "in_auc", "auc_drop"]
#: cache metadata the format-only baseline reads
FORMAT_COLUMNS = ("width", "height", "format", "mode")


@dataclass
class ReportConfig:
    """Options of one report; saved as ``report_config.json`` next to it."""

    detector: str = ""
    cache: str = ""
    out: str = "report"
    split: str = "test"
    n_boot: int = 1000
    seed: int = 0
    logo: bool = True
    logo_generators: Optional[List[str]] = None  # None: every fake generator of the cache
    train_overrides: Dict[str, Any] = field(default_factory=dict)  # on the detector's training config
    reliability_bins: int = 15
    formats: List[str] = field(default_factory=lambda: ["png"])
    #: also write report.html: one self-contained file, figures embedded (needs "png" in formats)
    html: bool = False


def _records(df: pd.DataFrame) -> list:
    return json.loads(df.to_json(orient="records"))


def _logo(detector, cache, config: ReportConfig, train_config) -> Dict[str, Any]:
    fakes = sorted(set(cache.meta.loc[cache.labels() == 1, "generator"].astype(str)))
    if not config.logo:
        return {"skipped": "turned off (--no-logo)"}
    if len(fakes) < 2:
        return {"skipped": f"needs fakes of at least 2 generators; the cache has {fakes}"}
    table = leave_one_generator_out(cache, feature_set=detector.feature_set, config=train_config,
                                    generators=config.logo_generators, n_boot=config.n_boot, seed=config.seed)
    return {"table": table, "train_config": train_config.to_dict()}


def _format_baseline(cache, config: ReportConfig, train_config) -> Dict[str, Any]:
    meta = cache.meta
    missing = [c for c in FORMAT_COLUMNS if c not in meta.columns or meta[c].isna().all()]
    if missing:
        return {"skipped": f"the cache's metadata lacks {missing}; extract it with this version of clipdetect "
                           "to record each image's width, height, format and mode"}
    try:
        return {"result": cache_format_baseline(cache, config=train_config, n_boot=config.n_boot,
                                                seed=config.seed)}
    except ValueError as exc:  # e.g. a split with one class only
        return {"skipped": f"could not fit: {exc}"}


def _calibration(detector, ev: EvalReport, config: ReportConfig, out: Path) -> Dict[str, Any]:
    from clipdetect.eval.plots import plot_reliability, save_figure

    s = ev.scores
    y, p = s["label"].to_numpy(), s["probability"].to_numpy()
    overall = ev.table.iloc[0]
    table = reliability_table(y, p, n_bins=config.reliability_bins)
    fig_ax = plot_reliability(table, title=f"reliability ({config.split}, {len(s)} images)")
    figures = save_figure(fig_ax.figure, out / "report_reliability", formats=config.formats)
    reals = p[y == 0]
    fitted = (getattr(detector, "extra", None) or {}).get("calibration") or {}
    return {"ece": float(overall["ece"]), "brier": float(overall["brier"]), "n_bins": config.reliability_bins,
            "temperature": float(detector.temperature), "threshold": float(detector.threshold),
            "fpr_at_threshold": float((reals > detector.threshold).mean()) if reals.size else float("nan"),
            "target_fpr": fitted.get("target_fpr"), "calibrated_on": fitted.get("split"),
            "bins": _records(table), "figures": [str(f) for f in figures]}


def build_report(detector, cache, config: ReportConfig) -> Dict[str, Any]:
    """Run every section on ``cache`` and write ``report.md``, ``report.json``, ``report_config.json``
    and the figures into ``config.out``; returns the JSON payload."""
    from clipdetect.models.train import TrainConfig

    out = Path(config.out)
    if config.html and "png" not in config.formats:
        raise ValueError(f"an HTML report embeds PNG figures: add png to the figure formats (got {config.formats})")
    out.mkdir(parents=True, exist_ok=True)
    train_config = TrainConfig.from_dict({**(detector.train_config or {}), **config.train_overrides})
    logger.info("report: per-generator metrics on the %s split", config.split)
    ev = evaluate_detector(detector, cache, split=config.split, by=("generator",), n_boot=config.n_boot,
                           seed=config.seed, names={"detector": config.detector, "cache": config.cache})
    roc = plot_detectors({Path(config.detector or "detector").name: detector}, cache, out / "report",
                         split=config.split, by="generator", formats=config.formats)
    logger.info("report: leave one generator out")
    logo = _logo(detector, cache, config, train_config)
    fmt = _format_baseline(cache, config, train_config)
    cal = _calibration(detector, ev, config, out)
    payload = {"config": asdict(config), "evaluation": ev.config, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "per_generator": _records(ev.table), "roc_figures": [str(p) for p in roc],
               "logo": {**{k: v for k, v in logo.items() if k != "table"},
                        **({"rows": _records(logo["table"])} if "table" in logo else {})},
               "format_baseline": fmt, "calibration": cal}
    write_text(out / "report.json", json.dumps(payload, indent=2, default=str) + "\n")
    write_json(out / "report_config.json", asdict(config))
    markdown = render_markdown(payload, ev, logo, out)
    write_text(out / "report.md", markdown)
    if config.html:
        from clipdetect.eval.report_html import render_html

        write_text(out / "report.html", render_html(markdown, out, title=f"clipdetect report: {config.detector}"))
    logger.info("report written to %s", out / ("report.html" if config.html else "report.md"))
    return payload


def _rel(paths: List[str], out: Path, suffix: str = ".png") -> Optional[str]:
    return next((str(Path(p).relative_to(out)) for p in paths if p.endswith(suffix)), None)


def render_markdown(payload: Dict[str, Any], ev: EvalReport, logo: Dict[str, Any], out: Path) -> str:
    c, e = payload["config"], payload["evaluation"]
    overall = ev.table.iloc[0]
    lines = [f"# Detector report: `{c['detector']}` on `{c['cache']}`", "",
             f"Split `{c['split']}` ({e['n_rows']} images; split fractions val {e['val']}, test {e['test']}, "
             f"seed {e['split_seed']}); feature set `{e['feature_set']}`; 95% bootstrap CIs "
             f"({c['n_boot']} resamples). Overall AUC {overall['auc']:.3f}.", "",
             "## Per generator", "",
             "Each generator's fakes against all reals of the split (`all`: every image of the split).", "",
             to_markdown(ev.table.rename(columns={"value": "generator"}), columns=GENERATOR_COLUMNS), ""]
    for name, text in (("_roc.png", "ROC, one curve per generator"), ("_hist.png", "score histograms")):
        fig = _rel(payload["roc_figures"], out, name)
        if fig:
            lines += [f"![{text}]({fig})", ""]
    lines += ["## Leave one generator out", ""]
    if "table" in logo:
        lines += ["Trained on all generators but one (the detector's training config), tested on the one left "
                  "out against the test reals; `in_auc`: the same detector on the generators it saw.", "",
                  to_markdown(logo["table"], columns=[k for k in LOGO_COLUMNS if k in logo["table"]]), ""]
    else:
        lines += [f"Not run: {logo['skipped']}.", ""]
    lines += ["## Format-only baseline", ""]
    fmt = payload["format_baseline"]
    if "result" in fmt:
        r = fmt["result"]
        lines += [f"A depth-4 tree on width, height, format and mode only (fit on train, scored on test): AUC "
                  f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}], accuracy {r['acc@0.5']:.3f} "
                  f"(n = {r['n']}). Near 0.5: the container does not give the label away; near the "
                  f"detector's AUC ({overall['auc']:.3f}): its score may measure the file format.", ""]
    else:
        lines += [f"Not run: {fmt['skipped']}.", ""]
    cal = payload["calibration"]
    lines += ["## Calibration", "",
              f"ECE {cal['ece']:.4f} ({cal['n_bins']} bins), Brier {cal['brier']:.4f}; temperature "
              f"{cal['temperature']:.4g}, threshold P(fake) > {cal['threshold']:.4g} gives FPR "
              f"{cal['fpr_at_threshold']:.4f} on this split's reals"
              + (f" (target {cal['target_fpr']}, calibrated on `{cal['calibrated_on']}`)." if cal["target_fpr"]
                 is not None else " (the detector was not calibrated: `clipdetect calibrate`)."), "",
              to_markdown(pd.DataFrame(cal["bins"]), columns=["lo", "hi", "n", "mean_prob", "frac_fake"]), ""]
    rel = _rel(cal["figures"], out)
    if rel:
        lines += [f"![reliability diagram]({rel})", ""]
    return "\n".join(lines)
