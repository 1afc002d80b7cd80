"""Robustness perturbations and format normalisation, applied to images before extraction.

Every perturbation is a pure, deterministic function ``PIL RGB image -> PIL RGB image``;
the random one (Gaussian noise) takes an explicit seed. Severities use the units the
robustness literature reports:

=============  ==========================================  ==================
name           severity                                     identity value
=============  ==========================================  ==================
``jpeg``       JPEG quality (1-100, lower = stronger)        none (always lossy)
``resize``     scale factor of both sides (0.5 = half)       1.0
``blur``       Gaussian blur sigma in pixels                 0
``crop``       kept fraction of each side, centre crop       1.0
``noise``      Gaussian noise sigma in 8-bit levels (0-255)  0
=============  ==========================================  ==================

:class:`PerturbedSource` wraps any source and yields the perturbed images as encoded
bytes with the keys, labels and captions unchanged: PNG (lossless) for every
perturbation except ``jpeg``, whose JPEG bytes are the perturbation itself.
:class:`NormalizedSource` re-encodes every image identically (same size, format and
quality) for the format-bias control.
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np
from PIL import Image, ImageFilter

from clipdetect.data.imaging import BadImage, decode_image
from clipdetect.core.errors import MissingKeyError
from clipdetect.data.sources import Sample, Source

logger = logging.getLogger(__name__)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def encode_image(img: Image.Image, fmt: str = "PNG", *, quality: int = 95) -> bytes:
    """Encode ``img`` as PNG (lossless) or JPEG at ``quality`` (PIL's default 4:2:0 chroma)."""
    fmt = fmt.upper().replace("JPG", "JPEG")
    options = {"JPEG": {"quality": int(quality)}, "PNG": {}}
    if fmt not in options:
        raise ValueError(f"format {fmt!r} is not PNG or JPEG")
    buf = io.BytesIO()
    _rgb(img).save(buf, format=fmt, **options[fmt])
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: float) -> bytes:
    """The JPEG encoding of ``img`` at ``quality`` (1-100)."""
    q = int(round(quality))
    if not 1 <= q <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    return encode_image(img, "JPEG", quality=q)


def jpeg(img: Image.Image, quality: float) -> Image.Image:
    """Compress with JPEG at ``quality`` and decode again."""
    return _rgb(Image.open(io.BytesIO(jpeg_bytes(img, quality))))


def resize(img: Image.Image, factor: float) -> Image.Image:
    """Scale both sides by ``factor`` (bicubic, antialiased when shrinking); at least 1 pixel."""
    if factor <= 0:
        raise ValueError(f"resize factor must be > 0, got {factor}")
    if factor == 1.0:
        return _rgb(img).copy()
    w, h = img.size
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return _rgb(img).resize(size, Image.Resampling.BICUBIC)


