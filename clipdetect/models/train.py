"""Training a detector head on embeddings: in-memory arrays or a memory-mapped feature cache.

Training is planned in optimiser steps (:func:`plan_schedule`): by default the batch size
and the step budget follow the number of training rows, so that a small cache gets as many
updates as a large one; ``TrainConfig.preset("paper")`` is the paper's fixed recipe (batch
2048, 32 epochs). One optimisation step (the robust CLIP detector's recipe, all of it
configurable in :class:`TrainConfig`): a class-stratified batch is gathered from the memory maps, the head's
logits go through ``γ·CVaR_α(BCE) + (1−γ)·L_AUC`` and SAM over AdamW updates the weights,
with BatchNorm running statistics frozen on SAM's second pass; the learning rate follows a
per-step cosine schedule. After each epoch the head is scored on the validation rows;
the epoch with the best validation ROC-AUC (ties, as on a small validation set that reaches
AUC 1, broken by the lower validation BCE) is kept and training stops after ``patience``
epochs without improvement. A run planned for fewer than :data:`FEW_STEPS` steps (or fewer
than a tiny cache's automatic floor) logs a warning: such a head is usually undertrained. ``TrainConfig.compile`` runs the head and the loss
as one ``torch.compile`` graph, optionally replayed as CUDA graphs (:mod:`clipdetect.models.step`).

Memory does not grow with the cache: only the row ids and labels of the training rows and
one batch of features are held at a time (batches are read with ``cache.features``).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from clipdetect.features.manifest import feature_parts
from clipdetect.models.calibration import CALIBRATION_METHODS, THRESHOLD_RULES
from clipdetect.models.heads import HeadConfig, create_head
from clipdetect.models.samplers import GroupBatchSampler, StratifiedBatchSampler
from clipdetect.models.schedule import (DEFAULT_LR, FEW_STEPS, PRESETS, SMALL_CACHE, Schedule, auto_batch_size,
                                       min_steps, plan_schedule)
from clipdetect.models.losses import create_loss, trusted_batches
from clipdetect.core.metrics import binary_metrics
from clipdetect.models.sam import SAM
from clipdetect.models.step import COMPILE_MODES, compile_mode, forward_loss, sam_step
from clipdetect.models import resident as resident_rows
from clipdetect.core.config import from_dict
from clipdetect.core.io import open_new, write_json

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "Schedule", "plan_schedule", "auto_batch_size", "PRESETS", "ArraySource", "CacheSource",
           "train", "predict_logits", "build_loss", "sam_step", "COMPILE_MODES"]

TRAIN_SPLITS = ("holdout", "all")
#: which (fake, real) pairs the AUC loss ranks: all of a batch, or those of one content group
AUC_PAIRS = ("all", "group")
LOSS_OPTIONS = {"bce": (), "cvar": ("alpha",), "auc": ("margin", "p"), "cvar+auc": ("gamma", "alpha", "margin", "p")}
@dataclass(kw_only=True)
class TrainConfig:
    """Hyperparameters of one training run (loss, optimiser and head: the robust CLIP detector's).

    ``batch_size``, ``epochs``/``steps``, ``patience`` and ``lr`` left at None are planned
    from the training-set size by :func:`plan_schedule`; ``TrainConfig.preset("paper")``
    fixes them to the paper's batch 2048 / 32 epochs. ``patience`` = epochs without a better
    validation AUC before stopping (0: never stop early; the best epoch is still selected).
    ``steps`` = the optimiser-step budget (instead of ``epochs``). ``max_steps`` caps the
    number of optimisation steps (benchmarks; the schedule is not shortened).
    ``calibration``: fitted on the validation split at the end of training ("platt", the default:
    scale and offset; "temperature"; "none"; ``calibrate=False`` also means "none"), applied only
    when the validation rows support it (:mod:`clipdetect.models.calibration`). ``threshold_rule``:
    "fpr" (the default: at most ``threshold_fpr`` of the validation reals score above the threshold)
    or "balanced" (best validation balanced accuracy). ``views``: the cache views (``extract
    --views``) to train and validate on (None: all). ``auc_pairs="group"``: batches are made of
    whole content groups and the AUC term ranks each fake only against the reals of its own group.
    ``val_fraction``/``test_fraction``/``split_seed`` are used when the held-out sets are derived
    from a cache's "train" rows (:mod:`clipdetect.features.splits`); ``split="all"`` trains on every
    row of a cache instead (nothing is held out: no best-epoch selection, no calibration, threshold 0.5).
    ``compile``: "none", "default" (``torch.compile`` of the head and the loss together) or "graphs"
    (the same plus CUDA graphs on a GPU; :mod:`clipdetect.models.step`); True/False mean "default"/"none".
    """

    loss: str = "cvar+auc"
    gamma: float = 0.1
    alpha: float = 0.8
    margin: float = 0.6
    p: float = 2.0
    sam: bool = True
    rho: float = 0.05
    adaptive: bool = False
    lr: Optional[float] = None
    weight_decay: float = 0.01
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    steps: Optional[int] = None
    schedule: str = "cosine"
    head: str = "mlp"
    depth: int = 3
    width: Optional[int] = None
    dropout: float = 0.335
    seed: int = 0
    patience: Optional[int] = None
    max_steps: Optional[int] = None
    eval_batch_size: int = 8192
    device: str = "cpu"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    calibrate: bool = True
    calibration: str = "platt"
    threshold_rule: str = "fpr"
    threshold_fpr: float = 0.05
    split: str = "holdout"
    compile: str = "none"
    views: Optional[List[str]] = None  # train and validate on these views only (None: every view)
    auc_pairs: str = "all"  # "group": the AUC loss pairs fakes and reals of the same content group only

    def __post_init__(self) -> None:
        self.compile = compile_mode(self.compile)
        if self.auc_pairs not in AUC_PAIRS:
            raise ValueError(f"auc_pairs {self.auc_pairs!r} is not one of {AUC_PAIRS}")
        if self.views is not None:
            from clipdetect.data.views import parse_views

            self.views = parse_views(self.views)
        if self.loss not in LOSS_OPTIONS:
            raise ValueError(f"loss {self.loss!r} is not one of {sorted(LOSS_OPTIONS)}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule {self.schedule!r} is not 'cosine' or 'constant'")
        for name in ("epochs", "steps", "eval_batch_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1 (or None: planned from the data), got {getattr(self, name)!r}")
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"give epochs ({self.epochs}) or steps ({self.steps}), not both")
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (one real and one fake per batch)")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0 (or None: {DEFAULT_LR} by head), got {self.lr!r}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 disables early stopping), got {self.patience!r}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration {self.calibration!r} is not one of {CALIBRATION_METHODS}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule {self.threshold_rule!r} is not one of {THRESHOLD_RULES}")
        if not 0.0 < self.threshold_fpr < 1.0:
            raise ValueError(f"threshold_fpr must be in (0, 1), got {self.threshold_fpr!r}")
        if self.split not in TRAIN_SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {TRAIN_SPLITS} (holdout: train on the train rows; "
                             "all: train on every row, nothing held out)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """A named recipe (:data:`PRESETS`: "auto" = planned from the data, "paper" = batch 2048,
        32 epochs, patience 8, lr 1e-3 as published) with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is not one of {sorted(PRESETS)}")
        base = dict(PRESETS[name])
        if overrides.get("steps") is not None:
            base.pop("epochs", None)  # a step budget replaces the preset's epochs
        return cls(**{**base, **overrides})

    def calibration_options(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`~clipdetect.models.calibration.fit_on_validation`."""
        return {"calibration": self.calibration if self.calibrate else "none", "threshold_rule": self.threshold_rule,
                "target_fpr": self.threshold_fpr}

    def head_config(self, in_dim: int, tokens: Optional[int] = None) -> HeadConfig:
        """The head for ``in_dim`` inputs; ``tokens``: the input is that many per-block tokens
        (the 'layers' feature set), on which the paper's MLP becomes the per-block ``layers`` head."""
        if self.head == "linear":
            return HeadConfig(kind="linear", in_dim=in_dim)
        kind = "layers" if self.head == "mlp" and tokens else self.head
        return HeadConfig(kind=kind, in_dim=in_dim, width=self.width, depth=self.depth, dropout=self.dropout,
                          tokens=tokens if kind == "layers" else None)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        return from_dict(cls, d)


def build_loss(config: TrainConfig) -> torch.nn.Module:
    return create_loss(config.loss, **{k: getattr(config, k) for k in LOSS_OPTIONS[config.loss]})


class ArraySource:
    """Features held in memory (``X`` [N, D], labels ``y`` [N])."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.X = np.asarray(X)
        self.y = _labels(y)
        self.tokens: Optional[int] = None  # in-memory arrays are flat features
        if self.X.ndim != 2 or len(self.X) != len(self.y):
            raise ValueError(f"X must be [N, D] with N = len(y); got X {self.X.shape}, y {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    def batch(self, idx: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.X[idx], dtype=np.float32)


class CacheSource:
    """Rows ``rows`` of a :class:`~clipdetect.features.cache.FeatureCache`, read batch by batch from its memory maps."""

    def __init__(self, cache, rows: np.ndarray, feature_set: str = "image"):
        feature_parts(feature_set)  # a clear error for an unknown one
        self.cache, self.feature_set = cache, feature_set
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))
        self.y = _labels(cache.labels(self.rows))
        self.dim = cache.feature_dim(feature_set)
        self.tokens = int(cache.layers["tokens"]) if feature_set == "layers" else None
        self._groups: Optional[np.ndarray] = None

    @property
    def groups(self) -> np.ndarray:
        """Integer content-group ids of the rows (read on first use)."""
        if self._groups is None:
            names = self.cache.columns("group")["group"].to_numpy()[self.rows]
            self._groups = np.unique(names.astype(str), return_inverse=True)[1].astype(np.int64)
        return self._groups

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray) -> np.ndarray:
        return self.cache.features(self.feature_set, self.rows[idx])


def _labels(y) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake); found {np.unique(y)[:5].tolist()}")
    return y.astype(np.int64)


@dataclass
class TrainResult:
    head: torch.nn.Module
    head_config: HeadConfig
    history: List[Dict[str, Any]]
    best_epoch: int                 # 1-based; the last epoch when there is no validation AUC
    epochs_run: int
    stopped_early: bool
    steps: int
    val_logits: Optional[np.ndarray] = None   # of the selected head, in the order of the val source
    seconds: float = 0.0
    schedule: Optional[Dict[str, Any]] = None  # the resolved plan (Schedule.to_dict())


@torch.no_grad()
def predict_logits(head: torch.nn.Module, source, *, batch_size: int = 8192, device: str = "cpu") -> np.ndarray:
    """Eval-mode logits for every row of ``source``, batched."""
    was_training = head.training
    head.eval()
    out = np.empty(len(source), dtype=np.float32)
    for i in range(0, len(source), batch_size):
        idx = np.arange(i, min(i + batch_size, len(source)))
        out[idx] = head(torch.from_numpy(source.batch(idx)).to(device)).float().cpu().numpy()
    head.train(was_training)
    return out


def _prefetched(source, batches: Iterator[np.ndarray]) -> Iterator[tuple]:
    """(indices, features) pairs; the next batch is gathered in a thread while the current one trains."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipdetect-batch") as pool:
        nxt = next(batches, None)
        pending = pool.submit(source.batch, nxt) if nxt is not None else None
        while pending is not None:
            idx, x = nxt, pending.result()
            nxt = next(batches, None)
            pending = pool.submit(source.batch, nxt) if nxt is not None else None
            yield idx, x


def _lr_at(config: TrainConfig, peak: float, step: int, total: int) -> float:
    if config.schedule == "constant" or total <= 1:
        return peak
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(step, total) / total))


