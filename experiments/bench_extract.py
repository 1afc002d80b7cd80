"""Extraction throughput, three ways on the same images and model, measured in one run.

(a) the clipdetect pipeline: decode in worker processes, batched encoding, cache writes;
(b) a naive loop: decode, preprocess and encode one image at a time;
(c) the ceiling: the model's forward pass alone on batches already decoded and preprocessed.

    python experiments/bench_extract.py --backbone ViT-B-32:random --images 256 --batch-size 32

Prints images/s for each and the ratios a/b and a/c (targets on a 2-core CPU: a/c >= 0.9,
a/b >= 3). Random weights are fine: speed does not depend on the weight values.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from clipdetect.features.backbones import create_backbone
from clipdetect.features.runner import ExtractConfig
from clipdetect.features.extract import extract
from clipdetect.features.pipeline import default_workers
from clipdetect.data.hf import HFSource
from clipdetect.data.imaging import SplitPreprocess, decode_image
from common import cifake_parquet



def bench_pipeline(source, backbone, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExtractConfig(backbone=args.backbone, out=tmp, batch_size=args.batch_size, workers=args.workers,
                            device=args.device, precision=args.precision,
                            limit=args.images, shard_size=4096)
        summary = extract(source, cfg, backbone=backbone, progress=False)
    assert summary.embedded == args.images, summary
    return summary.images_per_second


def bench_naive(source, backbone, n) -> float:
    t0 = time.perf_counter()
    for i, s in enumerate(source):
        if i == n:
            break
        img, _ = decode_image(s.image)
        backbone.encode_images(backbone.preprocess(img)[None])
    return n / (time.perf_counter() - t0)


def bench_ceiling(source, backbone, n, batch_size) -> float:
    pre = SplitPreprocess(backbone.preprocess)
    arrays = [pre.worker(decode_image(s.image)[0]) for _, s in zip(range(n), source)]
    batches = [pre.finish(arrays[i:i + batch_size]) for i in range(0, n, batch_size)]
    t0 = time.perf_counter()
    for b in batches:
        backbone.encode_images(b)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="parquet with an image column (default $CLIPDETECT_DATA/cifake_dev.parquet)")
    ap.add_argument("--backbone", default="ViT-B-32:random")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="model precision for all three measurements (bf16: lossy, faster on CPUs with bf16 units)")
    ap.add_argument("--repeats", type=int, default=2, help="alternate the three measurements this many times")
    args = ap.parse_args(argv)
    args.data = args.data or cifake_parquet()
    source = HFSource(args.data)
    backbone = create_backbone(args.backbone, device=args.device, precision=args.precision)
    bench_ceiling(source, backbone, args.batch_size, args.batch_size)  # warm-up
    results = {"a_pipeline": [], "b_naive": [], "c_ceiling": []}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all three alike
        results["c_ceiling"].append(bench_ceiling(source, backbone, args.images, args.batch_size))
        results["a_pipeline"].append(bench_pipeline(source, backbone, args))
        results["b_naive"].append(bench_naive(source, backbone, args.images))
    med = {k: float(np.median(v)) for k, v in results.items()}
    report = {"backbone": args.backbone, "device": args.device, "precision": args.precision, "images": args.images,
              "batch_size": args.batch_size, "workers": args.workers, "torch_threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "images_per_second": {k: round(v, 2) for k, v in med.items()},
              "runs": {k: [round(x, 2) for x in v] for k, v in results.items()},
              "a/b": round(med["a_pipeline"] / med["b_naive"], 2),
              "a/c": round(med["a_pipeline"] / med["c_ceiling"], 3)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
