"""The detector bundle on disk: a directory with ``model.safetensors`` (the head's tensors)
and ``detector.json`` (everything else, plain JSON). Loading reads only those two files and
never unpickles; :class:`~clipdetect.models.detector.Detector` saves and loads through here."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Dict

import torch

from clipdetect import __version__
from clipdetect.core.escape import plain_json
from clipdetect.core.io import read_json, write_json
from clipdetect.core.tensorfile import read_safetensors, safetensors_header, save_safetensors
from clipdetect.core.schema import Field, validate
from clipdetect.features.manifest import FEATURE_SETS
from clipdetect.models.calibration import CALIBRATION_METHODS, Calibration
from clipdetect.models.heads import HEAD_KINDS, create_head, head_from_dict

FORMAT = "clipdetect-detector"
#: 2: a ``calibration`` record (Platt scaling) replaces the ``temperature`` field; a bundle with a
#: temperature (or no calibration) is still written as version 1, which every reader understands
VERSION = 2
WEIGHTS, CONFIG = "model.safetensors", "detector.json"


class DetectorError(ValueError):
    """A bundle that cannot be loaded, or features that do not fit the detector."""


def bundle_json(det) -> Dict[str, Any]:
    """``detector.json`` of detector ``det`` (plain JSON: NaN/inf become null).

    Platt-calibrated bundles are version 2 (``calibration``: method, scale, offset); others keep
    version 1's ``temperature`` field, so older readers score them exactly as before."""
    cal = det.calibration
    legacy = cal.method != "platt"
    return plain_json({"format": FORMAT, "version": 1 if legacy else VERSION, "clipdetect_version": __version__,
                       "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), "feature_set": det.feature_set,
                       "backbone": det.backbone, "head_config": dataclasses.asdict(det.head_config),
                       "threshold": det.threshold, **({"temperature": det.temperature} if legacy else {}),
                       "calibration": cal.to_json(), "threshold_target": det.threshold_target,
                       "train_config": det.train_config, "metrics": det.metrics, "extra": det.extra})


