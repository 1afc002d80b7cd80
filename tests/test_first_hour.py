"""The README's "Your own images, start to finish": its commands, run as written on a folder of
nested generator and source folders (the tiny random model stands in for the CLIP checkpoint)."""
from __future__ import annotations

import json
import shlex

import pandas as pd
import pytest

from clipdetect.cli.main import main
from helpers.images import TINY, make_image
from helpers.readme import code_blocks, section as readme_section

SECTION = readme_section("Your own images, start to finish")
COMMANDS = [shlex.split(line.split("#")[0])[1:] for line in code_blocks("bash", SECTION)[0].splitlines()
            if line.startswith("clipdetect ")]
FOLDERS = {"fake/midjourney": True, "fake/dalle": True, "real/camera": False, "real/scans": False}


@pytest.fixture(scope="module")
def walked(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("first_hour")
    for k, (folder, fake) in enumerate(FOLDERS.items()):
        (root / "photos" / folder).mkdir(parents=True)
        for i in range(10):
            make_image(100 * k + i, fake=fake).save(root / "photos" / folder / f"{i}.png")
    (root / "new_photos").mkdir()
    for i in range(3):
        make_image(900 + i, fake=i % 2 == 1).save(root / "new_photos" / f"{i}.png")
    outputs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for argv in COMMANDS:
            argv = [TINY if a.startswith("ViT-B-16-quickgelu:") else a for a in argv]
            if argv[0] == "extract":
                argv += ["--workers", "0"]
            assert main(argv + ["--json"]) == 0, argv
            outputs.append(argv)
    return root


def test_the_readme_path_is_the_one_walked():
    assert [c[0] for c in COMMANDS] == ["extract", "train", "evaluate", "report", "predict"]
    assert "ViT-B-16-quickgelu:/path/to/clip_b16.pt" in SECTION


@pytest.mark.slow  # the five README commands, end to end
def test_nested_folders_become_generator_and_source_columns(walked):
    meta = pd.read_parquet(next((walked / "features" / "mine" / "meta").glob("*.parquet")))
    fakes, reals = meta[meta.label == 1], meta[meta.label == 0]
    assert set(fakes.generator) == {"midjourney", "dalle"} and set(reals.source) == {"camera", "scans"}


@pytest.mark.slow  # the five README commands, end to end
def test_per_generator_metrics_and_report(walked):
    metrics = json.loads((walked / "reports" / "mine" / "metrics.json").read_text())["metrics"]
    assert {(r["group"], r["value"]) for r in metrics} >= {("generator", "midjourney"), ("generator", "dalle")}
    overall = metrics[0]
    assert overall["n_real"] < 100 and overall["tpr@fpr=1%"] is None  # not computed from a handful of reals
    md = (walked / "reports" / "mine-full" / "report.md").read_text()
    for section in ("## Per generator", "## Per photo source", "## Compared with a logistic-regression probe",
                    "## Calibration"):
        assert section in md
    assert "n/a (needs ≥ 100 reals)" in md and "did not apply it (too few validation rows" in md
    for name in ("report_roc.png", "report_hist.png", "report_reliability.png"):
        assert (walked / "reports" / "mine-full" / name).stat().st_size > 0


@pytest.mark.slow  # the five README commands, end to end
def test_predictions_are_on_one_scale(walked):
    scores = pd.read_csv(walked / "scores.csv")
    assert len(scores) == 3 and scores.error.isna().all()
    assert (scores.label == (scores.probability > scores.threshold)).all()
