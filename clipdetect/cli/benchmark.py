"""``clipdetect benchmark``: leave-one-source-out and leave-one-family-out, with ablations."""
from __future__ import annotations

import argparse

from clipdetect.cli.main import config_override, emit
from clipdetect.cli.options import (add_command, add_threads_arg, config_of, csv_list, open_cache,
                                    set_threads)

EXAMPLES = """examples:
  # a cache with source/family columns (a manifest's own), extracted with --layers --views default
  clipdetect benchmark features/corpus --out reports/benchmark
  # the ablation: each aid on its own, on leave-one-source-out only
  clipdetect benchmark features/corpus --out reports/ablation --protocols loso \\
      --variants baseline,layers,views,groups,fusion,layers+views,full
  # quicker: fewer bootstrap draws, shorter training, two held-out sources
  clipdetect benchmark features/corpus --out /tmp/b --n-boot 200 --set epochs=8 --only imagenet,srsets
  # is an aid's gain more than training noise? three seeds per variant, CIs over both
  clipdetect benchmark features/corpus --out reports/views3 --protocols loso --variants baseline,views --seeds 3
  # one more fold: the sources added last, held out together (train on the others)
  clipdetect benchmark features/corpus --out reports/new --protocols sets --hold-out new=kodak,dlib,spf2

Every fold trains each variant (and a logistic probe) without the held-out source or family,
picks epochs, calibration and threshold on the other sources' validation rows, and scores the
held-out images of the evaluation view (default norm:256:90 when extracted, else orig). The
summary gives mean AUC over folds, the mean paired AUC difference to the final-embedding MLP
(variant baseline) and to the probe with 95% CIs, and the false-positive rate on each held-out
source's real photos at the fold detector's own threshold."""


def hold_out_set(text: str):
    """``NAME=SOURCE,SOURCE,...`` → ``(NAME, [SOURCE, ...])``."""
    name, _, members = text.partition("=")
    sources = [m for m in members.split(",") if m]
    if not name or not sources:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=SOURCE,SOURCE,... (e.g. new=kodak,dlib)")
    return name, sources


def add_parser(sub) -> None:
    from clipdetect.eval.benchmark import PROTOCOLS, VARIANTS, BenchmarkConfig

    d = BenchmarkConfig()
    p = add_command(sub, "benchmark", epilog=EXAMPLES,
                    description="Generalisation to unseen sources and generator families, with paired CIs.")
    p.add_argument("cache", help="feature cache with 'source' and 'family' columns")
    p.add_argument("--out", required=True, help="folder for benchmark.md/.json, folds.csv, scores.csv")
    p.add_argument("--protocols", type=csv_list, default=d.protocols, help=f"of {', '.join(PROTOCOLS)} (default both)")
    p.add_argument("--variants", type=csv_list, default=d.variants,
                   help=f"detector variants, of {', '.join(VARIANTS)} (default {','.join(d.variants)}); "
                        "the probe is always fitted")
    p.add_argument("--eval-view", help="view the held-out images are scored in (default norm:256:90 if present)")
    p.add_argument("--also-views", type=csv_list, default=[],
                   help="score the same held-out images in these views too (no extra training), e.g. orig,aug")
    p.add_argument("--train-view", default=d.train_view, help="the view variants without 'views' train on")
    p.add_argument("--min-images", type=int, default=d.min_images,
                   help=f"hold out sources/families with at least this many images (default {d.min_images})")
    p.add_argument("--only", type=csv_list, help="hold out only these sources/families")
    p.add_argument("--hold-out", action="append", type=hold_out_set, metavar="NAME=SOURCE,SOURCE,...",
                   help="protocol 'sets': hold out these sources together as one fold named NAME (repeatable; "
                        "adds 'sets' to --protocols)")
    p.add_argument("--layers-width", type=int, default=d.layers_width, help="per-block heads' width (default 256)")
    p.add_argument("--ensemble-size", type=int, default=d.ensemble_size,
                   help=f"heads (seeds) averaged by the '...ensemble' variants (default {d.ensemble_size})")
    p.add_argument("--balance", choices=("source", "sqrt", "content"), default=d.balance,
                   help="how the '...balance' variants draw rows: 'source' = every source the same within its "
                        "class, 'sqrt' = a source as the square root of its size, 'content' = fakes and reals in "
                        f"the same proportion from every content cluster (default {d.balance})")
    p.add_argument("--noise", type=float, default=d.noise,
                   help="the '...noise' variants' feature noise: Gaussian, on half of every batch's rows, as a "
                        f"multiple of each feature's standard deviation (default {d.noise})")
    p.add_argument("--n-boot", type=int, default=d.n_boot, help="paired bootstrap draws per fold (default 1000)")
    p.add_argument("--seed", type=int, default=d.seed, help="training and bootstrap seed (default 0)")
    p.add_argument("--seeds", type=int, default=d.seeds,
                   help="train every variant with this many seeds (--seed, --seed+1, ...) in every fold: "
                        "differences are averaged over the seeds and their CIs also resample them, so a delta "
                        "smaller than one training run's noise is not called significant; N times the training "
                        f"time (default {d.seeds})")
    p.add_argument("--set", action="append", type=config_override, metavar="FIELD=VALUE",
                   help="a training config field for every variant, e.g. --set epochs=8 (repeatable)")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from clipdetect.core.provenance import provenance
    from clipdetect.eval.benchmark import BenchmarkConfig, run_benchmark
    from clipdetect.eval.benchmark_report import save_benchmark

    set_threads(args)
    cache = open_cache(args.cache)
    sets = dict(args.hold_out or [])
    protocols = list(args.protocols) + (["sets"] if sets and "sets" not in args.protocols else [])
    config = config_of(BenchmarkConfig, args, cache=str(args.cache), protocols=protocols,
                       hold_out_sets=sets, train=dict(args.set or []))
    prov = provenance()
    result = run_benchmark(cache, config, on_fold=lambda partial: save_benchmark(partial, args.out, prov))
    paths = save_benchmark(result, args.out, prov)
    emit(args, {"out": str(args.out), "files": [str(p) for p in paths],
                "summary": result["summary"].to_dict(orient="records")})
    return 0
