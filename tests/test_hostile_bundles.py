"""Hostile detector bundles: every mutation from the generator in ``helpers/hostile.py`` (damaged or
extreme weights, wrong JSON types, out-of-range values, sizes that would allocate without end,
special files) is refused at load with one line naming the field, before anything large is
allocated; a head that still overflows on real features is refused when it scores."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.hostile import HOSTILE_BUNDLES, deadline_fixture, hostile_bundle
from helpers.procs import run_cli
from helpers.synthetic import separable_features
from clipdetect.cli.main import main
from clipdetect.models.bundle import DetectorError
from clipdetect.models.detector import Detector
from clipdetect.models.train import TrainConfig

_deadline = deadline_fixture(300)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A sound 16-d MLP bundle (no backbone needed to load it)."""
    x, y = separable_features(64, 16)
    det = Detector.fit(x, y, config=TrainConfig(epochs=1, batch_size=32, sam=False, patience=0,
                                                val_fraction=0.0, test_fraction=0.0))
    return det.save(tmp_path_factory.mktemp("good") / "det")


@pytest.mark.parametrize("name", sorted(HOSTILE_BUNDLES))
def test_every_hostile_bundle_is_refused_naming_the_problem(good, tmp_path, name):
    d = hostile_bundle(good, tmp_path, name)
    with pytest.raises(DetectorError) as exc:
        Detector.load(d)
    message = str(exc.value).replace(str(tmp_path), "TMP")  # the fragment must not come from a path
    assert "\n" not in message
    assert HOSTILE_BUNDLES[name][1].lower() in message.lower(), message


def test_the_sound_bundle_loads_and_scores(good):
    det = Detector.load(good)
    assert np.isfinite(det.logits(separable_features(8, 16)[0])).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["depth_200000", "json_fifo", "weights_dev_zero"])
def test_the_command_line_refuses_in_one_line_with_bounded_memory(good, tmp_path, name):
    """A real process under a 3 GiB address-space limit: exit 2, one ERROR line, no traceback,
    no hang, and the peak RSS of a process that never built the hostile head."""
    d = hostile_bundle(good, tmp_path, name)
    from helpers.synthetic import write_synthetic_cache

    write_synthetic_cache(tmp_path / "cache", n=40, dim=16)
    r = run_cli(["evaluate", d, tmp_path / "cache", "--n-boot", "0", "--baseline", "none"], timeout=250,
                memory_gb=3)
    assert r.rc == 2, r.err
    assert "Traceback" not in r.err and len(r.errors) == 1, r.err
    assert HOSTILE_BUNDLES[name][1].lower() in r.errors[0].replace(str(tmp_path), "TMP").lower()
    assert r.peak_rss_mb < 1500, r.peak_rss_mb


def test_weights_that_overflow_on_features_are_refused_when_scoring(good, tmp_path, capsys):
    """Finite weights that make every logit inf/NaN: refused at scoring, never a NaN score."""
    d = hostile_bundle(good, tmp_path, "nan_weights")  # then made finite but huge
    from safetensors.numpy import load_file, save_file

    t = load_file(str(good / "model.safetensors"))
    save_file({k: (v * 1e37).astype(v.dtype) if k.endswith("weight") and v.dtype.kind == "f" else v
               for k, v in t.items()}, str(d / "model.safetensors"))
    det = Detector.load(d)  # finite: it loads
    with pytest.raises(DetectorError, match="no finite score"):
        det.logits(separable_features(8, 16)[0])
    from helpers.synthetic import write_synthetic_cache

    write_synthetic_cache(tmp_path / "cache", n=40, dim=16)
    assert main(["evaluate", str(d), str(tmp_path / "cache"), "--n-boot", "0", "--baseline", "none"]) == 2
    assert "no finite score" in capsys.readouterr().err


def test_unknown_top_level_keys_stay_tolerated(good, tmp_path):
    """detector.json always tolerated keys it does not know (newer writers add some)."""
    d = hostile_bundle(good, tmp_path, "threshold_above_one")
    import json

    cfg = json.loads((good / "detector.json").read_text())
    cfg["calibration"] = {"method": "platt", "scale": 1.0, "offset": 0.0}
    (d / "detector.json").write_text(json.dumps(cfg))
    assert Detector.load(d).threshold == cfg["threshold"]
