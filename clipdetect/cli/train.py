"""``clipdetect train``: a detector on a feature cache."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from clipdetect.cli.main import CLIError, emit
from clipdetect.cli.options import add_command, add_device_arg, add_force_arg, add_threads_arg, check_new_output, metrics_text, set_threads

EXAMPLES = """examples:
  # the paper's detector (CVaR+AUC loss, SAM, MLP head), schedule planned from the cache size
  clipdetect train features/cifake-b16 --out detectors/cifake-b16
  # the paper's fixed schedule exactly (batch 2048, 32 epochs, patience 8)
  clipdetect train features/cifake-b16 --out detectors/paper --preset paper
  # a linear probe with plain BCE, no SAM
  clipdetect train features/cifake-b16 --out detectors/probe --head linear --loss bce --no-sam
  # image+text features (caption leakage risk: compare with --feature-set image and text)
  clipdetect train features/d3 --out detectors/d3-it --feature-set image+text
  # per-block features (extract --layers), trained on every view but evaluated per view later
  clipdetect train features/corpus --out detectors/corpus-layers --feature-set layers --width 256
  # a long GPU run: head and loss compiled together, replayed as CUDA graphs
  clipdetect train features/d3 --out detectors/d3 --device cuda --steps 20000 --compile graphs

Validation and test rows: the cache's own "val"/"validation"/"test" splits when it has them;
otherwise --val-fraction and --test-fraction of the "train" rows, chosen by a stable hash of
each row's key (so the same rows are held out on every run and by `clipdetect evaluate`).
--split all trains a final model on every row instead: nothing is left for validation or
testing (no best-epoch selection, no calibration, threshold 0.5; evaluate it on other data).
Schedule (default --preset auto): batch = training rows / 8 as a power of two in [32, 2048],
at least 500 optimiser steps (fewer below 1,000 training rows: 0.5 per row, at least 32
epochs) and 32 epochs, patience max(8, epochs / 4); a fixed schedule of fewer than 200 steps
warns. The epoch with the best validation ROC-AUC is kept; training stops after --patience
epochs without improvement. Then, on the validation rows: Platt scaling (P(fake) =
sigmoid(scale * logit + offset); not applied, with a warning, on fewer than 100 rows or 10 of
a class, on a fit at a bound of its search, or when it makes the ECE worse) and the threshold:
at most --threshold-fpr (5%) of the validation reals score above it. Both are stored in the
bundle and shown by `predict` and `report`.

