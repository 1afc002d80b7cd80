"""One optimisation step of the trainer, and the ``torch.compile`` modes it can run under.

:func:`sam_step` runs the forward pass and the loss, the backward pass and the optimiser (SAM's
two passes, or one plain step). :func:`forward_loss` builds the ``(features, labels) -> loss``
function it calls, compiled as a single graph for the modes of :data:`COMPILE_MODES`:

* ``"none"``: eager PyTorch;
* ``"default"``: ``torch.compile`` of the head *and* the loss together, so inductor fuses the
  loss's elementwise work and reductions into the head's kernels;
* ``"graphs"``: the same with ``mode="reduce-overhead"``: on CUDA, inductor also captures the
  forward and backward kernels as CUDA graphs and replays each with one launch (on the CPU it
  behaves like ``"default"``).

The loss (:mod:`clipdetect.models.losses`) traces as one graph without breaks: under compilation
it skips the host-side label checks and takes the AUC term's pair mean over a masked square
matrix instead of a data-dependent selection (same value). Shapes are static (``dynamic=False``):
the stratified batches vary by a row or two, and each size is compiled once; SAM's second pass
(BatchNorm statistics frozen) is compiled once more. Compiling takes seconds to a minute per
graph, so it pays only on long GPU runs. Dropout inside a compiled graph draws its masks from
inductor's own generator: runs with the same seed agree with each other, not with eager ones.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

from clipdetect.models.sam import frozen_bn_stats

logger = logging.getLogger(__name__)

__all__ = ["COMPILE_MODES", "compile_mode", "forward_loss", "sam_step"]

#: accepted values of ``compile`` (``TrainConfig.compile``, ``train(compile=...)``, ``--compile``)
COMPILE_MODES = ("none", "default", "graphs")


def compile_mode(value: Any) -> str:
    """``value`` as one of :data:`COMPILE_MODES`; True means "default", False and None mean "none"."""
    if value is True:
        return "default"
    if value is False or value is None:
        return "none"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"compile={value!r} is not a compile mode; choose one of {', '.join(COMPILE_MODES)} "
                     "(True and False mean 'default' and 'none')")


def forward_loss(head: torch.nn.Module, loss_fn: Callable, mode: str = "none") -> Callable:
    """``(xb, yb[, gb]) -> loss_fn(head(xb), yb[, groups=gb])``, compiled as one graph unless ``mode``
    is ``"none"``; ``gb``: content-group ids for a loss that pairs within groups."""
    mode = compile_mode(mode)

    def head_loss(xb: torch.Tensor, yb: torch.Tensor, gb: Optional[torch.Tensor] = None) -> torch.Tensor:
        return loss_fn(head(xb), yb) if gb is None else loss_fn(head(xb), yb, groups=gb)

    if mode == "none":
        return head_loss
    compiled = torch.compile(head_loss, mode="reduce-overhead" if mode == "graphs" else None, dynamic=False)
    if mode == "default":
        return compiled

    def graphed_loss(xb: torch.Tensor, yb: torch.Tensor, gb: Optional[torch.Tensor] = None) -> torch.Tensor:
        # a CUDA graph's outputs are overwritten when the next call starts a new step (SAM's second
        # pass does): keep the loss in memory of its own (clone is differentiable)
        return compiled(xb, yb, gb).clone()

    return graphed_loss


def sam_step(head, opt, loss_fn, xb, yb, use_sam: bool, *,
             step_loss: Optional[Callable] = None, groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One optimisation step; returns the (detached) loss without waiting for the device.

    ``step_loss(xb, yb)`` computes the loss (default ``loss_fn(head(xb), yb)``; :func:`forward_loss`
    makes a compiled one). With SAM it runs twice: at the weights and at the perturbed point, the
    second time with ``head``'s BatchNorm running statistics frozen.
    """
    step_loss = step_loss or forward_loss(head, loss_fn)
    loss = step_loss(xb, yb, groups)
    loss.backward()
    if use_sam:
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(head):
            step_loss(xb, yb, groups).backward()
        opt.second_step(zero_grad=True)
    else:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach()
