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

The head plugs its step and its batches (:mod:`clipdetect.models.sources`) into the one
training loop of :mod:`clipdetect.models.trainer`, which owns the schedule, the best-epoch
selection, the log and the checkpoints (``train(..., checkpoints=DIR, resume=True)``).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from clipdetect.features.splits import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION
from clipdetect.models.calibration import CALIBRATION_METHODS
from clipdetect.models.thresholds import THRESHOLD_RULES
from clipdetect.models.checkpoint import check_resumable
from clipdetect.models.heads import HeadConfig, create_head
from clipdetect.models.samplers import (BALANCE_MODES, BALANCE_POWERS, ContentBalancedBatchSampler,
                                        GroupBatchSampler, SourceBalancedBatchSampler, StratifiedBatchSampler)
from clipdetect.models.schedule import DEFAULT_LR, FEW_STEPS, PRESETS, SMALL_CACHE, Schedule, min_steps, plan_schedule
from clipdetect.models.losses import create_loss
from clipdetect.models.sam import SAM
from clipdetect.models.sources import feature_spread, predict_logits, prefetched
from clipdetect.models.step import compile_mode, forward_loss, sam_step
from clipdetect.models.trainer import LAST, Fit, TrainResult, run_fit
from clipdetect.models import resident as resident_rows
from clipdetect.core.config import from_dict
from clipdetect.core.io import read_json, write_json

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "build_loss"]
#: TrainConfig fields a resumed run may change (they do not change the weights)
RESUME_FREE = ("eval_batch_size",)

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
    ``balance``: "none" (rows drawn uniformly within their class), "source" (every source of a
    cache's ``source`` column weighs the same within its class) or "sqrt" (a source weighs as the
    square root of its size): :class:`~clipdetect.models.samplers.SourceBalancedBatchSampler`; or
    "content" (fakes and reals drawn in the same proportion from every content cluster of the
    training rows, so content alone predicts nothing): :class:`~clipdetect.models.samplers.ContentBalancedBatchSampler`.
    ``feature_noise``: in every step, a random half of the batch's rows get Gaussian noise of this
    many times each feature's standard deviation over the training rows (0: none), fresh each step.
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
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    split_seed: int = SPLIT_SEED
    calibrate: bool = True
    calibration: str = "platt"
    threshold_rule: str = "fpr"
    threshold_fpr: float = 0.05
    split: str = "holdout"
    compile: str = "none"
    views: Optional[List[str]] = None  # train and validate on these views only (None: every view)
    auc_pairs: str = "all"  # "group": the AUC loss pairs fakes and reals of the same content group only
    balance: str = "none"  # "source" / "sqrt": sources weigh the same (as √size) within their class; "content"
    feature_noise: float = 0.0  # × each feature's training std, on half of every batch's rows

    def __post_init__(self) -> None:
        self.compile = compile_mode(self.compile)
        for name, choices in (("auc_pairs", AUC_PAIRS), ("balance", BALANCE_MODES),
                              ("loss", sorted(LOSS_OPTIONS)),
                              ("calibration", CALIBRATION_METHODS),
                              ("threshold_rule", THRESHOLD_RULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {choices}")
        if self.views is not None:
            from clipdetect.data.views import parse_views

            self.views = parse_views(self.views)
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
        if not self.feature_noise >= 0.0:
            raise ValueError(f"feature_noise must be >= 0 (times each feature's std; 0: none), got {self.feature_noise!r}")
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
        """Keyword arguments of :func:`~clipdetect.models.thresholds.fit_on_validation`."""
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


def train(train_data, *, val_data=None, config: Optional[TrainConfig] = None, out_dir: str | Path | None = None,
          progress: bool = True, resident: Optional[bool] = None,
          device_budget: float = resident_rows.DEFAULT_BUDGET,
          compile: str | bool | None = None, checkpoints: str | Path | None = None,
          resume: bool = False) -> TrainResult:
    """Train a head on ``train_data`` (an :class:`ArraySource` or :class:`CacheSource`) with the
    one training loop (:func:`~clipdetect.models.trainer.run_fit`).

    With ``val_data``, selects the epoch of best validation AUC and stops early after
    ``config.patience`` epochs without improvement. With ``out_dir``, writes
    ``train_config.json`` and a JSON-lines log ``train_log.jsonl`` (one record per epoch:
    train loss, val auc/ap/acc, lr, seconds) there. Same seed and data → identical weights.
    With ``checkpoints`` (a folder), a checkpoint is written there after every epoch;
    ``resume=True`` continues the run saved there (refused if it was started with other
    settings) and ends with the weights the uninterrupted run would have.

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
    _announce(plan, config, len(train_data))
    if config.auc_pairs == "group":
        if not hasattr(train_data, "groups"):
            raise ValueError("auc_pairs='group' needs content groups: train on a feature cache (its group column)")
        if config.balance != "none":
            raise ValueError(f"balance={config.balance!r} and auc_pairs='group' do not combine (group batches hold "
                             "whole groups); choose one")
        sampler = GroupBatchSampler(train_data.y, train_data.groups, plan.batch_size, seed=config.seed)
        resident = False  # batches carry their group ids from the host
    elif config.balance == "content":
        sampler = ContentBalancedBatchSampler(train_data.y, train_data.content, plan.batch_size, seed=config.seed)
    elif config.balance != "none":
        if not hasattr(train_data, "sources"):
            raise ValueError(f"balance={config.balance!r} needs the rows' sources: train on a feature cache "
                             "(its source column), or use balance='none' for in-memory arrays")
        sampler = SourceBalancedBatchSampler(train_data.y, train_data.sources, plan.batch_size,
                                             power=BALANCE_POWERS[config.balance], seed=config.seed)
    else:
        sampler = StratifiedBatchSampler(train_data.y, plan.batch_size, seed=config.seed)
    if checkpoints is not None and resume and (Path(checkpoints) / f"{LAST}.json").exists():
        check_resumable(read_json(Path(checkpoints) / f"{LAST}.json", what="training checkpoint").get("config", {}),
                        config.to_dict(), where=str(checkpoints), free=RESUME_FREE)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / "train_config.json", config.to_dict())
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(config.seed)
        if resident is None:
            resident = resident_rows.fits(train_data, device, device_budget)
        rows = resident_rows.DeviceRows(train_data, device) if resident else None
        fit = _head_fit(train_data, val_data, config, sampler, device, rows, plan.lr)
        return run_fit(fit, plan, checkpoints=checkpoints, resume=resume, progress=progress,
                       log_path=None if out_dir is None else Path(out_dir) / "train_log.jsonl",
                       run_info={"config": config.to_dict()})


def _announce(plan: Schedule, config: TrainConfig, n_train: int) -> None:
    logger.info("schedule: %d training rows, batch %d, %d steps (%d epochs of %d), patience %d epochs, lr %g",
                n_train, plan.batch_size, plan.total_steps, plan.epochs, plan.steps_per_epoch, plan.patience, plan.lr)
    if n_train < SMALL_CACHE:
        logger.warning("only %d training rows: the head trains in seconds, but every metric measured on this "
                       "little data has wide confidence intervals (read them, not the point values)", n_train)
    if plan.total_steps < min(FEW_STEPS, min_steps(n_train)) and config.max_steps is None:
        logger.warning("only %d optimiser steps (%d training rows, batch %d, %d epochs): the head is likely "
                       "undertrained; use a smaller --batch-size, more --epochs or --steps, or the default "
                       "schedule instead of a fixed one", plan.total_steps, n_train, plan.batch_size, plan.epochs)


def _head_fit(train_data, val_data, config: TrainConfig, sampler, device, rows, lr: float) -> Fit:
    """A head, its SAM/AdamW optimiser, its step (:func:`sam_step`) and its batches, for :func:`run_fit`."""
    head_config = config.head_config(train_data.dim, getattr(train_data, "tokens", None))
    head = create_head(head_config).to(device)
    loss_fn = build_loss(config)
    step_loss = forward_loss(head, loss_fn, config.compile)
    noise = None if not config.feature_noise else \
        torch.from_numpy(config.feature_noise * feature_spread(train_data, seed=config.seed)).to(device)
    if config.compile != "none":
        logger.info("compiling the head and the loss together (mode %s): the first steps take longer",
                    config.compile)
    fused = {"fused": True} if device.type == "cuda" else {}  # one kernel per parameter group
    if config.sam:
        opt = SAM(head.parameters(), torch.optim.AdamW, rho=config.rho, adaptive=config.adaptive,
                  lr=lr, weight_decay=config.weight_decay, **fused)
    else:
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=config.weight_decay, **fused)

    def step(batch):
        xb, yb, gb = batch
        if noise is not None:
            xb = jitter(xb, noise)
        return sam_step(head, opt, loss_fn, xb, yb, config.sam, step_loss=step_loss, groups=gb)  # no sync

    def validate():
        return predict_logits(head, val_data, batch_size=config.eval_batch_size, device=device), {}

    has_val = val_data is not None and len(val_data) > 0
    return Fit(modules={"head": head}, head_config=head_config, optimizer=opt, step=step, device=device,
               batches=lambda epoch, limit: _batches(train_data, rows, sampler, epoch, limit, device),
               validate=validate if has_val else None, y_val=val_data.y if has_val else None)


def jitter(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [B, ...] with Gaussian noise of per-feature std ``scale`` (``x``'s shape without B) on a
    random half of its rows."""
    hit = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) < 0.5
    return torch.where(hit, x + torch.randn_like(x) * scale, x)


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
    for idx, x in prefetched(train_data, batches):
        yield (torch.from_numpy(x).to(device),
               torch.from_numpy(train_data.y[idx]).to(device=device, dtype=torch.float32),
               torch.from_numpy(train_data.groups[idx]).to(device) if grouped else None)
