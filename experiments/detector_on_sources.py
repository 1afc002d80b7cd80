"""Score a detector on the images of chosen sources of a cache, as a user's new collections.

    python experiments/detector_on_sources.py general-b16 $CLIPDETECT_DATA/caches/corpus-b16 \\
        --sources kodak,dlib,spf2 --out experiments/results/general/new_sources.json

For each view asked (default: ``norm:256:90`` when the cache has it, and ``orig``): AUC with a
95% bootstrap CI over the chosen sources' images, and, at the detector's own threshold, the
share of each source's real photos called fake (FPR) and of its generated images caught (TPR).
Nothing is trained: this is how the detector as shipped does on collections it never saw (the
sources must not be among those it was trained on; the script refuses ones its card lists).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict

import numpy as np
import pandas as pd

from clipdetect.core.io import write_json
from clipdetect.core.metrics import binary_metrics, bootstrap_ci
from clipdetect.core.provenance import provenance
from clipdetect.features.cache import FeatureCache
from clipdetect.models.detector import Detector


def per_view(det: Detector, cache: FeatureCache, rows: np.ndarray, meta: pd.DataFrame, n_boot: int) -> Dict[str, Any]:
    y = cache.labels(rows)
    logits = np.asarray(det.logits(det.features(cache, rows)), dtype=np.float64)
    called = det.calibration.probability(logits) > det.threshold
    out: Dict[str, Any] = {"n_real": int((y == 0).sum()), "n_fake": int(y.sum())}
    if 0 < y.sum() < len(y):
        out.update(auc=binary_metrics(y, logits, scores_are_probs=False)["auc"],
                   auc_ci=list(bootstrap_ci(y, logits, "auc", n_boot=n_boot, scores_are_probs=False)))
    out["fpr"] = float(called[y == 0].mean()) if (y == 0).any() else None
    out["tpr"] = float(called[y == 1].mean()) if (y == 1).any() else None
    src = meta["source"].to_numpy()
    out["per_source"] = {s: {"n": int((src == s).sum()), "label": "real" if (y[src == s] == 0).all() else
                             "fake" if (y[src == s] == 1).all() else "both",
                             "called_fake": float(called[src == s].mean())} for s in sorted(set(src))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detector", help="bundle folder or shipped name")
    p.add_argument("cache", help="cache with source and view columns")
    p.add_argument("--sources", required=True, help="comma-separated sources to score")
    p.add_argument("--views", help="comma-separated views (default norm:256:90 if present, and orig)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", required=True, help="results JSON")
    args = p.parse_args(argv)
    det, cache = Detector.load(args.detector), FeatureCache(args.cache)
    wanted = [s for s in args.sources.split(",") if s]
    trained = {s["source"] for s in ((det.extra or {}).get("card") or {}).get("training", {}).get("sources", [])}
    if set(wanted) & trained:
        p.error(f"the detector was trained on {sorted(set(wanted) & trained)}")
    meta = cache.columns("source", "view")
    views = args.views.split(",") if args.views else [v for v in ("norm:256:90", "orig") if v in set(meta.view)]
    result = {"detector": args.detector, "threshold": det.threshold, "sources": wanted, "views": {}}
    for view in views:
        rows = np.flatnonzero(meta.source.isin(wanted).to_numpy() & (meta.view == view).to_numpy())
        result["views"][view] = per_view(det, cache, rows, meta.iloc[rows], args.n_boot)
        r = result["views"][view]
        print(f"{view}: {r['n_real']} real, {r['n_fake']} fake; AUC {r.get('auc', float('nan')):.3f} "
              f"{r.get('auc_ci')}; FPR {r['fpr']}; TPR {r['tpr']}")
    write_json(args.out, {**result, "provenance": provenance()})
    print(json.dumps({v: {k: r[k] for k in ("fpr", "tpr")} for v, r in result["views"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
