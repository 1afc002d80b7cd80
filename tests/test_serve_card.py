"""The model card of ``GET /v1/model``: built from any bundle, with fallbacks for fields it lacks."""
from __future__ import annotations

import json
import math

from helpers.training import tiny_detector
from clipdetect.serve.card import model_card, threshold_target


def test_card_reads_what_the_bundle_has_and_falls_back_for_the_rest(tiny_backbone, tmp_path):
    det = tiny_detector(tiny_backbone)
    card = model_card(det, path=str(tmp_path / "det"), limits={"max_images": 4})
    assert card["name"] == "det" and card["threshold"] == det.threshold and card["temperature"] == 2.0
    assert card["threshold_target"] == det.threshold_target and card["threshold_target"]["metric"] == "fixed"
    assert card["threshold_chosen_for"].startswith("fixed at 0.5") and "temperature" in card["probability"]
    det.threshold_target = None  # a bundle written before targets were recorded: the fallbacks
    assert threshold_target(det) == {"metric": "fixed", "value": 0.5, "reason": "none recorded"}
    assert card["backbone"]["spec"] == "clipdetect-tiny-vit:random" and card["limits"] == {"max_images": 4}
    assert "card" not in card and json.loads(json.dumps(card, allow_nan=False)) == card

    det.metrics["val"] = {"auc": 0.9, "eer": math.nan}
    assert threshold_target(det) == {"metric": "balanced_accuracy", "on": "val"}
    assert model_card(det)["measured"]["val"] == {"auc": 0.9, "eer": None}  # JSON-safe
    det.extra["calibration"] = {"target_fpr": 0.01, "split": "val", "val_fpr": 0.008, "val_tpr": 0.7}
    assert threshold_target(det) == {"metric": "fpr", "value": 0.01, "on": "val reals", "achieved_fpr": 0.008,
                                     "tpr": 0.7}
    det.threshold_target = {"metric": "fpr", "value": 0.05, "on": "fresh reals"}  # the detector's own record
    det.extra["card"] = {"intended_use": "triage"}
    card = model_card(det)
    assert card["threshold_target"]["on"] == "fresh reals" and card["card"] == {"intended_use": "triage"}
