"""JPEG draft-mode decoding (``--fast-decode draft``): its speed-up and what it does to embeddings.

High-resolution JPEGs are made from CIFAKE rows (32×32 JPEG): each is upscaled (Lanczos) to a
random size with the long side in [--min-side, --max-side], a little noise is added so the
JPEG has texture to code, and it is re-encoded at quality 90. For each image the decoder
stage (decode + open_clip's PIL preprocessing, one process) runs exactly and in draft mode
(the JPEG is decoded at the smallest DCT scale that keeps both sides >= 2× the model's input),
interleaved in rounds; then both outputs go through the model and the cosine between the
exact and the draft embedding of each image is reported.

    python experiments/bench_decode.py    # $CLIPDETECT_DATA/cifake_dev.parquet, $CLIPDETECT_DATA/weights/clip_b16.pt

Writes experiments/results/bench_decode.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import RESULTS, b16_backbone, cifake_parquet, save_json


def make_jpegs(data: str, n: int, lo: int, hi: int, seed: int = 0) -> list:
    from clipdetect.data.hf import HFSource
    from clipdetect.data.imaging import decode_image

    rng = np.random.default_rng(seed)
    out = []
    for _, s in zip(range(n), HFSource(data)):
        img = decode_image(s.image)[0]
        long = int(rng.integers(lo, hi + 1))
        short = int(long * rng.uniform(0.66, 1.0))
        size = (long, short) if rng.random() < 0.5 else (short, long)
        big = np.asarray(img.resize(size, Image.LANCZOS), dtype=np.float32)
        big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(big).save(b, format="JPEG", quality=90)
        out.append(b.getvalue())
    return out


def timed_decode(refs, pre, draft) -> tuple:
    from clipdetect.features.pipeline import decode_refs

    t0 = time.perf_counter()
    dec = decode_refs(refs, pre, draft=draft)
    return len(refs) / (time.perf_counter() - t0), [d[1] for d in dec]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="default: the ViT-B/16 weights in $CLIPDETECT_DATA/weights")
    ap.add_argument("--data", help="CIFAKE parquet (default $CLIPDETECT_DATA/cifake_dev.parquet)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--min-side", type=int, default=600)
    ap.add_argument("--max-side", type=int, default=1600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(RESULTS / "bench_decode"), help="output path without suffix")
    args = ap.parse_args(argv)
    args.backbone, args.data = args.backbone or b16_backbone(), args.data or cifake_parquet()

    import torch

    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.features.backbones import create_backbone
    from clipdetect.features.encoder import ImageEncoder
    from clipdetect.features.pipeline import Decoder

    backbone = create_backbone(args.backbone)
    pre = SplitPreprocess(backbone.preprocess)
    draft = Decoder(pre, fast_decode="draft").draft
    refs = make_jpegs(args.data, args.images, args.min_side, args.max_side)
    sizes = [Image.open(io.BytesIO(r)).size for r in refs]
    reduced = sum(min(s) >= 2 * draft for s in sizes)
    rates = {"exact": [], "draft": []}
    for _ in range(args.rounds):
        for name, d in (("exact", None), ("draft", draft)):
            rate, arrays = timed_decode(refs, pre, d)
            rates[name].append(rate)
            if name == "exact":
                exact = arrays
            else:
                fast = arrays
    enc = ImageEncoder(backbone, pre)
    with torch.inference_mode():
        e = np.concatenate([enc.encode(exact[i:i + args.batch_size]) for i in range(0, len(refs), args.batch_size)])
        f = np.concatenate([enc.encode(fast[i:i + args.batch_size]) for i in range(0, len(refs), args.batch_size)])
    cos = (e * f).sum(1)
    pix = np.abs(np.stack(exact).astype(np.int16) - np.stack(fast).astype(np.int16))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    report = {"backbone": args.backbone, "images": len(refs), "sizes": f"long side {args.min_side}-{args.max_side}",
              "draft_min_side": draft, "images_reduced_by_draft": int(reduced), "cpus": os.cpu_count(),
              "decode_preprocess_img_per_s_1proc": {k: round(v, 1) for k, v in med.items()},
              "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
              "speedup": round(med["draft"] / med["exact"], 2),
              "cosine_exact_vs_draft": {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                                        "p05": round(float(np.quantile(cos, 0.05)), 5)},
              "cosine_reduced_images_mean": round(float(cos[[min(s) >= 2 * draft for s in sizes]].mean()), 5)
              if reduced else None,
              "mean_abs_pixel_diff_after_preprocess": round(float(pix.mean()), 3)}
    print(json.dumps(report, indent=2))
    save_json(Path(args.out).with_suffix(".json"), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
