"""Feature distillation: a small student encoder learns the frozen CLIP teacher's embeddings.

Loss per batch (DistilDIRE-style, the teacher never runs: its embeddings come from the cache)::

    L = L_det(head(normalize(student(x))), y) + λ · L_distill(student(x), teacher_embedding[key])

``L_det`` is any :func:`clipdetect.models.losses.create_loss` loss on the logits of a detection head
(``heads.create_head``) trained jointly on the student's L2-normalised embedding (the same
input the head sees at inference). ``L_distill`` is ``cosine`` (mean ``1 − cos``), ``mse``
(squared distance between the raw projected student embedding and the unit-norm teacher
embedding, summed over dimensions, so it also pins the norm) or ``both`` (their sum)
(:func:`clipdetect.distill.targets.distillation_loss`). The target is the teacher's final embedding
(``target="image"``) or one per-block token of a cache extracted with ``--layers``
(``target="block8"``), standardised per dimension (:mod:`clipdetect.distill.targets`); a ``clip``
student (the teacher's own first blocks at a lower resolution) learns a block token.

Images come from the source the cache was extracted from; rows are matched by ``key``. In a
cache extracted with ``--views`` the student trains on the rows of ``config.views`` (``orig`` by
default, ``("all",)`` for every view): each image is turned into its row's view before the
student's own augmentations, so every target is the teacher's embedding of the very picture the
student sees (:mod:`clipdetect.distill.images`). Validation uses the ``orig`` rows, the images as
the student will meet them.
Train / validation / test rows are the cache's splits (:func:`splits.cache_splits`: hashed
on keys when the cache has no held-out split), so the test rows stay untouched here. The
student and its head plug their step and their batches into the one training loop of
:mod:`clipdetect.models.trainer` (warm-up + cosine learning rate, best epoch on validation,
a checkpoint after every epoch in ``OUT/checkpoints``; ``resume=True`` continues after the
last completed epoch with the same batches the uninterrupted run would use), and the head
gets the calibration and threshold of every detector (:func:`clipdetect.models.fitting.from_result`).
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

from clipdetect.data.views import ORIG, ViewError
from clipdetect.distill.clip_student import CLIP_ENCODER_LR, is_clip_arch
from clipdetect.distill.targets import (DISTILL_LOSSES, IMAGE_TARGET, distillation_loss, resolve_student,
                                       standardise, teacher_targets)
from clipdetect.distill.images import (AUGMENTATIONS, CKPT_DIR, ImageRows, canonical_views, collect_images,
                                       make_loader, teacher_rows, train_transform)
from clipdetect.features.splits import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, SplitSpec
from clipdetect.models.checkpoint import check_resumable
from clipdetect.models.detector import Detector
from clipdetect.models.heads import HeadConfig, create_head
from clipdetect.models.losses import create_loss
from clipdetect.models.samplers import StratifiedBatchSampler
from clipdetect.models.schedule import Schedule
from clipdetect.models.train import TrainConfig
from clipdetect.models.trainer import LAST, Fit, TrainResult, run_fit
from clipdetect.distill.student import (StudentConfig, create_student, read_student_doc,
                                        save_student, student_identity, student_preprocess)
from clipdetect.core.config import from_dict
from clipdetect.core.io import read_json, write_json

logger = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (saved as ``distill_config.json``)."""

    source: str
    teacher_cache: str
    out: str
    arch: str = "tf_efficientnet_lite0"  # a timm name, clipdetect-tiny-cnn, or clip / clip:<open_clip model>
    pretrained: Optional[str] = None  # clip students: the teacher's weights (default: the cache's backbone)
    image_size: int = 64
    target: str = IMAGE_TARGET  # the teacher's final embedding, or one per-block token (block8) of --layers
    blocks: Optional[int] = None  # clip students: how many of the teacher's blocks (default: the target's)
    encoder_lr: Optional[float] = None  # the encoder's peak rate (default: lr; clip students 2e-5)
    lam: float = 1.0
    distill_loss: str = "cosine"
    loss: str = "bce"
    head: str = "mlp"
    depth: int = 3  # the head's MLP blocks and width, named as in TrainConfig
    width: Optional[int] = None
    dropout: float = 0.335
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    augment: Tuple[str, ...] = ("flip",)
    views: Tuple[str, ...] = (ORIG,)  # the teacher cache's views to train on; ("all",) for every one
    workers: int = 2
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    split_seed: int = SPLIT_SEED
    seed: int = 0
    limit: Optional[int] = None  # at most this many training rows (quick runs)
    eval_batch_size: int = 256
    source_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.augment = tuple(a for a in (self.augment or ()) if a)
        views = (self.views,) if isinstance(self.views, str) else tuple(self.views or ())
        try:
            self.views = canonical_views(views)
        except ViewError as exc:
            raise ValueError(f"views: {exc}") from None
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
        if is_clip_arch(self.arch) and self.target == IMAGE_TARGET:
            raise ValueError("a clip student outputs a per-block token: choose a target such as 'block8' (a teacher "
                             "cache extracted with --layers); the final embedding needs the whole tower")
        if self.blocks is not None and not is_clip_arch(self.arch):
            raise ValueError(f"blocks applies to clip students only, not to {self.arch!r}")
        for name in ("lr", "encoder_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def effective_encoder_lr(self) -> float:
        """The encoder's peak learning rate: ``encoder_lr``, else ``lr`` (clip students: 2e-5, as a
        pretrained ViT is fine-tuned; the fresh head keeps ``lr``)."""
        if self.encoder_lr is not None:
            return self.encoder_lr
        return CLIP_ENCODER_LR if is_clip_arch(self.arch) else self.lr

    def head_config(self, embed_dim: int) -> HeadConfig:
        """The head on the student's embedding: what :class:`TrainConfig` makes of the same options."""
        return TrainConfig(head=self.head, depth=self.depth, width=self.width,
                           dropout=self.dropout).head_config(embed_dim)

    def calibration_options(self) -> Dict[str, Any]:
        """The student's head is calibrated and thresholded as a trained head is by default."""
        return TrainConfig().calibration_options()

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "augment": list(self.augment), "views": list(self.views)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DistillConfig":
        return from_dict(cls, renamed_keys(d))


#: keys of configs saved before the head options were named as in TrainConfig
_OLD_KEYS = {"head_depth": "depth", "head_width": "width"}


def renamed_keys(d: Dict[str, Any]) -> Dict[str, Any]:
    """A saved distillation config (``distill_config.json``, a checkpoint's) with today's key names."""
    return {_OLD_KEYS.get(k, k): v for k, v in d.items()}


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

    cache = FeatureCache(config.teacher_cache)
    if len(cache) == 0:
        raise ValueError(f"teacher cache {config.teacher_cache!r} is empty; run `clipdetect extract` first")
    split = SplitSpec.of(config).labels(cache)
    keys = cache.meta["key"].astype(str).to_numpy()
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    tr, va = teacher_rows(cache, tr, config.views), teacher_rows(cache, va)
    if config.limit is not None:
        tr = tr[:config.limit]
    if len(tr) < 2 or len(va) < 2:
        raise ValueError(f"too few rows to distil: {len(tr)} train, {len(va)} validation in "
                         f"{config.teacher_cache!r}")
    t_tr, t_va = teacher_targets(cache, tr, config.target), teacher_targets(cache, va, config.target)
    source = open_source(config.source, **config.source_options)
    images = collect_images(source, np.unique(keys[np.concatenate([tr, va])]).tolist())  # once per image
    stats = None
    if config.target != IMAGE_TARGET:  # raw block tokens: every dimension on one scale
        (t_tr, t_va), stats = standardise(t_tr, t_va)
    scfg = resolve_student(cache, arch=config.arch, pretrained=config.pretrained, image_size=config.image_size,
                           target=config.target, blocks=config.blocks, embed_dim=t_tr.shape[1])
    y = cache.labels()
    views = cache.columns("view")["view"].astype(str).to_numpy()
    train_ds = ImageRows([images[k] for k in keys[tr]], y[tr], t_tr, train_transform(scfg, config.augment),
                         views=views[tr], keys=keys[tr])
    val_ds = ImageRows([images[k] for k in keys[va]], y[va], t_va, student_preprocess(scfg))
    return cache, scfg, train_ds, val_ds, stats


def distill(config: DistillConfig, *, resume: bool = False, progress: bool = True) -> DistillResult:
    """Train a student encoder + detection head; write the student directory ``config.out``."""
    t0 = time.perf_counter()
    out = Path(config.out)
    last = out / CKPT_DIR / f"{LAST}.json"
    if last.exists() and not resume:
        raise ValueError(f"{str(out)!r} already holds a distillation run; pass --resume to continue it "
                         "or choose a new --out")
    if last.exists():
        saved = read_json(last, what="distillation checkpoint").get("config", {})
        saved = DistillConfig.from_dict(saved).to_dict() if saved else {}  # options added since: their defaults
        check_resumable(saved, config.to_dict(), where=config.out, free=_RESUME_FREE)
        if saved.get("epochs") != config.epochs:
            logger.warning("epochs changed from %s to %s: the learning-rate schedule changes from "
                           "here on", saved.get("epochs"), config.epochs)
    cache, scfg, train_ds, val_ds, stats = _prepare(config)
    fit, plan = _student_fit(config, scfg, train_ds, val_ds, stats)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "distill_config.json", config.to_dict())
    result = run_fit(fit, plan, checkpoints=out / CKPT_DIR, resume=resume, run_info={"config": config.to_dict()},
                     progress=progress, desc="distill", announce=True)
    finish_student(out, fit.modules["student"], result, scfg, config, cache, val_labels=fit.y_val)
    best = result.history[result.best_epoch - 1] if result.history else {}
    return DistillResult(out=str(out), best_epoch=result.best_epoch,
                         best_val_auc=float(best.get("val_auc", math.nan)), epochs_run=result.epochs_run,
                         history=result.history, seconds=time.perf_counter() - t0, n_train=len(train_ds),
                         n_val=len(val_ds))


