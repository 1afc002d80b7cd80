"""Robust image decoding: every input either becomes an RGB image or a clear reason.

Valid but unusual images are normalised the way a user expects: EXIF orientation is
applied, CMYK / palette / greyscale / 16-bit images become 8-bit RGB, transparency is
composited on white, and an animated image gives its first frame. Inputs that cannot be
decoded raise :class:`BadImage` with a short reason that the extractor writes to the
error ledger: zero-byte files, truncated data, non-image bytes, decompression bombs,
absurd dimensions, missing or unreadable paths.

Limits (adjustable: ``--max-pixels`` / ``--max-aspect`` / ``--max-bytes`` / ``--read-timeout``
on ``extract`` and ``predict``):

* an image path must be a regular file (a FIFO, a device such as ``/dev/zero``, a folder is
  refused as ``unreadable``) of at most :data:`MAX_IMAGE_BYTES` (256 MiB; ``too_large``), read
  within :data:`READ_TIMEOUT` seconds (``read_timeout``): see :mod:`clipdetect.core.inputs`;
* :data:`MAX_PIXELS` — an image with more pixels than this (64 MP) is refused as a
  ``decompression_bomb``;
* ``max_aspect`` — unset by default: an image thinner than 1:100 (``CROP_ASPECT``; e.g. 2000×2)
  is first cropped around its centre to 1:100, which keeps the centre square
  that CLIP's resize-and-centre-crop uses while bounding the memory of the resize; with a
  ``max_aspect``, images whose long side exceeds the short one by more than that factor are
  refused as ``extreme_aspect`` instead.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT, InputError, read_input

ImageRef = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]
#: what one image may be given as: a path, encoded bytes, or a decoded PIL image
IMAGE_REF_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)

#: refuse images with more pixels than this (PIL's default bomb limit is ~89 MP)
MAX_PIXELS = 64_000_000
#: default aspect limit: None embeds thin images (centre-cropped to CROP_ASPECT first)
MAX_ASPECT: Optional[float] = None
#: images thinner than 1:CROP_ASPECT are centre-cropped to it before preprocessing
CROP_ASPECT = 100.0


class BadImage(Exception):
    """An input that cannot become an image; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _read_bytes(ref: ImageRef, max_bytes: int = MAX_IMAGE_BYTES, timeout: Optional[float] = READ_TIMEOUT) -> bytes:
    if isinstance(ref, (bytes, bytearray, memoryview)):
        n = memoryview(ref).nbytes
        if n > max_bytes:
            raise BadImage("too_large", f"{n:,} bytes, more than the {max_bytes:,} allowed (--max-bytes)")
        return bytes(ref)
    if not isinstance(ref, (str, os.PathLike)):
        raise BadImage("not_an_image", f"a {type(ref).__name__} is not a path, encoded bytes or a PIL image")
    try:
        return read_input(ref, max_bytes=max_bytes, timeout=timeout)
    except InputError as exc:
        hint = {"too_large": " (--max-bytes)", "read_timeout": " (--read-timeout)"}.get(exc.reason, "")
        raise BadImage(exc.reason, exc.detail + hint) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(ref: ImageRef, *, max_pixels: int = MAX_PIXELS, max_aspect: Optional[float] = MAX_ASPECT,
                 draft: Optional[int] = None, max_bytes: int = MAX_IMAGE_BYTES,
                 read_timeout: Optional[float] = READ_TIMEOUT) -> Tuple[Image.Image, dict]:
    """Decode ``ref`` (path, bytes or PIL image) to RGB; returns (image, info).

    ``info`` has the original ``width``, ``height``, ``format`` and ``mode``. ``max_aspect``
    refuses thin images; unset, images thinner than 1:CROP_ASPECT are centre-cropped to it.
    ``draft``: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides at least ``draft`` pixels (PIL's draft mode: faster, pixels differ from a full decode).
    A path must be a regular file of at most ``max_bytes``, read within ``read_timeout`` seconds.
    Raises :class:`BadImage` for anything that is not a usable image.
    """
    if isinstance(ref, Image.Image):
        img, fmt = ref, ref.format
    else:
        data = _read_bytes(ref, max_bytes, read_timeout)
        if not data:
            raise BadImage("empty", "zero bytes")
        img, fmt = _open(data, max_pixels, draft)
    w, h = getattr(img, "_full_size", None) or img.size  # a draft-decoded JPEG's full size
    info = {"width": w, "height": h, "format": fmt or "", "mode": img.mode}
    if w < 1 or h < 1:
        raise BadImage("bad_size", f"{w}x{h}")
    if w * h > max_pixels:
        raise BadImage("decompression_bomb", f"{w}x{h} exceeds {max_pixels} pixels")
    if max_aspect is not None and max(w, h) / min(w, h) > max_aspect:
        raise BadImage("extreme_aspect", f"{w}x{h} is thinner than 1:{max_aspect:g} (--max-aspect)")
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img = ImageOps.exif_transpose(img) or img
        img = _crop_thin(_to_rgb(img))
        img.load()
    except Exception as exc:  # truncated or corrupt pixel data
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from exc
    return img, info


def header_pixels(data: bytes) -> Optional[int]:
    """Width x height from an encoded image's header, without decoding its pixels (about 20 us);
    None when the header is not one PIL reads, or names more pixels than PIL opens at all."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception:  # not an image, or a bomb PIL refuses outright: the decoder reports it
        return None
    return int(w) * int(h)


def _crop_thin(img: Image.Image) -> Image.Image:
    """Centre-crop an image thinner than 1:CROP_ASPECT to that aspect (the centre square survives)."""
    w, h = img.size
    if max(w, h) <= CROP_ASPECT * min(w, h):
        return img
    keep = int(CROP_ASPECT * min(w, h))
    if w > h:
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def _open(data: bytes, max_pixels: int, draft: Optional[int] = None):
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if draft and fmt == "JPEG" and min(img.size) >= 2 * draft:
                img._full_size = img.size
                img.draft("RGB", (draft, draft))
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage("decompression_bomb", str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise BadImage("not_an_image", "bytes are not a known image format") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old
    return img, fmt


class SplitPreprocess:
    """open_clip's preprocessing split in two for the extraction pipeline.

    ``worker(img)`` runs the PIL stage (resize, crop, mode) and returns a compact uint8
    HWC array — cheap to send between processes; ``finish(batch_uint8)`` runs the tensor
    stage (to float, normalise) on a whole batch. Applying both equals applying the
    original transform. If the transform has an unknown shape, the whole transform runs
    in the worker and ``finish`` only stacks.
    """

    def __init__(self, preprocess):
        self.full = preprocess
        self.pil_stage, self.mean, self.std = _split(preprocess)

    def worker(self, img: Image.Image) -> np.ndarray:
        if self.pil_stage is None:
            return self.full(img).numpy()
        for t in self.pil_stage:
            img = t(img)
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)

    def finish(self, arrays):  # -> torch.Tensor
        import torch

        batch = torch.from_numpy(np.stack(arrays))
        if self.pil_stage is None:
            return batch
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def _split(preprocess) -> Tuple[Optional[list], Optional[tuple], Optional[tuple]]:
    transforms = list(getattr(preprocess, "transforms", []))
    names = [type(t).__name__ for t in transforms]
    if len(names) < 2 or names[-1] != "Normalize" or names[-2] not in ("ToTensor", "MaybeToTensor"):
        return None, None, None
    norm = transforms[-1]
    pil = [t for t, n in zip(transforms[:-2], names[:-2]) if n not in ("MaybeConvertMode",)]
    return pil, tuple(norm.mean), tuple(norm.std)