def save_bundle(det, path: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``detector.json`` of ``det`` into directory ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(det.head.state_dict(), path / WEIGHTS, metadata={"format": FORMAT})
    write_json(path / CONFIG, det.to_json(), allow_nan=False)
    return path


# ------------------------------------------------------------------ the format, as a table
#: bounds that keep a hostile detector.json from allocating without end (a real head: a few
#: million parameters; CLIP features: at most a few thousand dimensions)
MAX_DIM, MAX_DEPTH, MAX_HEAD_PARAMETERS = 65536, 64, 100_000_000
#: a temperature outside this range makes every probability 0.5, or 0 and 1 (fits use [0.01, 100])
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
_TEXT = Field(str, nullable=True, max_len=4096)
HEAD_FIELDS = {  # HeadConfig: no unknown keys (a typo must not pass)
    "kind": Field(str, required=True, choices=HEAD_KINDS),
    "in_dim": Field(int, required=True, lo=1, hi=MAX_DIM),
    "width": Field(int, nullable=True, lo=1, hi=MAX_DIM),
    "depth": Field(int, lo=1, hi=MAX_DEPTH),
    "dropout": Field(float, lo=0.0, hi=1.0, hi_open=True),
    "negative_slope": Field(float, lo=0.0, hi=100.0),
    "tokens": Field(int, nullable=True, lo=1, hi=4096),  # per-block ("layers") heads
}
#: a fusion head's members: each a plain head reading some input columns
MEMBER_FIELDS = {"head": Field(dict, required=True, extra=False, fields={
                     **HEAD_FIELDS, "members": Field(list, nullable=True, max_len=0)}),  # no nesting
                 "columns": Field(list, required=True, max_len=64,
                                  items=Field(list, max_len=2, items=Field(int, lo=0, hi=MAX_DIM)))}
HEAD_FIELDS["members"] = Field(list, nullable=True, max_len=16, items=Field(dict, fields=MEMBER_FIELDS, extra=False))
BACKBONE_FIELDS = {"spec": _TEXT, "arch": _TEXT, "weights": _TEXT, "tag": _TEXT, "sha256": _TEXT,
                   "seed": Field(int, nullable=True, lo=0, hi=2**63 - 1),
                   "embed_dim": Field(int, nullable=True, lo=1, hi=MAX_DIM),
                   "preprocess": Field(dict, nullable=True), "has_text": Field(bool, nullable=True)}
COMPRESSION_FIELDS = {"svd": Field(dict, nullable=True, max_len=4096, items=Field(int, lo=1, hi=MAX_DIM))}
#: detector.json, field by field; unknown top-level keys are tolerated (newer writers add some)
DETECTOR_FIELDS = {
    "format": Field(str, required=True, choices=(FORMAT,)),
    "version": Field(int, lo=0, hi=VERSION),
    "feature_set": Field(str, required=True, choices=FEATURE_SETS),
    "backbone": Field(dict, nullable=True, fields=BACKBONE_FIELDS),
    "head_config": Field(dict, required=True, fields=HEAD_FIELDS, extra=False),
    "threshold": Field(float, lo=0.0, hi=1.0),
    "temperature": Field(float, lo=MIN_TEMPERATURE, hi=MAX_TEMPERATURE),
    "calibration": Field(dict, nullable=True, extra=False, fields={
        "method": Field(str, required=True, choices=CALIBRATION_METHODS),
        "scale": Field(float, lo=0.0, hi=MAX_TEMPERATURE, lo_open=True),
        "offset": Field(float, lo=-MAX_TEMPERATURE, hi=MAX_TEMPERATURE),
        "temperature": Field(float, lo=MIN_TEMPERATURE, hi=MAX_TEMPERATURE)}),
    "threshold_target": Field(dict, nullable=True, max_len=64),
    "train_config": Field(dict, nullable=True),
    "metrics": Field(dict, nullable=True),
    "extra": Field(dict, nullable=True, fields={"compression": Field(dict, nullable=True, fields=COMPRESSION_FIELDS)}),
}


def head_parameters(head: Dict[str, Any]) -> int:
    """Parameters (and buffers) the head described by a validated ``head_config`` holds."""
    if head["kind"] == "fusion":  # members, one weight each, a bias
        return sum(head_parameters(m["head"]) for m in head.get("members") or []) + len(head.get("members") or []) + 1
    d, w, depth = head["in_dim"], head.get("width") or head["in_dim"], head.get("depth", 3)
    if head["kind"] == "linear":
        return d + 1
    if head["kind"] == "layers":  # shared projection, per-block importance, then the MLP body on it
        tokens = head.get("tokens") or 1
        w = head.get("width") or d // tokens
        return (d // tokens) * w + w + tokens * w + depth * (w * w + 5 * w) + w + 1
    return d * w + (depth - 1) * w * w + depth * 5 * w + w + 1  # Linear, BatchNorm (4 per unit), out


def check_weights(head, state: Dict[str, Any], path: Path) -> None:
    """Refuse weights that do not fit ``head``: names, shapes, dtype kinds, then values (finite,
    BatchNorm variances >= 0). ``state`` maps names to ``{"dtype", "shape"}`` (a safetensors
    header, checked before loading) or to tensors (checked after)."""
    want = head.state_dict()
    if set(state) != set(want):
        missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
        raise DetectorError(f"{str(path)!r} does not match the head described in {CONFIG}: missing "
                            f"{missing[:5]}, unexpected {unexpected[:5]}")
    for name, t in want.items():
        got = state[name]
        shape = tuple(got["shape"]) if isinstance(got, dict) else tuple(got.shape)
        if shape != tuple(t.shape):
            raise DetectorError(f"{str(path)!r}: tensor {name} has shape {list(shape)}, the head in {CONFIG} "
                                f"needs {list(t.shape)}")
        kind = str(got["dtype"] if isinstance(got, dict) else got.dtype).upper()
        floating = t.is_floating_point()
        if floating != any(f in kind for f in ("F16", "F32", "F64", "FLOAT", "BF16", "HALF", "DOUBLE")):
            raise DetectorError(f"{str(path)!r}: tensor {name} is stored as {kind}, the head needs "
                                f"{'a floating-point' if floating else 'an integer'} tensor")
        if not isinstance(got, dict) and floating:
            if not bool(got.isfinite().all()):
                raise DetectorError(f"{str(path)!r}: tensor {name} holds NaN or inf values; the weights are "
                                    "damaged (every score would be NaN)")
            if name.endswith("running_var") and bool((got < 0).any()):
                raise DetectorError(f"{str(path)!r}: tensor {name} holds negative variances; the weights are damaged")


def _build_head(head_config, structure, cfg_path: Path, *, meta: bool = False):
    """The head ``detector.json`` describes (low-rank layers replayed); on the meta device
    (shapes only, nothing allocated) with ``meta``."""
    with torch.device("meta") if meta else contextlib.nullcontext():
        head = create_head(head_config)
        if structure and structure.get("svd"):  # low-rank factorised layers (clipdetect compress)
            from clipdetect.models.compress import apply_structure

            try:
                head = apply_structure(head, structure)
            except ValueError as exc:
                raise DetectorError(f"detector description {str(cfg_path)!r}: extra.compression: {exc}") from None
    return head


def read_bundle(path: str | os.PathLike, *, device: str = "cpu") -> Dict[str, Any]:
    """The :class:`~clipdetect.models.detector.Detector` arguments of the bundle at ``path``.

    ``detector.json`` is checked against :data:`DETECTOR_FIELDS` and the head's size bound,
    and the safetensors header against the head, before anything is allocated; the weights
    must then be finite."""
    path = Path(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.exists():
            raise DetectorError(f"{str(path)!r} is not a detector bundle: {p.name} is missing "
                                "(bundles are written by `clipdetect train --out DIR`)")
    cfg = read_json(cfg_path, what="detector description", error=DetectorError)
    if isinstance(cfg, dict) and isinstance(cfg.get("version"), int) and cfg["version"] > VERSION:
        raise DetectorError(f"detector format version {cfg['version']} is newer than this clipdetect reads")
    validate(cfg, DETECTOR_FIELDS, what=f"detector description {str(cfg_path)!r}", error=DetectorError)
    if head_parameters(cfg["head_config"]) > MAX_HEAD_PARAMETERS:
        raise DetectorError(f"detector description {str(cfg_path)!r}: head_config describes "
                            f"{head_parameters(cfg['head_config']):,} parameters, more than the "
                            f"{MAX_HEAD_PARAMETERS:,} a detector head may hold")
    header = safetensors_header(w_path, error=DetectorError)
    head_config = head_from_dict(cfg["head_config"])
    structure = (cfg.get("extra") or {}).get("compression")
    check_weights(_build_head(head_config, structure, cfg_path, meta=True), header, w_path)  # shapes, no memory
    head = _build_head(head_config, structure, cfg_path)
    state = read_safetensors(w_path, error=DetectorError)
    check_weights(head, state, w_path)
    head.load_state_dict(state, strict=True)
    # bundles written before the calibration record: their temperature, applied as it always was
    calibration = (Calibration.from_json(cfg["calibration"]) if cfg.get("calibration")
                   else Calibration.of_temperature(float(cfg.get("temperature") or 1.0)))
    return dict(head=head.to(device), head_config=head_config, feature_set=cfg["feature_set"],
                backbone=cfg.get("backbone") or {}, train_config=cfg.get("train_config"),
                metrics=cfg.get("metrics"), threshold=cfg.get("threshold", 0.5),
                calibration=calibration, threshold_target=cfg.get("threshold_target"),
                extra=cfg.get("extra"))
