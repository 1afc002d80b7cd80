"""What the leave-one-source-out screens share (``aid_screen.py``, ``nuisance_loso.py``).

A screen trains the paper head on the folds of ``clipdetect benchmark`` (:func:`plan_folds`,
protocol ``loso``), scores the held-out source's normalised copies (``norm:256:90``) and reports
per-fold AUCs, their means and the folds won against a reference variant: one seed, no CIs. It
chooses what to run through ``clipdetect benchmark --seeds``; it is not evidence on its own.
"""
from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np

from clipdetect import FeatureCache
from clipdetect.eval.benchmark import BenchmarkConfig, plan_folds
from common import RESULTS, data_root, save_json

EVAL_VIEW = "norm:256:90"
#: the benchmark runs' schedule (``--set batch_size=256 --set steps=300``)
TRAIN = {"batch_size": 256, "steps": 300}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def add_screen_args(ap) -> None:
    ap.add_argument("--cache", help="the corpus cache extracted with --views (default $CLIPDETECT_DATA/caches/corpus-b16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-folds", type=int, help="stop after this many folds")
    ap.add_argument("--tag", default="", help="suffix of the result file")


def load(args):
    """``(cache, folds, view per row, unit image embedding per row)`` for a screen's ``args``."""
    cache = FeatureCache(args.cache or data_root() / "caches" / "corpus-b16")
    folds = plan_folds(cache, BenchmarkConfig(cache=str(cache.root), protocols=["loso"], variants=["baseline"],
                                              train=TRAIN), EVAL_VIEW)[:args.max_folds]
    view = cache.columns("view")["view"].astype(str).to_numpy()
    emb = unit(np.asarray(cache.features("image", np.arange(len(view))), dtype=np.float32))
    return cache, folds, view, emb


def run_folds(folds, fold_aucs: Callable) -> Dict[str, Dict[str, float]]:
    """``{held-out source: {variant: AUC}}``, printed fold by fold as ``fold_aucs(fold)`` returns."""
    rows = {}
    for fold in folds:
        t0 = time.time()
        rows[fold.held_out] = fold_aucs(fold)
        print(fold.held_out, f"{time.time() - t0:.0f}s", {k: round(v, 3) for k, v in rows[fold.held_out].items()},
              flush=True)
    return rows


def summarise(rows: Dict[str, Dict[str, float]], refs=("baseline",)) -> Dict[str, Dict[str, float]]:
    """Per variant: mean AUC, the mean difference to each of ``refs`` and the folds won against it."""
    r = {n: np.array([rows[f][n] for f in rows]) for n in next(iter(rows.values()))}
    out = {}
    for n in r:
        out[n] = {"mean_auc": float(r[n].mean())}
        for ref in refs:
            out[n][f"vs_{ref}"] = float((r[n] - r[ref]).mean())
            out[n][f"folds_won_vs_{ref}"] = int((r[n] > r[ref]).sum())
    return out


def save(name: str, args, rows, summary, **extra) -> None:
    doc = {"eval_view": EVAL_VIEW, "seed": args.seed, "train": TRAIN, "folds": len(rows), **extra,
           "per_fold": rows, "mean": summary}
    save_json(RESULTS / "general" / f"{name}{'_' + args.tag if args.tag else ''}.json", doc)
    for n, s in summary.items():
        print(n, {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()})
