"""``clipdetect extract`` and ``clipdetect cache info``."""
from __future__ import annotations

import argparse

from .cli import print_json

EXAMPLES = """examples:
  # a folder with real/ and fake/ subfolders, tiny random-weight model (no download)
  clipdetect extract photos/ --out features/my-cache --backbone clipdetect-tiny-vit:random
  # CIFAKE parquet (Hugging Face Image column), real CLIP ViT-B/16 image tower from a file
  clipdetect extract ../shared/data/cifake_dev.parquet --out features/cifake-b16 \\
      --backbone ViT-B-16-quickgelu:weights/clip_b16.pt --limit 6400
  # a hub dataset, streamed, with captions from a column
  clipdetect extract hf:user/dataset --streaming --caption-column prompt --backbone ViT-L-14:openai ...
  # a CSV/parquet manifest with path,label[,caption,generator,split] columns
  clipdetect extract manifest.csv --out features/x --backbone ViT-B-32:laion2b_s34b_b79k
Re-running the same command resumes where it stopped."""


def _label_map(text: str):
    out = {}
    for part in filter(None, (text or "").split(",")):
        name, sep, value = part.partition("=")
        if not sep or value not in ("0", "1"):
            raise argparse.ArgumentTypeError(f"--label-map wants NAME=0|1[,NAME=0|1...], got {part!r}")
        out[name] = int(value)
    return out


def add_parser(sub) -> None:
    from .extract import default_workers

    p = sub.add_parser("extract", help="images → a feature cache of CLIP embeddings", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Embed images (and their captions) with a CLIP backbone into a sharded cache.")
    p.add_argument("source", help="image folder, .csv/.parquet manifest, HF parquet, hf:NAME or d3:NAME_OR_PATH")
    p.add_argument("--out", required=True, help="cache directory (created, or resumed / appended to)")
    p.add_argument("--backbone", required=True,
                   help="ARCH:TAG (open_clip pretrained), ARCH:/path/to/ckpt, ARCH:random, or student:/path")
    g = p.add_argument_group("performance")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    g.add_argument("--workers", type=int, default=default_workers(),
                   help="decode processes; 0 decodes in the main process (default: CPU count, max 8)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="model precision (fp16 needs a GPU; default fp32)")
    g.add_argument("--limit", type=int, help="only the first N source items (a later larger limit continues)")
    g.add_argument("--shard-size", type=int, default=4096, help="rows per shard file (default 4096)")
    g.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored dtype")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = p.add_argument_group("source options")
    s.add_argument("--split", help="split name (HF split to read; folder/manifest default 'train')")
    s.add_argument("--caption-template", help='caption from fields, e.g. "a photo of a {cifar_class}"')
    s.add_argument("--caption-column", help="column holding captions (HF sources)")
    s.add_argument("--text", default="auto", choices=["auto", "yes", "no"],
                   help="embed captions: auto (when present and the backbone has a text tower)")
    s.add_argument("--image-column", help="image column (HF; default 'image')")
    s.add_argument("--label-column", help="label column (HF; default 'label')")
    s.add_argument("--generator-column", help="generator column (HF)")
    s.add_argument("--label-map", type=_label_map, help="folder labels for generator folders: sd14=1,laion=0")
    s.add_argument("--root", help="base folder for relative paths in a manifest")
    s.add_argument("--streaming", action="store_true", help="stream an HF dataset instead of downloading it")
    s.add_argument("--generators", help="D3: comma-separated generators to keep")
    s.add_argument("--caption-policy", choices=["same", "reference"], help="D3 caption pairing (default same)")
    s.add_argument("--reals-dir", help="D3: folder of pre-downloaded real images named by row id")
    s.add_argument("--fetch-reals", action="store_true", help="D3: download real images from their URLs")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="local processes or a Ray cluster")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.set_defaults(func=run_extract)

    c = sub.add_parser("cache", help="inspect a feature cache")
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION")
    info = csub.add_parser("info", help="backbone, rows, splits, generators, error counts")
    info.add_argument("path", help="cache directory")
    info.set_defaults(func=run_cache_info)


def source_options(args) -> dict:
    return {"split": args.split, "caption_template": args.caption_template, "caption_column": args.caption_column,
            "image_column": args.image_column, "label_column": args.label_column,
            "generator_column": args.generator_column, "labels": args.label_map, "root": args.root,
            "streaming": args.streaming or None,
            "generators": args.generators.split(",") if args.generators else None,
            "caption_policy": args.caption_policy, "reals_dir": args.reals_dir,
            "fetch_reals": args.fetch_reals or None}


def run_extract(args) -> int:
    from .extract import ExtractConfig, extract
    from .sources import open_source

    source = open_source(args.source, **source_options(args))
    config = ExtractConfig(backbone=args.backbone, out=args.out, batch_size=args.batch_size, workers=args.workers,
                           device=args.device, precision=args.precision, limit=args.limit,
                           shard_size=args.shard_size, dtype=args.dtype, text=args.text)
    if args.engine == "ray":
        from .extract_ray import extract_ray

        summary = extract_ray(source, config, address=args.address, progress=not args.no_progress)
    else:
        summary = extract(source, config, progress=not args.no_progress)
    print_json({"out": summary.out, "run": summary.run, "resumed_from": summary.resumed_from,
                "seen": summary.seen, "embedded": summary.embedded, "errors": summary.errors,
                "seconds": round(summary.seconds, 2), "images_per_second": round(summary.images_per_second, 2),
                "complete": summary.complete})
    return 0


def run_cache_info(args) -> int:
    from .cache import FeatureCache

    print_json(FeatureCache(args.path).summary())
    return 0
