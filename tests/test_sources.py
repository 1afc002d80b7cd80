"""Sources yield (key, image, caption, label, generator, split) in a stable order."""
import io

import pandas as pd
import pytest

from clipdetect.data.hf import HFSource
from clipdetect.data.registry import open_source
from clipdetect.data.sources import ImageFolderSource, ManifestSource, parse_label
from helpers.images import make_image


def test_label_parsing():
    assert parse_label("REAL") == 0 and parse_label("fake") == 1 and parse_label(1) == 1
    assert parse_label(0, names=["real", "fake"]) == 0
    with pytest.raises(ValueError):
        parse_label("banana")


def test_folder_real_fake(image_folder):
    src = ImageFolderSource(image_folder, caption_template="a {label_name} image")
    samples = list(src)
    assert len(samples) == src.size() == 12
    assert [s.key for s in samples] == sorted(s.key for s in samples)  # fake/ before real/
    assert {s.label for s in samples if s.key.startswith("real")} == {0}
    assert samples[0].caption == "a fake image" and samples[0].generator == "fake"
    assert [s.key for s in src.iterate(10)] == [s.key for s in samples[10:]]


def test_folder_per_generator_needs_mapping(tmp_path):
    for gen in ("laion", "sd14"):
        (tmp_path / gen).mkdir()
        make_image(1).save(tmp_path / gen / "a.png")
    with pytest.raises(ValueError, match="--label-map"):
        ImageFolderSource(tmp_path)
    src = ImageFolderSource(tmp_path, labels={"laion": 0, "sd14": 1})
    assert [(s.generator, s.label) for s in src] == [("laion", 0), ("sd14", 1)]


def test_nested_generator_and_source_folders(tmp_path):
    """fake/<generator>/ and real/<source>/ as users lay them out: nothing is merged silently."""
    files = ["fake/genA/1.png", "fake/genA/deeper/2.png", "fake/genB/3.png", "fake/loose.png",
             "real/camera/4.png", "real/scans/5.png", "real/loose.png"]
    for i, f in enumerate(files):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        make_image(i).save(tmp_path / f)
    got = {s.key: (s.label, s.generator, s.source) for s in ImageFolderSource(tmp_path)}
    assert got == {"fake/genA/1.png": (1, "genA", ""), "fake/genA/deeper/2.png": (1, "genA", ""),
                   "fake/genB/3.png": (1, "genB", ""), "fake/loose.png": (1, "fake", ""),
                   "real/camera/4.png": (0, "real", "camera"), "real/scans/5.png": (0, "real", "scans"),
                   "real/loose.png": (0, "real", "")}
    mapped = tmp_path / "mapped"
    for f in ("laion/a.png", "sd14/b.png"):
        (mapped / f).parent.mkdir(parents=True, exist_ok=True)
        make_image(9).save(mapped / f)
    src = ImageFolderSource(mapped, labels={"laion": 0, "sd14": 1})
    assert [(s.generator, s.source) for s in src] == [("laion", "laion"), ("sd14", "")]
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["real/camera/4.png"], "label": [0], "source": ["phone"]}).to_csv(manifest, index=False)
    assert next(iter(ManifestSource(manifest))).source == "phone"


def test_folder_with_split_dirs(tmp_path):
    for split in ("train", "val"):
        for cls in ("real", "fake"):
            (tmp_path / split / cls).mkdir(parents=True)
            make_image(2).save(tmp_path / split / cls / "x.png")
    assert sorted({s.split for s in ImageFolderSource(tmp_path)}) == ["train", "val"]


def test_manifest_csv_and_parquet(tmp_path, image_folder):
    rows = [{"path": f"imgs/real/00{i}.png", "label": 0, "caption": f"cap {i}", "generator": ""}
            for i in range(3)] + [{"path": "imgs/fake/000.jpg", "label": 1, "caption": None, "generator": "sdxl"}]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    rows[0]["label"] = "real"  # string labels work as well as 0/1 (csv)
    pd.DataFrame(rows).assign(label=lambda d: d.label.astype(str)).to_parquet(tmp_path / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        src = open_source(str(tmp_path / name))
        assert isinstance(src, ManifestSource)
        s = list(src)
        assert [x.label for x in s] == [0, 0, 0, 1] and s[3].generator == "sdxl" and s[3].caption is None
        assert s[0].caption == "cap 0" and s[0].image.endswith("imgs/real/000.png")
    with pytest.raises(ValueError, match="lacks column"):
        pd.DataFrame({"file": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
        ManifestSource(tmp_path / "bad.csv")


def _hf_parquet(path, n=6):
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        make_image(i, fake=i % 2 == 1).save(buf, format="PNG")
        rows.append({"image": {"bytes": buf.getvalue(), "path": f"{i}.png"}, "label": i % 2,
                     "cls": ["cat", "dog"][i % 2], "key": f"k{i}"})
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_hf_parquet_with_template_and_streaming(tmp_path):
    path = _hf_parquet(tmp_path / "d.parquet")
    src = open_source(str(path), caption_template="a photo of a {cls}")
    assert isinstance(src, HFSource)
    s = list(src)
    assert [x.key for x in s] == [f"k{i}" for i in range(6)] and s[1].caption == "a photo of a dog"
    assert isinstance(s[0].image, bytes) and s[1].label == 1
    assert [x.key for x in src.iterate(4)] == ["k4", "k5"]
    stream = HFSource(str(path), streaming=True)
    assert stream.size() is None
    assert [x.key for x in stream.iterate(3)] == ["k3", "k4", "k5"]


def test_hf_missing_column_and_bad_template(tmp_path):
    path = _hf_parquet(tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="lacks column"):
        HFSource(str(path), label_column="is_fake")
    with pytest.raises(ValueError, match="template"):
        next(iter(HFSource(str(path), caption_template="{nope}")))


def test_open_source_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        open_source(str(tmp_path / "x.txt"))
