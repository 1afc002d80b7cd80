"""How much of a benchmark delta is the training seed? Pairs two ``clipdetect benchmark`` runs
that differ only in ``--seed`` (same cache, folds and test images; their ``scores.csv``).

    python experiments/benchmark_seeds.py RUN_SEED0 RUN_SEED1 --variant degraded [--out seeds.json]

For each evaluation view it prints the mean over folds of the AUC difference with a 95 %
paired bootstrap CI (the benchmark's own method: stratified resamples per fold, averaged over
folds), for: the baseline of run 2 against the baseline of run 1 (the same detector, another
seed: what training noise alone gives), the variant against the baseline in each run, and in
both runs averaged (each fold's difference and each bootstrap draw averaged over the two seeds).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from clipdetect.eval.benchmark_report import delta_tables
from clipdetect.eval.compare import paired_auc_draws


def mean_delta(pairs, folds, n_boot: int = 1000):
    """Mean over ``folds`` of AUC(x) − AUC(y) for each (x_frame, x_col, y_frame, y_col) in ``pairs``,
    averaged over the pairs, with its 95 % bootstrap interval: each fold's AUCs and bootstrap draws
    are averaged over the pairs, then aggregated over folds as the benchmark does (:func:`delta_tables`)."""
    draws = {}
    for i, fold in enumerate(folds):
        per = []
        for X, xc, Y, yc in pairs:
            fx, fy = X[X.held_out == fold].sort_values("key"), Y[Y.held_out == fold].sort_values("key")
            if not (np.array_equal(fx.key.values, fy.key.values) and np.array_equal(fx.label.values, fy.label.values)):
                raise ValueError(f"fold {fold!r}: the runs scored different images; compare runs of one cache and plan")
            per.append(paired_auc_draws(fx.label.values, fx[xc].values, fy[yc].values, n_boot=n_boot, seed=i))
        draws[("seeds", fold, "x", "y", "")] = tuple(np.mean([np.asarray(p[k]) for p in per], axis=0) for k in range(3))
    mean = delta_tables(draws)[1].iloc[0]
    return float(mean.mean_delta_auc), float(mean.lo), float(mean.hi)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", help="benchmark folder (with scores.csv) of the first seed")
    p.add_argument("run_b", help="benchmark folder of the second seed")
    p.add_argument("--variant", required=True, help="the variant to compare with the baseline")
    p.add_argument("--baseline", default="baseline")
    p.add_argument("--protocol", default="loso")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args(argv)
    a, b = (pd.read_csv(Path(d) / "scores.csv") for d in (args.run_a, args.run_b))
    a, b = a[a.protocol == args.protocol], b[b.protocol == args.protocol]
    v, base, out = args.variant, args.baseline, {}
    for view in sorted(set(a.view)):
        A, B = a[a.view == view], b[b.view == view]
        folds = sorted(set(A.held_out) & set(B.held_out))
        comps = {f"{base}, second seed vs first": [(B, base, A, base)],
                 f"{v} vs {base}, first seed": [(A, v, A, base)],
                 f"{v} vs {base}, second seed": [(B, v, B, base)],
                 f"{v} vs {base}, both seeds averaged": [(A, v, A, base), (B, v, B, base)]}
        for label, pairs in comps.items():
            m, lo, hi = mean_delta(pairs, folds, args.n_boot)
            out[f"{view}: {label}"] = {"delta_auc": m, "lo": lo, "hi": hi, "folds": len(folds)}
            print(f"{view:12s} {label:45s} {m:+.4f} [{lo:+.4f}, {hi:+.4f}]  ({len(folds)} folds)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
