r"""Training losses for fake-image detectors operating on logits.

Every loss is an :class:`torch.nn.Module` called as ``loss(logits, targets)`` with ``logits`` of shape
``[N]`` and ``targets`` of shape ``[N]`` holding 0 (real) or 1 (fake); it returns a scalar tensor.
Write :math:`s_i` for the logit of sample :math:`i`, :math:`y_i \in \{0, 1\}` for its label and

.. math::

    \ell_i = -\big[y_i \log \sigma(s_i) + (1 - y_i) \log(1 - \sigma(s_i))\big]

for its binary cross-entropy.

* :class:`BCELoss`: :math:`\frac{1}{n}\sum_i \ell_i`.
* :class:`CVaRLoss`: conditional value-at-risk of the :math:`\ell_i`, i.e. the mean of the worst
  :math:`\alpha`-fraction of the losses (see :func:`cvar`).
* :class:`AUCLoss`: pairwise squared-hinge surrogate of :math:`1 - \mathrm{AUC}` (see
  :func:`pairwise_auc_loss`).
* :class:`CombinedLoss`: :math:`\gamma \cdot \mathrm{CVaR}_\alpha + (1 - \gamma) \cdot L_{\mathrm{AUC}}`.

Use :func:`create_loss` to build one by name.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "trusted_batches",
    "LOSS_NAMES",
    "BCELoss",
    "CVaRLoss",
    "AUCLoss",
    "CombinedLoss",
    "create_loss",
    "cvar",
    "pairwise_auc_loss",
    "check_batch",
]

_SAMPLER_HINT = "use a class-aware (stratified) batch sampler so that every batch holds both classes"


_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("clipdetect_trusted_batches", default=False)


def _compiling() -> bool:
    """True while ``torch.compile`` traces the caller (False on torch builds without the query), or
    inside :func:`trusted_batches`: either way, no step may read device values back to the host."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    if is_compiling is not None and is_compiling():  # first: the tracer cannot read a ContextVar
        return True
    return _TRUSTED.get()


@contextlib.contextmanager
def trusted_batches() -> Iterator[None]:
    """Within this block the losses run without device → host reads: the label value checks are
    skipped and the AUC term takes its masked form (the same value), as under ``torch.compile``.
    For a caller that validated its labels once and whose batches always hold both classes (the
    trainer on a GPU, where each read would stall the queue at every step)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def check_batch(logits: Tensor, targets: Tensor, *, need_both_classes: bool = False) -> tuple[Tensor, Tensor]:
    """Validate a ``(logits, targets)`` batch and return it flattened, targets as a bool mask (fake).

    Raises ``ValueError`` if the shapes differ, the batch is empty, targets are not all 0/1, or
    (with ``need_both_classes``) the batch lacks real or fake samples.

    Under ``torch.compile`` only the shape checks run: the value checks read the targets back to the
    host, which would split the compiled graph (and wait for the device) at every call. The trainer
    checks the labels once when it builds its data source, and its stratified batches hold both classes.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits and targets must have the same shape, got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if logits.numel() == 0:
        raise ValueError("empty batch: logits and targets have no elements")
    logits, targets = logits.reshape(-1), targets.reshape(-1)
    if _compiling():
        return logits, targets == 1
    if not bool(((targets == 0) | (targets == 1)).all()):
        bad = targets[(targets != 0) & (targets != 1)][:5].tolist()
        raise ValueError(f"targets must be 0 (real) or 1 (fake); found values such as {bad}")
    fake = targets == 1
    if need_both_classes:
        n_fake = int(fake.sum())
        n_real = fake.numel() - n_fake
        if n_fake == 0 or n_real == 0:
            raise ValueError(f"the AUC loss needs both classes in a batch, but this batch had {n_fake} fake "
                             f"and {n_real} real samples; {_SAMPLER_HINT}")
    return logits, fake


def _per_sample_bce(logits: Tensor, fake: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, fake.to(logits.dtype), reduction="none")


