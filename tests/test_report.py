"""``clipdetect report``: one Markdown report with per-generator metrics, LOGO, format baseline, calibration."""
from __future__ import annotations

from dataclasses import replace
import json

import numpy as np
import pandas as pd
import pytest

from helpers.synthetic import write_multi_generator_cache

from clipdetect.cli.main import main
from clipdetect.core.metrics import expected_calibration_error, reliability_table
from clipdetect.eval.report import ReportConfig, build_report
from clipdetect.models.detector import Detector
from helpers.training import FAST_LINEAR, fit_on_synthetic

PROBE = replace(FAST_LINEAR, epochs=6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cache = write_multi_generator_cache(root / "cache")
    Detector.fit_cache(cache, config=PROBE).save(root / "det")
    return root


def test_report_command_writes_every_section(trained, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(trained / "det"), str(trained / "cache"), "--out", str(out), "--n-boot", "20",
                 "--set", "epochs=3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["generators"] == 3 and printed["logo"] == "3 folds"
    d = printed["delta_auc_vs_probe"]  # the comparison with the logistic probe, with its paired CI
    assert d["delta_auc_lo"] <= d["delta_auc"] <= d["delta_auc_hi"]
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    gens = rep["per_generator"]
    assert [(r["group"], r["value"]) for r in gens] == [("overall", "all"), ("generator", "a"),
                                                        ("generator", "b"), ("generator", "c")]
    for r in gens:
        assert r["auc_lo"] <= r["auc"] <= r["auc_hi"] and "tpr@fpr=1%" in r and "ap" in r
    assert [r["held_out"] for r in rep["logo"]["rows"]] == ["a", "b", "c"]
    assert rep["logo"]["train_config"] == {**Detector.load(trained / "det").train_config, "epochs": 3}
    fmt = rep["format_baseline"]["result"]
    assert fmt["auc"] > 0.6  # generator c's fakes are JPEGs of another size: the container leaks
    cal = rep["calibration"]
    assert sum(b["n"] for b in cal["bins"]) == gens[0]["n_real"] + gens[0]["n_fake"]
    assert cal["ece"] == pytest.approx(gens[0]["ece"]) and cal["target_fpr"] is None
    for section in ("## Per generator", "## Compared with a logistic-regression probe", "## Leave one generator out",
                    "## Format-only baseline", "## Calibration"):
        assert section in md
    assert [r["detector"] for r in rep["probe"]["rows"]] == ["logistic-probe", "detector"]
    # calibration as it is: training tried Platt scaling on 48 validation rows and said why it did not apply it
    assert "training tried platt scaling and did not apply it (too few validation rows" in md
    assert "was not calibrated" not in md and "Threshold: P(fake) >" in md and "FPR 0.05 on" in md
    assert cal["threshold_target"]["metric"] == "fpr" and cal["n_real"] == gens[0]["n_real"]
    assert "n/a (needs ≥ 100 reals)" in md  # TPR at 1% FPR from ~50 test reals is not printed
    assert main(["report", str(trained / "det"), str(trained / "cache"), "--out", str(out), "--no-logo"]) == 2
    table_rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert {"all", "a", "b", "c"} <= set(table_rows)
    for name in ("report_roc.png", "report_hist.png", "report_reliability.png"):
        assert (out / name).stat().st_size > 0 and f"({name})" in md
    assert ReportConfig(**json.loads((out / "report_config.json").read_text())).train_overrides == {"epochs": 3}


def test_sections_that_cannot_run_say_why(tmp_path):
    cache = write_multi_generator_cache(tmp_path / "c", format_columns=False)
    det = Detector.fit_cache(cache, config=PROBE)
    rep = build_report(det, cache, ReportConfig(out=str(tmp_path / "r"), n_boot=10, logo=False))
    assert "lacks ['width', 'height', 'format', 'mode']" in rep["format_baseline"]["skipped"]
    assert rep["logo"] == {"skipped": "turned off (--no-logo)"}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Not run: the cache's metadata lacks" in md and "Not run: turned off" in md

    one, det = fit_on_synthetic(tmp_path / "one", PROBE, n=200, dim=12)
    rep = build_report(det, one, ReportConfig(out=str(tmp_path / "r1"), n_boot=10))
    assert rep["logo"]["skipped"] == "needs fakes of at least 2 generators; the cache has ['gen']"
    assert len(rep["per_generator"]) == 2 and "result" in rep["format_baseline"]


def test_reliability_table_is_the_ece_binning():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1)
    t = reliability_table(y, p, n_bins=10)
    assert t.n.sum() == 500 and (t.lo < t.hi).all() and ((t.mean_prob >= t.lo) & (t.mean_prob <= t.hi)).all()
    ece = float((t.n * (t.frac_fake - t.mean_prob).abs()).sum() / 500)
    assert ece == pytest.approx(expected_calibration_error(y, p, n_bins=10))
    assert isinstance(t, pd.DataFrame) and len(reliability_table([0, 1], [0.0, 0.0], n_bins=4)) == 1


def test_report_help_has_an_example_and_bad_overrides_are_refused(trained, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0 and "clipdetect report runs/det" in capsys.readouterr().out
    assert main(["report", str(trained / "det"), str(trained / "cache"), "--out", str(tmp_path / "r"),
                 "--set", "epochz=3"]) == 2
    assert "unknown TrainConfig field(s) ['epochz']" in capsys.readouterr().err


def test_html_report_is_one_self_contained_file(trained, tmp_path, capsys):
    import base64
    import re

    out = tmp_path / "rep"
    assert main(["report", str(trained / "det"), str(trained / "cache"), "--out", str(out), "--n-boot", "20",
                 "--no-logo", "--format", "html", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"].endswith("report.html")
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for section in ("Per generator", "Leave one generator out", "Format-only baseline", "Calibration"):
        assert f"<h2>{section}</h2>" in page
    assert "<script" not in page and "<table>" in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 == md.count("![")  # ROC, histograms, reliability: all embedded
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.findall(r'(?:href|src)="(?!data:)', page)  # nothing outside the file
    rows = [r for r in re.findall(r"<tr><td>([^<]*)</td>", page)]
    assert {"all", "a", "b", "c"} <= set(rows)
    assert main(["report", str(trained / "det"), str(trained / "cache"), "--out", str(tmp_path / "r2"),
                 "--no-logo", "--format", "html", "--formats", "svg"]) == 2
    assert "add png" in capsys.readouterr().err
