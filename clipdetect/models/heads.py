"""Classification heads that map CLIP image embeddings to a single "fake" logit.

Two heads are provided:

* :class:`MLPHead` -- the head of the robust CLIP-based detector: ``depth`` blocks of

  .. math::

      h_{l+1} = \\mathrm{Dropout}_p\\big(\\mathrm{LeakyReLU}_{0.01}(\\mathrm{BN}(W_l h_l + b_l))\\big),

  followed by a final affine map :math:`s = w^\\top h_{depth} + b` giving one logit per sample.
* :class:`LinearHead` -- a single affine map :math:`s = w^\\top x + b` (linear-probe baseline).
* :class:`LayerHead` -- for per-block features (``extract --layers``; RINE, Koutlis &
  Papadopoulos, ECCV 2024): the ``tokens`` CLS tokens of the image tower are normalised
  (LayerNorm without affine), projected by one shared Linear to ``width``, mixed with learned
  per-block, per-dimension importance weights (a softmax over blocks, uniform at start), and
  the mixture goes through the MLP head's blocks to one logit.
* :class:`FusionHead` -- member heads on column subsets, combined linearly (:mod:`clipdetect.models.fusion`).

Both return logits of shape ``[N]``; :math:`\\sigma(s)` is the probability that the image is fake.
Heads are built from a :class:`HeadConfig`, which round-trips through JSON via
:func:`dataclasses.asdict` and :func:`head_from_dict`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from clipdetect.core.config import from_dict

logger = logging.getLogger(__name__)

__all__ = ["HEAD_KINDS", "HeadConfig", "MLPHead", "LinearHead", "LayerHead", "FusionHead", "create_head", "head_from_dict",
           "count_parameters", "kaiming_bound"]

HEAD_KINDS = ("mlp", "linear", "layers", "fusion")


@dataclass(kw_only=True)
class HeadConfig:
    """Configuration of a detector head.

    Attributes:
        kind: ``"mlp"`` or ``"linear"``.
        in_dim: dimension of the input embedding (e.g. 1536 for a concatenated pair of 768-d features).
        width: hidden width of the MLP; ``None`` means ``in_dim``.
        depth: number of ``Linear -> BatchNorm1d -> LeakyReLU -> Dropout`` blocks (MLP only).
        dropout: dropout probability in ``[0, 1)`` (MLP only).
        negative_slope: LeakyReLU negative slope, also used as ``a`` in the Kaiming init.
        tokens: number of per-block tokens in the input (``layers`` heads: ``in_dim = tokens * token
            width``); ``width`` unset means the token width there.
        members: ``fusion`` heads only (:mod:`clipdetect.models.fusion`): one dict per member,
            ``{"head": its HeadConfig as a dict, "columns": [[start, stop], ...]}`` (the input
            columns it reads).
    """

    kind: str = "mlp"
    in_dim: int
    width: int | None = None
    depth: int = 3
    dropout: float = 0.335
    negative_slope: float = 0.01
    tokens: int | None = None
    members: list | None = None

    def __post_init__(self) -> None:
        validate_head_config(self)

    @property
    def hidden_width(self) -> int:
        """The effective hidden width (``width``; unset: ``in_dim``, or the token width of a layers head)."""
        if self.width is not None:
            return self.width
        return self.in_dim // self.tokens if self.kind == "layers" else self.in_dim


def validate_head_config(config: HeadConfig) -> None:
    """Raise ``ValueError`` naming the offending value if ``config`` is invalid."""
    if config.kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {config.kind!r}; expected one of {HEAD_KINDS}")
    if not isinstance(config.in_dim, int) or config.in_dim < 1:
        raise ValueError(f"in_dim must be a positive integer, got {config.in_dim!r}")
    if config.width is not None and (not isinstance(config.width, int) or config.width < 1):
        raise ValueError(f"width must be a positive integer or None, got {config.width!r}")
    if not isinstance(config.depth, int) or config.depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {config.depth!r}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {config.dropout!r}")
    if config.negative_slope < 0.0:
        raise ValueError(f"negative_slope must be >= 0, got {config.negative_slope!r}")
    if config.kind == "fusion" and not config.members:
        raise ValueError("a fusion head needs members (made by clipdetect fuse)")
    if config.kind == "layers" and (not isinstance(config.tokens, int) or config.tokens < 1
                                    or config.in_dim % config.tokens):
        raise ValueError(f"a layers head needs tokens (an integer >= 1 dividing in_dim {config.in_dim}), "
                         f"got {config.tokens!r}; train it on the 'layers' feature set of a cache extracted "
                         "with --layers")


def _kaiming_init_(linear: nn.Linear, negative_slope: float) -> None:
    """Kaiming-uniform weights for a LeakyReLU(``negative_slope``) network, zero bias.

    Weights are drawn from :math:`U(-b, b)` with
    :math:`b = \\sqrt{2 / (1 + a^2)} \\cdot \\sqrt{3 / \\mathrm{fan\\_in}}`.
    """
    nn.init.kaiming_uniform_(linear.weight, a=negative_slope, nonlinearity="leaky_relu")
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def kaiming_bound(fan_in: int, negative_slope: float = 0.01) -> float:
    """The half-width of the Kaiming-uniform distribution used by the heads."""
    gain = math.sqrt(2.0 / (1.0 + negative_slope**2))
    return gain * math.sqrt(3.0 / fan_in)


class MLPHead(nn.Module):
    """``depth`` x (Linear -> BatchNorm1d -> LeakyReLU -> Dropout), then Linear(width, 1).

    Input ``[N, in_dim]``, output logits ``[N]``.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        width: int | None = None,
        depth: int = 3,
        dropout: float = 0.335,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        config = HeadConfig(kind="mlp", in_dim=in_dim, width=width, depth=depth,
                            dropout=dropout, negative_slope=negative_slope)
        hidden = config.hidden_width
        self.body = _blocks(in_dim, hidden, depth, dropout, negative_slope)
        self.out = nn.Linear(hidden, 1)
        _kaiming_init_(self.out, negative_slope)
        self.config = config

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x)).squeeze(-1)


