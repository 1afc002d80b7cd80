"""``clipdetect evaluate | plot | predict | calibrate | protocol``: everything after training."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from clipdetect.cli.extract import add_limit_args
from clipdetect.cli.main import CLIError, config_override, print_json

logger = logging.getLogger(__name__)

EVAL_EXAMPLES = """examples:
  clipdetect evaluate runs/det features/cifake-b16 --out runs/det/eval
  clipdetect evaluate runs/det features/d3 --by generator,format --n-boot 2000 --out runs/det/eval-d3"""
PLOT_EXAMPLES = """examples:
  clipdetect plot runs/det features/cifake-b16 --out runs/det/plots/test
  clipdetect plot paper=runs/det,linear=runs/lin features/d3 --out runs/cmp --by generator --formats png"""
PREDICT_EXAMPLES = """examples:
  clipdetect predict runs/det photos/ --out scores.csv                 # every image under photos/
  clipdetect predict runs/det photo.jpg --out one.jsonl
  clipdetect predict runs/det-it photos/ --out s.csv --caption-template "a photo of a {label_name}"
  clipdetect predict runs/det ../shared/data/cifake_dev.parquet --out s.csv --limit 500 --device cuda
Images that cannot be decoded get a row with their error and no score. Limits: more than
64,000,000 pixels is refused (--max-pixels); images thinner than 1:100 are centre-cropped to
1:100 unless --max-aspect R refuses those thinner than 1:R. Ctrl-C leaves no partial file."""
CALIBRATE_EXAMPLES = """examples:
  clipdetect calibrate runs/det features/cifake-b16 --target-fpr 0.01            # re-saved in place
  clipdetect calibrate runs/det features/cifake-b16 --temperature --out runs/det-cal
  clipdetect calibrate runs/det features/cifake-b16 --keep-threshold --temperature"""
PROTOCOL_EXAMPLES = """examples:
  clipdetect protocol logo features/d3 --out runs/logo --set epochs=8
  clipdetect protocol text-leakage features/d3-text --out runs/text
  clipdetect protocol robustness paper=runs/det,linear=runs/lin ../shared/data/cifake_dev.parquet \\
      --cache features/cifake-b16 --n-real 50 --n-fake 50 --perturb jpeg=90,50 --perturb blur=1,2 \\
      --out runs/rob
  clipdetect protocol format-bias runs/det ../shared/data/cifake_dev.parquet --cache features/cifake-b16 \\
      --n-real 100 --n-fake 100 --format JPEG --quality 90 --out runs/fmt"""


def _csv(text: str) -> list:
    return [t for t in (text or "").split(",") if t]


def _formats(text: str) -> list:
    fmts = _csv(text)
    bad = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad or not fmts:
        raise argparse.ArgumentTypeError(f"--formats wants png,pdf,svg; got {text!r}")
    return fmts


def _perturb(text: str):
    name, sep, values = text.partition("=")
    try:
        sev = [float(v) for v in _csv(values)]
    except ValueError:
        sev = []
    if not sep or not sev:
        raise argparse.ArgumentTypeError(f"--perturb wants NAME=S1,S2,... (e.g. jpeg=90,50), got {text!r}")
    return name, sev



def _load_detector(path: str):
    from clipdetect.models.detector import Detector

    return Detector.load(path)


def _open_cache(path: str):
    """The cache after the cheap integrity checks (a damaged one is refused before any work)."""
    from clipdetect.features.verify import open_verified

    return open_verified(path)


def _train_config(args):
    from clipdetect.models.train import TrainConfig

    fields = json.loads(Path(args.train_config).read_text()) if args.train_config else {}
    fields.update(dict(args.set or []))
    return TrainConfig.from_dict(fields)


def _split_args(p) -> None:
    g = p.add_argument_group("splits (default: the fractions and seed the detector was trained with)")
    g.add_argument("--val-fraction", type=float, help="validation fraction when the cache has no val rows")
    g.add_argument("--test-fraction", type=float, help="test fraction when the cache has no test rows")
    g.add_argument("--split-seed", type=int, help="seed of the key-hash split")


def _train_args(p) -> None:
    p.add_argument("--train-config", help="JSON file of TrainConfig fields (default: the paper's recipe)")
    p.add_argument("--set", action="append", type=config_override, metavar="FIELD=VALUE",
                   help="override a TrainConfig field, e.g. --set epochs=8 --set head=linear (repeatable)")


def add_parser(sub) -> None:
    from clipdetect.features.pipeline import default_workers

    p = sub.add_parser("evaluate", help="metrics per generator with bootstrap CIs", epilog=EVAL_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="ROC-AUC, AP, accuracy (0.5 and calibrated threshold), EER, TPR at 1% "
                                   "and 0.1% FPR with 95% bootstrap CIs, ECE and Brier; overall, per generator "
                                   "(its fakes vs all reals) and per metadata column; and the paired AUC "
                                   "difference to a logistic-regression probe fitted on the same train rows "
                                   "(positive = better than the probe).")
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
    p.add_argument("--by", default="generator", type=_csv,
                   help="comma-separated metadata columns (default generator)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: no CIs; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", help="write metrics.json/.csv/.md and eval_config.json here")
    p.add_argument("--save-scores", action="store_true",
                   help="also write scores.csv (key, label, logit, probability)")
    _split_args(p)
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("plot", help="ROC curves (linear + log FPR) and score histograms", epilog=PLOT_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detectors", type=_csv, help="DIR[,DIR...] or NAME=DIR[,NAME=DIR...]")
    p.add_argument("cache", help="feature cache directory")
    p.add_argument("--out", required=True,
                   help="output stem: writes STEM_roc.png/.pdf and STEM_hist.png/.pdf")
    p.add_argument("--split", default="auto", help="split to plot: train, val, test, all or auto (default)")
    p.add_argument("--by", default="generator",
                   help="one curve per value of this column ('' for overall only)")
    p.add_argument("--formats", type=_formats, default=["png", "pdf"], help="png,pdf (default) or a subset")
    p.add_argument("--title", help="figure title")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    p.set_defaults(func=run_plot)

    p = sub.add_parser("predict", help="score images end to end (decode → backbone → detector)",
                       epilog=PREDICT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detector", help="detector bundle directory")
    p.add_argument("source", help="image file, folder, manifest, parquet or hf:NAME")
    p.add_argument("--out", required=True, help="predictions file: .csv or .jsonl")
    p.add_argument("--backbone",
                   help="backbone spec overriding the detector's (e.g. a new path to its weights)")
    p.add_argument("--weights", metavar="PATH",
                   help="the detector's checkpoint file (or its folder) when it is not where it was recorded; "
                        "checked by sha256 (also: $CLIPDETECT_WEIGHTS)")
    p.add_argument("--force", action="store_true", help="accept a backbone whose identity differs")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="decode processes; 0 decodes in the main process (default: CPU count, max 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (GPU number N) or mps (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="backbone precision (fp16 needs a GPU; default fp32)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--caption-template", help="captions for text features, e.g. 'a photo of a {cifar_class}'")
    p.add_argument("--source-split", "--split", dest="split",
                   help="the source's own split to read (a hub split such as train or validation; default: the source's); not a cache split")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_limit_args(p)
    p.set_defaults(func=run_predict)

    p = sub.add_parser("calibrate", help="threshold at a target FPR (validation reals) + temperature",
                       epilog=CALIBRATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detector", help="detector bundle directory (re-saved in place unless --out)")
    p.add_argument("cache", help="the feature cache it was trained on (its validation split is used)")
    p.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate on validation reals")
    p.add_argument("--keep-threshold", action="store_true", help="only fit the temperature")
    p.add_argument("--temperature", action="store_true", help="also fit a temperature (NLL on validation)")
    p.add_argument("--split", default="val", help="calibration split (default val; test is refused)")
    p.add_argument("--out", help="save the calibrated bundle here instead of in place")
    _split_args(p)
    p.set_defaults(func=run_calibrate)

    p = sub.add_parser("protocol", help="leave-one-generator-out, robustness, format-bias, text-leakage",
                       epilog=PROTOCOL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ps = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    q = ps.add_parser("logo", help="leave one generator out: train without it, test on it", epilog=PROTOCOL_EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("cache", help="feature cache with a generator column")
    q.add_argument("--out", required=True, help="output folder (tables as JSON, CSV and Markdown)")
    q.add_argument("--feature-set", default="image", choices=["image", "text", "image+text"],
                   help="features the detectors are trained on (default image)")
    q.add_argument("--generators", type=_csv, help="held-out generators (default: every fake generator)")
    q.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    _train_args(q)
    q.set_defaults(func=run_logo)

    q = ps.add_parser("text-leakage", help="text-only vs image-only vs image+text detectors",
                      epilog=PROTOCOL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("cache", help="feature cache with image and caption embeddings")
    q.add_argument("--out", required=True, help="output folder (tables as JSON, CSV and Markdown)")
    q.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    _train_args(q)
    q.set_defaults(func=run_text_leakage)

    for name, helptext in (("robustness", "metric vs perturbation severity (re-extracts images)"),
                           ("format-bias", "re-encode both classes identically + format-only baseline")):
        q = ps.add_parser(name, help=helptext, epilog=PROTOCOL_EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("detectors", type=_csv, help="DIR[,DIR...] or NAME=DIR,... (same backbone)")
        q.add_argument("source", help="the images the cache was extracted from (folder, parquet, ...)")
        q.add_argument("--cache", required=True,
                       help="the detectors' cache: held-out keys come from its split")
        q.add_argument("--split", default="test", help="split whose keys are sampled (default test)")
        q.add_argument("--n-real", type=int, default=50, help="real images sampled from the split (default 50)")
        q.add_argument("--n-fake", type=int, default=50, help="fake images sampled from the split (default 50)")
        q.add_argument("--out", required=True, help="report folder")
        q.add_argument("--work", help="folder for the per-condition caches (default OUT/caches)")
        q.add_argument("--seed", type=int, default=0, help="sampling / noise / bootstrap seed")
        q.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
        q.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
        q.add_argument("--workers", type=int, default=default_workers(),
                       help="decode processes; 0 decodes in the main process (default: CPU count, max 8)")
        q.add_argument("--backbone",
                       help="backbone spec overriding the detectors' (must match their identity)")
        q.add_argument("--formats", type=_formats, default=["png", "pdf"], help="figure formats (default png,pdf)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
        _split_args(q)
        if name == "robustness":
            q.add_argument("--perturb", action="append", type=_perturb, metavar="NAME=S1,S2",
                           help="perturbation and severities (repeatable; default: all, 3-4 each)")
            q.add_argument("--metric", default="auc", help="metric plotted against severity (default auc)")
            q.set_defaults(func=run_robustness)
        else:
            q.add_argument("--format", default="JPEG", choices=["JPEG", "PNG"], help="common encoding")
            q.add_argument("--quality", type=int, default=90, help="JPEG quality of the common encoding")
            q.add_argument("--size", type=int, help="resize every image to SIZE x SIZE first")
            q.add_argument("--folds", type=int, default=5, help="folds of the format-only baseline")
            q.set_defaults(func=run_format_bias)


# ------------------------------------------------------------------ handlers
def run_evaluate(args) -> int:
    from clipdetect.eval.evaluate import baseline_probe, evaluate_detector

    if args.n_boot < 0:
        raise CLIError(f"--n-boot must be >= 0, got {args.n_boot}")
    from clipdetect.eval.protocols import load_detectors

    specs = _csv(args.detector)
    several = len(specs) > 1
    dets, cache = load_detectors(specs), _open_cache(args.cache)
    reports = {}
    kw = dict(split=args.split, by=args.by, n_boot=args.n_boot, seed=args.seed, val=args.val_fraction,
              test=args.test_fraction, split_seed=args.split_seed)
    for name, det in dets.items():
        try:
            report = evaluate_detector(det, cache, names={"detector": name if several else args.detector,
                                                          "cache": args.cache}, **kw)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        reports[name] = report
        if args.out:
            out = Path(args.out) / name if several else Path(args.out)
            paths = report.save(out)
            if args.save_scores:
                report.scores.to_csv(out / "scores.csv", index=False)
            logger.info("wrote %s", ", ".join(str(p) for p in paths))
        print((f"### {name}\n\n" if several else "") + report.to_markdown())
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
        _print_comparison(reports, args, specs, reference)
    return 0


def _print_comparison(reports, args, specs, reference) -> None:
    from clipdetect.core.metrics import to_markdown
    from clipdetect.eval.evaluate import compare_reports
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
                   columns=columns, title=f"Detectors compared on `{args.cache}`, split `{args.split}`",
                   notes=notes)
    print(to_markdown(table, columns=[c for c in columns if c in table.columns], digits=4))
    print(notes)

def run_plot(args) -> int:
    from clipdetect.eval.evaluate import plot_detectors
    from clipdetect.eval.protocols import load_detectors

    paths = plot_detectors(load_detectors(args.detectors), _open_cache(args.cache), args.out,
                           split=args.split,
                           by=args.by or None, formats=args.formats, title=args.title,
                           dpi=args.dpi)
    print_json({"written": [str(p) for p in paths]})
    return 0


def run_predict(args) -> int:
    from clipdetect.core.device import check_device
    from clipdetect.models.predict import check_captions, open_predict_source, predict_source, resolve_backbone

    device = check_device(args.device)
    det = _load_detector(args.detector)
    source = open_predict_source(args.source, caption_template=args.caption_template, split=args.split)
    check_captions(det, source)
    backbone = resolve_backbone(det, args.backbone, force=args.force, device=device,
                                precision=args.precision, weights=args.weights)
    summary = predict_source(det, source, args.out, backbone=backbone, batch_size=args.batch_size,
                             workers=args.workers, limit=args.limit, max_pixels=args.max_pixels,
                             max_aspect=args.max_aspect, progress=not args.no_progress)
    print_json(summary.to_dict())
    return 0


def run_calibrate(args) -> int:
    from clipdetect.eval.calibrate import calibrate_detector

    if not args.temperature and args.keep_threshold:
        raise CLIError("nothing to do: --keep-threshold without --temperature")
    det = _load_detector(args.detector)
    result = calibrate_detector(det, _open_cache(args.cache), target_fpr=None if args.keep_threshold
                                else args.target_fpr, temperature=args.temperature, split=args.split,
                                val=args.val_fraction, test=args.test_fraction, split_seed=args.split_seed)
    path = det.save(args.out or args.detector)
    print_json({"saved": str(path), **result.to_dict()})
    return 0


def _keys_source(args):
    from clipdetect.eval.evaluate import split_params
    from clipdetect.data.perturb import subset_source
    from clipdetect.eval.protocols import heldout_keys, load_detectors
    from clipdetect.data.registry import open_source

    dets = load_detectors(args.detectors)
    cache = _open_cache(args.cache)
    first = next(iter(dets.values()))
    first.check_backbone(cache.backbone)
    params = split_params(first, val=args.val_fraction, test=args.test_fraction, seed=args.split_seed)
    keys = heldout_keys(cache, n_real=args.n_real, n_fake=args.n_fake, split=args.split, seed=args.seed,
                        val=params.val, test=params.test, split_seed=params.seed)
    source = subset_source(open_source(args.source), keys, name=f"{Path(args.cache).name}:{args.split}")
    backbone = None
    if args.backbone:
        from clipdetect.models.predict import resolve_backbone

        backbone = resolve_backbone(first, args.backbone)
    config = {"detectors": args.detectors, "source": args.source, "cache": args.cache, "split": args.split,
              "n_real": args.n_real, "n_fake": args.n_fake, "seed": args.seed, "n_boot": args.n_boot,
              "val": params.val, "test": params.test, "split_seed": params.seed}
    return dets, source, backbone, config


def run_robustness(args) -> int:
    from clipdetect.eval.plots import plot_metric_curves, save_figure
    from clipdetect.eval.protocols import SUMMARY_METRICS, save_table, robustness_sweep, sweep_curves

    dets, source, backbone, config = _keys_source(args)
    perturbations = dict(args.perturb) if args.perturb else None
    table = robustness_sweep(dets, source, args.work or Path(args.out) / "caches",
                             perturbations=perturbations, seed=args.seed, n_boot=args.n_boot,
                             batch_size=args.batch_size, workers=args.workers,
                             backbone=backbone, progress=not args.no_progress)
    config["perturbations"] = perturbations or "default"
    save_table(table, args.out, "robustness", config=config,
               columns=["detector", "perturbation", "severity", "n", *SUMMARY_METRICS],
               title=f"Robustness: {len(source.samples)} held-out images per condition",
               notes="`clean` = the unperturbed images (decoded, re-encoded losslessly). Severity units: "
                     "jpeg = quality, resize = scale factor, blur = sigma (px), crop = kept side fraction, "
                     "noise = sigma (0-255). 95% bootstrap CIs in brackets.")
    fig = plot_metric_curves(sweep_curves(table), y=args.metric, style="detector" if len(dets) > 1 else None)
    paths = save_figure(fig, Path(args.out) / f"robustness_{args.metric.replace('@', '_at_')}",
                        formats=args.formats)
    print_json({"rows": len(table), "figures": [str(p) for p in paths]})
    return 0


def run_format_bias(args) -> int:
    from clipdetect.eval.protocols import SUMMARY_METRICS, cache_format_baseline, format_bias_control, save_table

    dets, source, backbone, config = _keys_source(args)
    res = format_bias_control(dets, source, args.work or Path(args.out) / "caches", size=args.size,
                              fmt=args.format,
                              quality=args.quality, seed=args.seed, n_boot=args.n_boot, folds=args.folds,
                              batch_size=args.batch_size, workers=args.workers, backbone=backbone,
                              progress=not args.no_progress)
    config.update(format=args.format, quality=args.quality, size=args.size)
    save_table(res["detectors"], args.out, "format_bias", config=config,
               columns=["detector", "encoding", "n", *SUMMARY_METRICS, "delta_auc"],
               title="Format-bias control: the same images, original vs identical re-encoding")
    cache_base = cache_format_baseline(_open_cache(args.cache), n_boot=args.n_boot, seed=args.seed)
    fmt = res["format_only"]
    save_table(fmt, args.out, "format_bias_format_only", config={**config, "cache_meta_baseline": cache_base},
               columns=["encoding", "features", "n", "auc", "acc@0.5"],
               title="Format-only baseline: label predicted from container metadata alone (cross-validated)",
               notes=f"Cache-metadata baseline (width/height/format/mode; fit on train, scored on test): "
                     f"AUC {cache_base['auc']:.3f}, accuracy {cache_base['acc@0.5']:.3f} "
                     f"(n = {cache_base['n']}).")
    print_json({"detectors": json.loads(res["detectors"].to_json(orient="records")),
                "format_only": json.loads(fmt.to_json(orient="records")), "cache_meta_baseline": cache_base})
    return 0


def run_logo(args) -> int:
    from clipdetect.eval.protocols import SUMMARY_METRICS, leave_one_generator_out, save_table

    cache = _open_cache(args.cache)
    config = _train_config(args)
    table = leave_one_generator_out(cache, feature_set=args.feature_set, config=config,
                                    generators=args.generators,
                                    n_boot=args.n_boot)
    save_table(table, args.out, "logo", config={"cache": args.cache, "feature_set": args.feature_set,
                                                "train_config": config.to_dict()},
               columns=["held_out", "n_train", "n_real", "n_fake", *SUMMARY_METRICS, "in_auc", "auc_drop"],
               title="Leave one generator out: held-out generator's fakes vs test reals",
               notes="`in_auc`: the same detector on the test fakes of the generators it was trained on.")
    print(table.to_string(index=False))
    return 0


def run_text_leakage(args) -> int:
    from clipdetect.eval.protocols import SUMMARY_METRICS, save_table, text_leakage_audit

    cache = _open_cache(args.cache)
    config = _train_config(args)
    res = text_leakage_audit(cache, config=config, n_boot=args.n_boot)
    caps = res["captions"]
    save_table(res["table"], args.out, "text_leakage",
               config={"cache": args.cache, "captions": caps, "train_config": config.to_dict()},
               columns=["features", "n_real", "n_fake", *SUMMARY_METRICS],
               title="Text-leakage audit: what the captions alone give away",
               notes=f"Test captions: {caps['unique_real_captions']} distinct among reals, "
                     f"{caps['unique_fake_captions']} among fakes; "
                     f"{caps['fakes_with_a_real_caption']:.1%} of "
                     f"fakes share a caption with some real. A text-only AUC well above 0.5 means the "
                     f"caption channel leaks the label.")
    print(res["table"].to_string(index=False))
    return 0
