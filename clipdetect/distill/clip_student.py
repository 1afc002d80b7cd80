"""A student cut from the teacher itself: the first K blocks of a CLIP ViT image tower at a lower
input resolution, fine-tuned to reproduce the full teacher's per-block token.

Why: the CLS token after a middle block of CLIP ViT-B/16 separates generated from real images
better than the final embedding does (RINE's finding; ``extract --layers`` caches every block's
token), and a ViT's cost is (blocks) x (tokens): 8 of 12 blocks at 112 px (7x7 patches + CLS =
50 tokens instead of 197) is ~6x fewer multiply-adds. Starting from the teacher's own weights, the
student begins close to its target (the same features at a lower resolution) and distillation
only has to close the resolution gap, which ~2,000 labelled images can do; a CNN from ImageNet
weights has to learn CLIP's features from scratch.

The encoder (:class:`TruncatedViT`): patch embedding → class token + position embeddings
(bicubically resized once to the student's grid) → ``ln_pre`` → blocks ``1..K`` → the CLS token,
standardised per dimension by the teacher's token statistics on the training rows (buffers
``shift``/``scale``; the raw residual stream has a few huge dimensions that would otherwise
dominate every cosine and L2 norm). Its output is what the distillation loss compares with the
teacher's standardised block-K token, and, L2-normalised, what the detection head sees.

Architectures are named ``clip:<open_clip model>`` (``clip:ViT-B-16-quickgelu``); the weights it
starts from are ``StudentConfig.pretrained``: a checkpoint path, an open_clip pretrained tag, or
``random`` (tests). A saved student holds every weight it needs, so loading it does not need the
teacher's file.
"""
from __future__ import annotations

import logging
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

CLIP_PREFIX = "clip:"
#: ``--arch`` value that means "a clip: student of the teacher cache's own architecture"
CLIP_SHORTHAND = "clip"
#: fine-tuning rate of a pretrained ViT's weights (the fresh head keeps the distillation's ``lr``)
CLIP_ENCODER_LR = 2e-5


def is_clip_arch(arch: str) -> bool:
    return arch == CLIP_SHORTHAND or arch.startswith(CLIP_PREFIX)


def clip_model_name(arch: str) -> str:
    name = arch[len(CLIP_PREFIX):] if arch.startswith(CLIP_PREFIX) else ""
    if not name:
        raise ValueError(f"a CLIP student architecture is 'clip:<open_clip model>' (e.g. clip:ViT-B-16-quickgelu), "
                         f"got {arch!r}")
    return name


def resize_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1 + g*g, W] position embeddings (class token first) → [1 + grid*grid, W], bicubic on the grid."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    g = int(round(patch_pos.shape[0] ** 0.5))
    if g * g != patch_pos.shape[0]:
        raise ValueError(f"position embeddings of {patch_pos.shape[0]} patches are not a square grid")
    if g == grid:
        return pos.clone()
    width = patch_pos.shape[1]
    grid_pos = patch_pos.reshape(1, g, g, width).permute(0, 3, 1, 2).float()
    grid_pos = F.interpolate(grid_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(grid * grid, width).to(pos.dtype)])


class TruncatedViT(nn.Module):
    """The first ``blocks`` transformer blocks of an open_clip ``VisionTransformer`` at ``image_size``
    pixels; ``forward`` returns the standardised CLS token after the last kept block, [N, width]."""

    def __init__(self, visual: nn.Module, blocks: int, image_size: int):
        super().__init__()
        tower = visual.transformer.resblocks
        if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "class_embedding"):
            raise ValueError("a CLIP student needs a ViT image tower with a class token (e.g. ViT-B-16)")
        if not 1 <= blocks <= len(tower):
            raise ValueError(f"blocks must be in [1, {len(tower)}] for this tower, got {blocks}")
        patch = int(visual.conv1.kernel_size[0])
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}; "
                             f"use e.g. {max(patch, image_size // patch * patch)}")
        self.conv1, self.ln_pre = visual.conv1, visual.ln_pre
        self.class_embedding = visual.class_embedding
        self.positional_embedding = nn.Parameter(resize_positions(visual.positional_embedding.detach(),
                                                                  image_size // patch))
        self.blocks = nn.ModuleList(list(tower)[:blocks])
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.register_buffer("shift", torch.zeros(self.width))
        self.register_buffer("scale", torch.ones(self.width))

    @property
    def width(self) -> int:
        return int(self.class_embedding.shape[-1])

    def set_standardisation(self, mean, std) -> None:
        """Output ``(token - mean) / std``: the teacher's per-dimension statistics of its target token."""
        self.shift.copy_(torch.as_tensor(mean, dtype=self.shift.dtype))
        self.scale.copy_(torch.as_tensor(std, dtype=self.scale.dtype))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        if not self.batch_first:
            x = x.permute(1, 0, 2)
        for block in self.blocks:
            x = block(x)
        return x if self.batch_first else x.permute(1, 0, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.tokens(x)[:, 0] - self.shift) / self.scale

    encode_image = forward


def clip_tower(model_name: str, pretrained: str | None, *, seed: int = 0, load_pretrained: bool = True):
    """The open_clip image tower of ``model_name``: with the teacher's weights when ``load_pretrained``
    (``pretrained`` is a checkpoint path, a tag or ``random``), else unloaded (a saved student's
    weights are loaded next)."""
    from clipdetect.features.backbones import create_backbone, unloaded_open_clip

    if load_pretrained:
        if not pretrained:
            raise ValueError("a CLIP student starts from the teacher's weights: pass pretrained (a checkpoint "
                             "path, an open_clip tag, or 'random')")
        visual = create_backbone(f"{model_name}:{pretrained}", seed=seed).model.visual
    else:
        visual = unloaded_open_clip(model_name)[0].visual
    return visual


__all__ = ["CLIP_PREFIX", "CLIP_SHORTHAND", "CLIP_ENCODER_LR", "TruncatedViT", "clip_model_name", "clip_tower",
           "is_clip_arch", "resize_positions"]