def _student_fit(config: DistillConfig, scfg: StudentConfig, train_ds, val_ds, stats) -> Tuple[Fit, Schedule]:
    """The student and its head, AdamW over both (the encoder at its own rate), the distillation
    step and the image batches; ``stats``: the token targets' (mean, std), or None."""
    student = create_student(scfg, seed=config.seed)
    if stats is not None and hasattr(student, "set_standardisation"):
        student.set_standardisation(*stats)
    torch.manual_seed(config.seed)
    head_config = config.head_config(scfg.embed_dim)
    head = create_head(head_config)
    loss_fn = create_loss(config.loss)
    groups = [{"params": list(student.parameters()), "lr_scale": config.effective_encoder_lr / config.lr},
              {"params": list(head.parameters())}]
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    sampler = StratifiedBatchSampler(train_ds.labels.numpy().astype(np.int64), config.batch_size, seed=config.seed)
    val_loader = make_loader(val_ds, batch_size=config.eval_batch_size, workers=config.workers)

    def step(batch):
        x, yb, tb = batch
        emb = student(x)
        l_det = loss_fn(head(F.normalize(emb, dim=-1)), yb)
        l_dist = distillation_loss(emb, tb, config.distill_loss)
        loss = l_det + config.lam * l_dist if config.lam > 0 else l_det
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "det": l_det.detach(), "distill": l_dist.detach()}

    def batches(epoch: int, limit):
        return make_loader(train_ds, batches=list(sampler.epoch(epoch)), workers=config.workers,
                           seed=config.seed * 100_003 + epoch)

    def validate():
        emb, logits = score_images(student, head, val_loader)
        targets = F.normalize(val_ds.targets, dim=-1).numpy()  # token targets are not unit vectors
        return logits, {"val_cosine": float(np.mean(np.sum(emb * targets, axis=1)))}

    def reseed(epoch: int) -> None:
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout; workers get seeds from the loader

    total = config.epochs * len(sampler)
    plan = Schedule(batch_size=config.batch_size, steps_per_epoch=len(sampler), epochs=config.epochs,
                    total_steps=total, horizon=total, patience=0, lr=config.lr, warmup_steps=config.warmup_steps)
    fit = Fit(modules={"student": student, "head": head}, head_config=head_config, optimizer=opt, step=step,
              batches=batches, validate=validate, y_val=val_ds.labels.numpy().astype(np.int64), begin_epoch=reseed)
    return fit, plan


def finish_student(out: Path, student, result: TrainResult, scfg: StudentConfig, config: DistillConfig, cache, *,
                   val_labels: np.ndarray) -> None:
    """Write the final student (``encoder.safetensors`` + ``student.json``), its detector bundle
    (calibrated and thresholded on the validation rows) and ``history.json``."""
    best_auc = result.history[result.best_epoch - 1].get("val_auc") if result.history else None
    summary = {**config.to_dict(), "best_epoch": result.best_epoch, "best_val_auc": best_auc}
    save_student(out, student.eval(), scfg, teacher=cache.backbone, distill=summary)
    identity = {**student_identity(out, scfg, read_student_doc(out)), "spec": f"student:{out.resolve()}"}
    det = Detector.from_result(result, feature_set="image", backbone=identity, config=config, y_val=val_labels,
                      extra={"teacher": cache.backbone, "distill": summary, "student_dir": str(out.resolve())})
    det.save(out / "detector")
    write_json(out / "history.json", result.history)
