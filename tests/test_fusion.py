"""Fusion: member heads on their own columns, combined on validation rows; saved like any bundle."""
from dataclasses import replace
import numpy as np
import pytest

from helpers.synthetic import write_layered_cache
from clipdetect.core.metrics import binary_metrics
from clipdetect.features.splits import SplitSpec
from clipdetect.models.detector import Detector
from clipdetect.models.fusion import fuse_detectors, fused_feature_set
from helpers.training import FAST

MEMBER = replace(FAST, batch_size=32, epochs=12, width=16, dropout=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: no thread stalls


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    cache = write_layered_cache(tmp_path_factory.mktemp("fuse") / "c", n=240)
    image = Detector.fit_cache(cache, feature_set="image", config=MEMBER)
    layers = Detector.fit_cache(cache, feature_set="layers", config=MEMBER)
    return cache, image, layers


def test_fused_detector_reads_both_feature_sets_and_round_trips(members, tmp_path):
    cache, image, layers = members
    val = SplitSpec().rows(cache, "val")
    fused = fuse_detectors([image, layers], cache, val, method="stack")
    assert fused.feature_set == "image+layers" and fused.head_config.kind == "fusion"
    assert fused.extra["fusion"]["method"] == "stack" and len(fused.extra["fusion"]["weights"]) == 2
    # the member logits inside the fused head are the members' own
    test = SplitSpec().rows(cache, "test")
    x = fused.features(cache, test)
    z = fused.head.member_logits(__import__("torch").from_numpy(x)).detach().numpy()
    assert np.allclose(z[:, 0], image.logits(image.features(cache, test)), atol=1e-5)
    assert np.allclose(z[:, 1], layers.logits(layers.features(cache, test)), atol=1e-5)
    # the image MLP sees no signal here: stacking leans on the per-block head
    w = fused.extra["fusion"]["weights"]
    assert abs(w[1]) > abs(w[0])
    auc = binary_metrics(cache.labels(test), fused.logits(x), scores_are_probs=False)["auc"]
    assert auc > 0.9
    fused.save(tmp_path / "f")
    again = Detector.load(tmp_path / "f")
    assert np.array_equal(again.logits(x), fused.logits(x))


def test_auto_choice_and_refusals(members):
    cache, image, layers = members
    val = SplitSpec().rows(cache, "val")
    auto = fuse_detectors([image, layers], cache, val)
    assert auto.extra["fusion"]["method"] in ("mean", "stack") and set(auto.extra["fusion"]["cv_auc"]) == {
        "mean", "stack"}
    assert fused_feature_set(["layers", "image"]) == "image+layers"
    with pytest.raises(ValueError, match="at least 2"):
        fuse_detectors([image], cache, val)
    with pytest.raises(ValueError, match="validation rows"):
        fuse_detectors([image, layers], cache, val[:1])