Writes DETECTOR_DIR/{model.safetensors, detector.json, train_config.json, train_log.jsonl}
(an existing DETECTOR_DIR is refused without --force) and prints a summary: validation
metrics, and test metrics when test rows exist, each shown only when its rows suffice
(e.g. TPR at 0.1% FPR needs 1,000 reals)."""


def add_parser(sub) -> None:
    from clipdetect.features.manifest import FEATURE_SETS
    from clipdetect.models.heads import HEAD_KINDS
    from clipdetect.models.samplers import BALANCE_MODES
    from clipdetect.models.schedule import PRESETS
    from clipdetect.models.step import COMPILE_MODES
    from clipdetect.models.train import AUC_PAIRS, LOSS_OPTIONS, TrainConfig

    d = TrainConfig()
    p = add_command(sub, "train", epilog=EXAMPLES,
                    description="Train a detector head on cached CLIP embeddings and save the bundle.")
    p.add_argument("cache", help="feature cache directory (made by `clipdetect extract`)")
    p.add_argument("--out", required=True, metavar="DETECTOR_DIR", help="directory for the detector bundle")
    add_force_arg(p)
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was killed (its checkpoints are kept next to DETECTOR_DIR until "
                        "it ends; Ctrl-C removes them) after its last completed epoch, with the same options")
    p.add_argument("--feature-set", default="image", choices=list(FEATURE_SETS),
                   help="detector input: image embedding, caption embedding, both concatenated, the per-block "
                        "tokens of a cache extracted with --layers (a per-block head), or image+layers "
                        "(default image)")
    g = p.add_argument_group("loss: gamma*CVaR_alpha(BCE) + (1-gamma)*mean max(0, margin-(s_fake-s_real))^p")
    g.add_argument("--loss", default=d.loss, choices=sorted(LOSS_OPTIONS), help=f"default {d.loss}")
    g.add_argument("--gamma", type=float, default=d.gamma, help=f"weight of CVaR in cvar+auc (default {d.gamma})")
    g.add_argument("--alpha", type=float, default=d.alpha,
                   help=f"CVaR keeps the worst alpha fraction of per-sample losses (default {d.alpha})")
    g.add_argument("--margin", type=float, default=d.margin, help=f"AUC hinge margin eta on logits ({d.margin})")
    g.add_argument("--p", type=float, default=d.p, help=f"AUC hinge power (default {d.p})")
    o = p.add_argument_group("optimiser: SAM over AdamW, cosine learning-rate schedule")
    o.add_argument("--preset", default="auto", choices=sorted(PRESETS),
                   help="auto: batch, steps, patience and lr planned from the training-set size (default); "
                        "paper: batch 2048, 32 epochs, patience 8, lr 1e-3 as published. Explicit options win")
    o.add_argument("--no-sam", dest="sam", action="store_false", help="plain AdamW (one pass per step)")
    o.add_argument("--rho", type=float, default=d.rho, help=f"SAM neighbourhood radius (default {d.rho})")
    o.add_argument("--adaptive", action="store_true", help="adaptive SAM (ASAM)")
    o.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3 for mlp, 0.1 for linear)")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW decay ({d.weight_decay})")
    o.add_argument("--schedule", default=d.schedule, choices=["cosine", "constant"], help="learning-rate schedule")
    o.add_argument("--batch-size", type=int,
                   help="rows per step; every batch holds both classes in the data's ratio (default: planned)")
    s = o.add_mutually_exclusive_group()
    s.add_argument("--epochs", type=int, help="maximum epochs (default: planned)")
    s.add_argument("--steps", type=int, help="optimiser-step budget instead of --epochs (default: planned)")
    o.add_argument("--patience", type=int,
                   help="stop after N epochs without a better validation AUC; 0 never stops (default: planned)")
    c = p.add_argument_group("calibration and threshold (fitted on the validation rows)")
    c.add_argument("--calibration", default=d.calibration, choices=["platt", "temperature", "none"],
                   help="logit -> P(fake): platt (scale and offset, default), temperature (scale only) or none")
    c.add_argument("--no-calibrate", dest="calibration", action="store_const", const="none",
                   help="same as --calibration none")
    c.add_argument("--threshold-fpr", type=float, default=d.threshold_fpr, metavar="RATE",
                   help=f"the threshold lets at most this share of validation reals through as fake (default "
                        f"{d.threshold_fpr}); needs >= 1/RATE validation reals to be resolved")
    c.add_argument("--threshold-rule", default=d.threshold_rule, choices=["fpr", "balanced"],
                   help="fpr: target --threshold-fpr on validation reals (default); balanced: best balanced "
                        "accuracy on validation")
    h = p.add_argument_group("head")
    h.add_argument("--head", default=d.head, choices=list(HEAD_KINDS),
                   help="mlp (paper; on per-block features it becomes the layers head), linear probe, or layers "
                        "(learned per-block weights, RINE-style)")
    h.add_argument("--depth", type=int, default=d.depth, help=f"MLP blocks (default {d.depth})")
    h.add_argument("--width", type=int, default=None, help="MLP hidden width (default: the input dimension)")
    h.add_argument("--dropout", type=float, default=d.dropout, help=f"MLP dropout (default {d.dropout})")
    r = p.add_argument_group("data and run")
    r.add_argument("--split", default=d.split, choices=["holdout", "all"],
                   help="holdout: train on the train rows, select and calibrate on val, leave test alone "
                        "(default); all: a final model on every row, nothing held out")
    r.add_argument("--views", metavar="V1,V2,...",
                   help="train and validate on these views of a cache extracted with --views (default: all)")
    r.add_argument("--input-view", metavar="VIEW",
                   help="a fixed view the saved detector applies to every image it scores (predict, score_images, "
                        "serve), e.g. norm:256:90 for a head trained on --views norm:256:90,aug only: it then never "
                        "sees a file's own format (default: images as decoded)")
    r.add_argument("--auc-pairs", default=d.auc_pairs, choices=list(AUC_PAIRS),
                   help="AUC loss pairs: all fake/real pairs of a batch, or group: only a fake and the reals "
                        "of its own content group (batches of whole groups; default all)")
    r.add_argument("--balance", default=d.balance, choices=list(BALANCE_MODES),
                   help="how batches weigh the training rows within each class: none (uniformly; default), "
                        "source (every source of a cache the same: a large source does not drown small ones), "
                        "sqrt (a source as the square root of its size) or content (fakes and reals in the same "
                        "proportion from every content cluster, so subject matter alone predicts nothing)")
    r.add_argument("--feature-noise", type=float, default=d.feature_noise,
                   help="Gaussian noise on half of every batch's training features, as a multiple of each "
                        "feature's standard deviation (e.g. 0.5; default 0: none)")
    r.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help=f"validation share of 'train' rows when the cache has no val split ({d.val_fraction})")
    r.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help=f"test share of 'train' rows when the cache has no test split ({d.test_fraction})")
    r.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the key-hash split (default 0)")
    r.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation, batches and dropout")
    add_device_arg(r, d.device)
    add_threads_arg(r)
    r.add_argument("--compile", default=d.compile, choices=list(COMPILE_MODES),
                   help="torch.compile the head and the loss as one graph: none (default, eager), default "
                        "(fused kernels), graphs (also CUDA graphs: each pass replayed with one launch; as "
                        "default on a CPU). Compiling takes seconds to a minute per graph (a few per run), "
                        "so it pays only on long GPU runs; the mode is saved in train_config.json")
    p.set_defaults(func=run)


def checkpoint_dir(out) -> Path:
    """Where ``train --out OUT`` keeps its per-epoch checkpoints while it runs: ``.OUT.checkpoints``
    next to OUT (a killed run leaves them for ``--resume``)."""
    out = Path(out)
    return out.parent / f".{out.name}.checkpoints"


def checked_input_view(spec):
    """``--input-view`` as a canonical view spec (None when not given), or a CLIError naming the fix."""
    from clipdetect.data.views import ViewError, input_view

    if spec is None:
        return None
    try:
        return input_view(spec)
    except ViewError as exc:
        raise CLIError(f"--input-view: {exc}") from None


def config_from_args(args):
    from clipdetect.models.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return TrainConfig.preset(getattr(args, "preset", "auto"), **values)


def run(args) -> int:
    from clipdetect.core.device import check_device
    from clipdetect.core.io import staged_output
    from clipdetect.features.verify import open_verified
    from clipdetect.models.detector import Detector
    from clipdetect.core.metrics import binary_metrics
    from clipdetect.features.manifest import feature_parts
    from clipdetect.features.splits import SplitSpec

    set_threads(args)
    args.device = check_device(args.device)
    config = config_from_args(args)
    ckpt = checkpoint_dir(args.out)
    if ckpt.exists() and not (args.resume or args.force):
        raise CLIError(f"{args.out!r} has the checkpoints of an unfinished run; pass --resume to continue it "
                       "(same options) or --force to start over")
    check_new_output(args.out, args.force)
    if args.force and not args.resume:
        shutil.rmtree(ckpt, ignore_errors=True)
    view = checked_input_view(args.input_view)
    cache = open_verified(args.cache)
    if "text" in feature_parts(args.feature_set) and not cache.has_text:
        raise CLIError(f"--feature-set {args.feature_set} needs caption embeddings, but cache {args.cache!r} has "
                       "none; use --feature-set image or extract with captions (--caption-template/--text yes)")
    try:
        with staged_output(args.out) as tmp:
            det = Detector.fit_cache(cache, feature_set=args.feature_set, config=config, out=tmp,
                                     progress=not args.no_progress, checkpoints=ckpt, resume=args.resume)
            if view is not None:
                det = det.replace(extra={**det.extra, "input_view": view})
                det.save(tmp)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: a cancelled run leaves nothing behind
        shutil.rmtree(ckpt, ignore_errors=True)
        raise
    shutil.rmtree(ckpt, ignore_errors=True)
    test = SplitSpec.of(config).rows(cache, "test") if config.split != "all" else []
    test_metrics = binary_metrics(cache.labels(test), det.probability(det.features(cache, test)),
                                  threshold=det.threshold) if len(test) else None
    summary = train_summary(det, args.out, test_metrics)
    emit(args, summary, summary_text(summary))
    return 0


def train_summary(det, out, test_metrics=None) -> dict:
    """What ``train`` reports about a fitted detector (metrics guarded: see :mod:`clipdetect.core.guards`)."""
    from clipdetect.core.guards import guarded

    m = det.metrics
    return {"out": str(out), "feature_set": det.feature_set, "backbone": det.backbone.get("spec"),
            "splits": det.extra.get("splits"), "split": det.train_config.get("split", "holdout"),
            "train": {k: m.get(k) for k in ("best_epoch", "epochs_run", "stopped_early", "steps", "train_seconds",
                                            "schedule")},
            "calibration": {**det.calibration.to_json(), "fit": m.get("calibration")},
            "threshold": det.threshold, "threshold_target": det.threshold_target,
            "val": guarded(m["val"]) if m.get("val") else None,
            "test": guarded(test_metrics) if test_metrics else None}


def summary_text(s: dict) -> str:
    from clipdetect.models.calibration import Calibration
    from clipdetect.models.thresholds import describe_target

    t, sched, sp = s["train"], s["train"].get("schedule") or {}, s.get("splits") or {}
    lines = [f"detector saved to {s['out']} ({s['feature_set']} features of {s['backbone']})",
             f"rows: {sp.get('train')} train, {sp.get('val')} val, {sp.get('test')} test"
             + (" (--split all: every row trained; nothing is left for testing)" if s["split"] == "all" else ""),
             f"schedule: batch {sched.get('batch_size')}, {t['steps']} steps in {t['epochs_run']} epochs "
             f"(best epoch {t['best_epoch']}{', stopped early' if t['stopped_early'] else ''}), "
             f"{t['train_seconds']:.1f} s"]
    fit = s["calibration"].get("fit") or {}
    cal = Calibration.from_json({k: v for k, v in s["calibration"].items() if k != "fit"}).describe()
    if fit and not fit.get("applied"):
        cal += f" ({fit['method']} not applied: {fit.get('reason')})"
    elif fit:
        cal += f"; validation ECE {fit['ece_before']:.4f} -> {fit['ece_after']:.4f} on {fit['n']} rows"
    lines += [f"calibration: {cal}",
              f"threshold: P(fake) > {s['threshold']:.4g} (target: {describe_target(s['threshold_target'])})"]
    for split in ("val", "test"):
        if s.get(split):
            lines.append(f"{split}: {metrics_text(s[split])}")
    return "\n".join(lines)