def train(train_data, *, val_data=None, config: Optional[TrainConfig] = None, out_dir: str | Path | None = None,
          progress: bool = True, resident: Optional[bool] = None,
          device_budget: float = resident_rows.DEFAULT_BUDGET,
          compile: str | bool | None = None, checkpoints=None, resume: bool = False) -> TrainResult:
    """Train a head on ``train_data`` (an :class:`ArraySource` or :class:`CacheSource`).

    With ``val_data``, selects the epoch of best validation AUC and stops early after
    ``config.patience`` epochs without improvement. With ``out_dir``, writes
    ``train_config.json`` and a JSON-lines log ``train_log.jsonl`` (one record per epoch:
    train loss, val auc/ap/acc, lr, seconds) there. Same seed and data → identical weights.

    ``resident``: hold the training rows on the device and gather batches there (None: when
    the device is a GPU and the rows fit ``device_budget`` × its free memory); the batches
    and the weights are the same as when they are streamed from the memory maps.
    ``compile``: one of :data:`COMPILE_MODES` ("none", "default", "graphs"; True/False for
    "default"/"none"); None keeps ``config.compile``. The mode is recorded in ``train_config.json``.
    Compiling costs seconds to a minute per graph (a few per run), so it pays on long GPU runs only.
    """
    config = config or TrainConfig()
    if compile is not None:
        config = dataclasses.replace(config, compile=compile_mode(compile))
    plan = plan_schedule(config, len(train_data))
    logger.info("schedule: %d training rows, batch %d, %d steps (%d epochs of %d), patience %d epochs, lr %g",
                len(train_data), plan.batch_size, plan.total_steps, plan.epochs, plan.steps_per_epoch,
                plan.patience, plan.lr)
    if len(train_data) < SMALL_CACHE:
        logger.warning("only %d training rows: the head trains in seconds, but every metric measured on this "
                       "little data has wide confidence intervals (read them, not the point values)",
                       len(train_data))
    if plan.total_steps < min(FEW_STEPS, min_steps(len(train_data))) and config.max_steps is None:
        logger.warning("only %d optimiser steps (%d training rows, batch %d, %d epochs): the head is likely "
                       "undertrained; use a smaller --batch-size, more --epochs or --steps, or the default "
                       "schedule instead of a fixed one", plan.total_steps, len(train_data), plan.batch_size,
                       plan.epochs)
    if config.auc_pairs == "group":
        if not hasattr(train_data, "groups"):
            raise ValueError("auc_pairs='group' needs content groups: train on a feature cache (its group column)")
        sampler = GroupBatchSampler(train_data.y, train_data.groups, plan.batch_size, seed=config.seed)
        resident = False  # batches carry their group ids from the host
    else:
        sampler = StratifiedBatchSampler(train_data.y, plan.batch_size, seed=config.seed)
    log_file = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "train_config.json", config.to_dict())
        log_file = open_new(out_dir / "train_log.jsonl", "w")
    device = torch.device(config.device)
    head_config = config.head_config(train_data.dim, getattr(train_data, "tokens", None))
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(config.seed)
        try:
            if resident is None:
                resident = resident_rows.fits(train_data, device, device_budget)
            rows = resident_rows.DeviceRows(train_data, device) if resident else None
            return _run(train_data, val_data, config, plan, head_config, sampler, device, log_file, progress,
                        rows=rows)
        finally:
            if log_file is not None:
                log_file.close()


