"""Extract the realgen manifest after format normalisation: every image (real and fake) is
decoded and re-encoded identically by the toolkit's ``NormalizedSource`` (square resize to
SIZE px, bicubic; JPEG at QUALITY), then embedded with the same backbone as the as-is cache.

    python experiments/realgen_extract_normalized.py MANIFEST.csv --out CACHE \
        --backbone ViT-B-16-quickgelu:$CLIPDETECT_DATA/weights/clip_b16.pt [--size 256 --quality 90]
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--out", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--format", default="JPEG")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--shard-size", type=int, default=1024)
    args = ap.parse_args(argv)
    from clipdetect.data.perturb import NormalizedSource
    from clipdetect.data.registry import open_source
    from clipdetect.features.runner import ExtractConfig
    from clipdetect.features.extract import extract

    src = NormalizedSource(open_source(args.manifest), size=args.size, fmt=args.format, quality=args.quality)
    cfg = ExtractConfig(backbone=args.backbone, out=args.out, batch_size=args.batch_size,
                        workers=args.workers, shard_size=args.shard_size)
    summary = extract(src, cfg, progress=False)
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
