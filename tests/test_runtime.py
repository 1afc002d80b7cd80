"""CPU runtimes for the image tower: choices, the export cache, and (when the extras are installed)
the exported towers' embeddings against torch on a tiny random-weight ViT."""
from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch

from helpers.images import TINY, make_image

from clipdetect.features import runtime
from clipdetect.features.backbones import create_backbone
from clipdetect.features.runtime import RuntimeUnavailable, check_runtime, export_dir, runtime_cache_dir

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnx not installed (pip install 'clipdetect[onnx]')")
needs_ov = pytest.mark.skipif(not HAS_OV, reason="openvino/nncf not installed (pip install 'clipdetect[openvino]')")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "runtimes"
    monkeypatch.setenv(runtime.CACHE_ENV, str(d))
    return d


def _pixels(backbone, n=6):
    from clipdetect.data.imaging import SplitPreprocess

    pre = SplitPreprocess(backbone.preprocess)
    return pre.finish([pre.worker(make_image(i, size=(70, 90), fake=i % 2 == 1)) for i in range(n)])


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def test_choices_are_checked_with_the_fix_in_the_message():
    check_runtime("torch", "bf16")
    check_runtime("openvino", "int8")
    with pytest.raises(ValueError, match="runtime 'tensorrt' is not one of"):
        check_runtime("tensorrt")
    with pytest.raises(ValueError, match="int8 runs on --runtime openvino"):
        check_runtime("onnx", "int8")
    with pytest.raises(ValueError, match="not available on --runtime torch"):
        check_runtime("torch", "int8")
    with pytest.raises(ValueError, match="runs on the CPU; use --device cpu"):
        check_runtime("onnx", "fp32", "cuda")


def test_cache_folder_and_key(tmp_path, monkeypatch, tiny_backbone):
    monkeypatch.delenv(runtime.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime_cache_dir() == tmp_path / "xdg" / "clipdetect" / "runtimes"
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "mine"))
    assert runtime_cache_dir() == tmp_path / "mine"
    ident = dict(tiny_backbone.identity)
    a, key = export_dir(ident, "onnx", "fp32")
    assert a.parent == tmp_path / "mine" and key["identity"]["arch"] == "clipdetect-tiny-vit"
    moved = {**ident, "checkpoint_path": "/elsewhere/w.pt", "spec": "x:/elsewhere/w.pt"}
    assert export_dir(moved, "onnx", "fp32")[0] == a  # the same weights elsewhere: the same export
    assert export_dir({**ident, "seed": 1}, "onnx", "fp32")[0] != a
    assert export_dir(ident, "openvino", "fp32")[0] != a


def test_missing_extra_names_it(monkeypatch):
    real = importlib.import_module

    def no_ort(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *a, **k)

    monkeypatch.setattr(runtime.importlib, "import_module", no_ort)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'clipdetect\[onnx\]'"):
        runtime.require("onnx")


def test_torch_runtime_is_the_unchanged_default(tiny_backbone):
    bb = create_backbone(TINY, runtime="torch")
    assert bb.tower is None and tiny_backbone.tower is None
    x = _pixels(bb)
    assert np.array_equal(bb.encode_images(x), tiny_backbone.encode_images(x))


@needs_ort
def test_onnx_tower_matches_torch_and_is_exported_once(cache_dir, tiny_backbone, monkeypatch, one_torch_thread):
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.features.encoder import encoder_for

    bb = create_backbone(TINY, runtime="onnx")
    assert bb.tower is not None and (bb.tower.path / "export.json").is_file()
    x = _pixels(bb)
    assert _cos(bb.encode_images(x), tiny_backbone.encode_images(x)).min() > 0.9999
    pre = SplitPreprocess(bb.preprocess)
    arrays = [pre.worker(make_image(i, size=(50, 64))) for i in range(5)]
    got, want = encoder_for(bb, pre).encode(arrays), encoder_for(tiny_backbone, pre).encode(arrays)
    assert got.shape == want.shape == (5, 32) and _cos(got, want).min() > 0.9999

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache holds the export")

    monkeypatch.setattr(runtime, "export_onnx", no_export)
    again = create_backbone(TINY, runtime="onnx")
    assert again.tower.path == bb.tower.path
    assert np.allclose(again.encode_images(x), bb.encode_images(x), atol=1e-6)


