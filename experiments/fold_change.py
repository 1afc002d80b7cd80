"""Per-fold AUC of two benchmark runs side by side: what a change of training data did to each fold.

    python experiments/fold_change.py BEFORE_DIR AFTER_DIR [--variants baseline,views] [--out F.json]

Each run's ``folds.csv`` (``clipdetect benchmark`` output) gives one AUC per fold, variant, view
and seed; the seeds are averaged. Only folds held out in both runs are compared. A fold's test
rows can differ between the runs even when its name does not (a source of photos only is
completed with the test split's generated images of every other source, and a larger corpus has
more of them), so read a difference as "the same held-out source, scored by a detector trained
on other data", not as a paired comparison on identical images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def fold_means(run: Path, variants, view: str) -> pd.DataFrame:
    f = pd.read_csv(run / "folds.csv")
    f = f[f.variant.isin(variants) & (f.view == view)]
    return f.groupby(["protocol", "held_out", "variant"]).auc.mean().unstack("variant")


def compare(before: Path, after: Path, variants, view: str) -> dict:
    a, b = fold_means(before, variants, view), fold_means(after, variants, view)
    shared = a.index.intersection(b.index)
    out = {"view": view, "shared_folds": len(shared), "only_after": sorted("/".join(k) for k in b.index.difference(a.index)),
           "mean": {}, "per_fold": {}}
    for v in variants:
        d = b.loc[shared, v] - a.loc[shared, v]
        out["mean"][v] = {"before": float(a.loc[shared, v].mean()), "after": float(b.loc[shared, v].mean()),
                          "change": float(d.mean()), "folds_up": int((d > 0).sum())}
    for key in shared:
        out["per_fold"]["/".join(key)] = {v: [round(float(a.loc[key, v]), 4), round(float(b.loc[key, v]), 4)]
                                          for v in variants}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--variants", default="baseline,views")
    ap.add_argument("--view", default="norm:256:90")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    res = compare(args.before, args.after, args.variants.split(","), args.view)
    for v, m in res["mean"].items():
        print(f"{v}: {m['before']:.3f} -> {m['after']:.3f} ({m['change']:+.3f}; {m['folds_up']} of "
              f"{res['shared_folds']} folds up)")
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