def _blocks(d_in: int, hidden: int, depth: int, dropout: float, negative_slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(d_in, hidden)
        _kaiming_init_(linear, negative_slope)
        layers += [linear, nn.BatchNorm1d(hidden), nn.LeakyReLU(negative_slope), nn.Dropout(dropout)]
        d_in = hidden
    return nn.Sequential(*layers)


class LayerHead(nn.Module):
    """Per-block tokens ``[N, tokens * W]`` → LayerNorm → shared Linear(W, width) → softmax-weighted
    sum over blocks (weights per block and dimension) → ``depth`` MLP blocks → logit ``[N]``."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = int(config.tokens)
        token_width, hidden = config.in_dim // self.tokens, config.hidden_width
        self.norm = nn.LayerNorm(token_width, elementwise_affine=False)
        self.proj = nn.Linear(token_width, hidden)
        _kaiming_init_(self.proj, config.negative_slope)
        self.act = nn.LeakyReLU(config.negative_slope)
        self.importance = nn.Parameter(torch.zeros(self.tokens, hidden))  # softmax over blocks: uniform at start
        self.body = _blocks(hidden, hidden, config.depth, config.dropout, config.negative_slope)
        self.out = nn.Linear(hidden, 1)
        _kaiming_init_(self.out, config.negative_slope)

    #: the importance logits are scaled up so that Adam (steps of about lr per parameter) can move
    #: the block mixture away from uniform within a normal schedule
    IMPORTANCE_SCALE = 10.0

    def block_weights(self) -> Tensor:
        """[tokens, width] mixing weights (each column sums to 1 over the blocks)."""
        return torch.softmax(self.importance * self.IMPORTANCE_SCALE, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        z = self.act(self.proj(self.norm(x.view(len(x), self.tokens, -1))))
        mixed = (z * self.block_weights().unsqueeze(0)).sum(dim=1)
        return self.out(self.body(mixed)).squeeze(-1)


class LinearHead(nn.Module):
    """A single ``Linear(in_dim, 1)``; input ``[N, in_dim]``, output logits ``[N]``."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.config = HeadConfig(kind="linear", in_dim=in_dim)
        self.linear = nn.Linear(in_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).squeeze(-1)


class FusionHead(nn.Module):
    """Member heads on column subsets of the input, combined as ``sum_i w_i s_i + b``."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(create_head(head_from_dict(m["head"])) for m in config.members)
        for i, m in enumerate(config.members):
            cols = np.concatenate([np.arange(a, b) for a, b in m["columns"]])
            if cols.size == 0 or cols.max() >= config.in_dim:
                raise ValueError(f"fusion member {i} reads columns outside the input ({config.in_dim} wide)")
            self.register_buffer(f"columns_{i}", torch.from_numpy(cols.astype(np.int64)), persistent=False)
        self.register_buffer("weights", torch.ones(len(self.members)) / len(self.members))
        self.register_buffer("bias", torch.zeros(()))

    def member_logits(self, x: Tensor) -> Tensor:
        """[N, members] raw logits of each member head."""
        return torch.stack([h(x.index_select(1, getattr(self, f"columns_{i}")))
                            for i, h in enumerate(self.members)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.member_logits(x) @ self.weights.to(x.dtype) + self.bias.to(x.dtype)


def create_head(config: HeadConfig) -> nn.Module:
    """Build the head described by ``config``."""
    validate_head_config(config)
    if config.kind == "linear":
        head: nn.Module = LinearHead(config.in_dim)
    elif config.kind == "layers":
        head = LayerHead(config)
    elif config.kind == "fusion":
        head = FusionHead(config)
    else:
        head = MLPHead(config.in_dim, width=config.width, depth=config.depth,
                       dropout=config.dropout, negative_slope=config.negative_slope)
    logger.debug("created %s head with %d parameters", config.kind, count_parameters(head))
    return head


def head_from_dict(d: Mapping[str, Any]) -> HeadConfig:
    """Rebuild a :class:`HeadConfig` from ``dataclasses.asdict`` output (e.g. loaded JSON).

    Unknown keys raise ``ValueError`` so that typos in config files are not silently ignored.
    """
    return from_dict(HeadConfig, d)


def count_parameters(*modules: nn.Module, nonzero: bool = False) -> int:
    """Parameters (trainable or not) of ``modules`` together; with ``nonzero``, those not zero."""
    return int(sum(int(torch.count_nonzero(p)) if nonzero else p.numel() for m in modules for p in m.parameters()))