def _batches(train_data, rows, sampler, epoch: int, limit: Optional[int], device) -> Iterator[tuple]:
    """(features, labels, group ids or None) of one epoch on ``device``: gathered there when
    ``rows`` are resident, else read from the source (the next batch in a thread) and copied."""
    if rows is not None:
        for xb, yb in rows.batches(sampler, epoch, limit):
            yield xb, yb, None
        return
    batches = sampler.epoch(epoch)
    if limit is not None:
        batches = itertools.islice(batches, max(0, limit))
    grouped = isinstance(sampler, GroupBatchSampler)
    for idx, x in _prefetched(train_data, batches):
        yield (torch.from_numpy(x).to(device),
               torch.from_numpy(train_data.y[idx]).to(device=device, dtype=torch.float32),
               torch.from_numpy(train_data.groups[idx]).to(device) if grouped else None)


def _run(train_data, val_data, config, plan, head_config, sampler, device, log_file, progress, *,
         rows=None) -> TrainResult:
    t0 = time.perf_counter()
    head = create_head(head_config).to(device)
    loss_fn = build_loss(config)
    step_loss = forward_loss(head, loss_fn, config.compile)
    if config.compile != "none":
        logger.info("compiling the head and the loss together (mode %s): the first steps take longer",
                    config.compile)
    fused = {"fused": True} if device.type == "cuda" else {}  # one kernel per parameter group
    if config.sam:
        opt = SAM(head.parameters(), torch.optim.AdamW, rho=config.rho, adaptive=config.adaptive,
                  lr=plan.lr, weight_decay=config.weight_decay, **fused)
    else:
        opt = torch.optim.AdamW(head.parameters(), lr=plan.lr, weight_decay=config.weight_decay, **fused)
    total = plan.total_steps
    history: List[Dict[str, Any]] = []
    best = ((-math.inf, -math.inf), 0, None, None)  # (auc, -val loss), epoch, state, val logits
    step, stale, stopped = 0, 0, False
    bar = tqdm(total=total, desc="train", unit="step", disable=None if progress else True, leave=False)
    epoch = 0
    for epoch in range(1, plan.epochs + 1):
        e0, losses, lr = time.perf_counter(), [], plan.lr
        head.train()
        limit = None if total >= plan.epochs * len(sampler) else total - step
        # on a GPU the losses skip their host-side label checks (the sampler guarantees both
        # classes, the labels are 0/1): no device -> host read anywhere in the step
        with trusted_batches() if device.type == "cuda" else contextlib.nullcontext():
            for xb, yb, gb in _batches(train_data, rows, sampler, epoch, limit, device):
                lr = _lr_at(config, plan.lr, step, plan.horizon)
                for group in opt.param_groups:
                    group["lr"] = lr
                losses.append(sam_step(head, opt, loss_fn, xb, yb, config.sam, step_loss=step_loss,
                                       groups=gb))  # no sync
                step += 1
                bar.update(1)
        record: Dict[str, Any] = {"epoch": epoch, "steps": step, "train_loss": float(
            torch.stack(losses).double().mean()) if losses else math.nan, "lr": lr}
        if val_data is not None and len(val_data):
            logits = predict_logits(head, val_data, batch_size=config.eval_batch_size, device=device)
            m = binary_metrics(val_data.y, logits, scores_are_probs=False)
            z = logits.astype(np.float64)
            val_loss = float(np.mean(np.logaddexp(0.0, z) - val_data.y * z))  # BCE: breaks ties of the AUC
            record.update(val_auc=m["auc"], val_ap=m["ap"], val_acc=m["acc@0.5"], val_loss=val_loss)
            if not math.isfinite(m["auc"]):
                pass  # one-class validation: no ranking signal, no early stopping
            elif (m["auc"], -val_loss) > best[0]:  # a small validation set saturates at AUC 1: then the loss decides
                state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best, stale = ((m["auc"], -val_loss), epoch, state, logits), 0
            else:
                stale += 1
        record["seconds"] = round(time.perf_counter() - e0, 4)
        history.append(record)
        bar.set_postfix({k: f"{record[k]:.4f}" for k in ("train_loss", "val_auc") if k in record})
        if log_file is not None:
            log_file.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                       for k, v in record.items()}) + "\n")
            log_file.flush()
        if step >= total:
            break
        if plan.patience and stale >= plan.patience:
            stopped = True
            logger.info("early stop after epoch %d: no better validation AUC since epoch %d", epoch, best[1])
            break
    bar.close()
    val_logits = None
    if best[2] is not None:
        head.load_state_dict(best[2])
        best_epoch, val_logits = best[1], best[3]
    else:
        best_epoch = epoch
        if val_data is not None and len(val_data):
            logger.warning("validation AUC undefined (one class?): keeping the last epoch")
            val_logits = predict_logits(head, val_data, batch_size=config.eval_batch_size, device=device)
    head.eval().cpu()
    return TrainResult(head=head, head_config=head_config, history=history, best_epoch=best_epoch,
                       epochs_run=epoch, stopped_early=stopped, steps=step, val_logits=val_logits,
                       seconds=time.perf_counter() - t0, schedule=plan.to_dict())
