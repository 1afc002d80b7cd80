"""One honest report on a cache: per-generator (and per-photo-source) metrics, ROC, the
comparison with a logistic-regression probe, leave-one-generator-out, the format-only baseline
and calibration as it is, written as ``report.md`` + ``report.json`` (and, on request,
``report.html``: one self-contained file, :mod:`~clipdetect.eval.report_html`).

Every number comes from the existing pieces: :func:`~clipdetect.eval.evaluate.evaluate_detector`
(per-generator AUC / AP / TPR@1% FPR with bootstrap CIs, FPR at the threshold, ECE, Brier; each
shown only when its rows suffice), :func:`~clipdetect.eval.figures.plot_detectors` (ROC with
bootstrap bands and the threshold, histograms, reliability), :func:`~clipdetect.eval.compare.baseline_probe`
and :func:`~clipdetect.eval.compare.compare_reports` (paired AUC difference with its CI),
:func:`~clipdetect.eval.protocols.leave_one_generator_out` (trained with the detector's own
training config), :func:`~clipdetect.eval.protocols.cache_format_baseline` and
:func:`~clipdetect.core.metrics.reliability_table`. A section that cannot run on this cache
(one generator only, no format metadata, no training rows for the probe) says why instead of
failing the report.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from clipdetect.core.guards import ci_note, guard
from clipdetect.core.io import write_json, write_text
from clipdetect.core.escape import md_code
from clipdetect.core.metrics import reliability_table
from clipdetect.core.tables import records, to_markdown
from clipdetect.eval.compare import baseline_probe, compare_reports
from clipdetect.eval.evaluate import EvalReport, evaluate_detector
from clipdetect.eval.figures import plot_detectors
from clipdetect.eval.protocols import SUMMARY_METRICS, cache_format_baseline, leave_one_generator_out
from clipdetect.models.thresholds import describe_target

logger = logging.getLogger(__name__)

GENERATOR_COLUMNS = ["generator", "n_real", "n_fake", "auc", "ap", "tpr@thr", "tpr@fpr=1%", "eer", "ece", "brier"]
SOURCE_COLUMNS = ["source", "n_real", "n_fake", "auc", "fpr@thr"]
PROBE_COLUMNS = ["detector", "n_real", "n_fake", "auc", "ap", "delta_auc"]
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


def _probe(detector, cache, ev: EvalReport, config: ReportConfig) -> Dict[str, Any]:
    """The paired AUC difference to a logistic-regression probe fitted on the detector's train rows."""
    probe, why = baseline_probe(detector, cache)
    if probe is None:
        return {"skipped": why}
    rows = ev.scores["row"].to_numpy()
    reports = {"logistic-probe": evaluate_detector(probe, cache, rows=rows, split=config.split, by=(),
                                                   n_boot=config.n_boot, seed=config.seed),
               "detector": ev}
    table = compare_reports(reports, n_boot=config.n_boot, seed=config.seed, reference="logistic-probe")
    return {"table": table}


def _calibration(detector, ev: EvalReport, config: ReportConfig, figures: List[str]) -> Dict[str, Any]:
    s = ev.scores
    y, p = s["label"].to_numpy(), s["probability"].to_numpy()
    overall = ev.table.iloc[0]
    table = reliability_table(y, p, n_bins=config.reliability_bins)
    reals, fakes = p[y == 0], p[y == 1]
    fitted = (getattr(detector, "extra", None) or {}).get("calibration") or {}
    return {"ece": None if pd.isna(overall["ece"]) else float(overall["ece"]), "ece_not_shown": guard("ece", {"n": len(s)}),
            "brier": float(overall["brier"]), "n_bins": config.reliability_bins, "n": int(len(s)),
            "calibration": detector.calibration.to_json(), "calibration_text": detector.calibration.describe(),
            "fit": (detector.metrics or {}).get("calibration"), "threshold": float(detector.threshold),
            "threshold_target": detector.threshold_target,
            "false_positives": int((reals > detector.threshold).sum()), "n_real": int(reals.size),
            "true_positives": int((fakes > detector.threshold).sum()), "n_fake": int(fakes.size),
            "fpr_at_threshold": float((reals > detector.threshold).mean()) if reals.size else float("nan"),
            "target_fpr": fitted.get("target_fpr"), "calibrated_on": fitted.get("split"),
            "bins": records(table), "figures": [f for f in figures if "reliability" in Path(f).name]}


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
    by = ("generator", "source") if "source" in cache.meta.columns else ("generator",)
    ev = evaluate_detector(detector, cache, split=config.split, by=by, n_boot=config.n_boot,
                           seed=config.seed, names={"detector": config.detector, "cache": config.cache})
    figures = plot_detectors({Path(config.detector or "detector").name: detector}, cache, out,
                             split=config.split, by="generator", formats=config.formats, prefix="report_")
    logger.info("report: the logistic-regression probe")
    probe = _probe(detector, cache, ev, config)
    logger.info("report: leave one generator out")
    logo = _logo(detector, cache, config, train_config)
    fmt = _format_baseline(cache, config, train_config)
    cal = _calibration(detector, ev, config, [str(f) for f in figures])
    table = ev.table
    payload = {"config": asdict(config), "evaluation": ev.config, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "per_generator": records(table[table["group"].isin(["overall", "generator"])]),
               "per_source": records(table[table["group"] == "source"]),
               "roc_figures": [str(p) for p in figures if "reliability" not in Path(p).name],
               "probe": {**{k: v for k, v in probe.items() if k != "table"},
                         **({"rows": records(probe["table"])} if "table" in probe else {})},
               "logo": {**{k: v for k, v in logo.items() if k != "table"},
                        **({"rows": records(logo["table"])} if "table" in logo else {})},
               "format_baseline": fmt, "calibration": cal}
    write_text(out / "report.json", json.dumps(payload, indent=2, default=str) + "\n")
    write_json(out / "report_config.json", asdict(config))
    markdown = render_markdown(payload, ev, logo, probe, out)
    write_text(out / "report.md", markdown)
    if config.html:
        from clipdetect.eval.report_html import render_html

        write_text(out / "report.html", render_html(markdown, out, title=f"clipdetect report: {config.detector}"))
    logger.info("report written to %s", out / ("report.html" if config.html else "report.md"))
    return payload