def blur(img: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels (0 = unchanged)."""
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return _rgb(img).copy()
    return _rgb(img).filter(ImageFilter.GaussianBlur(radius=float(sigma)))


def center_crop(img: Image.Image, fraction: float) -> Image.Image:
    """Keep the central ``fraction`` of each side (area ``fraction**2``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    w, h = img.size
    cw, ch = max(1, int(round(w * fraction))), max(1, int(round(h * fraction)))
    left, top = (w - cw) // 2, (h - ch) // 2
    return _rgb(img).crop((left, top, left + cw, top + ch))


def gaussian_noise(img: Image.Image, sigma: float, *, seed: int = 0) -> Image.Image:
    """Add i.i.d. Gaussian noise of std ``sigma`` (8-bit levels) per channel, clip, round."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    arr = np.asarray(_rgb(img), dtype=np.float64)
    if sigma > 0:
        arr = arr + np.random.default_rng(seed).normal(0.0, float(sigma), size=arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


#: name -> (function, identity severity or None, short unit description)
PERTURBATIONS: Dict[str, tuple] = {
    "jpeg": (jpeg, None, "JPEG quality"),
    "resize": (resize, 1.0, "scale factor"),
    "blur": (blur, 0.0, "Gaussian sigma (px)"),
    "crop": (center_crop, 1.0, "kept side fraction"),
    "noise": (gaussian_noise, 0.0, "noise sigma (0-255)"),
}
#: severities swept by default (mild to strong)
DEFAULT_SEVERITIES: Dict[str, tuple] = {
    "jpeg": (90, 70, 50, 30), "resize": (0.75, 0.5, 0.25), "blur": (0.5, 1.0, 2.0),
    "crop": (0.9, 0.75, 0.5), "noise": (2.0, 5.0, 10.0),
}


def key_seed(key: str, seed: int = 0) -> int:
    """A stable 63-bit seed for one sample: independent of order, process and hash seed."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def apply_perturbation(img: Image.Image, name: str, severity: float, *, seed: int = 0) -> Image.Image:
    """Apply perturbation ``name`` at ``severity``; ``seed`` only matters for ``noise``."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}")
    fn = PERTURBATIONS[name][0]
    return fn(img, severity, seed=seed) if name == "noise" else fn(img, severity)


def perturbed_bytes(img: Image.Image, name: str, severity: float, *, seed: int = 0) -> bytes:
    """Encoded perturbed image: JPEG bytes for ``jpeg``, lossless PNG for the others."""
    if name == "jpeg":
        return jpeg_bytes(img, severity)
    return encode_image(apply_perturbation(img, name, severity, seed=seed), "PNG")


def normalize_format(img: Image.Image, *, size: Optional[int] = None, fmt: str = "JPEG",
                     quality: int = 90) -> bytes:
    """Re-encode identically for every class: optional square resize to ``size`` (bicubic),
    then ``fmt`` (JPEG at ``quality``, or PNG)."""
    img = _rgb(img)
    if size is not None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        img = img.resize((int(size), int(size)), Image.Resampling.BICUBIC)
    return encode_image(img, fmt, quality=quality)


class TransformedSource(Source):
    """Yields the samples of ``source`` with ``image`` replaced by ``fn(decoded, sample)`` bytes.

    Keys, labels, captions, generators and splits are unchanged. An image that cannot be
    decoded is passed through untouched, so extraction records it in its error ledger.
    """

    kind = "transformed"

    def __init__(self, source: Source, fn: Callable[[Image.Image, Sample], bytes], ident: Dict[str, Any]):
        self.source, self.fn, self.ident = source, fn, ident

    def size(self) -> Optional[int]:
        return self.source.size()

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        for s in self.source.iterate(start):
            try:
                img, _ = decode_image(s.image)
            except BadImage as exc:
                logger.debug("passing undecodable %s through (%s)", s.key, exc.reason)
                yield s
                continue
            yield replace(s, image=self.fn(img, s))

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, **self.ident, "source": self.source.describe()}


class PerturbedSource(TransformedSource):
    """``source`` with perturbation ``name`` at ``severity`` applied to every image.

    The noise seed of a sample is derived from ``seed`` and its key, so a sample gets the
    same noise whatever its position and whichever process decodes it.
    """

    kind = "perturbed"

    def __init__(self, source: Source, perturbation: str, severity: float, *, seed: int = 0):
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {perturbation!r}; choose from {sorted(PERTURBATIONS)}")
        self.perturbation, self.severity, self.seed = perturbation, float(severity), seed
        super().__init__(source, self._apply, {"perturbation": perturbation, "severity": float(severity),
                                               "seed": seed})

    def _apply(self, img: Image.Image, s: Sample) -> bytes:
        return perturbed_bytes(img, self.perturbation, self.severity, seed=key_seed(s.key, self.seed))


class NormalizedSource(TransformedSource):
    """``source`` with every image re-encoded by :func:`normalize_format` (``fmt="PNG"`` and
    ``size=None`` gives a lossless re-encoding of the decoded pixels)."""

    kind = "normalized"

    def __init__(self, source: Source, *, size: Optional[int] = None, fmt: str = "JPEG", quality: int = 90):
        self.size_px, self.fmt, self.quality = size, fmt.upper(), quality
        super().__init__(source, lambda img, s: normalize_format(img, size=size, fmt=fmt, quality=quality),
                         {"size": size, "format": self.fmt, "quality": quality})


class ListSource(Source):
    """A fixed list of samples (e.g. a held-out subset materialised in memory)."""

    kind = "list"

    def __init__(self, samples, *, name: str = "list"):
        self.samples, self.name = list(samples), name

    def size(self) -> int:
        return len(self.samples)

    def iterate(self, start: int = 0) -> Iterator[Sample]:
        return iter(self.samples[start:])

    def describe(self) -> Dict[str, Any]:
        digest = hashlib.sha1("\n".join(s.key for s in self.samples).encode()).hexdigest()[:16]
        return {"kind": self.kind, "name": self.name, "n": len(self.samples), "keys_sha1": digest}


def subset_source(source: Source, keys, *, name: str = "subset") -> ListSource:
    """The samples of ``source`` whose key is in ``keys``, in ``keys`` order (one pass over
    ``source``, stopping early once all are found). Missing keys raise ``KeyError``."""
    wanted = list(dict.fromkeys(str(k) for k in keys))
    found = source.find(wanted)
    missing = [k for k in wanted if k not in found]
    if missing:
        raise MissingKeyError(f"{len(missing)} key(s) not in source {source.describe().get('kind')}: {missing[:3]}")
    return ListSource([found[k] for k in wanted], name=name)
