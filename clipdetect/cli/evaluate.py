"""``clipdetect evaluate | plot``: metrics and figures of trained detectors on a feature cache."""
from __future__ import annotations

import logging
from pathlib import Path

from clipdetect.cli.main import CLIError, emit
from clipdetect.cli.options import add_command, add_force_arg, add_split_args, check_new_output, csv_list, figure_formats, open_cache

logger = logging.getLogger(__name__)

EVAL_EXAMPLES = """examples:
  clipdetect evaluate runs/det features/cifake-b16 --out runs/det/eval
  clipdetect evaluate runs/det features/d3 --by generator,format --n-boot 2000 --out runs/det/eval-d3"""
PLOT_EXAMPLES = """examples:
  clipdetect plot runs/det features/cifake-b16 --out runs/det/plots
  clipdetect plot paper=runs/det,linear=runs/lin features/d3 --out runs/cmp --by generator --formats png
Writes OUT/roc.*, OUT/hist.* and OUT/reliability.*: ROC curves with 95% bootstrap bands (linear
and log FPR, the log axis starting at 1/n_real, the operating threshold marked, n_real/n_fake in
the legend), histograms of the calibrated P(fake) with the threshold line, and the reliability
diagram with its ECE (shown from 100 rows) and a key to the marker sizes."""


def add_parser(sub) -> None:
    p = add_command(sub, "evaluate", epilog=EVAL_EXAMPLES,
                    description="ROC-AUC, AP, accuracy (0.5 and calibrated threshold), EER, TPR at 1% "
                                "and 0.1% FPR with 95% bootstrap CIs, ECE and Brier; overall, per generator "
                                "(its fakes vs all reals) and per metadata column; and the paired AUC "
                                "difference to a logistic-regression probe fitted on the same train rows "
                                "(positive = better than the probe). A metric is shown only when its rows "
                                "suffice (TPR at 1% FPR needs 100 reals, at 0.1% 1,000; ECE 100 rows), else "
                                "n/a with the reason; a CI wider than 0.1 is marked wide.")
    p.add_argument("detector", help="detector bundle directory; several as NAME=DIR,NAME=DIR also writes "
                                    "comparison.md with paired-bootstrap AUC differences to the first")
    p.add_argument("cache", help="feature cache directory (same backbone as the detector)")
    p.add_argument("--split", default="auto",
                   help="train, val, test, all or auto (default): test when the cache has held-out rows or "
                        "is the detector's training cache, else all rows")
    p.add_argument("--baseline", default="logistic", choices=["logistic", "none"],
                   help="compare with a logistic-regression probe fitted to convergence on the train rows of "
                        "the detector's training cache (default logistic)")
    p.add_argument("--baseline-cache",
                   help="cache to fit the probe on (default: the one recorded in the bundle, else CACHE)")
    p.add_argument("--by", default="generator", type=csv_list,
                   help="comma-separated metadata columns: generator, source, family, view, ... (default "
                        "generator; a cache extracted with --views also gets one row per view)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: no CIs; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", help="write metrics.json/.csv/.md and eval_config.json here")
    add_force_arg(p)
    p.add_argument("--save-scores", action="store_true",
                   help="also write scores.csv (key, label, logit, probability)")
    add_split_args(p)
    p.set_defaults(func=run_evaluate)

    p = add_command(sub, "plot", epilog=PLOT_EXAMPLES)
    p.add_argument("detectors", type=csv_list, help="DIR[,DIR...] or NAME=DIR[,NAME=DIR...]")
    p.add_argument("cache", help="feature cache directory")
    p.add_argument("--out", required=True, help="output folder: writes roc, hist and reliability figures there")
    add_force_arg(p)
    p.add_argument("--split", default="auto", help="split to plot: train, val, test, all or auto (default)")
    p.add_argument("--by", default="generator",
                   help="one curve per value of this column ('' for overall only)")
    p.add_argument("--formats", type=figure_formats, default=["png", "pdf"], help="png,pdf (default) or a subset")
    p.add_argument("--title", help="figure title")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    p.set_defaults(func=run_plot)


