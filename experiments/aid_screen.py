"""Screen: cheap training aids on the final embedding, leave-one-source-out, one seed per run.

Every variant trains the paper head on the fold's training rows of every view (the benchmark's
``views`` variant, the shipped detector's recipe) and changes one thing; ``baseline`` is the
benchmark's baseline (original files only) and ``views`` the reference the others are read
against. Folds are ``clipdetect benchmark``'s (:func:`plan_folds`, protocol ``loso``), scored on
the held-out source's normalised copies (``norm:256:90``). Variants (``--variants``):

* ``center``: subtract the training rows' mean embedding and L2-normalise again (at test time
  too), so the head works on the directions images differ along rather than on CLIP's common
  offset;
* ``pcK``: also project out the top ``K`` principal directions of the training embeddings
  (mostly subject matter), so that the head cannot rank by what an image shows;
* ``noise``: every training row once more with Gaussian noise of half the per-dimension spread
  of the training embeddings (a smoother boundary in feature space);
* ``bce``: plain binary cross-entropy instead of CVaR + AUC;
* ``wd``: weight decay 0.1 instead of 0.01; ``drop``: dropout 0.6 instead of 0.335;
* ``short``: 100 optimiser steps instead of 300.

Per-fold AUCs print as each fold finishes; means, the mean difference to ``views`` and to
``baseline``, and folds won go to ``experiments/results/general/aid_screen[_TAG].json``. A screen
chooses what to run through ``clipdetect benchmark --seeds``; it is not evidence on its own.

    CLIPDETECT_DATA=/work/data python experiments/aid_screen.py --variants center,pc8,noise,bce
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from clipdetect import Detector, FeatureCache
from clipdetect.eval.benchmark import BenchmarkConfig, plan_folds
from clipdetect.models.train import TrainConfig
from common import RESULTS, data_root, save_json
from nuisance_loso import EVAL_VIEW, project, unit

TRAIN = {"batch_size": 256, "steps": 300}
OVERRIDES = {"bce": {"loss": "bce"}, "wd": {"weight_decay": 0.1}, "drop": {"dropout": 0.6},
             "short": {"steps": 100}}


def transform(name: str, x_train: np.ndarray):
    """The feature map of variant ``name``, fitted on the training embeddings only."""
    if name == "center" or name.startswith("pc"):
        mu = x_train.mean(0)
        if name == "center":
            return lambda x: unit(x - mu)
        k = int(name[2:])
        _, _, vt = np.linalg.svd(x_train - mu, full_matrices=False)
        u = vt[:k].T
        return lambda x: project(x - mu, u)
    return lambda x: x


def augment(name: str, x: np.ndarray, y: np.ndarray, seed: int):
    if name != "noise":
        return x, y
    rng = np.random.default_rng(seed)
    noisy = unit(x + rng.normal(size=x.shape).astype(np.float32) * (0.5 * x.std(0)))
    return np.concatenate([x, noisy]), np.concatenate([y, y])


def fold_aucs(cache, fold, emb, view, names, seed) -> dict:
    y = cache.labels()
    va = fold.val[view[fold.val] == "orig"]
    te = fold.test
    out = {}
    for name in ["baseline", "views", *names]:
        tr = fold.train[view[fold.train] == "orig"] if name == "baseline" else fold.train
        f = transform(name, emb[tr])
        x, t = augment(name, f(emb[tr]), y[tr], seed)
        config = TrainConfig(**{**TRAIN, "seed": seed, **OVERRIDES.get(name, {})})
        det = Detector.fit(x, t, X_val=f(emb[va]), y_val=y[va], config=config)
        out[name] = roc_auc_score(y[te], det.logits(f(emb[te])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help="the corpus cache extracted with --views (default $CLIPDETECT_DATA/caches/corpus-b16)")
    ap.add_argument("--variants", default="center,pc8,noise,bce", help="comma-separated, see above")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-folds", type=int, help="stop after this many folds")
    ap.add_argument("--tag", default="", help="suffix of the result file")
    args = ap.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    bad = [n for n in names if n not in OVERRIDES and n not in ("center", "noise") and not n[2:].isdigit()]
    if bad:
        raise SystemExit(f"unknown variants {bad}: use center, pcK, noise or one of {sorted(OVERRIDES)}")
    cache = FeatureCache(args.cache or data_root() / "caches" / "corpus-b16")
    folds = plan_folds(cache, BenchmarkConfig(cache=str(cache.root), protocols=["loso"], variants=["baseline"],
                                              train=TRAIN), EVAL_VIEW)[:args.max_folds]
    view = cache.columns("view")["view"].astype(str).to_numpy()
    emb = unit(np.asarray(cache.features("image", np.arange(len(view))), dtype=np.float32))
    rows = {}
    for fold in folds:
        t0 = time.time()
        rows[fold.held_out] = fold_aucs(cache, fold, emb, view, names, args.seed)
        print(fold.held_out, f"{time.time() - t0:.0f}s", {k: round(v, 3) for k, v in rows[fold.held_out].items()},
              flush=True)
    r = {n: np.array([rows[f][n] for f in rows]) for n in rows[folds[0].held_out]}
    summary = {n: {"mean_auc": float(r[n].mean()), "vs_views": float((r[n] - r["views"]).mean()),
                   "vs_baseline": float((r[n] - r["baseline"]).mean()),
                   "folds_won_vs_views": int((r[n] > r["views"]).sum())} for n in r}
    doc = {"eval_view": EVAL_VIEW, "seed": args.seed, "train": TRAIN, "folds": len(rows), "per_fold": rows,
           "mean": summary}
    save_json(RESULTS / "general" / f"aid_screen{'_' + args.tag if args.tag else ''}.json", doc)
    for n, s in summary.items():
        print(f"{n:10s} {s['mean_auc']:.4f} vs views {s['vs_views']:+.4f} vs baseline {s['vs_baseline']:+.4f} "
              f"won {s['folds_won_vs_views']}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
