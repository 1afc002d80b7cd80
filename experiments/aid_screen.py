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

Per-fold AUCs print as each fold finishes; means, the mean differences to ``views`` and to
``baseline``, and folds won go to ``experiments/results/general/aid_screen[_TAG].json``
(:mod:`loso_screen`: a screen chooses what to run through ``clipdetect benchmark --seeds``; it
is not evidence on its own).

    CLIPDETECT_DATA=/work/data python experiments/aid_screen.py --variants center,pc8,noise,bce
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from clipdetect import Detector
from clipdetect.models.train import TrainConfig
from loso_screen import TRAIN, add_screen_args, load, run_folds, save, summarise, unit
from nuisance_loso import project

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
    ap.add_argument("--variants", default="center,noise,bce,wd,drop", help="comma-separated, see above")
    add_screen_args(ap)
    args = ap.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    bad = [n for n in names if n not in OVERRIDES and n not in ("center", "noise")
           and not (n.startswith("pc") and n[2:].isdigit())]
    if bad:
        raise SystemExit(f"unknown variants {bad}: use center, pcK, noise or one of {sorted(OVERRIDES)}")
    cache, folds, view, emb = load(args)
    rows = run_folds(folds, lambda fold: fold_aucs(cache, fold, emb, view, names, args.seed))
    save("aid_screen", args, rows, summarise(rows, refs=("views", "baseline")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
