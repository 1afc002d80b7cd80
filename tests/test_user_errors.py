"""Clear one-line messages for user errors, help with examples everywhere, documented and
adjustable decoder limits, and the demo's sample cache shipped as package data."""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from clipdetect.cli.main import build_parser, main
from clipdetect.features.cache import FeatureCache
from helpers.images import TINY
from helpers.readme import README, ROOT

from helpers.synthetic import write_synthetic_cache


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("device, says", [("gpu0", "use cpu, cuda, cuda:N"), ("cuda:x", "use cpu, cuda, cuda:N")])
@pytest.mark.parametrize("command", ["extract", "train", "predict"])
def test_bad_device_strings(tmp_path, capsys, command, device, says):
    args = {"extract": ["extract", str(tmp_path), "--out", str(tmp_path / "c"), "--backbone", TINY],
            "train": ["train", str(tmp_path), "--out", str(tmp_path / "d")],
            "predict": ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "p.csv")]}[command]
    assert main(args + ["--device", device]) == 2
    line = _one_error(capsys)
    assert f"--device {device!r}" in line and says in line
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_cuda_without_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    assert main(["extract", str(tmp_path), "--out", str(tmp_path / "c"), "--backbone", TINY, "--device", "cuda"]) == 2
    line = _one_error(capsys)
    assert "--device 'cuda'" in line and "use --device cpu" in line


def test_empty_source_is_an_error(tmp_path, capsys):
    for label in ("real", "fake"):
        (tmp_path / "src" / label).mkdir(parents=True)
    assert main(["extract", str(tmp_path / "src"), "--out", str(tmp_path / "c"), "--backbone", TINY,
                 "--workers", "0"]) == 2
    assert "holds no images" in _one_error(capsys)
    assert not (tmp_path / "c").exists()


def test_image_text_detector_without_captions_refuses_up_front(tmp_path, capsys):
    cache = write_synthetic_cache(tmp_path / "cache", n=80, dim=8)
    det = tmp_path / "det"
    assert main(["train", str(cache.root), "--out", str(det), "--feature-set", "image+text", "--epochs", "1",
                 "--head", "linear", "--no-sam", "--batch-size", "16", "--no-progress"]) == 0
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "a.png")
    capsys.readouterr()
    out = tmp_path / "p.csv"
    assert main(["predict", str(det), str(tmp_path / "imgs"), "--out", str(out)]) == 2
    line = _one_error(capsys)
    assert "'image+text' features" in line and "--caption-template" in line and not out.exists()


def test_thin_image_embedded_by_default_refused_on_request(tmp_path, capsys):
    for label in ("real", "fake"):
        (tmp_path / "src" / label).mkdir(parents=True)
        Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "src" / label / "square.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2, 2000, 3), dtype=np.uint8)).save(
        tmp_path / "src" / "fake" / "thin.png")
    base = ["extract", str(tmp_path / "src"), "--backbone", TINY, "--workers", "0", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    meta = FeatureCache(tmp_path / "a").meta
    assert "fake/thin.png" in set(meta.key) and meta.set_index("key").loc["fake/thin.png", "width"] == 2000
    assert main(base + ["--out", str(tmp_path / "b"), "--max-aspect", "100"]) == 0
    errors = FeatureCache(tmp_path / "b").errors()
    assert errors.set_index("key").loc["fake/thin.png", "reason"] == "extreme_aspect"
    assert main(base + ["--out", str(tmp_path / "c"), "--max-pixels", "1000"]) == 0
    assert set(FeatureCache(tmp_path / "c").errors().reason) == {"decompression_bomb"}


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_command_has_examples_and_limits_are_documented():
    commands = dict(_subparsers(build_parser(full=True)))
    for name in ("plot", "predict", "calibrate", "demo", "cache", "cache info", "cache verify", "extract",
                 "protocol logo", "protocol text-leakage", "protocol robustness", "protocol format-bias"):
        assert "examples:" in commands[name].format_help(), name
    for name in ("extract", "predict"):
        text = commands[name].format_help()
        assert "--max-pixels" in text and "--max-aspect" in text and "64,000,000" in text
    assert "--max-aspect" in README and "--max-pixels" in README and "cache verify" in README


def test_cache_alone_prints_the_cache_help(capsys):
    assert main(["cache"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: clipdetect cache") and "verify" in out


def test_failed_train_leaves_no_output_folder(tmp_path, capsys):
    cache = write_synthetic_cache(tmp_path / "cache", n=40, dim=8, fake_fraction=0.0)  # nearly one class
    assert main(["train", str(cache.root), "--out", str(tmp_path / "det"), "--epochs", "1",
                 "--val-fraction", "0.5", "--test-fraction", "0.45", "--no-progress"]) == 2
    _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_sample_cache_is_package_data():
    from clipdetect.core.resources import SAMPLE_CACHE

    assert (SAMPLE_CACHE / "manifest.json").is_file() and len(FeatureCache(SAMPLE_CACHE)) > 0
    from setuptools.config.pyprojecttoml import read_configuration

    globs = read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["package-data"]["clipdetect"]
    files = {p for g in globs for p in (ROOT / "clipdetect").glob(g)}
    shipped = {p for p in SAMPLE_CACHE.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert shipped and shipped <= files


@pytest.mark.slow
@pytest.mark.slow  # builds a wheel in a pip process
def test_wheel_contains_the_sample_cache(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), "-q"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"could not build a wheel here: {r.stderr.strip()[-300:]}")
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    sample = [n for n in names if n.startswith("clipdetect/sample_data/cifake-b16-sample/")]
    assert "clipdetect/sample_data/cifake-b16-sample/manifest.json" in sample
    assert sum(n.endswith(".npy") for n in sample) == 2 and sum(n.endswith(".parquet") for n in sample) == 4
