"""A student cut from the teacher (first blocks, lower resolution) distilled to a per-block token."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from clipdetect.data.imaging import SplitPreprocess
from clipdetect.data.sources import ManifestSource
from clipdetect.distill.clip_student import TruncatedViT, resize_positions
from clipdetect.distill.student import StudentConfig, create_student, load_student
from clipdetect.distill.targets import block_index, teacher_weights
from clipdetect.distill.trainer import DistillConfig, distill
from clipdetect.features.backbones import create_backbone
from clipdetect.features.cache import FeatureCache
from clipdetect.features.encoder import ImageEncoder
from clipdetect.features.extract import extract
from clipdetect.features.runner import ExtractConfig
from helpers.images import TINY, make_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_all_blocks_at_the_teachers_size_reproduce_the_teachers_block_tokens(tiny_backbone):
    pre = SplitPreprocess(tiny_backbone.preprocess)
    arrays = [pre.worker(make_image(i, size=(90, 70))) for i in range(3)]
    enc = ImageEncoder(tiny_backbone, layers=True)
    _, tokens = enc.split(enc.encode(arrays))
    pixels = pre.finish(arrays)
    visual = tiny_backbone.model.visual
    n_blocks = len(visual.transformer.resblocks)
    for k in range(1, n_blocks + 1):
        student = TruncatedViT(visual, k, 64).eval()
        with torch.no_grad():
            out = student(pixels).numpy()
        assert np.allclose(out, tokens[:, k - 1], atol=1e-4), k
    student.set_standardisation(torch.full((64,), 2.0), torch.full((64,), 4.0))
    with torch.no_grad():
        assert np.allclose(student(pixels).numpy(), (tokens[:, n_blocks - 1] - 2.0) / 4.0, atol=1e-4)


def test_position_embeddings_resize_to_the_new_grid_and_keep_the_class_position():
    pos = torch.randn(1 + 16, 8)
    assert torch.equal(resize_positions(pos, 4), pos)
    small = resize_positions(pos, 2)
    assert small.shape == (5, 8) and torch.equal(small[0], pos[0])
    const = torch.cat([torch.zeros(1, 8), torch.ones(16, 8)])  # a constant grid stays constant
    assert torch.allclose(resize_positions(const, 3)[1:], torch.ones(9, 8), atol=1e-5)


def test_bad_clip_students_are_refused(tiny_backbone):
    visual = tiny_backbone.model.visual
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        TruncatedViT(visual, 1, 40)
    with pytest.raises(ValueError, match=r"blocks must be in \[1, 2\]"):
        TruncatedViT(visual, 3, 32)
    with pytest.raises(ValueError, match="per-block target"):
        create_student(StudentConfig(arch="clip:clipdetect-tiny-vit", embed_dim=32, image_size=32, blocks=1,
                                     pretrained="random"))
    with pytest.raises(ValueError, match="clip: students only"):
        StudentConfig(arch="resnet18", blocks=2)
    assert block_index("block8") == 8 and block_index("pre_proj") is None
    assert teacher_weights({"weights": "checkpoint", "checkpoint_path": "/w/b16.pt", "checkpoint": "b16.pt"}) \
        == "/w/b16.pt"


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """A tiny ViT teacher cache with --layers over 24 generated images (a manifest source)."""
    root = tmp_path_factory.mktemp("clipstudent")
    rows = []
    for i in range(24):
        fake = i % 2
        p = root / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        make_image(i, size=(80, 64), fake=bool(fake)).save(p)
        rows.append({"path": str(p), "label": fake, "key": f"k{i}", "generator": "g" if fake else "real",
                     "split": "train"})
    manifest = root / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    extract(ManifestSource(manifest), ExtractConfig(backbone=TINY, out=str(root / "cache"), workers=0, batch_size=8,
                                                    shard_size=8, layers=True), progress=False)
    return root, manifest, root / "cache"


def clip_config(root, manifest, cache, name, **kw) -> DistillConfig:
    opts = dict(arch="clip", target="block1", image_size=32, epochs=1, batch_size=8, workers=0, warmup_steps=1,
                val_fraction=0.25, test_fraction=0.25, head="linear", augment=())
    opts.update(kw)
    return DistillConfig(source=str(manifest), teacher_cache=str(cache), out=str(root / name), **opts)


def test_clip_student_distils_to_a_block_token_and_loads_without_the_teacher(layered, caplog):
    root, manifest, cache = layered
    result = distill(clip_config(root, manifest, cache, "s1"), progress=False)
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["train_distill"])
    caplog.clear()
    with caplog.at_level("INFO"):
        model, cfg, doc = load_student(root / "s1")
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]  # its weights load next
    assert cfg.arch == "clip:clipdetect-tiny-vit" and cfg.blocks == 1 and cfg.image_size == 32
    assert cfg.embed_dim == 64 and cfg.pretrained == "random"
    assert doc["distill"]["target"] == "block1"
    teacher = FeatureCache(cache)
    tokens = teacher.embeddings("layers")[:, 0]
    # the standardisation is the training rows' statistics: a subset of the cache's rows
    assert model.scale.min() > 0 and not torch.allclose(model.scale, torch.ones(64))
    assert np.all(model.shift.numpy() >= tokens.min(axis=0) - 1e-5)
    assert np.all(model.shift.numpy() <= tokens.max(axis=0) + 1e-5)
    backbone = create_backbone(f"student:{root / 's1'}")
    assert backbone.identity["encoder"] == "clip:clipdetect-tiny-vit" and backbone.embed_dim == 64
    assert backbone.identity["preprocess"]["size"] == [32, 32]
    emb = backbone.encode_images(torch.randn(2, 3, 32, 32))
    assert emb.shape == (2, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_the_encoder_learns_at_its_own_rate(layered):
    root, manifest, cache = layered
    distill(clip_config(root, manifest, cache, "slow", encoder_lr=1e-12, lr=1e-2), progress=False)
    start = create_student(StudentConfig(arch="clip:clipdetect-tiny-vit", embed_dim=64, image_size=32, blocks=1,
                                         pretrained="random"), seed=0)
    trained, _, _ = load_student(root / "slow")
    s0, s1 = start.state_dict(), trained.state_dict()
    moved = max(float((s1[k] - s0[k]).abs().max()) for k in s0 if k not in ("shift", "scale"))
    assert moved < 1e-6
    assert DistillConfig(source="", teacher_cache="", out="", arch="clip", target="block8").effective_encoder_lr \
        == 2e-5
    assert DistillConfig(source="", teacher_cache="", out="").effective_encoder_lr == 1e-3


def test_bad_targets_are_refused_with_the_fix(layered, tmp_path):
    root, manifest, cache = layered
    with pytest.raises(ValueError, match="clip student outputs a per-block token"):
        clip_config(root, manifest, cache, "x", target="image")
    with pytest.raises(ValueError, match=r"not one of the teacher cache's tokens \['block1', 'block2', 'pre_proj'\]"):
        distill(clip_config(root, manifest, cache, "x", target="block9"), progress=False)
    plain = tmp_path / "plain"
    extract(ManifestSource(manifest), ExtractConfig(backbone=TINY, out=str(plain), workers=0, batch_size=8,
                                                    shard_size=8), progress=False)
    with pytest.raises(ValueError, match="extract it with --layers"):
        distill(clip_config(root, manifest, plain, "y"), progress=False)
    with pytest.raises(ValueError, match="blocks applies to clip students only"):
        DistillConfig(source="", teacher_cache="", out="", blocks=2)


def test_cli_trains_a_clip_student_and_refuses_one_without_a_block_target(layered, capsys):
    from clipdetect.cli.main import main

    root, manifest, cache = layered
    base = ["distill", str(manifest), "--teacher-cache", str(cache), "--arch", "clip", "--image-size", "32",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--head", "linear", "--augment", "",
            "--no-progress"]
    assert main(base + ["--out", str(root / "cli-bad")]) == 2
    assert "choose a target such as 'block8'" in capsys.readouterr().err
    assert not (root / "cli-bad").exists()
    assert main(base + ["--out", str(root / "cli"), "--target", "block2", "--blocks", "1"]) == 0
    doc = json.loads((root / "cli" / "student.json").read_text())
    assert doc["config"]["blocks"] == 1 and doc["distill"]["target"] == "block2"
    assert doc["config"]["arch"] == "clip:clipdetect-tiny-vit"
