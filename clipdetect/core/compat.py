"""Import-time compatibility guards.

torchvision ships a compiled extension (``torchvision/_C.so``) that registers operators
such as ``torchvision::nms``. When that extension cannot load against the installed torch
(for example a CUDA torchvision next to a CPU-only torch), ``import torchvision`` dies in
``torchvision/_meta_registrations.py`` with ``RuntimeError: operator torchvision::nms does
not exist``; open_clip and timm import torchvision, so they die too.

:func:`install_torchvision_guard` defines just the operator *schemas* that
``_meta_registrations`` needs, and only when the extension really failed to load. Where
torchvision works, it does nothing. The detection ops themselves stay unavailable in the
broken case (calling them raises), which clipdetect never needs: it uses torchvision's
image transforms only.

``import clipdetect`` arranges for the guard to run on the first import of torchvision,
open_clip or timm (:func:`install_lazy_guard`), so the package stays light (no torch) until a
backbone is needed. The functions that import one of them call :func:`ensure_torchvision_ops`
just before, so they do not depend on that hook having been installed first.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Callable, Optional

logger = logging.getLogger(__name__)

#: operator schemas that torchvision's fake-tensor registrations look up at import time
TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# _GUARD_LIBRARY, once the guard has defined schemas, keeps the torch.library.Library (and its
# definitions) alive; reading it before the guard has run runs the guard (see __getattr__).


def _extension_path() -> Optional[str]:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg_dir = list(spec.submodule_search_locations)[0]
    for name in sorted(os.listdir(pkg_dir)):
        if name.startswith("_C") and name.endswith((".so", ".pyd", ".dylib")):
            return os.path.join(pkg_dir, name)
    return None


def torchvision_extension_loads() -> bool:
    """True when torchvision is absent, already imported, or its compiled ops load."""
    if "torchvision" in sys.modules:
        return True
    path = _extension_path()
    if path is None:
        # no torchvision, or a build without a compiled extension: nothing to guard
        return importlib.util.find_spec("torchvision") is None
    import torch

    try:
        torch.ops.load_library(path)
    except (OSError, ImportError, RuntimeError) as exc:
        logger.debug("torchvision extension %s does not load: %s", path, exc)
        return False
    return True


def _has_op(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def install_torchvision_guard(probe: Callable[[], bool] = torchvision_extension_loads) -> bool:
    """Define torchvision's missing operator schemas if (and only if) its extension fails.

    Returns True when schemas were defined, False when nothing was needed.
    """
    global _GUARD_LIBRARY
    if probe():
        return False
    missing = [name for name in TORCHVISION_SCHEMAS if not _has_op(name)]
    if not missing:
        return False
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(TORCHVISION_SCHEMAS[name])
    _GUARD_LIBRARY = lib
    logger.debug("torchvision extension unavailable; defined schemas for %s", missing)
    return True


#: top-level packages whose import runs torchvision's registrations (directly or through torchvision)
GUARDED_PACKAGES = ("torchvision", "open_clip", "timm")


class _GuardOnImport:
    """A ``sys.meta_path`` hook that runs :func:`install_torchvision_guard` just before the
    first import of a package in :data:`GUARDED_PACKAGES`, then removes itself: importing
    clipdetect stays cheap (no torch) and the guard still precedes torchvision."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in GUARDED_PACKAGES:
            ensure_torchvision_ops()
        return None  # let the regular finders import the package


_HOOK = _GuardOnImport()


def remove_lazy_guard() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install_lazy_guard() -> None:
    """Arrange for the torchvision guard to run on the first import of torchvision/open_clip/timm
    (at once when one of them is already imported)."""
    if any(p in sys.modules for p in GUARDED_PACKAGES):
        install_torchvision_guard()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def ensure_torchvision_ops() -> None:
    """Make ``import torchvision`` (and open_clip, timm) work: run the guard now, before importing them
    (cheap once torchvision is imported)."""
    remove_lazy_guard()
    install_torchvision_guard()


def __getattr__(name: str):
    if name == "_GUARD_LIBRARY":  # not set yet: the guard has not run, or defined nothing
        ensure_torchvision_ops()
        return globals().get("_GUARD_LIBRARY")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