# ------------------------------------------------------------------ handlers
def run_evaluate(args) -> int:
    from clipdetect.core.io import write_csv
    from clipdetect.eval.compare import baseline_probe
    from clipdetect.eval.evaluate import evaluate_detector
    from clipdetect.eval.protocols import load_detectors

    if args.n_boot < 0:
        raise CLIError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.out:
        check_new_output(args.out, args.force)
    specs = csv_list(args.detector)
    several = len(specs) > 1
    dets, cache = load_detectors(specs), open_cache(args.cache)
    reports, text = {}, []
    kw = dict(split=args.split, by=args.by, n_boot=args.n_boot, seed=args.seed, val=args.val_fraction,
              test=args.test_fraction, split_seed=args.split_seed)
    for name, det in dets.items():
        report = evaluate_detector(det, cache, names={"detector": name if several else args.detector,
                                                      "cache": args.cache}, **kw)  # ValueError: main() reports it
        reports[name] = report
        if args.out:
            out = Path(args.out) / name if several else Path(args.out)
            paths = report.save(out)
            if args.save_scores:
                write_csv(out / "scores.csv", report.scores)
            logger.info("wrote %s", ", ".join(str(p) for p in paths))
        text.append((f"### {name}\n\n" if several else "") + report.to_markdown())
    payload = {"detectors": {n: r.to_json() for n, r in reports.items()}, "comparison": None}
    reference = None
    if args.baseline == "logistic":
        first = next(iter(dets.values()))
        probe, why = baseline_probe(first, cache, train_cache=args.baseline_cache)
        if probe is None:
            logger.warning("no logistic-regression baseline: %s", why)
        else:
            reference = "logistic-probe"
            rows = next(iter(reports.values())).scores["row"].to_numpy()
            reports = {reference: evaluate_detector(probe, cache, rows=rows, split=args.split, by=args.by,
                                                    n_boot=args.n_boot, seed=args.seed,
                                                    names={"detector": reference, "cache": args.cache}),
                       **reports}
    if len(reports) > 1:
        payload["comparison"], cmp_text = _comparison(reports, args, specs, reference)
        text.append(cmp_text)
    emit(args, payload, "\n".join(text))
    return 0


def _comparison(reports, args, specs, reference):
    from clipdetect.core.escape import md_code
    from clipdetect.core.tables import records, to_markdown
    from clipdetect.eval.compare import compare_reports
    from clipdetect.eval.protocols import SUMMARY_METRICS, save_table

    table = compare_reports(reports, n_boot=args.n_boot, seed=args.seed, reference=reference)
    ref = reference or next(iter(reports))
    what = "the logistic-regression probe fitted on the same train rows" if reference else ref
    notes = (f"`delta_auc` = AUC(detector) − AUC({ref}), {what}; positive = better than {ref}. 95% paired "
             f"stratified bootstrap CI ({args.n_boot} resamples).")
    columns = ["detector", "n_real", "n_fake", *SUMMARY_METRICS, "ece", "brier", "delta_auc"]
    if args.out:
        save_table(table, args.out, "comparison", config={"detectors": specs, "cache": args.cache,
                                                          "split": args.split, "n_boot": args.n_boot,
                                                          "reference": ref},
                   columns=columns, title=f"Detectors compared on {md_code(args.cache)}, split {md_code(args.split)}",
                   notes=notes)
    return ({"reference": ref, "notes": notes, "rows": records(table)},
            to_markdown(table, columns=columns, digits=4) + "\n" + notes)


def run_plot(args) -> int:
    from clipdetect.eval.figures import plot_detectors
    from clipdetect.eval.protocols import load_detectors

    check_new_output(args.out, args.force)
    paths = plot_detectors(load_detectors(args.detectors), open_cache(args.cache), args.out,
                           split=args.split, by=args.by or None, formats=args.formats, title=args.title,
                           dpi=args.dpi)
    emit(args, {"written": [str(p) for p in paths]}, "wrote " + ", ".join(str(p) for p in paths))
    return 0
