"""Distillation I/O: images matched to teacher embeddings and their loaders.

A teacher cache extracted with ``--views`` holds one row per image and view. Every view is a
pure function of the decoded image, the view spec and the image key
(:func:`clipdetect.data.views.apply_view`), so the student can be fed exactly the picture each
row's teacher embedding was computed from: :func:`teacher_rows` picks the rows of the chosen
views, and :class:`ImageRows` decodes an image and turns it into its row's view.

A run's checkpoints live in ``OUT/checkpoints`` (:data:`CKPT_DIR`; the format is
:mod:`clipdetect.models.checkpoint`'s).
"""
from __future__ import annotations

import io
import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from clipdetect.core.compat import ensure_torchvision_ops
from clipdetect.data.imaging import decode_image
from clipdetect.data.views import ORIG, apply_view, parse_views
from clipdetect.distill.student import StudentConfig, student_preprocess
from clipdetect.features.splits import view_rows

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("flip", "crop", "jpeg", "blur")
CKPT_DIR = "checkpoints"
#: ``views`` value that stands for every view the teacher cache holds
ALL_VIEWS = "all"


def canonical_views(views: Sequence[str]) -> tuple:
    """``("all",)`` or the canonical view specs of ``views`` (:func:`parse_views`; ``orig`` if empty)."""
    items = [str(v).strip() for v in views if str(v).strip()]
    if [v.lower() for v in items] == [ALL_VIEWS]:
        return (ALL_VIEWS,)
    return tuple(parse_views(items or None))


def teacher_rows(cache, rows: np.ndarray, views: Sequence[str] = (ORIG,)) -> np.ndarray:
    """The rows of ``rows`` whose view is one of ``views`` (``("all",)``: every view the cache holds;
    :func:`~clipdetect.features.splits.view_rows`, which refuses a view the cache does not hold).

    A cache extracted without ``--views`` holds only ``orig`` rows."""
    views = canonical_views(views)
    kept = view_rows(cache, rows, None if views == (ALL_VIEWS,) else views)
    if len(kept) < len(rows):
        logger.info("teacher cache holds views %s: distilling from its %d rows of %s (of %d)",
                    sorted(set(cache.columns("view")["view"].astype(str))), len(kept), list(views), len(rows))
    return kept


# ------------------------------------------------------------------ data
class RandomJPEG:
    """Re-encode a PIL image as JPEG at a random quality in [lo, hi] with probability ``p``."""

    def __init__(self, lo: int = 60, hi: int = 95, p: float = 0.5):
        self.lo, self.hi, self.p = lo, hi, p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return img
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(torch.randint(self.lo, self.hi + 1, ())))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def train_transform(config: StudentConfig, augment: Sequence[str]):
    """The inference preprocessing with training augmentations in front (PIL stage)."""
    ensure_torchvision_ops()
    from torchvision import transforms as T

    base = student_preprocess(config).transforms
    pil: List[Any] = []
    if "jpeg" in augment:
        pil.append(RandomJPEG())
    if "blur" in augment:
        pil.append(T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2))
    if "crop" in augment:
        interp = getattr(T.InterpolationMode, config.interpolation.upper())
        pil.append(T.RandomResizedCrop(config.image_size, scale=(0.6, 1.0), ratio=(0.9, 1.1),
                                       interpolation=interp))
        base = base[2:]  # the random crop replaces Resize + CenterCrop
    if "flip" in augment:
        pil.append(T.RandomHorizontalFlip())
    return T.Compose(pil + list(base))


class ImageRows(torch.utils.data.Dataset):
    """Encoded images (bytes or paths) with labels and teacher embeddings, decoded on access.

    ``views`` / ``keys`` (one per row): the view each row's teacher embedding is of and the image
    key that seeds a random view; the decoded image is turned into that view before ``transform``."""

    def __init__(self, images: List[Any], labels: np.ndarray, targets: np.ndarray, transform, *,
                 views: Optional[Sequence[str]] = None, keys: Optional[Sequence[str]] = None):
        self.images, self.transform = images, transform
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.views = list(views) if views is not None else [ORIG] * len(images)
        self.keys = list(keys) if keys is not None else [""] * len(images)
        if not len(self.views) == len(self.keys) == len(images):
            raise ValueError(f"{len(images)} images but {len(self.views)} views and {len(self.keys)} keys")
        if any(v != ORIG for v in self.views) and keys is None:
            raise ValueError("rows of views other than 'orig' need their image keys (a random view is seeded by them)")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img, _ = decode_image(self.images[i])
        return self.transform(apply_view(img, self.views[i], self.keys[i])), self.labels[i], self.targets[i]


def collect_images(source, keys: Sequence[str]) -> Dict[str, Any]:
    """key → encoded image (bytes or path) for ``keys``, reading ``source`` until all are found."""
    found = {key: sample.image for key, sample in source.find(keys).items()}
    missing = set(keys) - set(found)
    if missing:
        raise ValueError(f"{len(missing)} cache keys (e.g. {sorted(missing)[:3]}) are not in the source; "
                         "pass the source the teacher cache was extracted from")
    return found


def make_loader(ds: ImageRows, *, batches=None, batch_size: int = 256, workers: int = 0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(num_workers=workers, generator=gen, persistent_workers=False)
    if workers:
        methods = torch.multiprocessing.get_all_start_methods()
        kw["multiprocessing_context"] = "fork" if "fork" in methods else None
        kw["worker_init_fn"] = _seed_worker
    if batches is not None:
        return torch.utils.data.DataLoader(ds, batch_sampler=batches, **kw)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)


def _seed_worker(worker_id: int) -> None:
    torch.set_num_threads(1)
