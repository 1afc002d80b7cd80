"""How much detection signal each per-block token of the image tower holds, on the corpus's own split.

A logistic probe (standardised features, C = 0.1) per token of a cache extracted with ``--layers``
(``block1`` … ``blockL``, ``pre_proj``) and on the final embedding, trained on the ``orig`` rows of
the train split and scored on those of the test split (:func:`~clipdetect.features.splits.cache_splits`).
Why ``distill --arch clip --target block8`` cuts the teacher after block 8. Writes
``experiments/results/corpus_distill/block_token_probe.json``.

    CLIPDETECT_DATA=/work/data python experiments/block_token_probe.py
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from clipdetect import FeatureCache
from clipdetect.features.splits import cache_splits, view_rows
from common import RESULTS, data_root, save_json


def probe_auc(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray) -> float:
    scale = StandardScaler().fit(x[tr])
    model = LogisticRegression(C=0.1, max_iter=3000).fit(scale.transform(x[tr]), y[tr])
    return float(roc_auc_score(y[te], model.decision_function(scale.transform(x[te]))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help="a cache extracted with --layers (default $CLIPDETECT_DATA/caches/corpus-b16)")
    args = ap.parse_args(argv)
    cache = FeatureCache(args.cache or data_root() / "caches" / "corpus-b16")
    split = cache_splits(cache)
    orig = view_rows(cache, np.arange(len(cache)), ["orig"])
    tr, te = orig[split[orig] == "train"], orig[split[orig] == "test"]
    y = cache.labels()
    tokens = cache.embeddings("layers")
    aucs = {"final_embedding": probe_auc(cache.embeddings("image"), y, tr, te)}
    for i, name in enumerate(cache.layers["names"]):
        aucs[name] = probe_auc(tokens[:, i], y, tr, te)
        print(name, round(aucs[name], 4), flush=True)
    save_json(RESULTS / "corpus_distill" / "block_token_probe.json",
              {"train_rows": int(len(tr)), "test_rows": int(len(te)), "probe_auc": aucs})
    print("final embedding", round(aucs["final_embedding"], 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