def _check_alpha(alpha: float) -> float:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}")
    return float(alpha)


def cvar(losses: Tensor, alpha: float) -> Tensor:
    r"""Conditional value-at-risk :math:`\mathrm{CVaR}_\alpha` of a 1-D tensor of losses.

    :math:`\alpha` is the fraction of the *worst* losses that is kept (:math:`\alpha = 1` gives the mean,
    :math:`\alpha \to 0` the maximum). With the losses sorted in decreasing order
    :math:`\ell_{(1)} \ge \dots \ge \ell_{(n)}`, :math:`m = \alpha n` and :math:`k = \lfloor m \rfloor`,

    .. math::

        \mathrm{CVaR}_\alpha(\ell) = \frac{1}{m}\Big(\sum_{i=1}^{k} \ell_{(i)} + (m - k)\,\ell_{(k+1)}\Big),

    which equals the Rockafellar--Uryasev variational form

    .. math::

        \mathrm{CVaR}_\alpha(\ell) = \min_{\lambda \in \mathbb{R}}
            \Big\{\lambda + \frac{1}{\alpha n}\sum_{i=1}^{n} \max(0, \ell_i - \lambda)\Big\},

    whose minimiser is :math:`\lambda^\star = \ell_{(k+1)}` (the value-at-risk). The top-k form is
    differentiable almost everywhere; its gradient is zero on the best :math:`n - k - 1` samples.
    """
    alpha = _check_alpha(alpha)
    losses = losses.reshape(-1)
    n = losses.numel()
    if n == 0:
        raise ValueError("cvar of an empty loss vector is undefined")
    m = alpha * n
    if abs(m - round(m)) < 1e-9 * max(1.0, m):  # absorb rounding error such as 0.7 * 10 = 7.000000000000001
        m = float(round(m))
    k = min(int(math.floor(m)), n)
    top = torch.topk(losses, min(k + 1, n), sorted=True).values
    total = top[:k].sum()
    if k < n and m > k:
        total = total + (m - k) * top[k]
    return total / m


def pairwise_auc_loss(logits: Tensor, fake: Tensor, *, margin: float = 0.6, p: float = 2,
                      groups: Optional[Tensor] = None) -> Tensor:
    r"""Pairwise hinge AUC surrogate, averaged over all (fake, real) pairs.

    .. math::

        L_{\mathrm{AUC}} = \frac{1}{n_+ n_-}\sum_{i:\,y_i=1}\ \sum_{j:\,y_j=0}
            \max\big(0,\ \eta - (s_i - s_j)\big)^p,

    with margin :math:`\eta` and power :math:`p` (``p=2``: squared hinge). ``fake`` is a bool mask.
    Builds the :math:`n_+ \times n_-` difference matrix (about 1M entries at batch size 2048).
    Under ``torch.compile`` the same mean is taken over the full :math:`n \times n` matrix with the
    (fake, real) pairs masked in: selecting the classes by mask has a data-dependent size, which would
    split the compiled graph; the masked form is one fused reduction there.

    ``groups`` (integer content-group ids, one per sample): only (fake, real) pairs of the same
    group count — a fake is ranked against the real image of its own prompt, so content cannot
    separate the pair. A batch without such a pair contributes 0.
    """
    if groups is None and not _compiling():
        diff = logits[fake].unsqueeze(1) - logits[~fake].unsqueeze(0)
        return torch.clamp(margin - diff, min=0).pow(p).mean()
    pairs = fake.unsqueeze(1) & ~fake.unsqueeze(0)
    if groups is not None:
        pairs = pairs & (groups.unsqueeze(1) == groups.unsqueeze(0))
    hinge = torch.clamp(margin - (logits.unsqueeze(1) - logits.unsqueeze(0)), min=0).pow(p)
    n_pairs = pairs.sum() if groups is None else pairs.sum().clamp(min=1)
    return torch.where(pairs, hinge, 0.0).sum() / n_pairs


