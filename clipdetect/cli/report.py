"""``clipdetect report DETECTOR CACHE --out DIR``: the whole honest report in one command."""
from __future__ import annotations

from clipdetect.cli.main import config_override, emit
from clipdetect.cli.options import add_command, add_force_arg, check_new_output, config_of, csv_list

EXAMPLES = """example:
  clipdetect report runs/det features/d3-val --out runs/det/report --n-boot 2000
  # report.md (+ figures), report.json and report_config.json land in runs/det/report;
  # --format html adds report.html: one file, figures embedded;
  # leave-one-generator-out retrains the detector's config once per generator:
  # cheapen it with --set epochs=5, or skip it with --no-logo"""


def add_parser(sub) -> None:
    p = add_command(sub, "report", epilog=EXAMPLES,
                    description="Runs on a cache: the per-generator table (AUC / AP / TPR@1% FPR with "
                                "bootstrap CIs, each shown only when its rows suffice), per photo source when "
                                "the cache has a source column, ROC with bootstrap bands and the threshold, the "
                                "paired AUC difference to a logistic-regression probe fitted on the detector's "
                                "train rows, leave one generator out (the detector's training config, retrained "
                                "per fold), the format-only baseline (cache metadata) and the calibration as it "
                                "is (its fit, the threshold and its target, ECE, Brier, reliability), and "
                                "writes report.md with its figures and report.json.")
    p.add_argument("detector", help="detector bundle folder (clipdetect train --out)")
    p.add_argument("cache", help="feature cache with the detector's backbone")
    p.add_argument("--out", required=True, help="output folder")
    add_force_arg(p)
    p.add_argument("--split", default="test", help="split to evaluate (default test; the detector's fractions)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of leave-one-out training (default 0)")
    p.add_argument("--no-logo", action="store_true",
                   help="skip leave-one-generator-out (it trains a detector per generator)")
    p.add_argument("--logo-generators", help="comma-separated generators to hold out (default: all)")
    p.add_argument("--set", action="append", type=config_override, metavar="FIELD=VALUE",
                   help="override a field of the detector's training config for leave-one-generator-out")
    p.add_argument("--bins", type=int, default=15, help="reliability / ECE bins (default 15)")
    p.add_argument("--formats", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.add_argument("--format", dest="document", choices=["md", "html"], default="md",
                   help="md: report.md beside its figures (default); html: also report.html, one self-contained "
                        "file with the figures embedded (open it anywhere, or show it with clipdetect serve --report)")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipdetect.core.guards import ci_note
    from clipdetect.eval.report import ReportConfig, build_report
    from clipdetect.features.cache import FeatureCache
    from clipdetect.models.detector import Detector

    formats = csv_list(args.formats)
    if not formats or any(f not in ("png", "pdf", "svg") for f in formats):
        raise ValueError(f"--formats {args.formats!r}: use png, pdf and/or svg")
    config = config_of(ReportConfig, args, logo=not args.no_logo, reliability_bins=args.bins,
                       logo_generators=csv_list(args.logo_generators) or None, formats=formats,
                       train_overrides=dict(args.set or []), html=args.document == "html")
    check_new_output(args.out, args.force)
    payload = build_report(Detector.load(args.detector), FeatureCache(args.cache), config)
    overall = payload["per_generator"][0]
    probe = payload["probe"]
    summary = {"report": str(args.out) + ("/report.html" if config.html else "/report.md"), "generators": len(payload["per_generator"]) - 1,
               "auc": overall["auc"], "auc_ci": [overall.get("auc_lo"), overall.get("auc_hi")],
               "delta_auc_vs_probe": None if "rows" not in probe else
               {k: probe["rows"][1][k] for k in ("delta_auc", "delta_auc_lo", "delta_auc_hi")},
               "logo": payload["logo"].get("skipped", f"{len(payload['logo'].get('rows', []))} folds"),
               "format_baseline": payload["format_baseline"].get("skipped") or
               payload["format_baseline"]["result"]["auc"],
               "ece": payload["calibration"]["ece"], "threshold": payload["calibration"]["threshold"]}
    d = summary["delta_auc_vs_probe"]
    text = [f"report written to {summary['report']}",
            f"overall AUC {overall['auc']:.3f} [{overall['auc_lo']:.3f}, {overall['auc_hi']:.3f}]"
            f"{ci_note(overall['auc_lo'], overall['auc_hi'], overall)} on "
            f"{overall['n_real']} real and {overall['n_fake']} fake images, {summary['generators']} generator(s)",
            f"AUC − probe's: {d['delta_auc']:+.4f} [{d['delta_auc_lo']:+.4f}, {d['delta_auc_hi']:+.4f}]" if d
            else f"probe comparison not run: {probe.get('skipped')}",
            f"leave one generator out: {summary['logo']}"]
    emit(args, summary, "\n".join(text))
    return 0
