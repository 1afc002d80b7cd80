"""The streaming engine's stages: reader, decoder, encoder, and the chain of them."""
import io

import numpy as np
import pytest
from PIL import Image

from clipdetect.data.imaging import SplitPreprocess, decode_image
from clipdetect.data.sources import ImageFolderSource
from clipdetect.features import pipeline
from clipdetect.features.cache import FeatureCache
from clipdetect.features.encoder import ImageEncoder
from clipdetect.features.runner import ExtractConfig
from clipdetect.features.extract import extract
from helpers.images import TINY, make_image


def _jpeg(img, quality=90):
    b = io.BytesIO()
    img.save(b, format="JPEG", quality=quality)
    return b.getvalue()


def _reference(backbone, refs):
    """The old path, one image at a time: decode → PIL stage → finish → Backbone.encode_images."""
    pre = SplitPreprocess(backbone.preprocess)
    return np.concatenate([backbone.encode_images(pre.finish([pre.worker(decode_image(r)[0])])) for r in refs])


def test_extract_embeddings_equal_single_image_reference(tmp_path, image_folder, tiny_backbone, one_torch_thread):
    src = ImageFolderSource(image_folder)
    cfg = ExtractConfig(backbone=TINY, out=str(tmp_path / "c"), batch_size=5, shard_size=8, workers=2,
                        dtype="float32")
    extract(src, cfg, backbone=tiny_backbone, progress=False)
    got = FeatureCache(tmp_path / "c").embeddings("image")
    want = _reference(tiny_backbone, [s.image for s in src])
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_encoder_equals_backbone_on_the_same_batch(tiny_backbone, one_torch_thread):
    pre = SplitPreprocess(tiny_backbone.preprocess)
    arrays = [pre.worker(make_image(i, size=(50 + i, 40))) for i in range(6)]
    old = tiny_backbone.encode_images(pre.finish(arrays))
    new = ImageEncoder(tiny_backbone, pre).encode(arrays)
    assert new.dtype == np.float32 and np.array_equal(old, new)
    assert ImageEncoder(tiny_backbone, pre).encode([]).shape == (0, tiny_backbone.embed_dim)


def test_stream_depths_give_same_embeddings_in_order(tiny_backbone, one_torch_thread):
    pre = SplitPreprocess(tiny_backbone.preprocess)
    batches = [(k, [pre.worker(make_image(10 * k + i)) for i in range(n)]) for k, n in enumerate([3, 0, 5, 1])]
    sync = [(k, ImageEncoder(tiny_backbone, pre).encode(a)) for k, a in batches]
    for depth in (1, 2, 3):
        out = list(ImageEncoder(tiny_backbone, pre, depth=depth).stream(iter(batches)))
        assert [k for k, _ in out] == [0, 1, 2, 3]
        assert all(np.array_equal(e, s) for (_, e), (_, s) in zip(out, sync))
    with pytest.raises(ValueError, match="depth"):
        ImageEncoder(tiny_backbone, pre, depth=0)


def test_decoder_keeps_task_order_and_ledgers_bad_images(tiny_backbone):
    pre = SplitPreprocess(tiny_backbone.preprocess)
    good = [_jpeg(make_image(i)) for i in range(7)]
    refs = good[:3] + [b"", b"<html>", good[3][:100]] + good[3:]
    tasks = [(k, refs[k:k + 3]) for k in range(0, len(refs), 3)]
    for workers in (0, 2):
        out = list(pipeline.Decoder(pre, workers=workers)(iter(tasks)))
        assert [p for p, _ in out] == [k for k, _ in tasks]
        flat = [d for _, ds in out for d in ds]
        assert [d[0] for d in flat] == ["ok"] * 3 + ["err"] * 3 + ["ok"] * 4
        assert [d[1] for d in flat[3:6]] == ["empty", "not_an_image", "corrupt"]
    with pytest.raises(ValueError, match="fast_decode"):
        pipeline.Decoder(pre, fast_decode="gpu")
    with pytest.raises(ValueError, match="workers"):
        pipeline.Decoder(pre, workers=-1)


def test_run_embeds_the_selected_images_only(tiny_backbone, one_torch_thread):
    pre = SplitPreprocess(tiny_backbone.preprocess)
    refs = [_jpeg(make_image(i)) for i in range(4)]
    tasks = [("a", refs[:2] + [b""]), ("b", refs[2:])]
    out = list(pipeline.run(iter(tasks), pipeline.Decoder(pre), ImageEncoder(tiny_backbone, pre)))
    assert [p for p, _, _ in out] == ["a", "b"] and [len(e) for _, _, e in out] == [2, 2]
    np.testing.assert_allclose(np.concatenate([e for _, _, e in out]), _reference(tiny_backbone, refs), atol=2e-6)
    firsts = list(pipeline.run(iter(tasks), pipeline.Decoder(pre), ImageEncoder(tiny_backbone, pre),
                               select=lambda p, d: [0]))
    assert [len(e) for _, _, e in firsts] == [1, 1]


def test_reader_resumes_from_a_position(image_folder):
    src = ImageFolderSource(image_folder)
    keys = [s.key for s in src]
    batches = list(pipeline.read_batches(src, 5))
    assert [len(b) for b in batches] == [5, 5, 2] and [s.key for b in batches for s in b] == keys
    assert [s.key for b in pipeline.read_batches(src, 4, start=7, limit=3) for s in b] == keys[7:10]
    tasks = list(pipeline.plan_tasks(src.iterate(3), 3, None, 4, 3))
    assert [(t.shard_start, t.shard_stop, len(t.samples), t.last) for t in tasks] == [
        (3, 7, 3, False), (3, 7, 1, True), (7, 11, 3, False), (7, 11, 1, True), (11, 12, 1, True)]


def test_captions_encoded_once_each(tiny_backbone):
    calls = []
    fake = type("B", (), {"embed_dim": 2, "encode_texts": lambda self, t: calls.append(list(t)) or
                          np.array([[len(c), 1.0] for c in t], np.float32)})()
    out = pipeline.encode_captions(fake, ["ab", None, "ab", "c", ""], batch_size=2)
    assert calls == [["ab", ""], ["c"]] and out[:, 0].tolist() == [2, 0, 2, 1, 0]
    assert pipeline.encode_captions(fake, []).shape == (0, 2)


def test_draft_decode_is_opt_in_and_keeps_original_size(tiny_backbone):
    pre = SplitPreprocess(tiny_backbone.preprocess)
    side = pipeline.input_size(pre)
    assert side is not None
    big = make_image(3, size=(8 * side + 5, 6 * side)).resize((8 * side + 5, 6 * side), Image.BILINEAR)
    data = _jpeg(big)
    exact, info = decode_image(data)
    small, info_d = decode_image(data, draft=2 * side)
    assert info == info_d and (info["width"], info["height"]) == big.size
    assert min(small.size) >= 2 * side and small.size[0] < exact.size[0]
    png = io.BytesIO()
    big.save(png, format="PNG")
    assert decode_image(png.getvalue(), draft=2 * side)[0].size == big.size  # JPEG only
    dec = pipeline.Decoder(pre, fast_decode="draft")
    assert dec.draft == 2 * side
    (_, [(status, arr, _)]), = list(dec(iter([(0, [data])])))
    assert status == "ok" and arr.shape == pre.worker(exact).shape
