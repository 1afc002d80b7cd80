"""Check that a cache reproduces independently computed CLIP embeddings.

    python experiments/check_reference.py features/cifake-b16-check $CLIPDETECT_DATA/cifake_dev_ref_b16.npz

Rows are matched by key; prints the per-row cosine similarity (min / mean / max) and exits
non-zero when any row is below --min-cosine (default 0.999) or a reference key is missing.
"""
import argparse
import json
import sys

import numpy as np

from clipdetect.features.cache import FeatureCache


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("reference", help=".npz with arrays X (embeddings) and key")
    ap.add_argument("--min-cosine", type=float, default=0.999)
    args = ap.parse_args(argv)
    cache = FeatureCache(args.cache)
    ref = np.load(args.reference, allow_pickle=False)
    index = {k: i for i, k in enumerate(cache.meta.key)}
    missing = [k for k in ref["key"] if k not in index]
    rows = np.array([index[k] for k in ref["key"] if k in index])
    ours = cache.embeddings("image", rows).astype(np.float64)
    theirs = ref["X"][[i for i, k in enumerate(ref["key"]) if k in index]].astype(np.float64)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    report = {"rows": int(len(rows)), "missing": len(missing), "stored_dtype": cache.manifest["dtype"],
              "backbone": cache.backbone.get("spec"), "cosine_min": float(cos.min()),
              "cosine_mean": float(cos.mean()), "cosine_max": float(cos.max()),
              "labels_match": bool(np.array_equal(cache.labels(rows), ref["y"][: len(rows)]))
              if not missing else None}
    print(json.dumps(report, indent=2))
    failures = []
    if missing:
        failures.append(f"{len(missing)} reference key(s) missing from the cache, e.g. {missing[:3]}")
    if len(rows) and cos.min() < args.min_cosine:
        worst = int(np.argmin(cos))
        failures.append(f"min cosine {float(cos.min())!r} < --min-cosine {args.min_cosine!r} "
                        f"({int((cos < args.min_cosine).sum())} of {len(rows)} rows below; worst key "
                        f"{ref['key'][[i for i, k in enumerate(ref['key']) if k in index][worst]]!r})")
    if report["labels_match"] is False:
        failures.append("labels differ between the cache and the reference")
    print("OK" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
