"""The training plan in optimiser steps: batch size, step budget, patience, learning rate.

A head is trained by its optimiser *steps*, not by its epochs: the paper's batch of 2048
for 32 epochs is ~16,000 updates on a million-row cache but 32 on the 1,500 training rows
of a small cache, where it loses to plain logistic regression. :func:`plan_schedule` fills
whatever a :class:`~clipdetect.models.train.TrainConfig` leaves at None from the number of
training rows, so the same defaults serve both.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict

__all__ = ["Schedule", "plan_schedule", "auto_batch_size", "min_steps", "PRESETS", "DEFAULT_LR", "MIN_STEPS",
           "FEW_STEPS", "MIN_EPOCHS", "STEPS_PER_ROW", "SMALL_CACHE"]

#: the step budget an automatic schedule gets at least, and the count below which a run warns
MIN_STEPS, FEW_STEPS = 500, 200
#: below MIN_STEPS / STEPS_PER_ROW training rows the step floor shrinks with the data (a tiny
#: cache is learnt in fewer updates, and 500 SAM steps on 86 rows take minutes for nothing)
STEPS_PER_ROW = 0.5
#: fewer training rows than this: the run says that every metric will have wide intervals
SMALL_CACHE = 200
#: epochs an automatic schedule runs at least (the paper's 32: large caches keep its recipe)
MIN_EPOCHS = 32
#: default peak learning rates per head kind (see :func:`plan_schedule`)
DEFAULT_LR = {"mlp": 1e-3, "linear": 0.1, "layers": 1e-3}
#: named recipes; "paper" is the robust CLIP detector's fixed schedule, exactly as published
PRESETS: Dict[str, Dict[str, Any]] = {
    "auto": {},
    "paper": {"batch_size": 2048, "epochs": 32, "patience": 8, "lr": 1e-3},
}


def min_steps(n_train: int) -> int:
    """The step floor of an automatic schedule: :data:`MIN_STEPS`, or ``STEPS_PER_ROW`` per
    training row when that is less (the :data:`MIN_EPOCHS` epochs still run)."""
    return int(min(MIN_STEPS, math.ceil(STEPS_PER_ROW * max(n_train, 1))))


def auto_batch_size(n_train: int) -> int:
    """n_train / 8 rounded down to a power of two, clipped to [32, 2048].

    At least ~8 optimiser steps per epoch on a small cache (the noise of small batches
    regularises, and the step count, not the epoch count, is what trains a head), while a
    large cache keeps the paper's batch of 2048. The floor of 32 keeps both classes and a
    stable BatchNorm estimate in every batch.
    """
    b = 2 ** int(math.floor(math.log2(max(n_train, 1) / 8))) if n_train >= 16 else 2
    return int(min(2048, max(32, b)))


@dataclass(frozen=True)
class Schedule:
    """The resolved plan of a run (what :func:`plan_schedule` decided)."""

    batch_size: int
    steps_per_epoch: int
    epochs: int
    total_steps: int       # steps that will run at most (after max_steps)
    horizon: int           # steps of the learning-rate schedule
    patience: int
    lr: float
    shape: str = "cosine"  # of the learning rate after warm-up: "cosine" (decays to 0) or "constant"
    warmup_steps: int = 0  # of linear warm-up

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimisation step ``step`` (0-based): linear warm-up over
        ``warmup_steps``, then cosine decay to zero at ``horizon`` (or constant)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = self.horizon - self.warmup_steps
        if self.shape == "constant" or span <= 1:
            return self.lr
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(step - self.warmup_steps, span) / span))


def plan_schedule(config: Any, n_train: int) -> Schedule:  # config: a TrainConfig (train.py imports this module)
    """Batch size, step budget, patience and learning rate for ``n_train`` training rows.

    * batch: ``config.batch_size`` or :func:`auto_batch_size` (n/8, power of two, [32, 2048]);
    * steps: ``config.steps``, else ``config.epochs`` × steps per epoch, else
      max(:func:`min_steps`, :data:`MIN_EPOCHS` epochs) rounded up to whole epochs (the floor is
      :data:`MIN_STEPS` from 1,000 training rows up, half a step per row below). A head
      needs a few hundred updates whatever the cache size: the paper's 32 epochs at batch
      2048 are 32 steps on a 1,500-row cache (worse than logistic regression there) but
      ~16,000 on a million rows, where the automatic plan keeps exactly that recipe;
    * patience: ``config.patience``, else max(8, a quarter of the epochs), so that early
      stopping waits a similar number of *steps* on small and large caches;
    * lr: ``config.lr``, else :data:`DEFAULT_LR` of the head (1e-3 for the paper's MLP, whose
      BatchNorm rescales its input; 0.1 for the linear probe, whose weights must grow to
      ~sqrt(d) on unit-norm CLIP embeddings and which Adam moves by ~lr per step).
    """
    batch = int(config.batch_size or auto_batch_size(n_train))
    per_epoch = max(1, math.ceil(n_train / batch))
    if config.steps is not None:
        horizon = int(config.steps)
        epochs = math.ceil(horizon / per_epoch)
    else:
        epochs = int(config.epochs) if config.epochs is not None else \
            max(MIN_EPOCHS, math.ceil(min_steps(n_train) / per_epoch))
        horizon = epochs * per_epoch
    total = horizon if config.max_steps is None else min(horizon, int(config.max_steps))
    patience = config.patience if config.patience is not None else max(8, math.ceil(epochs / 4))
    lr = float(config.lr if config.lr is not None else DEFAULT_LR.get(config.head, DEFAULT_LR["mlp"]))
    return Schedule(batch_size=batch, steps_per_epoch=per_epoch, epochs=epochs, total_steps=total,
                    horizon=horizon, patience=int(patience), lr=lr, shape=config.schedule)