def _rel(paths: List[str], out: Path, suffix: str = ".png") -> Optional[str]:
    return next((str(Path(p).relative_to(out)) for p in paths if p.endswith(suffix)), None)


def render_markdown(payload: Dict[str, Any], ev: EvalReport, logo: Dict[str, Any], probe: Dict[str, Any],
                    out: Path) -> str:
    c, e = payload["config"], payload["evaluation"]
    table = ev.table
    overall = table.iloc[0]
    gens = table[table["group"].isin(["overall", "generator"])].rename(columns={"value": "generator"})
    lines = [f"# Detector report: {md_code(c['detector'])} on {md_code(c['cache'])}", "",
             f"Split {md_code(e['split'])} ({e['n_rows']} images: {int(overall['n_real'])} real, "
             f"{int(overall['n_fake'])} fake; split fractions val {e['val']}, test {e['test']}, seed "
             f"{e['split_seed']}); feature set {md_code(e['feature_set'])}; 95% bootstrap CIs ({c['n_boot']} "
             f"resamples). Overall AUC {overall['auc']:.3f} [{overall['auc_lo']:.3f}, {overall['auc_hi']:.3f}]"
             f"{ci_note(overall['auc_lo'], overall['auc_hi'], overall)}. A metric its rows cannot support reads "
             "`n/a` with the reason (TPR at 1% FPR needs 100 reals; ECE 100 rows).", "",
             "## Per generator", "",
             "Each generator's fakes against all reals of the split (`all`: every image of the split); `tpr@thr`: "
             "fakes called fake at the detector's threshold.", "",
             to_markdown(gens, columns=GENERATOR_COLUMNS), ""]
    for name, text in (("roc.png", "ROC per generator with 95% bootstrap bands and the operating threshold"),
                       ("hist.png", "calibrated P(fake) by class with the threshold")):
        if fig := _rel(payload["roc_figures"], out, name):
            lines += [f"![{text}]({fig})", ""]
    sources = table[table["group"] == "source"].rename(columns={"value": "source"})
    if len(sources):
        lines += ["## Per photo source", "", "Each source's reals against all fakes of the split; `fpr@thr`: its "
                  "reals called fake at the detector's threshold.", "", to_markdown(sources, columns=SOURCE_COLUMNS),
                  ""]
    lines += ["## Compared with a logistic-regression probe", ""]
    if "table" in probe:
        t = probe["table"]
        d = t.set_index("detector").loc["detector"]
        lines += ["A logistic-regression probe fitted to convergence on the detector's train rows, scored on the "
                  f"same rows: AUC(detector) − AUC(probe) = {d['delta_auc']:+.4f} [{d['delta_auc_lo']:+.4f}, "
                  f"{d['delta_auc_hi']:+.4f}] (95% paired bootstrap CI; positive = the detector is better).", "",
                  to_markdown(t, columns=PROBE_COLUMNS, digits=4), ""]
    else:
        lines += [f"Not run: {probe['skipped']}.", ""]
    lines += ["## Leave one generator out", ""]
    if "table" in logo:
        lines += ["Trained on all generators but one (the detector's training config), tested on the one left "
                  "out against the test reals; `in_auc`: the same detector on the generators it saw.", "",
                  to_markdown(logo["table"], columns=LOGO_COLUMNS), ""]
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
    return "\n".join(lines + calibration_markdown(payload["calibration"], out))


def calibration_markdown(cal: Dict[str, Any], out: Path) -> List[str]:
    """The calibration section: what the detector does (fitted in training, or refitted), and how
    it behaves on this split, whose rows fitted neither the calibration nor the threshold."""
    fit = cal.get("fit") or {}
    how = md_code(cal['calibration_text'])
    if fit.get("applied"):
        how += (f", fitted at the end of training on {fit['n']} validation rows ({fit['n_real']} real, "
                f"{fit['n_fake']} fake; validation ECE {fit['ece_before']:.4f} → {fit['ece_after']:.4f})")
    elif fit:
        how += f": training tried {fit['method']} scaling and did not apply it ({fit.get('reason')})"
    if cal.get("calibrated_on"):
        how += f"; recalibrated with `clipdetect calibrate` on the {md_code(cal['calibrated_on'])} split"
    ece = (f"ECE n/a ({cal['ece_not_shown']})" if cal.get("ece_not_shown")
           else f"ECE {cal['ece']:.4f} ({cal['n_bins']} bins)")
    lines = ["## Calibration", "", f"Probability: {how}.", "",
             f"Threshold: P(fake) > {cal['threshold']:.4g}, chosen for {describe_target(cal['threshold_target'])}.",
             "", f"On this split ({cal['n']} images, none used to fit either): {ece}, Brier {cal['brier']:.4f}; at "
             f"the threshold {cal['false_positives']} of {cal['n_real']} reals are called fake (FPR "
             f"{cal['fpr_at_threshold']:.4f}) and {cal['true_positives']} of {cal['n_fake']} fakes are caught.", "",
             to_markdown(pd.DataFrame(cal["bins"]), columns=["lo", "hi", "n", "mean_prob", "frac_fake"]), ""]
    if rel := _rel(cal["figures"], out):
        lines += [f"![reliability diagram]({rel})", ""]
    return lines
