"""Backbones: a spec string -> an encoder with its preprocessing, tokenizer and identity.

Specs (open_clip style, ``ARCH:WEIGHTS``):

* ``"ViT-B-16:openai"`` — an open_clip pretrained tag, downloaded and cached by open_clip
  when a network exists; offline (:mod:`clipdetect.core.offline`: the hub libraries' switches
  or a 3-second probe) it loads from the local cache at once, or fails at once with one error
  that says how to pass a file.
* ``"ViT-B-16-quickgelu:/path/to/ckpt.pt"`` — a local checkpoint: a full open_clip state
  dict, or a partial one such as an image-tower-only dict (``visual.*`` keys). ``.pt``,
  ``.bin`` and ``.safetensors`` files load without unpickling arbitrary code.
* ``"ViT-B-32:random"`` — the architecture with random weights (seeded): for tests and
  speed benchmarks. The tiny architectures shipped in ``model_configs/``
  (``clipdetect-tiny-vit``) make such tests run in milliseconds.
* ``"student:/path/to/student-dir"`` — a distilled student encoder (see ``distill``).

The :class:`Backbone` ``identity`` dict is what the feature cache records and compares:
two caches (or a cache and a detector) are compatible only when identities agree
(:func:`~clipdetect.features.identity.identities_match`).
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from clipdetect.core.compat import ensure_torchvision_ops
from clipdetect.core.tensorfile import file_sha256, load_state_dict

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
RANDOM_TAG = "random"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackboneError(ValueError):
    """A backbone spec that cannot be resolved into a model."""


def open_clip_module():
    """``open_clip``, imported safely (torchvision's guard) with this package's tiny test configs registered."""
    ensure_torchvision_ops()
    import open_clip

    if not getattr(open_clip_module, "_registered", False):
        open_clip.add_model_config(CONFIG_DIR)
        open_clip_module._registered = True
    return open_clip


@dataclass
class BackboneSpec:
    arch: str
    weights: Optional[str]  # pretrained tag, "random", a file path, or None

    @property
    def is_path(self) -> bool:
        w = self.weights or ""
        return os.sep in w or w.endswith((".pt", ".bin", ".pth", ".safetensors")) or os.path.exists(w)

    @classmethod
    def parse(cls, spec: str) -> "BackboneSpec":
        if not spec or not isinstance(spec, str):
            raise BackboneError(f"backbone spec must be a non-empty string like 'ViT-B-16:openai', got {spec!r}")
        arch, sep, weights = spec.partition(":")
        if not arch:
            raise BackboneError(f"backbone spec {spec!r} has no architecture; expected 'ARCH:TAG' or 'ARCH:/path'")
        return cls(arch=arch, weights=weights if sep else None)

    def __str__(self) -> str:
        return f"{self.arch}:{self.weights}" if self.weights else self.arch


@dataclass
class Backbone:
    """An image (and optionally text) encoder with its preprocessing and identity."""

    spec: str
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Optional[Callable]
    identity: Dict[str, Any]
    has_text: bool
    embed_dim: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    #: a compiled image tower (:class:`~clipdetect.features.runtime.ImageTower`) that the encoder
    #: stage runs instead of ``model``'s; None: torch (see :func:`~clipdetect.features.runtime.attach_runtime`)
    tower: Optional[Any] = None

    def to(self, device: str | torch.device = "cpu", precision: str = "fp32") -> "Backbone":
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise BackboneError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
        if precision == "fp16" and device.type == "cpu":
            raise BackboneError("precision 'fp16' needs a GPU; on CPU use 'fp32' (exact) or 'bf16' (faster, lossy)")
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise BackboneError("this GPU does not support bf16; use --precision fp16 or fp32")
        self.device, self.dtype = device, PRECISIONS[precision]
        self.model = self.model.to(device=device, dtype=self.dtype).eval()
        return self

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed pixels [N,3,H,W] -> L2-normalised float32 embeddings [N,D]."""
        if self.tower is not None:
            emb = torch.from_numpy(self.tower(pixels.float().cpu().numpy()))
        else:
            emb = self.model.encode_image(pixels.to(self.device, dtype=self.dtype, non_blocking=True)).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        """Captions -> token ids on the host; refused when the backbone has no text tower."""
        if not self.has_text:
            raise BackboneError(
                f"backbone {self.spec!r} has no text tower (image-only checkpoint); "
                "extract without captions (drop --caption/--caption-template) or use a full CLIP checkpoint")
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_texts(self, texts: List[str]) -> np.ndarray:
        """Captions -> L2-normalised float32 embeddings [N,D]."""
        tokens = self.tokenize(texts).to(self.device)
        emb = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()


def _load_checkpoint(model: torch.nn.Module, path: str) -> bool:
    """Load a full or partial state dict; returns whether the text tower is present."""
    if not os.path.isfile(path):
        raise BackboneError(f"checkpoint file not found: {path!r}")
    sd = load_state_dict(path, error=BackboneError)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    with torch.no_grad():  # created without initialisation: give what the file lacks defined values
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
            if name in missing:
                tensor.zero_()
    if unexpected:
        raise BackboneError(f"checkpoint {path!r} has keys this architecture does not: {unexpected[:5]} …")
    missing_visual = [k for k in missing if k.startswith("visual.")]
    if missing_visual:
        raise BackboneError(f"checkpoint {path!r} lacks image-tower weights such as {missing_visual[:5]}")
    text_missing = [k for k in missing if not k.startswith("visual.") and k != "logit_bias"]
    if text_missing:
        logger.info("checkpoint %s is image-tower only (%d text keys missing)", path, len(text_missing))
    return not text_missing


@contextlib.contextmanager
def _quiet_root(*texts: str):
    """Hides open_clip's root-logger messages that the caller replaces with its own: "initialized
    randomly" for a model whose weights are loaded next, "Failed to download" when offline."""
    def quiet(record: logging.LogRecord) -> bool:
        return not any(t in record.getMessage() for t in texts)

    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


#: the ``torch.nn.init`` functions that module constructors and open_clip's ``init_parameters`` call
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextlib.contextmanager
def skipped_init():
    """Module construction without random initialisation (the init functions return their
    tensor untouched), for a model whose every weight is loaded from a file next. Tensors
    computed in constructors (attention masks, ...) are still computed."""
    saved = {n: getattr(torch.nn.init, n) for n in _INIT_FUNCTIONS if hasattr(torch.nn.init, n)}
    try:
        for n in saved:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _known_arch(oc, arch: str) -> None:
    if arch not in oc.list_models():
        raise BackboneError(f"unknown architecture {arch!r}; see open_clip.list_models() "
                            f"(tiny test architectures: {sorted(p.stem for p in CONFIG_DIR.glob('*.json'))})")


def unloaded_open_clip(arch: str):
    """``(model, preprocess)`` of open_clip architecture ``arch``, built without random initialisation
    (and without open_clip's "initialized randomly" message), for weights that the caller loads next."""
    oc = open_clip_module()
    _known_arch(oc, arch)
    with _quiet_root("Model initialized randomly"), skipped_init():
        model, _, preprocess = oc.create_model_and_transforms(arch, pretrained=None)
    return model, preprocess


def _create_open_clip(spec: BackboneSpec, seed: int) -> Backbone:
    oc = open_clip_module()
    _known_arch(oc, spec.arch)
    if spec.weights is None:
        raise BackboneError(f"backbone {spec.arch!r} names no weights: use '{spec.arch}:TAG' "
                            f"(pretrained), '{spec.arch}:/path/to/ckpt' or '{spec.arch}:random'")
    identity: Dict[str, Any] = {"arch": spec.arch, "open_clip_version": oc.__version__}
    has_text = True
    if spec.weights == RANDOM_TAG:
        torch.manual_seed(seed)
        model, _, preprocess = oc.create_model_and_transforms(spec.arch, pretrained=None)
        identity.update(weights="random", seed=seed)
    elif spec.is_path:
        path = os.path.abspath(spec.weights)
        model, preprocess = unloaded_open_clip(spec.arch)  # weights loaded next
        has_text = _load_checkpoint(model, path)
        identity.update(weights="checkpoint", checkpoint=os.path.basename(path), checkpoint_path=path,
                        sha256=file_sha256(path))
    else:
        model, preprocess = _create_pretrained(oc, spec)
        identity.update(weights="pretrained", tag=spec.weights)
    model.eval()
    embed_dim = int(model.visual.output_dim)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    identity.update(embed_dim=embed_dim, has_text=has_text,
                    preprocess={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()})
    tokenizer = oc.get_tokenizer(spec.arch) if has_text else None
    return Backbone(spec=str(spec), model=model, preprocess=preprocess, tokenizer=tokenizer,
                    identity=identity, has_text=has_text, embed_dim=embed_dim)


def _create_pretrained(oc, spec: BackboneSpec):
    """An open_clip pretrained tag: from the local cache at once when the hub cannot be reached
    (:func:`clipdetect.core.offline.offline_reason`), else downloaded; one clear error otherwise."""
    from clipdetect.core.offline import hub_offline, offline_reason

    tags = oc.list_pretrained_tags_by_model(spec.arch)
    if spec.weights not in tags:
        raise BackboneError(f"{spec.weights!r} is not a pretrained tag of {spec.arch!r} (known: {tags}); "
                            f"for a local file pass '{spec.arch}:/path/to/checkpoint'")
    cfg = oc.get_pretrained_cfg(spec.arch, spec.weights) or {}
    where = (f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}" if cfg.get("hf_hub") else cfg.get("url", "the hub"))
    offline = offline_reason()
    hub = hub_offline() if offline else contextlib.nullcontext()
    try:  # "Failed to download" is logged by open_clip; the error below says it once
        with _quiet_root("Failed to download"), hub:
            model, _, preprocess = oc.create_model_and_transforms(spec.arch, pretrained=spec.weights)
    except Exception as exc:
        why = (f"the hub is not reachable ({offline}) and they are not in the local cache" if offline
               else f"the download failed ({type(exc).__name__}: {str(exc)[:200]})")
        raise BackboneError(
            f"cannot load the pretrained weights '{spec}': {why}. Use a local copy of the file ({where}, "
            f"downloaded where there is a network): --backbone '{spec.arch}:/path/to/open_clip_pytorch_model.bin'; "
            f"for a detector trained on a checkpoint, `predict --weights PATH` or ${WEIGHTS_ENV}") from None
    return model, preprocess


_REGISTRY: Dict[str, Callable[[BackboneSpec, int], Backbone]] = {}
#: families that register themselves when their module is imported
_BUILTIN_FAMILIES = {"student": "clipdetect.distill.student"}


def register_backbone(prefix: str, factory: Callable[[BackboneSpec, int], Backbone]) -> None:
    """Register a backbone family under ``prefix`` (e.g. ``student``): ``prefix:WEIGHTS``."""
    _REGISTRY[prefix] = factory


def create_backbone(spec: str, *, device: str = "cpu", precision: str = "fp32", seed: int = 0,
                    runtime: str = "torch") -> Backbone:
    """Resolve ``spec`` into a :class:`Backbone` on ``device`` at ``precision``.

    ``runtime`` other than ``torch`` (``onnx``, ``openvino``): the image tower runs there at
    ``precision`` (exported once and cached, see :mod:`clipdetect.features.runtime`); the torch
    model stays fp32 on the CPU for the text tower."""
    from clipdetect.features.runtime import attach_runtime, check_runtime

    check_runtime(runtime, precision, device)
    if runtime != "torch":
        return attach_runtime(create_backbone(spec, device=device, seed=seed), runtime, precision)
    parsed = BackboneSpec.parse(spec)
    if parsed.arch in _BUILTIN_FAMILIES and parsed.arch not in _REGISTRY:
        importlib.import_module(_BUILTIN_FAMILIES[parsed.arch])
    factory = _REGISTRY.get(parsed.arch, _create_open_clip)
    return factory(parsed, seed).to(device, precision)


#: environment variable naming a checkpoint file, or a folder holding it, for
#: :func:`~clipdetect.features.identity.locate_checkpoint`
WEIGHTS_ENV = "CLIPDETECT_WEIGHTS"
