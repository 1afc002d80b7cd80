"""Degraded views of an image: the same picture as it reaches a detector after the web.

A view is named by a short spec string; ``extract --views orig,norm:256:90,aug`` stores one
cache row per image and view (``view`` column), so training can sample degraded copies of
both classes and evaluation can report a metric per view without extracting again.

=================  ===============================================================
spec               the image as stored
=================  ===============================================================
``orig``           as decoded (no change)
``jpeg:Q``         re-encoded as JPEG at quality Q (1–100)
``webp:Q``         re-encoded as WebP at quality Q (1–100)
``resize:F``       both sides scaled by F (bicubic; 0.5 = half)
``blur:S``         Gaussian blur, sigma S pixels
``norm:S:Q``       squashed to S×S (bicubic), then JPEG at quality Q — the format
                   normalisation of the format-bias control (``norm:256:90``)
``aug`` / ``aug:N``  a random chain seeded by the image key (and N): downscale, blur,
                   then JPEG or WebP at a random quality, or lossless — the degraded
                   training views of B-Free / AIGCDetectBenchmark-style training
=================  ===============================================================

Every view is a pure function of the decoded image, the spec and the image key, so a view
is the same in every process and on every re-run (extraction stays resumable bit for bit).
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Any, List, NamedTuple, Sequence, Tuple

from PIL import Image

from clipdetect.data.perturb import blur, jpeg, key_seed, normalize_format, resize

ORIG = "orig"
#: the views ``--views default`` stands for: the image, the format-normalised copy, one random degradation
DEFAULT_VIEWS: Tuple[str, ...] = ("orig", "norm:256:90", "aug")
_KINDS = {"orig": 0, "jpeg": 1, "webp": 1, "resize": 1, "blur": 1, "norm": 2, "aug": (0, 1)}


class ViewError(ValueError):
    """A view spec that cannot be parsed."""


@dataclass(frozen=True)
class View:
    """One parsed view spec (``kind`` and its numeric arguments); ``str(view)`` is the spec."""

    kind: str
    args: Tuple[float, ...] = ()

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{a:g}" for a in self.args)])

    @classmethod
    def parse(cls, spec: str) -> "View":
        kind, *raw = str(spec).strip().lower().split(":")
        if kind not in _KINDS:
            raise ViewError(f"unknown view {spec!r}; views are {sorted(_KINDS)} (e.g. orig, jpeg:75, webp:80, "
                            "resize:0.5, blur:1, norm:256:90, aug)")
        want = _KINDS[kind]
        if len(raw) not in (want if isinstance(want, tuple) else (want,)):
            raise ViewError(f"view {spec!r}: {kind!r} takes {want} argument(s) separated by ':'")
        try:
            args = tuple(float(a) for a in raw)
        except ValueError:
            raise ViewError(f"view {spec!r}: arguments must be numbers") from None
        return cls(kind, args)

    def __post_init__(self) -> None:  # arguments in range
        a = self.args
        bad = ((self.kind in ("jpeg", "webp") and not 1 <= a[0] <= 100)
               or (self.kind == "resize" and not 0 < a[0] <= 4) or (self.kind == "blur" and not 0 <= a[0] <= 50)
               or (self.kind == "norm" and not (8 <= a[0] <= 4096 and 1 <= a[1] <= 100)))
        if bad:
            raise ViewError(f"view {self}: argument out of range (quality 1-100, resize factor (0, 4], blur "
                            "sigma [0, 50], norm size 8-4096)")

    def apply(self, img: Image.Image, key: str) -> Image.Image:
        """The view of decoded RGB image ``img`` whose cache key is ``key``."""
        k, a = self.kind, self.args
        if k == ORIG:
            return img
        if k in _ONE_ARG:
            return _ONE_ARG[k](img, a[0])
        if k == "norm":
            return _decoded(normalize_format(img, size=int(a[0]), fmt="JPEG", quality=int(a[1])))
        return random_degradation(img, key_seed(f"{key}|{self}"))


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _webp(img: Image.Image, quality: float) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="WEBP", quality=int(round(quality)))
    return _decoded(buf.getvalue())


#: the views that are one perturbation with one argument
_ONE_ARG = {"jpeg": jpeg, "webp": _webp, "resize": resize, "blur": blur}


def random_degradation(img: Image.Image, seed: int) -> Image.Image:
    """One random chain of what the web does to an image, fixed by ``seed``: downscale
    (p 0.5, factor 0.4–1, never below 128 px a side), blur (p 0.25, sigma 0.2–1.5), then JPEG
    (p 0.65, quality 60–98) or WebP (p 0.15, quality 60–95), else lossless."""
    rng = random.Random(seed)
    out = img.convert("RGB")
    if rng.random() < 0.5:
        factor = max(rng.uniform(0.4, 1.0), min(1.0, 128.0 / max(1, min(out.size))))
        out = resize(out, factor)
    if rng.random() < 0.25:
        out = blur(out, rng.uniform(0.2, 1.5))
    r = rng.random()
    if r < 0.65:
        out = jpeg(out, rng.randint(60, 98))
    elif r < 0.80:
        out = _webp(out, rng.randint(60, 95))
    return out


class ViewRef(NamedTuple):
    """What a decode worker needs for one view of one image: the image reference, the view
    spec and the key that seeds random views."""

    image: Any
    view: str
    key: str


def parse_views(specs: str | Sequence[str] | None) -> List[str]:
    """Canonical view specs from ``"orig,jpeg:75"``, a list, ``"default"`` or None (→ ``["orig"]``).

    Duplicates are refused (one row per image and view)."""
    if specs is None:
        return [ORIG]
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    if [s.strip().lower() for s in items] == ["default"]:
        items = list(DEFAULT_VIEWS)
    views = [str(View.parse(s)) for s in items if str(s).strip()]
    if not views:
        raise ViewError("no views given; e.g. --views orig,norm:256:90,aug")
    dupes = sorted({v for v in views if views.count(v) > 1})
    if dupes:
        raise ViewError(f"view(s) {dupes} given twice")
    return views


def input_view(spec: str | None) -> str:
    """The canonical spec of a view a detector applies to every image it scores (``orig`` for
    None): a fixed transformation such as ``norm:256:90``, never a random one (``aug``: its
    result would depend on the name the image is given)."""
    if spec is None:
        return ORIG
    view = View.parse(spec)
    if view.kind == "aug":
        raise ViewError(f"view {spec!r} is random (seeded by the image key); a detector's input view must be a "
                        "fixed one such as orig or norm:256:90")
    return str(view)


def apply_view(img: Image.Image, spec: str, key: str) -> Image.Image:
    """``img`` as view ``spec`` (see the table above)."""
    return img if spec == ORIG else View.parse(spec).apply(img, key)
