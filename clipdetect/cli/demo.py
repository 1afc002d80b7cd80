"""``clipdetect demo``: the whole pipeline on the bundled sample cache, offline, in minutes.

Trains the paper's detector (3-block MLP, CVaR + AUC loss, SAM over AdamW; schedule planned
from the cache size) and fits the honest baseline, a logistic-regression probe run to
convergence on the same train rows, on real CLIP ViT-B/16 image embeddings of CIFAKE images
shipped with the package
(``clipdetect/sample_data/cifake-b16-sample``); evaluates both on the held-out test split and
writes the metrics tables, the paired AUC difference (positive = the detector beats the
probe) and the ROC figure.
"""
from __future__ import annotations

import logging
from pathlib import Path

from clipdetect.cli.main import emit
from clipdetect.cli.options import add_command, add_force_arg, check_new_output, metrics_text
from clipdetect.core.resources import SAMPLE_CACHE

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  clipdetect demo                              # bundled sample cache, outputs in runs/demo
  clipdetect demo --epochs 4 --n-boot 200      # a quick look
  clipdetect demo --cache features/my-cache --out runs/my-demo
Writes OUT/metrics.md, OUT/demo_roc.png, OUT/demo_hist.png, OUT/demo_reliability.png and one
detector bundle per model under OUT/ (an existing OUT is refused without --force). Prints the
metrics tables and a summary (--json: the summary as JSON)."""


def add_parser(sub) -> None:
    p = add_command(sub, "demo", description=__doc__, epilog=EXAMPLES)
    p.add_argument("--cache", default=str(SAMPLE_CACHE), help="feature cache (default: the bundled sample)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    add_force_arg(p)
    p.add_argument("--preset", default="auto", choices=["auto", "paper"],
                   help="training schedule: auto (planned from the cache size, default) or paper (batch 2048, 32 epochs)")
    p.add_argument("--epochs", type=int, help="training epochs (default: planned)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of training and of the bootstrap (default 0)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from clipdetect.core.guards import guarded
    from clipdetect.core.io import write_text
    from clipdetect.features.verify import open_verified
    from clipdetect.models.detector import Detector
    from clipdetect.eval.compare import compare_reports
    from clipdetect.eval.evaluate import evaluate_detector
    from clipdetect.eval.figures import plot_detectors
    from clipdetect.models.baseline import fit_probe_on_cache
    from clipdetect.models.train import TrainConfig

    cache_dir = Path(args.cache)
    if not (cache_dir / "manifest.json").exists():
        raise ValueError(f"no feature cache at {str(cache_dir)!r}; pass --cache DIR (made with `clipdetect extract`)")
    check_new_output(args.out, args.force)
    cache = open_verified(cache_dir)
    out = Path(args.out)
    info = cache.summary()
    logger.info("cache %s: %d rows (%s), backbone %s", cache_dir, info["rows"], info["labels"],
                cache.backbone.get("spec"))
    paper = TrainConfig.preset(args.preset, seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    logger.info("training the paper's detector")
    name = "paper-mlp-cvar-auc-sam"
    detectors = {name: Detector.fit_cache(cache, config=paper, out=out / name, progress=not args.no_progress)}
    logger.info("fitting the logistic-regression probe")
    base = "logistic-probe"
    detectors[base] = fit_probe_on_cache(cache, val_fraction=paper.val_fraction, test_fraction=paper.test_fraction,
                                         split_seed=paper.split_seed)
    detectors[base].save(out / base)
    reports, tables = {}, []
    for n, det in detectors.items():
        reports[n] = evaluate_detector(det, cache, split="test", n_boot=args.n_boot, seed=args.seed,
                                       names={"detector": n, "cache": cache_dir.name})
        reports[n].save(out / n / "eval")
        tables.append(f"### {n}\n\n" + reports[n].to_markdown())
    cmp = compare_reports(reports, n_boot=args.n_boot, seed=args.seed, reference=base).set_index("detector")
    d = cmp.loc[name]
    verdict = (f"AUC({name}) − AUC({base}) = {d['delta_auc']:+.4f} [{d['delta_auc_lo']:+.4f}, "
               f"{d['delta_auc_hi']:+.4f}] (95% paired bootstrap CI; positive = better than the probe)")
    tables.append(f"### compared with the baseline\n\n{verdict}\n")
    figures = plot_detectors(detectors, cache, out, split="test", formats=("png",), prefix="demo_")
    write_text(out / "metrics.md", "\n".join(tables))
    det = detectors[name]
    summary = {"cache": str(cache_dir), "out": str(out), "metrics": str(out / "metrics.md"),
               "figures": [str(p) for p in figures], "schedule": det.metrics.get("schedule"),
               "test": {n: guarded(reports[n].table.iloc[0].to_dict()) for n in detectors},
               "delta_auc_vs_probe": {k: round(float(d[k]), 4) for k in ("delta_auc", "delta_auc_lo",
                                                                          "delta_auc_hi")},
               "calibration": {**det.calibration.to_json(), "fit": det.metrics.get("calibration")},
               "threshold": det.threshold, "threshold_target": det.threshold_target}
    fit = det.metrics.get("calibration") or {}
    lines = ["\n".join(tables), f"outputs in {out}: metrics.md, " + ", ".join(Path(p).name for p in figures)]
    lines += [f"test, {n}: {metrics_text(summary['test'][n])}" for n in detectors]
    lines.append(f"calibration: {det.calibration.describe()}"
                 + (f" (validation ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f})" if fit.get("applied")
                    else f" ({fit.get('reason')})" if fit else ""))
    emit(args, summary, "\n".join(lines))
    return 0
