"""Detectors shipped with the package load by name, pass the bundle checks and carry their card."""
from __future__ import annotations

import numpy as np
import pytest

from clipdetect.models.detector import Detector
from clipdetect.models.pretrained import model_card, resolve_detector_path, shipped

SHIPPED = shipped()


def test_an_unknown_name_is_left_to_the_bundle_reader(tmp_path):
    assert resolve_detector_path("no-such-detector") == resolve_detector_path("no-such-detector")
    assert str(resolve_detector_path("no-such-detector")) == "no-such-detector"
    with pytest.raises(ValueError, match="not a detector bundle"):
        Detector.load("no-such-detector")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_detector_loads_by_name_with_its_card(name):
    det = Detector.load(name)
    card = det.extra["card"]
    assert card["name"] == name and model_card(name).startswith(f"# {name}")
    assert 0.0 < det.threshold < 1.0 and det.threshold_target["metric"] == "fpr"
    assert det.backbone["alternatives"] and det.backbone["sha256"]  # the converted checkpoint, or open_clip's tag
    assert card["training"]["sources"] and all("licence" in s for s in card["training"]["sources"])
    dim = det.head_config.in_dim
    p = det.probability(np.random.default_rng(0).normal(size=(8, dim)).astype(np.float32))
    assert p.shape == (8,) and np.isfinite(p).all()
    assert (SHIPPED[name] / "model.safetensors").stat().st_size < 16 * 2**20  # small: the head only


def test_the_package_ships_a_general_detector():
    assert "general-b16" in SHIPPED