@needs_ov
@pytest.mark.slow  # an OpenVINO conversion and an int8 quantisation
def test_openvino_fp32_and_int8(cache_dir, tiny_backbone, one_torch_thread, capfd):
    import openvino as ov

    x = _pixels(tiny_backbone, 8)
    ref = tiny_backbone.encode_images(x)
    fp32 = create_backbone(TINY, runtime="openvino")
    assert _cos(fp32.encode_images(x), ref).min() > 0.9999
    capfd.readouterr()
    q = create_backbone(TINY, runtime="openvino", precision="int8")
    assert capfd.readouterr().out == ""  # nncf's own log stays off stdout (extract --json writes there)
    assert q.tower.precision == "int8" and q.tower.path != fp32.tower.path
    types = {op.get_output_element_type(0).get_type_name() for op in ov.Core().read_model(
        str(q.tower.path / "model.xml")).get_ops() if op.get_type_name() == "Constant"}
    assert {"u8", "i8"} & types  # the weights are stored as int8
    assert _cos(q.encode_images(x), ref).min() > 0.999


@pytest.mark.parametrize("command", ["extract", "predict", "serve"])
def test_bad_runtime_is_refused_before_any_work(tmp_path, image_folder, capsys, command):
    from clipdetect.cli.main import main

    args = {"extract": ["extract", str(image_folder), "--out", str(tmp_path / "c"), "--backbone", TINY],
            "predict": ["predict", str(tmp_path), str(image_folder), "--out", str(tmp_path / "c.csv")],
            "serve": ["serve", str(tmp_path), "--port", "0"]}[command]
    assert main(args + ["--runtime", "onnx", "--precision", "int8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--precision 'int8' is not available on --runtime onnx" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.csv").exists()


@needs_ort
def test_extract_and_predict_on_onnx(tmp_path, image_folder, cache_dir, one_torch_thread):
    import pandas as pd

    from clipdetect.cli.main import main
    from clipdetect.features.cache import FeatureCache

    common = [str(image_folder), "--backbone", TINY, "--workers", "0", "--no-progress"]
    assert main(["extract", *common, "--out", str(tmp_path / "t"), "--dtype", "float32"]) == 0
    assert main(["extract", *common, "--out", str(tmp_path / "o"), "--dtype", "float32", "--runtime", "onnx"]) == 0
    t, o = FeatureCache(tmp_path / "t"), FeatureCache(tmp_path / "o")
    assert list(t.meta["key"]) == list(o.meta["key"])
    assert _cos(t.features("image").astype(np.float32), o.features("image").astype(np.float32)).min() > 0.999
    from clipdetect.models.detector import Detector

    det = Detector.fit_cache(t, config=_tiny_train())
    det.save(tmp_path / "det")
    for rt in ("torch", "onnx"):
        assert main(["predict", str(tmp_path / "det"), str(image_folder), "--out", str(tmp_path / f"{rt}.csv"),
                     "--workers", "0", "--no-progress", "--runtime", rt]) == 0
    a, b = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert np.allclose(a["logit"], b["logit"], atol=1e-3)
    from clipdetect.models.predict import ImageScorer
    from clipdetect.serve.server import load_served

    served = [ImageScorer(*load_served(str(tmp_path / "det"), runtime=rt)) for rt in ("torch", "onnx")]
    assert served[0].backbone.tower is None and served[1].backbone.tower is not None  # the service's path
    decoded = [served[0].decode(p.read_bytes()) for p in sorted(image_folder.rglob("*")) if p.is_file()][:6]
    logits = [np.array([row["logit"] for row in scorer.score(decoded)]) for scorer in served]
    assert np.allclose(logits[0], logits[1], atol=1e-3)
    s = det.score_images([make_image(3), make_image(60, fake=True)], runtime="onnx")
    assert np.allclose(s["logit"], det.score_images([make_image(3), make_image(60, fake=True)])["logit"], atol=1e-3)


def _tiny_train():
    from clipdetect.models.train import TrainConfig

    return TrainConfig(epochs=2, batch_size=8, head="linear", loss="bce", sam=False, patience=0,
                       val_fraction=0.0, test_fraction=0.0)
