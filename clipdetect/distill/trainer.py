"""Feature distillation: a small student encoder learns the frozen CLIP teacher's embeddings.

Loss per batch (DistilDIRE-style, the teacher never runs: its embeddings come from the cache)::

    L = L_det(head(normalize(student(x))), y) + λ · L_distill(student(x), teacher_embedding[key])

``L_det`` is any :func:`clipdetect.models.losses.create_loss` loss on the logits of a detection head
(``heads.create_head``) trained jointly on the student's L2-normalised embedding (the same
input the head sees at inference). ``L_distill`` is ``cosine`` (mean ``1 − cos``), ``mse``
(squared distance between the raw projected student embedding and the unit-norm teacher
embedding, summed over dimensions, so it also pins the norm) or ``both`` (their sum).

Images come from the source the cache was extracted from; rows are matched by ``key``.
Train / validation / test rows are the cache's splits (:func:`splits.cache_splits`: hashed
on keys when the cache has no held-out split), so the test rows stay untouched here. The
epoch with the best validation AUC is kept. A checkpoint (weights + AdamW state, all as
safetensors, and a JSON sidecar) is written after every epoch; ``resume=True`` continues
after the last completed epoch with the same batches the uninterrupted run would use.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from clipdetect.distill.images import (AUGMENTATIONS, CKPT_DIR, ImageRows, make_loader, collect_images, load_checkpoint,
                         save_checkpoint, train_transform)
from clipdetect.models.heads import HeadConfig, create_head
from clipdetect.models.losses import create_loss
from clipdetect.distill.student import StudentConfig, create_student, save_student, student_preprocess
from clipdetect.core.config import from_dict

logger = logging.getLogger(__name__)

DISTILL_LOSSES = ("cosine", "mse", "both")


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (saved as ``distill_config.json``)."""

    source: str
    teacher_cache: str
    out: str
    arch: str = "tf_efficientnet_lite0"
    pretrained: Optional[str] = None
    image_size: int = 64
    lam: float = 1.0
    distill_loss: str = "cosine"
    loss: str = "bce"
    head: str = "mlp"
    head_depth: int = 3
    head_width: Optional[int] = None
    dropout: float = 0.335
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    augment: Tuple[str, ...] = ("flip",)
    workers: int = 2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    seed: int = 0
    limit: Optional[int] = None  # at most this many training rows (quick runs)
    eval_batch_size: int = 256
    source_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.augment = tuple(a for a in (self.augment or ()) if a)
        bad = sorted(set(self.augment) - set(AUGMENTATIONS))
        if bad:
            raise ValueError(f"unknown augmentation(s) {bad}; choose from {list(AUGMENTATIONS)}")
        if self.distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"distill loss {self.distill_loss!r} is not one of {list(DISTILL_LOSSES)}")
        if self.lam < 0:
            raise ValueError(f"lambda must be >= 0, got {self.lam}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (both classes in every batch)")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    def student_config(self, embed_dim: int) -> StudentConfig:
        return StudentConfig(arch=self.arch, embed_dim=embed_dim, image_size=self.image_size,
                             pretrained=self.pretrained)

    def head_config(self, embed_dim: int) -> HeadConfig:
        if self.head == "linear":
            return HeadConfig(kind="linear", in_dim=embed_dim)
        return HeadConfig(kind=self.head, in_dim=embed_dim, width=self.head_width, depth=self.head_depth,
                          dropout=self.dropout)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DistillConfig":
        return from_dict(cls, d)


