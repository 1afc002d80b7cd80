"""Compression of detector heads and student encoders: SVD low-rank factorisation and pruning.

* **SVD**: a ``Linear`` layer ``y = W x + b`` with ``W`` [out, in] becomes two layers,
  ``y = B (A x) + b`` with ``A = S_r^{1/2} V_r^T`` [r, in] and ``B = U_r S_r^{1/2}`` [out, r],
  the rank-``r`` truncation of ``W = U S V^T`` (the best rank-r approximation in Frobenius
  and spectral norm). 1×1 convolutions (``groups=1``), the pointwise layers that hold most
  of a CNN student's weights, are factorised the same way. ``r`` is fixed (``rank``) or the
  smallest rank keeping ``energy`` of ``Σ s_i²``; a layer is only replaced when that saves
  parameters (``r·(in+out) < in·out``) unless ``only_if_smaller=False``.
* **Magnitude pruning**: the ``amount`` fraction of smallest-magnitude weights of every
  Linear / Conv layer is set to zero, either over all layers together (``global``) or per
  layer (``layer``). Biases and normalisation parameters are kept. Pruned weights are
  stored **dense with zeros**: the safetensors file keeps its size and inference its
  speed (dense kernels); only a generic compressor (zip, ``deflate``) sees the zeros, and
  the report gives the deflated size next to the raw one.

The structural changes (which layers are factorised, at which rank) are recorded as a
plain dict (``{"svd": {"layer.name": rank}}``); :func:`apply_structure` replays them on a
freshly built model before its weights are loaded, which is how compressed students
(``student.json``) and compressed detector heads (``detector.json`` ``extra.compression``)
are loaded again.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

PRUNE_SCOPES = ("global", "layer")


class LowRankLinear(nn.Module):
    """``second(first(x))``: Linear(in, r, bias=False) then Linear(r, out)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class LowRankConv1x1(nn.Module):
    """A 1×1 convolution factorised as Conv1x1(in, r, stride) then Conv1x1(r, out)."""

    def __init__(self, in_channels: int, out_channels: int, rank: int, *, stride=1, bias: bool = True):
        super().__init__()
        self.first = nn.Conv2d(in_channels, rank, 1, stride=stride, bias=False)
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def _factorizable(m: nn.Module, include_conv: bool = True) -> bool:
    """A plain Linear layer, or (with ``include_conv``) a 1×1 convolution with ``groups=1``."""
    return type(m) is nn.Linear or (include_conv and type(m) is nn.Conv2d and m.groups == 1
                                    and m.kernel_size == (1, 1) and m.padding in ((0, 0), 0)
                                    and m.dilation == (1, 1))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _empty_low_rank(m: nn.Module, rank: int) -> nn.Module:
    if isinstance(m, nn.Linear):
        return LowRankLinear(m.in_features, m.out_features, rank, bias=m.bias is not None)
    return LowRankConv1x1(m.in_channels, m.out_channels, rank, stride=m.stride, bias=m.bias is not None)


def choose_rank(singular_values: torch.Tensor, *, rank: Optional[int] = None,
                energy: Optional[float] = None) -> int:
    """``rank`` (clipped to the matrix) or the smallest r with Σ_{i<r} s_i² ≥ energy · Σ s_i²."""
    full = int(singular_values.numel())
    if rank is not None:
        return max(1, min(int(rank), full))
    if energy is None or not 0.0 < energy <= 1.0:
        raise ValueError(f"give an SVD rank >= 1 or an energy in (0, 1], got rank={rank}, energy={energy}")
    e = torch.cumsum(singular_values.double() ** 2, 0)
    return max(1, min(full, int(torch.searchsorted(e, energy * e[-1] * (1 - 1e-12)).item()) + 1))


