"""Extraction: bad images never stop a run, captions encoded once, killed runs resume identically."""
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipdetect.features.backbones import BackboneError
from clipdetect.features.cache import FeatureCache
from clipdetect.features.runner import ExtractConfig
from clipdetect.features.extract import extract
from clipdetect.data.sources import ImageFolderSource, ManifestSource
from helpers.images import TINY, make_image, write_image_folder


def _cfg(out, **kw):
    kw = {"workers": 0, "batch_size": 4, "shard_size": 8, **kw}
    return ExtractConfig(backbone=TINY, out=str(out), **kw)


def _bad_inputs(folder):
    """Every kind of bad or unusual input, as files in ``folder``; returns {name: expected reason|None}."""
    rgb = make_image(5, size=(60, 50))
    def save(name, data):
        (folder / name).write_bytes(data)
    def enc(img, fmt, **kw):
        b = io.BytesIO()
        img.save(b, format=fmt, **kw)
        return b.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    gif = io.BytesIO()
    rgb.save(gif, format="GIF", save_all=True, append_images=[make_image(6, size=(60, 50))])
    arr16 = (np.arange(60 * 50).reshape(50, 60) * 20).astype(np.uint16)
    cases = {
        "zero.jpg": (b"", "empty"), "trunc.jpg": (enc(rgb, "JPEG")[:200], "corrupt"),
        "html.png": (b"<html>404</html>", "not_an_image"),
        "bomb.png": (enc(Image.new("L", (6000, 6000)), "PNG"), "decompression_bomb"),
        "cmyk.jpg": (enc(rgb.convert("CMYK"), "JPEG"), None), "p16.png": (enc(Image.fromarray(arr16), "PNG"), None),
        "rgba.png": (enc(rgb.convert("RGBA"), "PNG"), None), "pal.png": (enc(rgb.convert("P"), "PNG"), None),
        "anim.gif": (gif.getvalue(), None), "exif.jpg": (enc(rgb, "JPEG", exif=exif), None),
        "huge.png": (enc(Image.new("RGB", (4000, 3000), (9, 9, 9)), "PNG"), None),
    }
    for name, (data, _) in cases.items():
        save(name, data)
    return {name: reason for name, (_, reason) in cases.items()}


def test_bad_images_are_ledgered_and_valid_ones_embedded(tmp_path, tiny_backbone):
    real = tmp_path / "src" / "real"
    real.mkdir(parents=True)
    expected = _bad_inputs(real)
    rows = [{"path": f"real/{n}", "label": 0} for n in expected]
    rows += [{"path": "real/missing.jpg", "label": 1}]
    pd.DataFrame(rows).to_csv(tmp_path / "src" / "m.csv", index=False)
    expected["missing.jpg"] = "missing"
    summary = extract(ManifestSource(tmp_path / "src" / "m.csv"), _cfg(tmp_path / "c", max_pixels=20_000_000),
                      backbone=tiny_backbone, progress=False)
    c = FeatureCache(tmp_path / "c")
    errs = dict(zip(c.errors().key.map(os.path.basename), c.errors().reason))
    assert errs == {k: v for k, v in expected.items() if v}
    assert summary.errors == {r: list(expected.values()).count(r) for r in set(expected.values()) if r}
    valid = [k for k, v in expected.items() if v is None]
    assert sorted(c.meta.key.map(os.path.basename)) == sorted(valid)
    # each valid image's embedding is what the model gives that image alone (fp16 storage)
    from clipdetect.data.imaging import decode_image
    for row, key in enumerate(c.meta.key):
        img, _ = decode_image(tmp_path / "src" / key, max_pixels=20_000_000)
        ref = tiny_backbone.encode_images(tiny_backbone.preprocess(img)[None])[0]
        assert np.allclose(c.embeddings("image", np.array([row]))[0], ref, atol=2e-3)


def test_resume_and_identical_captions_encoded_once(tmp_path, image_folder, tiny_backbone, monkeypatch):
    calls = []  # every tokenisation is one encoding of those captions
    orig = tiny_backbone.tokenizer
    monkeypatch.setattr(tiny_backbone, "tokenizer", lambda texts: calls.append(list(texts)) or orig(texts))
    src = ImageFolderSource(image_folder, caption_template="a {label_name} photo")
    s1 = extract(src, _cfg(tmp_path / "c", limit=5), backbone=tiny_backbone, progress=False)
    assert s1.seen == 5 and not s1.complete  # stopped by the limit, not the end of the source
    assert calls == [["a fake photo"]]
    s2 = extract(src, _cfg(tmp_path / "c"), backbone=tiny_backbone, progress=False)
    assert s2.resumed_from == 5 and s2.seen == 7 and s2.complete
    assert all(len(c) == len(set(c)) for c in calls)
    s3 = extract(src, _cfg(tmp_path / "c"), backbone=tiny_backbone, progress=False)
    assert s3.seen == 0 and s3.complete
    c = FeatureCache(tmp_path / "c")
    assert list(c.meta.key) == [s.key for s in src] and c.has_text
    t = c.embeddings("text")
    assert np.array_equal(t[0], t[1]) and not np.array_equal(t[0], t[-1])


