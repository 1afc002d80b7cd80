r"""Sharpness-Aware Minimization (Foret et al., 2021) wrapped around any base optimiser.

SAM minimises the worst-case loss in a :math:`\rho`-ball around the weights,
:math:`\min_w \max_{\|\epsilon\|_2 \le \rho} L(w + \epsilon)`, using the first-order solution

.. math::

    \hat\epsilon(w) = \rho \, \frac{T_w^2 \, \nabla L(w)}{\| T_w \nabla L(w) \|_2},

where :math:`T_w = I` for SAM and :math:`T_w = \mathrm{diag}(|w|)` for adaptive SAM (ASAM,
Kwon et al., 2021), and the norm is global over all parameters. One update is

1. compute :math:`g = \nabla L(w)` and move to :math:`w + \hat\epsilon(w)` (:meth:`SAM.first_step`);
2. compute :math:`g' = \nabla L(w + \hat\epsilon)`, restore :math:`w` and apply the base optimiser
   with :math:`g'` (:meth:`SAM.second_step`).

Usage with explicit passes (the BatchNorm running statistics are updated by the first pass only)::

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()
    opt.first_step(zero_grad=True)
    with frozen_bn_stats(model):
        loss_fn(model(x), y).backward()
    opt.second_step(zero_grad=True)

or with a closure, ``opt.zero_grad(); opt.step(closure)``, where ``closure`` runs forward and backward
and returns the loss. The base optimiser shares :attr:`SAM.param_groups`, so learning-rate schedulers
may wrap either ``opt`` or ``opt.base_optimizer``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)

__all__ = ["SAM", "create_sam", "disable_running_stats", "enable_running_stats", "frozen_bn_stats"]

_EPS = 1e-12
_BACKUP_ATTR = "_sam_bn_backup"


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization over ``base_optimizer_cls``.

    Args:
        params: parameters or parameter groups (groups may override ``rho`` / ``adaptive``).
        base_optimizer_cls: optimiser class applied at the second step, e.g. ``torch.optim.SGD``.
        rho: radius of the neighbourhood (``>= 0``).
        adaptive: use ASAM's scale-invariant perturbation (:math:`T_w = |w|`).
        **base_kwargs: passed to ``base_optimizer_cls`` (``lr``, ``momentum``, ``weight_decay``, ...).

    The perturbation is computed and undone with ``torch._foreach_*`` kernels, one launch per parameter
    group and (device, dtype) rather than one per parameter. Parameters whose ``grad`` is None are not
    perturbed (and a stale offset of theirs is dropped).
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer_cls: type[torch.optim.Optimizer],
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0.0:
            raise ValueError(f"rho must be >= 0, got {rho!r}")
        defaults = dict(rho=rho, adaptive=adaptive, **base_kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @staticmethod
    def _buckets(pairs) -> dict[tuple[torch.device, torch.dtype], tuple[list, list]]:
        """``(param, tensor)`` pairs whose tensor is not None, as ``(params, tensors)`` lists per
        (device, dtype) of the parameter: the unit of one ``torch._foreach_*`` call."""
        buckets: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
        for p, t in pairs:
            if t is not None:
                params, tensors = buckets.setdefault((p.device, p.dtype), ([], []))
                params.append(p)
                tensors.append(t)
        return buckets

    @torch.no_grad()
    def _grad_norm(self, buckets: list) -> torch.Tensor:
        """Global norm :math:`\\|T_w g\\|_2` over all parameters, on the first parameter's device.

        One ``torch._foreach_norm`` per parameter group and (device, dtype), then the norm of those norms.
        """
        device = self.param_groups[0]["params"][0].device
        norms: list[torch.Tensor] = []
        for group, group_buckets in zip(self.param_groups, buckets):
            for params, grads in group_buckets.values():
                # |w| * g and w * g have the same norm: no abs needed
                scaled = torch._foreach_mul(params, grads) if group["adaptive"] else grads
                norms.extend(n.to(device) for n in torch._foreach_norm(scaled, 2))
        if not norms:
            return torch.zeros((), device=device)
        return torch.stack(norms).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to :math:`w + \\hat\\epsilon(w)` using the current gradients; remember the offset."""
        buckets = [self._buckets((p, p.grad) for p in g["params"]) for g in self.param_groups]
        grad_norm = self._grad_norm(buckets)
        for group, group_buckets in zip(self.param_groups, buckets):
            scale = group["rho"] / (grad_norm + _EPS)
            for p in group["params"]:
                if p.grad is None and p in self.state:
                    self.state[p].pop("e_w", None)  # no offset to undo for it at the second step
            for (device, dtype), (params, grads) in group_buckets.items():
                s = scale.to(device=device, dtype=dtype)
                if group["adaptive"]:  # |w|^2 * g * scale
                    e_w = torch._foreach_mul(params, params)
                    torch._foreach_mul_(e_w, grads)
                    torch._foreach_mul_(e_w, s)
                else:
                    e_w = torch._foreach_mul(grads, s)
                torch._foreach_add_(params, e_w)
                for p, e in zip(params, e_w):
                    self.state[p]["e_w"] = e
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore :math:`w` and apply the base optimiser with the gradients taken at the perturbed point."""
        for group in self.param_groups:
            offsets = ((p, self.state[p].pop("e_w", None) if p in self.state else None) for p in group["params"])
            for params, e_w in self._buckets(offsets).values():
                torch._foreach_sub_(params, e_w)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One full SAM update driven by ``closure`` (forward + backward, returns the loss).

        Calls the closure at :math:`w`, :meth:`first_step` (zeroing gradients), the closure again at the
        perturbed point and :meth:`second_step`. Zero the gradients before calling. Returns the loss of
        the first closure call. To keep BatchNorm statistics from the second pass out of the running
        averages, the closure can wrap its forward in :func:`frozen_bn_stats` on its second call.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that runs forward and backward; "
                             "or call first_step() and second_step() explicitly")
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """SAM's own state plus the base optimiser's (e.g. momentum buffers) under ``"base_optimizer"``."""
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        base_state = state_dict.pop("base_optimizer", None)
        super().load_state_dict(state_dict)
        if base_state is not None:
            self.base_optimizer.load_state_dict(base_state)
        self.base_optimizer.param_groups = self.param_groups


def create_sam(
    params: Iterable[Any],
    base_optimizer_cls: type[torch.optim.Optimizer] = torch.optim.SGD,
    *,
    rho: float = 0.05,
    adaptive: bool = False,
    **base_kwargs: Any,
) -> SAM:
    """Build a :class:`SAM` optimiser (SGD base by default)."""
    opt = SAM(params, base_optimizer_cls, rho=rho, adaptive=adaptive, **base_kwargs)
    logger.debug("created SAM(rho=%s, adaptive=%s) over %s", rho, adaptive, base_optimizer_cls.__name__)
    return opt


def disable_running_stats(model: nn.Module) -> None:
    """Stop BatchNorm layers from updating their running statistics (momentum 0, counter kept).

    The previous momentum and ``num_batches_tracked`` are saved and put back by
    :func:`enable_running_stats`.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not hasattr(module, _BACKUP_ATTR):
            counter = module.num_batches_tracked
            saved = counter.clone() if counter is not None else None
            setattr(module, _BACKUP_ATTR, (module.momentum, saved))
            module.momentum = 0.0


def enable_running_stats(model: nn.Module) -> None:
    """Undo :func:`disable_running_stats`: restore BatchNorm momentum and batch counters."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and hasattr(module, _BACKUP_ATTR):
            momentum, saved = getattr(module, _BACKUP_ATTR)
            module.momentum = momentum
            if saved is not None and module.num_batches_tracked is not None:
                module.num_batches_tracked.copy_(saved)
            delattr(module, _BACKUP_ATTR)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: BatchNorm running statistics of ``model`` are left untouched inside."""
    disable_running_stats(model)
    try:
        yield model
    finally:
        enable_running_stats(model)
