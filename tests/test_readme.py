"""Every Python snippet of README.md runs, and returns what the README says it returns."""
from __future__ import annotations

import numpy as np
import pytest

import clipdetect
from helpers.images import TINY, make_image, write_image_folder
from helpers.readme import README, ROOT, code_blocks

BLOCKS = code_blocks("python")


def run(block: int, **names) -> dict:
    ns = dict(names)
    exec(compile(BLOCKS[block], f"README.md python block {block + 1}", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, one_torch_thread):
    """An empty working folder: the snippets write their outputs there."""
    return tmp_path_factory.mktemp("readme")


def test_the_readme_has_the_snippets_this_test_knows():
    assert len(BLOCKS) == 3, "a README Python snippet was added or removed: run it in this test"


@pytest.fixture(scope="module")
def sample_run(workdir):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        first = run(0)
        second = run(1, **first)
    return first, second


@pytest.mark.slow  # trains and evaluates on the whole sample cache
def test_training_and_evaluating_on_the_sample(sample_run, workdir):
    ns, _ = sample_run
    overall = ns["report"].table.loc[0]
    assert (overall["group"], int(overall["n_real"]), int(overall["n_fake"])) == ("overall", 138, 145)
    assert overall["auc"] > 0.9
    assert len(ns["p_fake"]) == 283 and ns["p_fake"].between(0, 1).all()
    again = clipdetect.load_detector(workdir / "detectors" / "sample")
    np.testing.assert_array_equal(again.predict(ns["cache"].features("image")), ns["det"].predict(
        ns["cache"].features("image")))
    with pytest.raises(ValueError, match="resolve_split_rows"):
        ns["cache"].select(split="test")  # what the text under the snippet says


@pytest.mark.slow  # trains and evaluates on the whole sample cache
def test_estimator_and_roc_display(sample_run, workdir):
    _, ns = sample_run
    assert ns["aucs"].shape == (3,) and (ns["aucs"] > 0.9).all()
    assert (workdir / "roc.png").stat().st_size > 0 and "overall" in ns["roc"].roc_auc


def test_own_images_snippet(tmp_path, monkeypatch, one_torch_thread):
    # run with the tiny random backbone in place of ViT-B-16:openai (no weights offline)
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "photos", n=10, fake_offset=40, name="{i}")
    make_image(90).save("new.jpg")
    make_image(91, fake=True).save("other.png")
    make_image(92).save("third.webp")
    assert "ViT-B-16:openai" in BLOCKS[2]
    BLOCKS[2] = BLOCKS[2].replace("ViT-B-16:openai", TINY)
    try:
        ns = run(2)
    finally:
        BLOCKS[2] = BLOCKS[2].replace(TINY, "ViT-B-16:openai")
    scores = ns["scores"]
    assert list(scores.columns) == ["logit", "probability", "threshold", "label", "error"] and len(scores) == 3
    assert scores.error.isna().all() and scores.probability.between(0, 1).all()
    assert len(ns["cache"]) == 20


def test_ci_runs_the_readme_test_command_then_the_slow_tests():
    from setuptools.config.pyprojecttoml import read_configuration

    ci = (ROOT / ".ci" / "run").read_text()
    lines = README.splitlines()
    test_line = next(line for line in lines if line.startswith("pip install") and "pytest" in line)
    assert test_line.endswith("python -m pytest -q")
    assert "grep -m1 -E '^pip install .*pytest' README.md" in ci and 'bash -c "$cmd"' in ci
    assert ci.rstrip().endswith("python -m pytest -q -m slow")  # after the README's command
    assert "`.ci/run` also runs the tests marked slow: `python -m pytest -q -m slow`." in lines
    options = read_configuration(ROOT / "pyproject.toml")["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow'" in options["addopts"] and any(m.startswith("slow:") for m in options["markers"])
