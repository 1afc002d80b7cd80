"""Backbone identities: whether two produce interchangeable embeddings, which specs a detector
accepts in place of its own, and where the checkpoint file an identity was made from is now.

The identity dict itself is made by :func:`clipdetect.features.backbones.create_backbone`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from clipdetect.core.tensorfile import file_sha256
from clipdetect.features.backbones import WEIGHTS_ENV, BackboneError


def locate_checkpoint(identity: Dict[str, Any], *, override: Optional[str] = None) -> Optional[str]:
    """The absolute path of the checkpoint file an identity was made from, found by its sha256.

    For identities of ``ARCH:/path`` backbones (``weights == "checkpoint"``); None for others.
    Candidates, in order: ``override`` and ``$CLIPDETECT_WEIGHTS`` (a file, or a folder holding
    a file of the recorded name), the absolute path recorded at extraction, and the spec's
    path as written (relative to the current directory). The first whose sha256 matches wins;
    when none does, :class:`BackboneError` lists what was tried and how to point at the file.
    """
    if identity.get("weights") != "checkpoint":
        return None
    spec = str(identity.get("spec") or "")
    name = identity.get("checkpoint") or os.path.basename(spec.partition(":")[2])
    tried: List[str] = []
    for base in (override, os.environ.get(WEIGHTS_ENV)):
        if base:
            tried += [os.path.join(base, name)] if os.path.isdir(base) else [base]
    tried += [p for p in (identity.get("checkpoint_path"), spec.partition(":")[2]) if p]
    want = identity.get("sha256")
    for cand in dict.fromkeys(os.path.abspath(os.path.expanduser(c)) for c in tried):
        path = os.path.join(cand, name) if os.path.isdir(cand) else cand  # a folder backbone (student:DIR)
        if os.path.isfile(path) and (want is None or file_sha256(path) == want):
            return cand if os.path.isdir(cand) and not spec.endswith(name) else path
    raise BackboneError(
        f"cannot find the checkpoint {name!r} (sha256 {want}) of backbone {spec!r}; tried {list(dict.fromkeys(tried))} "
        f"(from {os.getcwd()!r}). Point at the file with --backbone '{identity.get('arch')}:/absolute/path/{name}' "
        f"or set {WEIGHTS_ENV}=/path/to/{name} (or to its folder)")


def identities_match(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether two backbone identities produce interchangeable embeddings: the same weights
    and preprocessing, or one lists the other among its ``alternatives`` (see
    :func:`alternative_specs`)."""
    keys = ("arch", "weights", "tag", "sha256", "seed", "embed_dim", "preprocess")
    return all(a.get(k) == b.get(k) for k in keys) or _listed(a, b) or _listed(b, a)


def _listed(have: Dict[str, Any], other: Dict[str, Any]) -> bool:
    pre_a, pre_b = have.get("preprocess") or {}, other.get("preprocess") or {}
    same_pre = all(pre_a[k] == pre_b[k] for k in set(pre_a) & set(pre_b))
    return same_pre and have.get("embed_dim") == other.get("embed_dim") and any(
        all(other.get(k) == v for k, v in alt.items() if k != "spec") for alt in have.get("alternatives") or ())


def alternative_specs(identity: Dict[str, Any]) -> List[str]:
    """Backbone specs a detector accepts in place of its own checkpoint: an identity may list
    ``alternatives`` — ``{"spec": "ViT-B-16-quickgelu:openai", "arch": ..., "weights": "pretrained",
    "tag": "openai"}``, the identity fields a backbone must have — for weights that are the same
    model from another source (e.g. a checkpoint converted from OpenAI's CLIP, and open_clip's
    ``openai`` tag of that architecture)."""
    return [alt["spec"] for alt in identity.get("alternatives") or () if alt.get("spec")]
