"""``clipdetect protocol logo | text-leakage | robustness | format-bias``: the evaluation protocols."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipdetect.cli.main import config_override, emit
from clipdetect.cli.options import (add_command, add_force_arg, add_split_args, add_workers_arg,
                                    check_new_output, csv_list, figure_formats, open_cache)
from clipdetect.core.tables import records, to_markdown

PROTOCOL_EXAMPLES = """examples:
  clipdetect protocol logo features/d3 --out runs/logo --set epochs=8
  clipdetect protocol text-leakage features/d3-text --out runs/text
  clipdetect protocol robustness paper=runs/det,linear=runs/lin ../shared/data/cifake_dev.parquet \\
      --cache features/cifake-b16 --n-real 50 --n-fake 50 --perturb jpeg=90,50 --perturb blur=1,2 \\
      --out runs/rob
  clipdetect protocol format-bias runs/det ../shared/data/cifake_dev.parquet --cache features/cifake-b16 \\
      --n-real 100 --n-fake 100 --format JPEG --quality 90 --out runs/fmt"""


def _perturb(text: str):
    name, sep, values = text.partition("=")
    try:
        sev = [float(v) for v in csv_list(values)]
    except ValueError:
        sev = []
    if not sep or not sev:
        raise argparse.ArgumentTypeError(f"--perturb wants NAME=S1,S2,... (e.g. jpeg=90,50), got {text!r}")
    return name, sev


def _cache_and_config(args):
    """``logo`` and ``text-leakage``: the output checked, the cache opened, the TrainConfig read."""
    from clipdetect.models.train import TrainConfig

    check_new_output(args.out, args.force)
    cache = open_cache(args.cache)
    fields = json.loads(Path(args.train_config).read_text()) if args.train_config else {}
    return cache, TrainConfig.from_dict({**fields, **dict(args.set or [])})


def add_parser(sub) -> None:
    p = add_command(sub, "protocol", epilog=PROTOCOL_EXAMPLES)
    ps = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    _add_cache_protocols(ps)
    _add_image_protocols(ps)


def _add_cache_protocols(ps) -> None:
    """``logo`` and ``text-leakage``: detectors trained and tested on a cache."""
    for name, helptext, cache_help in (
            ("logo", "leave one generator out: train without it, test on it",
             "feature cache with a generator column"),
            ("text-leakage", "text-only vs image-only vs image+text detectors",
             "feature cache with image and caption embeddings")):
        q = add_command(ps, name, helptext, epilog=PROTOCOL_EXAMPLES)
        q.add_argument("cache", help=cache_help)
        q.add_argument("--out", required=True, help="output folder (tables as JSON, CSV and Markdown)")
        add_force_arg(q)
        if name == "logo":
            q.add_argument("--feature-set", default="image", choices=["image", "text", "image+text"],
                           help="features the detectors are trained on (default image)")
            q.add_argument("--generators", type=csv_list,
                           help="held-out generators (default: every fake generator)")
        q.add_argument("--n-boot", type=int, default=1000,
                       help="bootstrap resamples for the CIs (default 1000)")
        q.add_argument("--train-config",
                       help="JSON file of TrainConfig fields (default: the paper's recipe)")
        q.add_argument("--set", action="append", type=config_override, metavar="FIELD=VALUE",
                       help="override a TrainConfig field, e.g. --set epochs=8 --set head=linear "
                            "(repeatable)")
        q.set_defaults(func=run_logo if name == "logo" else run_text_leakage)


def _add_image_protocols(ps) -> None:
    """``robustness`` and ``format-bias``: held-out images re-extracted under controlled changes."""
    for name, helptext in (("robustness", "metric vs perturbation severity (re-extracts images)"),
                           ("format-bias", "re-encode both classes identically + format-only baseline")):
        q = add_command(ps, name, helptext, epilog=PROTOCOL_EXAMPLES)
        q.add_argument("detectors", type=csv_list, help="DIR[,DIR...] or NAME=DIR,... (same backbone)")
        q.add_argument("source", help="the images the cache was extracted from (folder, parquet, ...)")
        q.add_argument("--cache", required=True,
                       help="the detectors' cache: held-out keys come from its split")
        q.add_argument("--split", default="test", help="split whose keys are sampled (default test)")
        q.add_argument("--n-real", type=int, default=50, help="real images sampled from the split (default 50)")
        q.add_argument("--n-fake", type=int, default=50, help="fake images sampled from the split (default 50)")
        q.add_argument("--out", required=True,
                       help="report folder; re-running the same command resumes there (the per-condition "
                            "caches are reused, the tables rewritten)")
        q.add_argument("--work", help="folder for the per-condition caches (default OUT/caches)")
        q.add_argument("--seed", type=int, default=0, help="sampling / noise / bootstrap seed")
        q.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
        q.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
        add_workers_arg(q)
        q.add_argument("--backbone",
                       help="backbone spec overriding the detectors' (must match their identity)")
        q.add_argument("--formats", type=figure_formats, default=["png", "pdf"],
                       help="figure formats (default png,pdf)")
        add_split_args(q)
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
def _keys_source(args):
    """Detectors, the held-out images of the cache's split as a source, the config to record,
    the cache (opened and verified once), and the options both image protocols take."""
    from clipdetect.eval.selection import split_params
    from clipdetect.data.perturb import subset_source
    from clipdetect.eval.protocols import heldout_keys, load_detectors
    from clipdetect.data.registry import open_source
    from clipdetect.models.predict import resolve_backbone

    dets = load_detectors(args.detectors)
    cache = open_cache(args.cache)
    first = next(iter(dets.values()))
    first.check_backbone(cache.backbone)
    params = split_params(first, val=args.val_fraction, test=args.test_fraction, seed=args.split_seed)
    keys = heldout_keys(cache, n_real=args.n_real, n_fake=args.n_fake, split=args.split, seed=args.seed,
                        val=params.val, test=params.test, split_seed=params.seed)
    source = subset_source(open_source(args.source), keys, name=f"{Path(args.cache).name}:{args.split}")
    kw = dict(work=args.work or Path(args.out) / "caches", seed=args.seed, n_boot=args.n_boot,
              batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
              backbone=resolve_backbone(first, args.backbone) if args.backbone else None)
    config = {"detectors": args.detectors, "source": args.source, "cache": args.cache, "split": args.split,
              "n_real": args.n_real, "n_fake": args.n_fake, "seed": args.seed, "n_boot": args.n_boot,
              "val": params.val, "test": params.test, "split_seed": params.seed}
    return dets, source, config, cache, kw


def run_robustness(args) -> int:
    from clipdetect.eval.plot_scores import plot_metric_curves
    from clipdetect.eval.plots import save_figure
    from clipdetect.eval.image_protocols import robustness_sweep, sweep_curves
    from clipdetect.eval.protocols import SUMMARY_METRICS, save_table

    dets, source, config, _, kw = _keys_source(args)
    perturbations = dict(args.perturb) if args.perturb else None
    table = robustness_sweep(dets, source, perturbations=perturbations, **kw)
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
    emit(args, {"rows": records(table), "figures": [str(p) for p in paths]},
         to_markdown(table, columns=["detector", "perturbation", "severity", "n", args.metric]) + "\nwrote "
         + ", ".join(str(p) for p in paths))
    return 0


def run_format_bias(args) -> int:
    from clipdetect.eval.image_protocols import format_bias_control
    from clipdetect.eval.protocols import SUMMARY_METRICS, cache_format_baseline, save_table

    dets, source, config, cache, kw = _keys_source(args)
    res = format_bias_control(dets, source, size=args.size, fmt=args.format, quality=args.quality,
                              folds=args.folds, **kw)
    config.update(format=args.format, quality=args.quality, size=args.size)
    save_table(res["detectors"], args.out, "format_bias", config=config,
               columns=["detector", "encoding", "n", *SUMMARY_METRICS, "delta_auc"],
               title="Format-bias control: the same images, original vs identical re-encoding")
    cache_base = cache_format_baseline(cache, n_boot=args.n_boot, seed=args.seed)
    fmt = res["format_only"]
    save_table(fmt, args.out, "format_bias_format_only", config={**config, "cache_meta_baseline": cache_base},
               columns=["encoding", "features", "n", "auc", "acc@0.5"],
               title="Format-only baseline: label predicted from container metadata alone (cross-validated)",
               notes=f"Cache-metadata baseline (width/height/format/mode; fit on train, scored on test): "
                     f"AUC {cache_base['auc']:.3f}, accuracy {cache_base['acc@0.5']:.3f} "
                     f"(n = {cache_base['n']}).")
    emit(args, {"detectors": records(res["detectors"]), "format_only": records(fmt),
                "cache_meta_baseline": cache_base},
         to_markdown(res["detectors"], columns=["detector", "encoding", "n", "auc", "delta_auc"]) + "\n\n"
         + to_markdown(fmt, columns=["encoding", "features", "n", "auc", "acc@0.5"]))
    return 0


def run_logo(args) -> int:
    from clipdetect.eval.protocols import SUMMARY_METRICS, leave_one_generator_out, save_table

    cache, config = _cache_and_config(args)
    table = leave_one_generator_out(cache, feature_set=args.feature_set, config=config,
                                    generators=args.generators, n_boot=args.n_boot)
    save_table(table, args.out, "logo", config={"cache": args.cache, "feature_set": args.feature_set,
                                                "train_config": config.to_dict()},
               columns=["held_out", "n_train", "n_real", "n_fake", *SUMMARY_METRICS, "in_auc", "auc_drop"],
               title="Leave one generator out: held-out generator's fakes vs test reals",
               notes="`in_auc`: the same detector on the test fakes of the generators it was trained on.")
    emit(args, {"rows": records(table)},
         to_markdown(table, columns=["held_out", "n_train", "n_real", "n_fake", "auc", "in_auc", "auc_drop"]))
    return 0


def run_text_leakage(args) -> int:
    from clipdetect.eval.protocols import SUMMARY_METRICS, save_table, text_leakage_audit

    cache, config = _cache_and_config(args)
    res = text_leakage_audit(cache, config=config, n_boot=args.n_boot)
    caps = res["captions"]
    save_table(res["table"], args.out, "text_leakage",
               config={"cache": args.cache, "captions": caps, "train_config": config.to_dict()},
               columns=["features", "n_real", "n_fake", *SUMMARY_METRICS],
               title="Text-leakage audit: what the captions alone give away",
               notes=f"Test captions: {caps['unique_real_captions']} distinct among reals, "
                     f"{caps['unique_fake_captions']} among fakes; "
                     f"{caps['fakes_with_a_real_caption']:.1%} of fakes share a caption with some real. A "
                     "text-only AUC well above 0.5 means the caption channel leaks the label.")
    emit(args, {"rows": records(res["table"]), "captions": caps},
         to_markdown(res["table"], columns=["features", "n_real", "n_fake", "auc", "ap"]))
    return 0
