"""The model card of ``GET /v1/model``: what a caller needs to read a score.

Built in one function, :func:`model_card`, from the detector bundle's fields. Every field
that a bundle may lack (older bundles, fields added later such as a threshold target or a
card shipped with the detector) is read with a fallback, so any bundle gives a card.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from clipdetect.core.escape import plain_json
from clipdetect.models.thresholds import describe_target


def threshold_target(detector) -> Dict[str, Any]:
    """How the decision threshold was chosen: the detector's ``threshold_target`` record (see
    :func:`~clipdetect.models.thresholds.describe_target`), else, for bundles written before it,
    a target FPR from ``clipdetect calibrate``, validation balanced accuracy, or the 0.5 default."""
    extra = getattr(detector, "extra", None) or {}
    metrics = getattr(detector, "metrics", None) or {}
    explicit = getattr(detector, "threshold_target", None) or extra.get("threshold_target")
    if explicit:
        return explicit if isinstance(explicit, dict) else {"kind": "target", "value": explicit}
    cal = extra.get("calibration") or {}
    if cal.get("target_fpr") is not None:
        return {"metric": "fpr", "value": cal.get("target_fpr"), "on": f"{cal.get('split')} reals",
                "achieved_fpr": cal.get("val_fpr"), "tpr": cal.get("val_tpr")}
    if metrics.get("val"):
        return {"metric": "balanced_accuracy", "on": "val"}
    return {"metric": "fixed", "value": 0.5, "reason": "none recorded"}


def _backbone(detector) -> Dict[str, Any]:
    b = dict(getattr(detector, "backbone", None) or {})
    keys = ("spec", "arch", "weights", "tag", "sha256", "embed_dim", "open_clip_version", "preprocess")
    return {k: b.get(k) for k in keys if b.get(k) is not None}


def _training(detector) -> Dict[str, Any]:
    extra = getattr(detector, "extra", None) or {}
    cfg = getattr(detector, "train_config", None) or {}
    out: Dict[str, Any] = {"cache": extra.get("cache"), "cache_created": extra.get("cache_created"),
                           "rows": extra.get("splits"), "data": extra.get("training_data")}
    out["config"] = {k: cfg.get(k) for k in ("head", "loss", "sam", "epochs", "batch_size", "lr",
                                             "val_fraction", "test_fraction", "split_seed") if k in cfg}
    return {k: v for k, v in out.items() if v not in (None, {}, [])}


def _measured(detector) -> Dict[str, Any]:
    metrics = getattr(detector, "metrics", None) or {}
    val = metrics.get("val") or {}
    out: Dict[str, Any] = {}
    if val:
        out["val"] = dict(val)  # AUC, AP, accuracy at 0.5 and at the threshold, EER, TPR at FPR, counts
    if metrics.get("calibration"):
        out["calibration"] = metrics["calibration"]
    for key in ("best_epoch", "epochs_run", "steps"):
        if key in metrics:
            out[key] = metrics[key]
    extra = getattr(detector, "extra", None) or {}
    for key in ("calibration", "evaluation", "test"):  # written by calibrate / later tools
        if extra.get(key):
            out[f"bundle_{key}"] = extra[key]
    return out


def model_card(detector, *, path: Optional[str] = None, limits: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The card: name, backbone, feature set, head, threshold and its target, temperature,
    training data, measured numbers, any card the bundle ships, and the service's limits."""
    head = getattr(detector, "head_config", None)
    extra = getattr(detector, "extra", None) or {}
    calibration = getattr(detector, "calibration", None)
    target = threshold_target(detector)
    card: Dict[str, Any] = {
        "name": Path(path).name if path else None,
        "path": str(Path(path).resolve()) if path else None,
        "feature_set": getattr(detector, "feature_set", None),
        "backbone": _backbone(detector),
        "head": {"kind": getattr(head, "kind", None), "in_dim": getattr(head, "in_dim", None)},
        "threshold": getattr(detector, "threshold", None),
        "threshold_target": target,
        "threshold_chosen_for": describe_target(target),
        "calibration": calibration.to_json() if calibration is not None else None,
        "temperature": getattr(detector, "temperature", None),
        "probability": (f"{calibration.describe() if calibration is not None else 'P(fake) = sigmoid(logit)'}; "
                        "verdict fake when P(fake) > threshold"),
        "training": _training(detector),
        "measured": _measured(detector),
    }
    shipped = getattr(detector, "card", None) or extra.get("card") or extra.get("model_card")
    if shipped:
        card["card"] = shipped
    if limits is not None:
        card["limits"] = limits
    return plain_json(card)
