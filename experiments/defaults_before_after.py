"""Old training defaults vs the step-planned defaults vs a logistic-regression probe.

All detectors are trained on the bundled sample cache (clipdetect/sample_data/cifake-b16-sample, the first
2,048 CIFAKE rows) and scored on a held-out cache of CIFAKE rows the sample never saw,
extracted with the same backbone, e.g.

    python -m clipdetect extract held.parquet --out HELD --backbone ViT-B-16-quickgelu:/path/clip_b16.pt
    PYTHONPATH=. python experiments/defaults_before_after.py HELD --out experiments/results/defaults_before_after.json

Prints a markdown table: optimiser steps, held-out AUC with its 95% bootstrap CI, the paired
AUC difference to the probe (positive = better than the probe) and the held-out ECE.
"""
import argparse
import sys
import time

import numpy as np

from clipdetect.core.metrics import bootstrap_ci, expected_calibration_error
from clipdetect.eval.compare import paired_auc_difference
from clipdetect.features.cache import FeatureCache
from clipdetect.models.baseline import fit_probe_on_cache
from clipdetect.models.detector import Detector
from clipdetect.models.train import TrainConfig
from clipdetect.core.resources import SAMPLE_CACHE
from common import save_json

SAMPLE = SAMPLE_CACHE
RUNS = {
    "paper preset (old default: batch 2048, 32 epochs)": TrainConfig.preset("paper"),
    "new defaults (planned from the cache size)": TrainConfig(),
    "linear head, old README example (bce, no SAM, 10 epochs, batch 2048)":
        TrainConfig.preset("paper", head="linear", loss="bce", sam=False, epochs=10),
    "linear head, new defaults (bce, no SAM)": TrainConfig(head="linear", loss="bce", sam=False),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heldout", help="cache of rows the training cache never saw (same backbone)")
    ap.add_argument("--train-cache", default=str(SAMPLE))
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    train_cache, held = FeatureCache(args.train_cache), FeatureCache(args.heldout)
    train_keys = set(train_cache.meta.key)
    rows = np.array([i for i, k in enumerate(held.meta.key) if k not in train_keys], dtype=np.int64)
    y = held.labels(rows)
    t0 = time.perf_counter()
    probe = fit_probe_on_cache(train_cache)
    dets = {"logistic regression (scikit-learn, converged; baseline)": (probe, time.perf_counter() - t0)}
    for name, config in RUNS.items():
        t0 = time.perf_counter()
        dets[name] = (Detector.fit_cache(train_cache, config=config), time.perf_counter() - t0)
    base = probe.logits(held.features("image", rows))
    results = []
    for name, (det, seconds) in dets.items():
        x = held.features("image", rows)
        z, p = det.logits(x), det.probability(x)
        d = paired_auc_difference(y, z, base, n_boot=args.n_boot)
        lo, hi = bootstrap_ci(y, z, "auc", n_boot=args.n_boot, scores_are_probs=False)
        results.append({"training": name, "steps": det.metrics.get("steps"),
                        "batch": (det.metrics.get("schedule") or {}).get("batch_size"),
                        "auc": d["auc_a"], "auc_lo": lo, "auc_hi": hi, "delta_auc": d["delta_auc"],
                        "delta_lo": d["delta_auc_lo"], "delta_hi": d["delta_auc_hi"],
                        "ece": expected_calibration_error(y, p), "calibration": det.calibration.to_json(),
                        "train_seconds": round(seconds, 1)})
    print(f"held-out rows: {rows.size} ({int(y.sum())} fake) of {args.heldout}; trained on {args.train_cache}\n")
    print("| training | steps (batch) | held-out AUC [95% CI] | AUC − probe [95% paired CI] | ECE (calibration) |")
    print("|---|---|---|---|---|")
    for r in results:
        steps = "—" if r["batch"] is None else f"{r['steps']} ({r['batch']})"
        delta = "—" if r["training"].startswith("logistic") else \
            f"{r['delta_auc']:+.4f} [{r['delta_lo']:+.4f}, {r['delta_hi']:+.4f}]"
        print(f"| {r['training']} | {steps} | {r['auc']:.4f} [{r['auc_lo']:.4f}, {r['auc_hi']:.4f}] | {delta} | "
              f"{r['ece']:.4f} ({', '.join(f'{k} {v:.3g}' if isinstance(v, float) else str(v) for k, v in r['calibration'].items())}) |")
    if args.out:
        save_json(args.out, {"heldout": args.heldout, "rows": int(rows.size), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