class BCELoss(nn.Module):
    r"""Mean binary cross-entropy on logits, :math:`\frac{1}{n}\sum_i \ell_i`."""

    def forward(self, logits: Tensor, targets: Tensor, groups: Optional[Tensor] = None) -> Tensor:
        logits, fake = check_batch(logits, targets)
        return _per_sample_bce(logits, fake).mean()


class CVaRLoss(nn.Module):
    r""":math:`\mathrm{CVaR}_\alpha` of the per-sample BCE: the mean of the worst :math:`\alpha`-fraction.

    See :func:`cvar` for the exact top-k form (with its fractional term) and the equivalent
    Rockafellar--Uryasev minimisation. ``alpha=0.8`` averages the worst 80% of the losses.
    """

    def __init__(self, alpha: float = 0.8) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(self, logits: Tensor, targets: Tensor, groups: Optional[Tensor] = None) -> Tensor:
        logits, fake = check_batch(logits, targets)
        return cvar(_per_sample_bce(logits, fake), self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class AUCLoss(nn.Module):
    r"""Pairwise hinge AUC loss :math:`\mathrm{mean}_{(i,j)} \max(0, \eta - (s_i - s_j))^p`.

    ``i`` ranges over fake and ``j`` over real samples; see :func:`pairwise_auc_loss`. A batch
    lacking either class raises ``ValueError``.
    """

    def __init__(self, margin: float = 0.6, p: float = 2) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        if p < 1:
            raise ValueError(f"p must be >= 1, got {p!r}")
        self.margin = float(margin)
        self.p = p

    def forward(self, logits: Tensor, targets: Tensor, groups: Optional[Tensor] = None) -> Tensor:
        logits, fake = check_batch(logits, targets, need_both_classes=True)
        return pairwise_auc_loss(logits, fake, margin=self.margin, p=self.p, groups=groups)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, p={self.p}"


class CombinedLoss(nn.Module):
    r""":math:`\gamma \cdot \mathrm{CVaR}_\alpha(\ell) + (1 - \gamma) \cdot L_{\mathrm{AUC}}`.

    ``gamma=1`` is pure CVaR and ``gamma=0`` pure AUC. A term with weight zero is not evaluated, so
    only ``gamma=1`` accepts a batch with a single class; otherwise such a batch raises ``ValueError``.
    """

    def __init__(self, gamma: float = 0.1, alpha: float = 0.8, margin: float = 0.6, p: float = 2) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        self.cvar = CVaRLoss(alpha)
        self.auc = AUCLoss(margin, p)

    def forward(self, logits: Tensor, targets: Tensor, groups: Optional[Tensor] = None) -> Tensor:
        flat, fake = check_batch(logits, targets, need_both_classes=self.gamma < 1.0)
        total = flat.new_zeros(())
        if self.gamma > 0.0:
            total = total + self.gamma * cvar(_per_sample_bce(flat, fake), self.cvar.alpha)
        if self.gamma < 1.0:
            total = total + (1.0 - self.gamma) * pairwise_auc_loss(
                flat, fake, margin=self.auc.margin, p=self.auc.p, groups=groups
            )
        return total

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


_REGISTRY: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "cvar": CVaRLoss,
    "auc": AUCLoss,
    "cvar+auc": CombinedLoss,
    "combined": CombinedLoss,
}
LOSS_NAMES = tuple(_REGISTRY)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name: ``"bce"``, ``"cvar"``, ``"auc"``, ``"cvar+auc"`` (alias ``"combined"``).

    Keyword arguments go to the loss constructor (e.g. ``alpha``, ``margin``, ``p``, ``gamma``).
    """
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid names are {list(LOSS_NAMES)}")
    try:
        loss = _REGISTRY[key](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad options {sorted(kwargs)} for loss {name!r}: {exc}") from exc
    logger.debug("created loss %r", loss)
    return loss
