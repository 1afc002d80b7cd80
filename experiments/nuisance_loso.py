"""Screen: project out the directions along which degraded views move an embedding (leave-one-source-out).

A detector trained on the original files can lean on how a source stores its images (PNG against
JPEG, size, resampling): the benchmark's targets score normalised copies (256² JPEG q90), where
that cue is gone. The cache holds every training image also as degraded views, so the training
rows themselves show the directions a re-encode moves an embedding along: ``e(view) - e(orig)``
per image and view. Their top ``k`` principal directions (fitted on the fold's training images
only) span a "format" subspace; every embedding is projected onto its orthogonal complement and
L2-normalised again before the head sees it, in training and at test time alike.

Folds are ``clipdetect benchmark``'s (:func:`plan_folds`, protocol ``loso``, evaluation view
``norm:256:90``); every variant is the paper head with the same schedule (batch 256, 300 steps,
seed ``--seed``), fitted with :meth:`Detector.fit` on the same arrays:

* ``baseline``: the final embedding, ``orig`` training rows (the benchmark's baseline);
* ``views``: every view's training rows (the benchmark's ``views``);
* ``projK`` / ``views+projK``: the same after projecting out ``K`` format directions.

Each fold prints its AUCs on the held-out source's normalised copies as it finishes; the means,
the mean difference to the baseline and the folds won are written to
``experiments/results/general/nuisance_loso[_TAG].json``. One seed per run, no CIs: a screen.

    CLIPDETECT_DATA=/work/data python experiments/nuisance_loso.py --k 4,16
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from clipdetect import Detector
from clipdetect.models.train import TrainConfig
from loso_screen import TRAIN, add_screen_args, load, run_folds, save, summarise, unit


def format_directions(emb: np.ndarray, rows: np.ndarray, view: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """[D, k] orthonormal top principal directions of ``e(view) - e(orig)`` over the images of ``rows``."""
    orig = {keys[i]: i for i in rows if view[i] == "orig"}
    pairs = [(i, orig[keys[i]]) for i in rows if view[i] != "orig" and keys[i] in orig]
    if not pairs:
        raise SystemExit("no training image has both an orig row and a degraded view: extract with --views")
    diff = np.stack([emb[i] - emb[j] for i, j in pairs])
    _, _, vt = np.linalg.svd(diff - diff.mean(0), full_matrices=False)
    return vt[:k].T


def project(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return unit(x - (x @ u) @ u.T)


def fold_aucs(cache, fold, emb, view, keys, ks, config) -> dict:
    y = cache.labels()
    tr_all, va = fold.train, fold.val[view[fold.val] == "orig"]
    tr_orig = tr_all[view[tr_all] == "orig"]
    te = fold.test
    out = {}
    for name, tr in (("baseline", tr_orig), ("views", tr_all)):
        det = Detector.fit(emb[tr], y[tr], X_val=emb[va], y_val=y[va], config=config)
        out[name] = roc_auc_score(y[te], det.logits(emb[te]))
    for k in ks:
        u = format_directions(emb, tr_all, view, keys, k)
        for name, tr in ((f"proj{k}", tr_orig), (f"views+proj{k}", tr_all)):
            det = Detector.fit(project(emb[tr], u), y[tr], X_val=project(emb[va], u), y_val=y[va], config=config)
            out[name] = roc_auc_score(y[te], det.logits(project(emb[te], u)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="4,16", help="numbers of format directions to project out (comma-separated)")
    add_screen_args(ap)
    args = ap.parse_args(argv)
    cache, folds, view, emb = load(args)
    keys = cache.meta["key"].astype(str).to_numpy()
    ks = [int(k) for k in args.k.split(",") if k]
    config = TrainConfig(**TRAIN, seed=args.seed)
    rows = run_folds(folds, lambda fold: fold_aucs(cache, fold, emb, view, keys, ks, config))
    save("nuisance_loso", args, rows, summarise(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
