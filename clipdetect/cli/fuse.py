"""``clipdetect fuse``: one detector from several, combined on validation rows."""
from __future__ import annotations

from clipdetect.cli.main import emit
from clipdetect.cli.options import add_command, open_cache

EXAMPLES = """examples:
  # an image-embedding MLP and a per-block head on the same cache, fused
  clipdetect train features/corpus --out detectors/img
  clipdetect train features/corpus --out detectors/lay --feature-set layers --width 256
  clipdetect fuse detectors/img detectors/lay --cache features/corpus --out detectors/fused

The combination (average of standardised logits, or a logistic stack of the member logits,
'auto' = the better cross-validated one) is chosen on the validation rows of the first
detector's split, never on test rows; the fused detector is then calibrated and thresholded
there like any other and scores images with `clipdetect predict`."""


def add_parser(sub) -> None:
    from clipdetect.models.fusion import FUSION_METHODS

    p = add_command(sub, "fuse", epilog=EXAMPLES,
                    description="Fuse detectors trained on the same cache (same backbone) into one.")
    p.add_argument("detectors", nargs="+", metavar="DETECTOR", help="two or more detector bundles")
    p.add_argument("--cache", required=True, help="the cache they were trained on (its validation rows)")
    p.add_argument("--out", required=True, help="folder for the fused detector bundle")
    p.add_argument("--method", default="auto", choices=list(FUSION_METHODS),
                   help="mean of standardised logits, logistic stack, or auto (default)")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipdetect.core.io import staged_output
    from clipdetect.features.splits import SplitSpec, view_rows
    from clipdetect.models.detector import load_detector
    from clipdetect.models.fusion import fuse_detectors

    dets = [load_detector(d) for d in args.detectors]
    cache = open_cache(args.cache)
    val = view_rows(cache, SplitSpec.of(dets[0]).rows(cache, "val"), dets[0].train_config.get("views"))
    fused = fuse_detectors(dets, cache, val, method=args.method)
    with staged_output(args.out) as tmp:
        fused.save(tmp)
    emit(args, {"out": args.out, "feature_set": fused.feature_set, "fusion": fused.extra["fusion"],
                "threshold": fused.threshold, "val": fused.metrics.get("val")})
    return 0