def test_workers_give_the_same_cache_as_in_process(tmp_path, image_folder, tiny_backbone):
    src = ImageFolderSource(image_folder)
    extract(src, _cfg(tmp_path / "a", workers=0), backbone=tiny_backbone, progress=False)
    extract(src, _cfg(tmp_path / "b", workers=2), backbone=tiny_backbone, progress=False)
    a, b = FeatureCache(tmp_path / "a"), FeatureCache(tmp_path / "b")
    assert list(a.meta.key) == list(b.meta.key)
    assert np.array_equal(a.embeddings("image"), b.embeddings("image"))


def test_image_only_backbone_with_captions(tmp_path, image_folder, tiny_backbone):
    sd = {k: v for k, v in tiny_backbone.model.state_dict().items() if k.startswith("visual.")}
    torch.save(sd, tmp_path / "v.pt")
    spec = f"clipdetect-tiny-vit:{tmp_path / 'v.pt'}"
    src = ImageFolderSource(image_folder, caption_template="x {label_name}")
    with pytest.raises(BackboneError, match="no text tower"):
        extract(src, ExtractConfig(backbone=spec, out=str(tmp_path / "c"), text="yes", workers=0), progress=False)
    extract(src, ExtractConfig(backbone=spec, out=str(tmp_path / "c2"), workers=0), progress=False)
    c = FeatureCache(tmp_path / "c2")
    assert len(c) == 12 and not c.has_text and c.meta.caption.iloc[0] == "x fake"


def test_bad_config_values():
    for kw, msg in (({"batch_size": 0}, "batch_size"), ({"workers": -1}, "workers"), ({"text": "maybe"}, "text")):
        with pytest.raises(ValueError, match=msg):
            ExtractConfig(backbone=TINY, out="x", **kw).validate()


def _run_cli(src, out, **popen):
    cmd = [sys.executable, "-m", "clipdetect", "extract", str(src), "--out", str(out), "--backbone", TINY,
           "--batch-size", "3", "--shard-size", "6", "--workers", "1", "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **popen)


@pytest.mark.slow
def test_sigkill_at_random_moment_then_rerun_equals_uninterrupted(tmp_path):
    src = tmp_path / "imgs"
    write_image_folder(src, n=60, fake_offset=1000, size=(400, 300), name="{i:03d}")
    ref = _run_cli(src, tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    rng = random.Random(20240)  # seeded: the same kill points on every run
    for attempt in range(1):  # raise to try more kill points
        out = tmp_path / f"killed{attempt}"
        proc = _run_cli(src, out)
        want = rng.randint(1, 12)  # of 20 shards
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _shards(out) < want:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        os.killpg(proc.pid, signal.SIGSTOP)  # freeze the whole group, then read what is on disk
        manifest = json.loads((out / "manifest.json").read_text())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        runs = list(manifest["runs"].values())
        # the kill landed mid-run: the manifest on disk says the run had not reached the end
        assert proc.returncode == -signal.SIGKILL
        assert len(runs) == 1 and not runs[0].get("complete") and runs[0]["position"] < 120, runs
        rerun = _run_cli(src, out)
        assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
        a, b = FeatureCache(tmp_path / "ref"), FeatureCache(out)
        assert list(a.meta.key) == list(b.meta.key) and len(a) == 120
        assert np.array_equal(a.embeddings("image"), b.embeddings("image"))  # bit for bit


def _shards(out) -> int:
    m = out / "manifest.json"
    try:
        return len(json.loads(m.read_text())["shards"]) if m.exists() else 0
    except ValueError:  # replaced between exists() and read
        return 0


def test_captions_are_encoded_with_the_images_of_their_first_task(tmp_path, image_folder, tiny_backbone,
                                                                  monkeypatch):
    """Captions ride along with the image batches (one tokenisation per task holding new ones,
    before the shard is written), each unique caption once per shard, and give the same
    embeddings as encoding them on their own."""
    calls, flushed = [], []
    orig = tiny_backbone.tokenizer
    monkeypatch.setattr(tiny_backbone, "tokenizer", lambda texts: calls.append(list(texts)) or orig(texts))
    from clipdetect.features.cache_writer import CacheWriter
    orig_write = CacheWriter.write_shard
    monkeypatch.setattr(CacheWriter, "write_shard", lambda *a, **k: flushed.append(len(calls)) or orig_write(*a, **k))
    rows = [{"path": p, "label": int("fake" in p), "caption": f"cap {i % 3}"}
            for i, p in enumerate(sorted(str(q.relative_to(image_folder)) for q in image_folder.rglob("*.*")))]
    pd.DataFrame(rows).to_csv(image_folder / "m.csv", index=False)
    src = ManifestSource(image_folder / "m.csv")
    extract(src, _cfg(tmp_path / "c", batch_size=2, shard_size=100), backbone=tiny_backbone, progress=False)
    assert calls[:2] == [["cap 0", "cap 1"], ["cap 2"]]  # first task: two new captions; second: one
    assert sum(len(c) for c in calls) == 3 and flushed == [len(calls)]  # all encoded before the one flush
    c = FeatureCache(tmp_path / "c")
    txt = c.embeddings("text", np.arange(len(c.meta)))
    ref = tiny_backbone.encode_texts(list(c.meta.caption))
    assert txt.shape == ref.shape == (12, tiny_backbone.embed_dim) and np.allclose(txt, ref, atol=2e-3)
