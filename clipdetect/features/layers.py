"""Per-block features of a ViT image tower: the CLS token after every transformer block, and
the pooled token before the final projection (RINE-style intermediate features).

:func:`layer_names` gives the token names of a backbone (``block1`` … ``blockL``,
``pre_proj``); :class:`LayerTaps` hooks the blocks while the image tower runs its normal
forward pass, so the final embedding is computed exactly as without taps and the tokens
come for free. The tokens are the raw residual stream (not normalised): heads normalise
them (:class:`~clipdetect.models.heads.LayerHead`).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from clipdetect.features.backbones import BackboneError


def _tower(backbone):
    visual = getattr(backbone.model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if visual is None or blocks is None or not hasattr(visual, "ln_post") or \
            getattr(visual, "attn_pool", None) is not None:
        raise BackboneError(f"backbone {backbone.spec!r} is not a ViT image tower with a class token; "
                            "per-block features (--layers) need an open_clip ViT (e.g. ViT-B-16)")
    return visual, blocks


def layer_names(backbone) -> List[str]:
    """``block1`` … ``blockL`` and ``pre_proj`` for ``backbone``'s image tower."""
    _, blocks = _tower(backbone)
    return [f"block{i + 1}" for i in range(len(blocks))] + ["pre_proj"]


def layer_layout(backbone) -> Tuple[List[str], int]:
    """(token names, width) of ``backbone``'s per-block features."""
    return layer_names(backbone), int(_tower(backbone)[0].transformer.width)


class LayerTaps:
    """Forward hooks that collect, for one forward pass of the image tower, the CLS token
    after each block and the pooled pre-projection token: :meth:`collect` → [N, L+1, W]."""

    def __init__(self, backbone):
        self.visual, self.blocks = _tower(backbone)
        self.batch_first = getattr(self.visual.transformer, "batch_first", True)
        self.tokens: List[Optional[torch.Tensor]] = [None] * (len(self.blocks) + 1)
        self.handles = [b.register_forward_hook(self._block_hook(i)) for i, b in enumerate(self.blocks)]
        self.handles.append(self.visual.ln_post.register_forward_hook(self._post_hook))

    def _block_hook(self, i: int):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            self.tokens[i] = out[:, 0] if self.batch_first else out[0]
        return hook

    def _post_hook(self, module, args, out) -> None:
        if out.ndim == 2:  # final_ln_after_pool: the norm ran on the pooled token
            self.tokens[-1] = out
        elif getattr(self.visual, "pool_type", "tok") == "avg":
            self.tokens[-1] = out[:, 1:].mean(dim=1)
        else:
            self.tokens[-1] = out[:, 0]

    def collect(self) -> torch.Tensor:
        """The tokens of the last forward pass, [N, L+1, W] float32 (then cleared)."""
        if any(t is None for t in self.tokens):
            raise RuntimeError("the image tower ran without reaching every tapped block")
        out = torch.stack([t.float() for t in self.tokens], dim=1)
        self.tokens = [None] * len(self.tokens)
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
