"""The detector bundle on disk: a directory with ``model.safetensors`` (the head's tensors)
and ``detector.json`` (everything else, plain JSON). Loading reads only those two files and
never unpickles; :class:`~clipdetect.models.detector.Detector` saves and loads through here."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from clipdetect import __version__
from clipdetect.core.io import read_json, read_safetensors, save_safetensors, write_json
from clipdetect.models.calibration import Calibration
from clipdetect.models.heads import create_head, head_from_dict

FORMAT = "clipdetect-detector"
#: 2: a ``calibration`` record (Platt scaling) replaces the ``temperature`` field; a bundle with a
#: temperature (or no calibration) is still written as version 1, which every reader understands
VERSION = 2
WEIGHTS, CONFIG = "model.safetensors", "detector.json"


class DetectorError(ValueError):
    """A bundle that cannot be loaded, or features that do not fit the detector."""


def _jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars → Python, NaN/inf → None, tuples → lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def bundle_json(det) -> Dict[str, Any]:
    """``detector.json`` of detector ``det`` (plain JSON: NaN/inf become null).

    Platt-calibrated bundles are version 2 (``calibration``: method, scale, offset); others keep
    version 1's ``temperature`` field, so older readers score them exactly as before."""
    cal = det.calibration
    legacy = cal.method != "platt"
    return _jsonable({"format": FORMAT, "version": 1 if legacy else VERSION, "clipdetect_version": __version__,
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


def read_bundle(path: str | os.PathLike, *, device: str = "cpu") -> Dict[str, Any]:
    """The :class:`~clipdetect.models.detector.Detector` arguments of the bundle at ``path``."""
    path = Path(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise DetectorError(f"{str(path)!r} is not a detector bundle: {p.name} is missing "
                                "(bundles are written by `clipdetect train --out DIR`)")
    cfg = read_json(cfg_path, what="detector description", error=DetectorError)
    if cfg.get("format") != FORMAT:
        raise DetectorError(f"{str(cfg_path)!r} is not a {FORMAT} description")
    if cfg.get("version", 0) > VERSION:
        raise DetectorError(f"detector format version {cfg['version']} is newer than this clipdetect reads")
    state = read_safetensors(w_path, error=DetectorError)
    head_config = head_from_dict(cfg["head_config"])
    head = create_head(head_config)
    structure = (cfg.get("extra") or {}).get("compression")
    if structure and structure.get("svd"):  # low-rank factorised layers (clipdetect compress)
        from clipdetect.models.compress import apply_structure

        head = apply_structure(head, structure)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DetectorError(f"{str(w_path)!r} does not match the head described in {CONFIG}: {exc}") from exc
    return dict(head=head.to(device), head_config=head_config, feature_set=cfg["feature_set"],
                backbone=cfg.get("backbone") or {}, train_config=cfg.get("train_config"),
                metrics=cfg.get("metrics"), threshold=cfg.get("threshold", 0.5),
                calibration=read_calibration(cfg), threshold_target=cfg.get("threshold_target"),
                extra=cfg.get("extra"))


def read_calibration(cfg: Dict[str, Any]) -> Calibration:
    """The calibration a ``detector.json`` describes: its ``calibration`` record, else (bundles
    written before it) its ``temperature``, applied as it always was (``sigmoid(logit / T)``)."""
    if cfg.get("calibration"):
        return Calibration.from_json(cfg["calibration"])
    return Calibration.of_temperature(float(cfg.get("temperature") or 1.0))
