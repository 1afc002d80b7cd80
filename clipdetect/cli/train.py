"""``clipdetect train``: a detector on a feature cache."""
from __future__ import annotations

import argparse
import dataclasses

from clipdetect.cli.main import CLIError, print_json

EXAMPLES = """examples:
  # the paper's recipe (CVaR+AUC loss, SAM, MLP head) on image embeddings
  clipdetect train features/cifake-b16 --out detectors/cifake-b16
  # a linear probe with plain BCE, no SAM, quick
  clipdetect train features/cifake-b16 --out detectors/probe --head linear --loss bce --no-sam --epochs 10
  # image+text features (caption leakage risk: compare with --feature-set image and text)
  clipdetect train features/d3 --out detectors/d3-it --feature-set image+text

Validation and test rows: the cache's own "val"/"validation"/"test" splits when it has them;
otherwise --val-fraction and --test-fraction of the "train" rows, chosen by a stable hash of
each row's key (so the same rows are held out on every run and by `clipdetect evaluate`).
The epoch with the best validation ROC-AUC is kept; training stops after --patience epochs
without improvement. The decision threshold is chosen on validation (best balanced accuracy).

Writes DETECTOR_DIR/{model.safetensors, detector.json, train_config.json, train_log.jsonl}
and prints a JSON summary (validation metrics, and test metrics when test rows exist)."""


def add_parser(sub) -> None:
    from clipdetect.models.train import LOSS_OPTIONS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a detector on a feature cache", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a detector head on cached CLIP embeddings and save the bundle.")
    p.add_argument("cache", help="feature cache directory (made by `clipdetect extract`)")
    p.add_argument("--out", required=True, metavar="DETECTOR_DIR", help="directory for the detector bundle")
    p.add_argument("--feature-set", default="image", choices=["image", "text", "image+text"],
                   help="detector input: image embedding, caption embedding or both concatenated (default image)")
    g = p.add_argument_group("loss: gamma*CVaR_alpha(BCE) + (1-gamma)*mean max(0, margin-(s_fake-s_real))^p")
    g.add_argument("--loss", default=d.loss, choices=sorted(LOSS_OPTIONS), help=f"default {d.loss}")
    g.add_argument("--gamma", type=float, default=d.gamma, help=f"weight of CVaR in cvar+auc (default {d.gamma})")
    g.add_argument("--alpha", type=float, default=d.alpha,
                   help=f"CVaR keeps the worst alpha fraction of per-sample losses (default {d.alpha})")
    g.add_argument("--margin", type=float, default=d.margin, help=f"AUC hinge margin eta on logits ({d.margin})")
    g.add_argument("--p", type=float, default=d.p, help=f"AUC hinge power (default {d.p})")
    o = p.add_argument_group("optimiser: SAM over AdamW, cosine learning-rate schedule")
    o.add_argument("--no-sam", dest="sam", action="store_false", help="plain AdamW (one pass per step)")
    o.add_argument("--rho", type=float, default=d.rho, help=f"SAM neighbourhood radius (default {d.rho})")
    o.add_argument("--adaptive", action="store_true", help="adaptive SAM (ASAM)")
    o.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW decay ({d.weight_decay})")
    o.add_argument("--schedule", default=d.schedule, choices=["cosine", "constant"], help="learning-rate schedule")
    o.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"rows per step; every batch holds both classes in the data's ratio (default {d.batch_size})")
    o.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    o.add_argument("--patience", type=int, default=d.patience,
                   help=f"stop after N epochs without a better validation AUC; 0 never stops (default {d.patience})")
    h = p.add_argument_group("head")
    h.add_argument("--head", default=d.head, choices=["mlp", "linear"], help="MLP (paper) or linear probe")
    h.add_argument("--depth", type=int, default=d.depth, help=f"MLP blocks (default {d.depth})")
    h.add_argument("--width", type=int, default=None, help="MLP hidden width (default: the input dimension)")
    h.add_argument("--dropout", type=float, default=d.dropout, help=f"MLP dropout (default {d.dropout})")
    r = p.add_argument_group("data and run")
    r.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help=f"validation share of 'train' rows when the cache has no val split ({d.val_fraction})")
    r.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help=f"test share of 'train' rows when the cache has no test split ({d.test_fraction})")
    r.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the key-hash split (default 0)")
    r.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation, batches and dropout")
    r.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or mps (default cpu)")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args):
    from clipdetect.models.train import TrainConfig

    values = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    return TrainConfig(**values)


def run(args) -> int:
    import torch

    from clipdetect.core.device import check_device
    from clipdetect.core.io import staged_output
    from clipdetect.features.verify import open_verified
    from clipdetect.models.detector import Detector
    from clipdetect.core.metrics import binary_metrics
    from clipdetect.features.splits import resolve_split_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = check_device(args.device)
    config = config_from_args(args)
    cache = open_verified(args.cache)
    if args.feature_set != "image" and not cache.has_text:
        raise CLIError(f"--feature-set {args.feature_set} needs caption embeddings, but cache {args.cache!r} has "
                       "none; use --feature-set image or extract with captions (--caption-template/--text yes)")
    with staged_output(args.out) as tmp:
        det = Detector.fit_cache(cache, feature_set=args.feature_set, config=config, out=tmp,
                                 progress=not args.no_progress)
    summary = {"out": args.out, "feature_set": det.feature_set, "backbone": det.backbone.get("spec"),
               "threshold": det.threshold, "splits": det.extra.get("splits"), "train": {
                   k: det.metrics.get(k) for k in ("best_epoch", "epochs_run", "stopped_early", "steps",
                                                   "train_seconds")},
               "val": det.metrics.get("val")}
    test = resolve_split_rows(cache, "test", val=config.val_fraction, test=config.test_fraction,
                              seed=config.split_seed)
    if len(test):
        prob = det.fake_probability(det.features(cache, test))
        summary["test"] = binary_metrics(cache.labels(test), prob, threshold=det.threshold)
    print_json(summary)
    return 0
