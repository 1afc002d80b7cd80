"""Backbone specs: tags, local checkpoints (full or image-tower only), random test models."""
import os

import numpy as np
import pytest
import torch

from clipdetect.features.backbones import BackboneError, BackboneSpec, create_backbone
from clipdetect.features.identity import identities_match
from helpers.images import TINY


def test_spec_parsing():
    assert BackboneSpec.parse("ViT-B-16:openai").weights == "openai"
    s = BackboneSpec.parse("ViT-B-16:/tmp/x.pt")
    assert s.arch == "ViT-B-16" and s.is_path
    with pytest.raises(BackboneError):
        BackboneSpec.parse(":openai")


def test_random_backbone_encodes_normalised_and_is_seeded(tiny_backbone):
    x = torch.randn(3, 3, 64, 64)
    a = tiny_backbone.encode_images(x)
    assert a.shape == (3, 32) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    b = create_backbone(TINY).encode_images(x)
    assert np.array_equal(a, b)
    t = tiny_backbone.encode_texts(["a photo of a cat", "a dog"])
    assert t.shape == (2, 32)
    ident = tiny_backbone.identity
    assert ident["arch"] == "clipdetect-tiny-vit" and ident["open_clip_version"]
    assert ident["preprocess"]["size"] == [64, 64]


def test_full_checkpoint_round_trip(tmp_path, tiny_backbone, caplog):
    path = tmp_path / "full.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    with caplog.at_level("WARNING"):
        bb = create_backbone(f"clipdetect-tiny-vit:{path}")
    assert "initialized randomly" not in caplog.text  # open_clip's warning is wrong here: we load weights
    x = torch.randn(2, 3, 64, 64)
    assert np.allclose(bb.encode_images(x), tiny_backbone.encode_images(x), atol=1e-6)
    assert bb.has_text and len(bb.identity["sha256"]) == 64


def test_image_tower_only_checkpoint_refuses_text(tmp_path, tiny_backbone):
    sd = {k: v for k, v in tiny_backbone.model.state_dict().items() if k.startswith("visual.")}
    path = tmp_path / "visual.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    bb = create_backbone(f"clipdetect-tiny-vit:{path}")
    assert not bb.has_text and bb.identity["has_text"] is False
    x = torch.randn(2, 3, 64, 64)
    assert np.allclose(bb.encode_images(x), tiny_backbone.encode_images(x), atol=1e-6)
    with pytest.raises(BackboneError, match="no text tower"):
        bb.encode_texts(["a cat"])


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": object()}}, path)
    with pytest.raises(BackboneError, match="safely"):
        create_backbone(f"clipdetect-tiny-vit:{path}")


def test_wrong_checkpoint_and_missing_file(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        create_backbone(f"clipdetect-tiny-vit:{tmp_path}/missing.pt")
    path = tmp_path / "bad.pt"
    torch.save({"visual.nonsense": torch.zeros(1)}, path)
    with pytest.raises(BackboneError, match="does not"):
        create_backbone(f"clipdetect-tiny-vit:{path}")


def test_unknown_arch_tag_and_offline_download_errors():
    with pytest.raises(BackboneError, match="unknown architecture"):
        create_backbone("NoSuchNet:openai")
    with pytest.raises(BackboneError, match="not a pretrained tag"):
        create_backbone("ViT-B-32:no_such_tag")
    with pytest.raises(BackboneError, match="names no weights"):
        create_backbone("ViT-B-32")


def test_offline_fails_at_once_with_one_message(monkeypatch, caplog):
    import time

    from clipdetect.core import offline

    for name in offline.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the probe fails
    offline.offline_reason.cache_clear()
    try:
        assert "127.0.0.1:9 cannot be reached" in offline.offline_reason()
        t0 = time.perf_counter()
        with pytest.raises(BackboneError) as err:
            create_backbone("ViT-B-32:openai")
        assert time.perf_counter() - t0 < 20  # no minute of retries
        msg = str(err.value)
        assert "hub is not reachable" in msg and "--backbone 'ViT-B-32:/path/to/" in msg
        assert "huggingface.co/" in msg and "Failed to download" not in caplog.text  # said once, by us
        assert "HF_HUB_OFFLINE" not in os.environ  # the switches were on for the call only
        monkeypatch.setenv("CLIPDETECT_OFFLINE", "1")
        offline.offline_reason.cache_clear()
        assert offline.offline_reason() == "$CLIPDETECT_OFFLINE is set"
    finally:
        offline.offline_reason.cache_clear()


def test_precision_checks():
    with pytest.raises(BackboneError, match="needs a GPU"):
        create_backbone(TINY, precision="fp16")
    bb = create_backbone(TINY, precision="bf16")
    assert bb.encode_images(torch.randn(1, 3, 64, 64)).dtype == np.float32


def test_identity_comparison(tiny_backbone):
    other = dict(tiny_backbone.identity, preprocess={**tiny_backbone.identity["preprocess"], "size": [96, 96]})
    assert identities_match(tiny_backbone.identity, dict(tiny_backbone.identity, open_clip_version="x"))
    assert not identities_match(tiny_backbone.identity, other)


def test_student_family_resolves_without_explicit_import(tmp_path):
    # the student module registers itself lazily: a bad path reaches the student factory
    with pytest.raises(Exception) as exc:
        create_backbone(f"student:{tmp_path}/no-such-student")
    assert "unknown architecture" not in str(exc.value)