# ------------------------------------------------------------------ losses
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Feature-distillation loss between raw student embeddings and unit-norm teacher embeddings."""
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"distill loss {kind!r} is not one of {list(DISTILL_LOSSES)}")
    total = student.new_zeros(())
    if kind in ("cosine", "both"):
        total = total + (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind in ("mse", "both"):
        total = total + (student - teacher).pow(2).sum(dim=-1).mean()
    return total


# ------------------------------------------------------------------ training
@dataclass
class DistillResult:
    out: str
    best_epoch: int
    best_val_auc: float
    epochs_run: int
    history: List[Dict[str, Any]]
    seconds: float
    n_train: int
    n_val: int


def _lr_at(config: DistillConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero over ``total`` steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    frac = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(frac, 1.0)))


@torch.no_grad()
def score_images(student, head, loader) -> Tuple[np.ndarray, np.ndarray]:
    """(L2-normalised student embeddings, head logits) for every image of ``loader``, in order."""
    student.eval()
    head.eval()
    embs, logits = [], []
    for x, _, _ in loader:
        z = F.normalize(student(x), dim=-1)
        embs.append(z)
        logits.append(head(z))
    return torch.cat(embs).numpy(), torch.cat(logits).numpy()


_RESUME_FREE = ("epochs", "workers", "out", "eval_batch_size", "source", "source_options")


def _prepare(config: DistillConfig):
    from clipdetect.features.cache import FeatureCache
    from clipdetect.data.registry import open_source
    from clipdetect.features.splits import SplitSpec

    cache = FeatureCache(config.teacher_cache)
    if len(cache) == 0:
        raise ValueError(f"teacher cache {config.teacher_cache!r} is empty; run `clipdetect extract` first")
    split = SplitSpec.of(config).labels(cache)
    keys = cache.meta["key"].astype(str).to_numpy()
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if config.limit is not None:
        tr = tr[:config.limit]
    if len(tr) < 2 or len(va) < 2:
        raise ValueError(f"too few rows to distil: {len(tr)} train, {len(va)} validation in "
                         f"{config.teacher_cache!r}")
    source = open_source(config.source, **config.source_options)
    images = collect_images(source, keys[np.concatenate([tr, va])])
    scfg = config.student_config(cache.embed_dim)
    y = cache.labels()
    train_ds = ImageRows([images[k] for k in keys[tr]], y[tr], cache.embeddings("image", tr),
                         train_transform(scfg, config.augment))
    val_ds = ImageRows([images[k] for k in keys[va]], y[va], cache.embeddings("image", va),
                       student_preprocess(scfg))
    return cache, scfg, train_ds, val_ds


def distill(config: DistillConfig, *, resume: bool = False, progress: bool = True) -> DistillResult:
    """Train a student encoder + detection head; write the student directory ``config.out``."""
    from tqdm.auto import tqdm

    from clipdetect.core.io import write_json
    from clipdetect.core.metrics import binary_metrics
    from clipdetect.models.samplers import StratifiedBatchSampler

    t0 = time.perf_counter()
    out = Path(config.out)
    last = out / CKPT_DIR / "last.json"
    if last.exists() and not resume:
        raise ValueError(f"{str(out)!r} already holds a distillation run; pass --resume to continue it "
                         "or choose a new --out")
    cache, scfg, train_ds, val_ds = _prepare(config)
    student = create_student(scfg, seed=config.seed)
    torch.manual_seed(config.seed)
    head = create_head(config.head_config(scfg.embed_dim))
    loss_fn = create_loss(config.loss)
    opt = torch.optim.AdamW(list(student.parameters()) + list(head.parameters()), lr=config.lr,
                            weight_decay=config.weight_decay)
    history: List[Dict[str, Any]] = []
    best = {"epoch": 0, "val_auc": -math.inf}
    start = 1
    if resume and last.exists():
        info = load_checkpoint(out, "last", student=student, head=head, opt=opt)
        _check_resumable(info["config"], config)
        start, history, best = info["epoch"] + 1, info["history"], info["best"]
        logger.info("resuming %s after epoch %d", out, info["epoch"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "distill_config.json", config.to_dict())
    y_train = train_ds.labels.numpy().astype(np.int64)
    sampler = StratifiedBatchSampler(y_train, config.batch_size, seed=config.seed)
    total = config.epochs * len(sampler)
    val_loader = make_loader(val_ds, batch_size=config.eval_batch_size, workers=config.workers)
    for epoch in range(start, config.epochs + 1):
        e0, step = time.perf_counter(), (epoch - 1) * len(sampler)
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout; workers get seeds from the loader
        loader = make_loader(train_ds, batches=list(sampler.epoch(epoch)), workers=config.workers,
                         seed=config.seed * 100_003 + epoch)
        student.train()
        head.train()
        sums = {"loss": 0.0, "det": 0.0, "distill": 0.0}
        n = 0
        bar = tqdm(loader, desc=f"distill {epoch}/{config.epochs}", unit="batch", disable=None if progress else True,
                   leave=False)
        for x, yb, tb in bar:
            lr = _lr_at(config, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            emb = student(x)
            l_det = loss_fn(head(F.normalize(emb, dim=-1)), yb)
            l_dist = distillation_loss(emb, tb, config.distill_loss)
            loss = l_det + config.lam * l_dist if config.lam > 0 else l_det
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            n += 1
            for k, v in (("loss", loss), ("det", l_det), ("distill", l_dist)):
                sums[k] += float(v.detach())
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", distill=f"{sums['distill'] / n:.4f}")
        bar.close()
        emb, logits = score_images(student, head, val_loader)
        m = binary_metrics(val_ds.labels.numpy().astype(np.int64), logits, scores_are_probs=False)
        cos = float(np.mean(np.sum(emb * val_ds.targets.numpy(), axis=1)))
        record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v / max(n, 1) for k, v in sums.items()},
                  "val_auc": float(m["auc"]), "val_acc": float(m["acc@0.5"]), "val_cosine": cos,
                  "seconds": round(time.perf_counter() - e0, 2)}
        history.append(record)
        logger.info("epoch %d: %s", epoch,
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
        if math.isfinite(m["auc"]) and m["auc"] > best["val_auc"]:
            best = {"epoch": epoch, "val_auc": float(m["auc"]), "val_cosine": cos}
            save_checkpoint(out, "best", student=student, head=head, info={"epoch": epoch, **best})
        save_checkpoint(out, "last", student=student, head=head, opt=opt,
                        info={"epoch": epoch, "history": history, "best": best, "config": config.to_dict()})
    if best["epoch"]:
        load_checkpoint(out, "best", student=student, head=head)
    _, val_logits = score_images(student, head, val_loader)
    finish_student(out, student, head, scfg, config, cache, best=best, history=history,
                   val_logits=val_logits, val_labels=val_ds.labels.numpy().astype(np.int64))
    return DistillResult(out=str(out), best_epoch=int(best["epoch"]), best_val_auc=float(best["val_auc"]),
                         epochs_run=len(history), history=history, seconds=time.perf_counter() - t0,
                         n_train=len(train_ds), n_val=len(val_ds))


def _check_resumable(saved: Dict[str, Any], config: DistillConfig) -> None:
    now = config.to_dict()
    diff = {k: (saved.get(k), now[k]) for k in now if k not in _RESUME_FREE and saved.get(k) != now[k]}
    if diff:
        raise ValueError(f"cannot resume {config.out!r}: the run was started with other settings "
                         f"(saved vs now: {diff}); use the same options or a new --out")
    if saved.get("epochs") != config.epochs:
        logger.warning("epochs changed from %s to %s: the learning-rate schedule changes from here on",
                       saved.get("epochs"), config.epochs)


def finish_student(out: Path, student, head, scfg: StudentConfig, config: DistillConfig, cache, *,
                   best: Dict[str, Any], history: List[Dict[str, Any]], val_logits: np.ndarray,
                   val_labels: np.ndarray) -> None:
    """Write the final student (``encoder.safetensors`` + ``student.json``) and its detector bundle."""
    from clipdetect.core.io import write_json
    from clipdetect.models.detector import Detector
    from clipdetect.models.calibration import fit_on_validation
    from clipdetect.distill.student import read_student_doc, student_identity

    summary = {**config.to_dict(), "best_epoch": best["epoch"], "best_val_auc": best["val_auc"]}
    save_student(out, student.eval(), scfg, teacher=cache.backbone, distill=summary)
    identity = {**student_identity(out, scfg, read_student_doc(out)), "spec": f"student:{out.resolve()}"}
    calibration, threshold, target, fitted = fit_on_validation(val_logits, val_labels)  # as `train` does
    metrics = {"best_epoch": best["epoch"], "epochs_run": len(history), **fitted}
    det = Detector(head=head.eval(), head_config=config.head_config(scfg.embed_dim), feature_set="image",
                   backbone=identity, train_config=config.to_dict(), metrics=metrics, threshold=threshold,
                   calibration=calibration, threshold_target=target,
                   extra={"teacher": cache.backbone, "distill": summary, "student_dir": str(out.resolve())})
    det.save(out / "detector")
    write_json(out / "history.json", history)
