"""What the student learns to reproduce, and the student that fits it.

A distillation target is the teacher's final embedding (``image``, unit norm, as cached) or one
per-block token of a cache extracted with ``--layers`` (``block8``, ...; RINE-style intermediate
features). A token is the raw residual stream, whose few huge dimensions would dominate any
cosine or L2 loss, so token targets are standardised per dimension with the training rows'
statistics (:func:`standardise`); a ``clip:`` student carries the same statistics as buffers
(:meth:`~clipdetect.distill.clip_student.TruncatedViT.set_standardisation`), so its output is
comparable with the target from the first step.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from clipdetect.distill.clip_student import CLIP_PREFIX, CLIP_SHORTHAND, is_clip_arch
from clipdetect.distill.student import StudentConfig

IMAGE_TARGET = "image"
DISTILL_LOSSES = ("cosine", "mse", "both")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Feature-distillation loss between raw student outputs and the targets (unit-norm embeddings or
    standardised tokens): ``cosine`` (mean 1 - cos), ``mse`` (squared distance summed over
    dimensions) or ``both``."""
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"distill loss {kind!r} is not one of {list(DISTILL_LOSSES)}")
    total = student.new_zeros(())
    if kind in ("cosine", "both"):
        total = total + (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind in ("mse", "both"):
        total = total + (student - teacher).pow(2).sum(dim=-1).mean()
    return total


def token_names(cache) -> list:
    return list((cache.layers or {}).get("names") or [])


def check_target(cache, target: str) -> None:
    """A clear error when ``cache`` does not hold ``target``."""
    if target == IMAGE_TARGET:
        return
    names = token_names(cache)
    if not names:
        raise ValueError(f"target {target!r} is a per-block token, but teacher cache {str(cache.root)!r} has none: "
                         "extract it with --layers, or distil to the final embedding (target 'image')")
    if target not in names:
        raise ValueError(f"target {target!r} is not one of the teacher cache's tokens {names} or 'image'")


def teacher_targets(cache, rows: np.ndarray, target: str) -> np.ndarray:
    """[len(rows), D] float32: the teacher's ``target`` (final embedding or one block's token) per row."""
    check_target(cache, target)
    if target == IMAGE_TARGET:
        return cache.embeddings("image", rows)
    return np.ascontiguousarray(cache.embeddings("layers", rows)[:, token_names(cache).index(target)])


def standardise(train: np.ndarray, *others: np.ndarray,
                eps: float = 1e-6) -> Tuple[Tuple[np.ndarray, ...], Tuple[np.ndarray, np.ndarray]]:
    """``(train, *others)`` standardised with the per-dimension mean and std (floored at ``eps``) of
    ``train``; and that (mean, std), float32."""
    t = np.asarray(train, dtype=np.float64)
    mean, std = t.mean(axis=0).astype(np.float32), np.maximum(t.std(axis=0), eps).astype(np.float32)
    return tuple(((a - mean) / std).astype(np.float32) for a in (train, *others)), (mean, std)


def block_index(target: str) -> Optional[int]:
    """``block8`` -> 8; None for any other target."""
    m = re.fullmatch(r"block(\d+)", target)
    return int(m.group(1)) if m else None


def teacher_weights(identity: Dict[str, Any]) -> str:
    """The weights part of a backbone spec that rebuilds the teacher of ``identity`` (checkpoint path,
    pretrained tag or ``random``)."""
    kind = identity.get("weights")
    if kind == "checkpoint":
        return identity.get("checkpoint_path") or identity["checkpoint"]
    if kind == "pretrained":
        return identity["tag"]
    if kind == "random":
        return "random"
    raise ValueError(f"cannot rebuild the teacher {identity.get('spec', identity)!r} for a clip student; "
                     "pass pretrained (its checkpoint path or open_clip tag)")


def resolve_student(cache, *, arch: str, pretrained: Optional[str], image_size: int, target: str,
                    blocks: Optional[int], embed_dim: int) -> StudentConfig:
    """The :class:`StudentConfig` of a distillation run on ``cache``. A ``clip`` student takes the
    teacher's architecture, weights (unless ``pretrained`` says otherwise), preprocessing statistics,
    and as many blocks as the ``blockK`` target (unless ``blocks`` says otherwise)."""
    if not is_clip_arch(arch):
        return StudentConfig(arch=arch, embed_dim=embed_dim, image_size=image_size, pretrained=pretrained)
    teacher = cache.backbone
    if arch == CLIP_SHORTHAND:
        arch = CLIP_PREFIX + str(teacher["arch"])
    blocks = blocks or block_index(target)
    if blocks is None:
        raise ValueError(f"a clip student needs blocks, or a target 'blockK' to take it from (got {target!r})")
    pre = teacher.get("preprocess") or {}
    return StudentConfig(arch=arch, embed_dim=embed_dim, image_size=image_size,
                         pretrained=pretrained or teacher_weights(teacher), blocks=blocks,
                         mean=pre.get("mean"), std=pre.get("std"),
                         interpolation=pre.get("interpolation", "bicubic"))


__all__ = ["DISTILL_LOSSES", "IMAGE_TARGET", "block_index", "check_target", "distillation_loss", "resolve_student",
           "standardise", "teacher_targets", "teacher_weights", "token_names"]
