"""One training loop for every fit: a detector head on embeddings, a distilled student with its head.

A fit plugs a :class:`Fit` into :func:`run_fit`: the modules it trains (their weights are
what is checkpointed and what the best epoch restores), the optimiser, a step function (one
optimisation step on a batch; returns the detached loss, or a dict of named losses, without
waiting for the device) and a batch source (the batches of an epoch), plus the validation
logits of the current weights. The loop owns the rest, the same for every fit:

* the learning rate of every step (:meth:`~clipdetect.models.schedule.Schedule.lr_at`: linear
  warm-up, then cosine decay over the schedule's horizon, or constant);
* after each epoch, one history record (``epoch``, ``steps``, ``train_<loss>`` means, ``lr``,
  ``val_auc``/``val_ap``/``val_acc``/``val_loss`` and what the fit adds, ``seconds``),
  written to a JSON-lines log when given;
* best-epoch selection: the best validation ROC-AUC, ties (a small validation set saturates
  at AUC 1) broken by the lower validation BCE; early stopping after ``patience`` epochs
  without improvement; a one-class validation set keeps the last epoch;
* checkpoints: with a folder, ``last`` (weights, optimiser, random-number generators, history)
  after every epoch and ``best`` when the selection improves; ``resume=True`` continues after
  the last completed epoch with the batches and random numbers the uninterrupted run would use.

The result (:class:`TrainResult`) carries the selected weights and their validation logits, on
which :func:`clipdetect.models.fitting.from_result` fits the calibration and the threshold.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from clipdetect.core.escape import plain_json
from clipdetect.core.io import open_new
from clipdetect.core.metrics import binary_metrics
from clipdetect.core.progress import progress_bar
from clipdetect.models.checkpoint import load_checkpoint, save_checkpoint
from clipdetect.models.heads import HeadConfig
from clipdetect.models.losses import trusted_batches
from clipdetect.models.schedule import Schedule

logger = logging.getLogger(__name__)

__all__ = ["Fit", "TrainResult", "run_fit", "LAST"]

LAST, BEST = "last", "best"


@dataclass
class Fit:
    """What one kind of fit plugs into :func:`run_fit`."""

    modules: Dict[str, torch.nn.Module]        # trained together; must include "head"
    head_config: HeadConfig
    optimizer: torch.optim.Optimizer
    step: Callable[[Any], Any]                 # a batch -> detached loss tensor or {name: loss tensor}
    batches: Callable[[int, Optional[int]], Iterable]  # (epoch, at most this many steps or None) -> batches
    validate: Optional[Callable[[], Tuple[np.ndarray, Dict[str, float]]]] = None  # -> (logits, extra record)
    y_val: Optional[np.ndarray] = None
    begin_epoch: Callable[[int], None] = lambda epoch: None  # e.g. reseed dropout per epoch
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class TrainResult:
    head: torch.nn.Module
    head_config: HeadConfig
    history: List[Dict[str, Any]]
    best_epoch: int                 # 1-based; the last epoch when there is no validation AUC
    epochs_run: int
    stopped_early: bool
    steps: int
    val_logits: Optional[np.ndarray] = None   # of the selected weights, in the order of the validation rows
    seconds: float = 0.0
    schedule: Optional[Dict[str, Any]] = None  # the resolved plan (Schedule.to_dict())


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    stale: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "key": None})
    best_weights: Optional[Dict[str, Dict[str, torch.Tensor]]] = None
    best_logits: Optional[np.ndarray] = None
    last_logits: Optional[np.ndarray] = None   # of the epoch just validated
    best_new: bool = False                     # the best weights changed since the last checkpoint


def run_fit(fit: Fit, plan: Schedule, *, checkpoints: str | Path | None = None, resume: bool = False,
            log_path: str | Path | None = None, run_info: Optional[Dict[str, Any]] = None,
            progress: bool = True, desc: str = "train", announce: bool = False) -> TrainResult:
    """Train ``fit`` for ``plan`` (see the module docstring); ``run_info`` is saved with every
    checkpoint (e.g. the config, for the caller's resume check). ``announce``: log every epoch's
    record at INFO level (else DEBUG)."""
    t0 = time.perf_counter()
    state = _restore(fit, checkpoints) if resume and checkpoints and (Path(checkpoints) / f"{LAST}.json").exists() \
        else _State()
    log = open_new(log_path, "w") if log_path is not None else None
    bar = progress_bar(total=plan.total_steps, initial=state.step, desc=desc, unit="step", enabled=progress,
                       leave=False)
    stopped = False
    try:
        for record in state.history if log else ():
            _write(log, record)
        for epoch in range(state.epoch + 1, plan.epochs + 1):
            record = _epoch(fit, plan, state, epoch, bar)
            _select(fit, state, record)
            state.history.append(record)
            logger.log(logging.INFO if announce else logging.DEBUG, "epoch %d: %s", epoch, record)
            if log:
                _write(log, record)
            if checkpoints:
                _save(fit, state, checkpoints, run_info)
            if state.step >= plan.total_steps:
                break
            if plan.patience and state.stale >= plan.patience:
                stopped = True
                logger.info("early stop after epoch %d: no better validation AUC since epoch %d", epoch,
                            state.best["epoch"])
                break
    finally:
        bar.close()
        if log:
            log.close()
    return _result(fit, plan, state, stopped, time.perf_counter() - t0)


def _epoch(fit: Fit, plan: Schedule, state: _State, epoch: int, bar) -> Dict[str, Any]:
    e0, losses, lr = time.perf_counter(), [], plan.lr
    for m in fit.modules.values():
        m.train()
    fit.begin_epoch(epoch)
    limit = None if plan.total_steps >= plan.epochs * plan.steps_per_epoch else plan.total_steps - state.step
    # on a GPU the losses skip their host-side label checks (the samplers guarantee both classes,
    # the labels are 0/1): no device -> host read anywhere in the step
    with trusted_batches() if fit.device.type == "cuda" else contextlib.nullcontext():
        for batch in fit.batches(epoch, limit):
            lr = plan.lr_at(state.step)
            for group in fit.optimizer.param_groups:  # a group's "lr_scale" (default 1) scales the schedule
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = fit.step(batch)
            losses.append(loss if isinstance(loss, dict) else {"loss": loss})
            state.step += 1
            bar.update(1)
    record: Dict[str, Any] = {"epoch": epoch, "steps": state.step}
    for name in (losses[0] if losses else {"loss": None}):
        record[f"train_{name}"] = float(torch.stack([d[name] for d in losses]).double().mean()) if losses \
            else math.nan
    record["lr"] = lr
    state.epoch = epoch
    if fit.validate is not None:
        record.update(_validate(fit, state))
    record["seconds"] = round(time.perf_counter() - e0, 4)
    bar.set_postfix({k: f"{record[k]:.4f}" for k in ("train_loss", "val_auc") if k in record})
    return record


def _validate(fit: Fit, state: _State) -> Dict[str, Any]:
    logits, extra = fit.validate()
    m = binary_metrics(fit.y_val, logits, scores_are_probs=False)
    z = logits.astype(np.float64)
    val_loss = float(np.mean(np.logaddexp(0.0, z) - fit.y_val * z))  # BCE: breaks ties of the AUC
    state.last_logits = logits
    return {"val_auc": m["auc"], "val_ap": m["ap"], "val_acc": m["acc@0.5"], "val_loss": val_loss, **extra}


def _select(fit: Fit, state: _State, record: Dict[str, Any]) -> None:
    """Keep the weights of the best epoch so far (a better AUC, or the same AUC at a lower loss)."""
    auc = record.get("val_auc", math.nan)
    if not math.isfinite(auc):
        return  # no validation, or one class: no ranking signal, no early stopping
    key = [auc, -record["val_loss"]]
    if state.best["key"] is None or tuple(key) > tuple(state.best["key"]):
        state.best = {"epoch": record["epoch"], "key": key, "val_auc": auc}
        state.best_weights = {n: {k: v.detach().clone() for k, v in m.state_dict().items()}
                              for n, m in fit.modules.items()}
        state.best_logits, state.stale = state.last_logits, 0
        state.best_new = True
    else:
        state.stale += 1


def _save(fit: Fit, state: _State, folder, run_info) -> None:
    if state.best_new:
        save_checkpoint(folder, BEST, weights=state.best_weights, info={"epoch": state.best["epoch"]},
                        tensors={"val_logits": torch.from_numpy(np.asarray(state.best_logits))})
        state.best_new = False
    info = {"epoch": state.epoch, "step": state.step, "stale": state.stale, "history": state.history,
            "best": state.best, **(run_info or {})}
    save_checkpoint(folder, LAST, weights={n: m.state_dict() for n, m in fit.modules.items()}, opt=fit.optimizer,
                    info=info, device=fit.device)


def _restore(fit: Fit, folder) -> _State:
    info = load_checkpoint(folder, LAST, modules=list(fit.modules), opt=fit.optimizer, device=fit.device)
    for n, m in fit.modules.items():
        m.load_state_dict(info["weights"][n])
    state = _State(epoch=info["epoch"], step=info["step"], stale=info["stale"], history=info["history"],
                   best=info["best"])
    if state.best["epoch"]:
        best = load_checkpoint(folder, BEST, modules=list(fit.modules))
        state.best_weights = best["weights"]
        state.best_logits = best["tensors"]["val_logits"].numpy()
    logger.info("resuming %s after epoch %d", folder, state.epoch)
    return state


def _write(log, record: Dict[str, Any]) -> None:
    log.write(json.dumps(plain_json(record)) + "\n")
    log.flush()


def _result(fit: Fit, plan: Schedule, state: _State, stopped: bool, seconds: float) -> TrainResult:
    val_logits = None
    if state.best_weights is not None:
        for n, m in fit.modules.items():
            m.load_state_dict(state.best_weights[n])
        best_epoch, val_logits = state.best["epoch"], state.best_logits
    else:
        best_epoch = state.epoch
        if fit.validate is not None:
            logger.warning("validation AUC undefined (one class?): keeping the last epoch")
            val_logits = fit.validate()[0]
    head = fit.modules["head"].eval().cpu()
    return TrainResult(head=head, head_config=fit.head_config, history=state.history, best_epoch=best_epoch,
                       epochs_run=state.epoch, stopped_early=stopped, steps=state.step, val_logits=val_logits,
                       seconds=seconds, schedule=plan.to_dict())
