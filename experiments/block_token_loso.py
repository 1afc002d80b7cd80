"""One per-block token against the final embedding on unseen sources (leave-one-source-out).

On the corpus's own test split the CLS token after block 8 of ViT-B/16 separates the classes
better than the final embedding (logistic probe 0.988 vs 0.947). This asks whether that holds on
sources the detector never saw, on the original files and on the normalised copies (256² JPEG q90)
the benchmark's targets use. Folds are ``clipdetect benchmark``'s (:func:`plan_folds`, protocol
``loso``, evaluation view ``norm:256:90``); in each, on the ``orig`` training rows, with the same
head and schedule (``--set``-style overrides batch 256, 300 steps, seed 0):

* ``final``: the paper head on the cached final embedding (the benchmark's baseline);
* ``token``: the paper head on the token (``--token block8``), standardised per dimension with
  the training rows' statistics and L2-normalised (``corpus_distill.token_head_logits``; what
  ``distill --target block8`` imitates).

Each fold prints its four AUCs (final / token on the normalised view, then on the original files
of the same images) as it finishes; the mean and the number of folds where the token wins are
written to ``experiments/results/general/TOKEN_token_loso.json``. One seed, no CIs: a screen, not
the benchmark.

    CLIPDETECT_DATA=/work/data python experiments/block_token_loso.py --token block8
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from clipdetect import Detector, FeatureCache
from clipdetect.eval.benchmark import BenchmarkConfig, plan_folds
from clipdetect.models.train import TrainConfig
from common import RESULTS, data_root, save_json
from corpus_distill import token_head_logits


def fold_aucs(cache, fold, token: str, train: dict, view: np.ndarray, orig_of: dict, keys: np.ndarray) -> list:
    y = cache.labels()
    tr, va = fold.train[view[fold.train] == "orig"], fold.val[view[fold.val] == "orig"]
    te, te_o = fold.test, np.array([orig_of[k] for k in keys[fold.test]])
    final = Detector.fit_rows(cache, tr, va, feature_set="image", config=TrainConfig(**train))
    tok_te, tok_o = token_head_logits(cache, tr, va, token, te, te_o, config=TrainConfig(**train))
    return [roc_auc_score(y[te], final.logits(cache.features("image", te))), roc_auc_score(y[te], tok_te),
            roc_auc_score(y[te_o], final.logits(cache.features("image", te_o))), roc_auc_score(y[te_o], tok_o)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help="the corpus cache extracted with --layers --views (default "
                    "$CLIPDETECT_DATA/caches/corpus-b16)")
    ap.add_argument("--token", default="block8")
    ap.add_argument("--max-folds", type=int, help="stop after this many folds")
    args = ap.parse_args(argv)
    cache = FeatureCache(args.cache or data_root() / "caches" / "corpus-b16")
    train = {"batch_size": 256, "steps": 300, "seed": 0}
    folds = plan_folds(cache, BenchmarkConfig(cache=str(cache.root), protocols=["loso"], variants=["baseline"],
                                              train=train), "norm:256:90")[:args.max_folds]
    view = cache.columns("view")["view"].astype(str).to_numpy()
    keys = cache.meta["key"].astype(str).to_numpy()
    orig_of = {k: i for i, (k, v) in enumerate(zip(keys, view)) if v == "orig"}
    rows = {}
    for fold in folds:
        rows[fold.held_out] = fold_aucs(cache, fold, args.token, train, view, orig_of, keys)
        print(fold.held_out, np.round(rows[fold.held_out], 3), flush=True)
    r = np.array(list(rows.values()))
    summary = {name: {"final": float(r[:, i].mean()), args.token: float(r[:, i + 1].mean()),
                      "difference": float((r[:, i + 1] - r[:, i]).mean()),
                      "token_wins": int((r[:, i + 1] > r[:, i]).sum())}
               for name, i in (("norm:256:90", 0), ("orig", 2))}
    doc = {"token": args.token, "folds": len(rows), "per_fold": {k: dict(zip(
        ["final_norm", "token_norm", "final_orig", "token_orig"], map(float, v))) for k, v in rows.items()},
        "mean": summary}
    save_json(RESULTS / "general" / f"{args.token}_token_loso.json", doc)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