@torch.no_grad()
def svd_factorize(model: nn.Module, *, rank: Optional[int] = None, energy: Optional[float] = None,
                  only_if_smaller: bool = True, include_conv: bool = True,
                  skip: Iterable[str] = ()) -> Dict[str, int]:
    """Replace Linear (and 1×1 conv) layers of ``model`` in place by rank-r factorisations.

    Returns ``{layer name: rank}`` of the replaced layers (the structure to record).
    """
    if rank is None and energy is None:
        raise ValueError("svd_factorize needs rank= or energy=")
    if rank is not None and rank < 1:
        raise ValueError(f"SVD rank must be >= 1, got {rank}")
    done: Dict[str, int] = {}
    skip = set(skip)
    for name, m in list(model.named_modules()):  # a list: layers are replaced while iterating
        if name in skip or not _factorizable(m, include_conv):
            continue
        w = m.weight.detach().reshape(m.weight.shape[0], -1).double()
        out_f, in_f = w.shape
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = choose_rank(s, rank=rank, energy=energy)
        if only_if_smaller and r * (in_f + out_f) >= in_f * out_f:
            continue
        new = _empty_low_rank(m, r)
        root = s[:r].sqrt()
        a = (root[:, None] * vh[:r]).to(m.weight.dtype)
        b = (u[:, :r] * root[None, :]).to(m.weight.dtype)
        new.first.weight.copy_(a.reshape(new.first.weight.shape))
        new.second.weight.copy_(b.reshape(new.second.weight.shape))
        if m.bias is not None:
            new.second.bias.copy_(m.bias)
        new.to(m.weight.device).train(m.training)
        _set_module(model, name, new)
        done[name] = r
    logger.info("SVD factorised %d layers", len(done))
    return done


def apply_structure(model: nn.Module, structure: Dict[str, Any]) -> nn.Module:
    """Replay recorded structural changes (``{"svd": {name: rank}}``) on a fresh ``model``."""
    for name, r in (structure or {}).get("svd", {}).items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"compressed layer {name!r} does not exist in this model") from None
        if not _factorizable(m):
            raise ValueError(f"compressed layer {name!r} is a {type(m).__name__}, not a Linear / 1x1 conv")
        full = min(m.weight.shape[0], m.weight.shape[1])
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= full:
            raise ValueError(f"compressed layer {name!r} has rank {r!r}; a rank of this layer lies in [1, {full}]")
        _set_module(model, name, _empty_low_rank(m, r))
    return model


def prunable_weights(model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """(name, weight) of every Linear / Conv weight (biases and norm parameters excluded)."""
    return [(f"{n}.weight" if n else "weight", m.weight) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


@torch.no_grad()
def magnitude_prune(model: nn.Module, amount: float, *, scope: str = "global") -> Dict[str, Any]:
    """Zero the ``amount`` fraction of smallest-|w| weights in place; returns achieved sparsity."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"prune amount must be in [0, 1), got {amount}")
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"prune scope {scope!r} is not one of {PRUNE_SCOPES}")
    weights = prunable_weights(model)
    if not weights:
        raise ValueError("the model has no Linear / Conv weights to prune")
    for group in [weights] if scope == "global" else [[item] for item in weights]:
        _zero_smallest(group, amount)
    per_layer = {n: float((w == 0).float().mean()) for n, w in weights}
    total = sum(w.numel() for _, w in weights)
    zeros = sum(int((w == 0).sum()) for _, w in weights)
    return {"requested": amount, "scope": scope, "achieved": zeros / total, "prunable": total, "zeros": zeros,
            "per_layer": per_layer}


def _zero_smallest(weights: List[Tuple[str, torch.Tensor]], amount: float) -> None:
    """Zero exactly the ``amount`` fraction (rounded) of smallest magnitudes of ``weights`` taken
    together (ties by position)."""
    flat = torch.cat([w.detach().abs().flatten().float() for _, w in weights])
    k = int(round(amount * flat.numel()))
    if k <= 0:
        return
    idx = torch.topk(flat, k, largest=False, sorted=False).indices
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[idx] = False
    offset = 0
    for _, w in weights:
        n = w.numel()
        w.mul_(mask[offset:offset + n].view_as(w).to(w.dtype))
        offset += n
