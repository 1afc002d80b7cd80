"""experiments/corpus: the corpus builder reads bare git mirrors, drops what it must (absent blobs, LFS
pointers, undecodable or tiny files, duplicates across sources), cuts grids, never splits a content
group, and writes a manifest that ``ManifestSource`` reads."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.corpus import build  # noqa: E402
from experiments.corpus.gitrepo import LFS_MAGIC  # noqa: E402
from experiments.corpus.schema import Item, Source, grid_crops  # noqa: E402


def _png(seed: int, size=(160, 140)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _mirror(tmp: Path, name: str, files: dict) -> str:
    """A bare mirror at ``tmp/mirrors/owner+name/repo`` holding ``files``; returns its commit."""
    work = tmp / "work" / name
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    _git("init", "-q", cwd=work)
    _git("add", ".", cwd=work)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=work)
    bare = tmp / "mirrors" / f"owner+{name}" / "repo"
    bare.parent.mkdir(parents=True)
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp)
    return subprocess.run(["git", f"--git-dir={bare}", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def _items_a(repo):
    for n in range(6):  # three prompts, a real photo and a fake for each
        yield Item(path=f"img/{n}.png", key=f"a/{n}", label=n % 2, generator="real" if n % 2 == 0 else "a/gen",
                   family="real" if n % 2 == 0 else "sd", content="scene", group=f"a/prompt{n // 2}")
    yield Item(path="img/lfs.png", key="a/lfs", label=1, generator="a/gen", family="sd")
    yield Item(path="img/tiny.png", key="a/tiny", label=1, generator="a/gen", family="sd")
    yield Item(path="img/broken.png", key="a/broken", label=1, generator="a/gen", family="sd")
    yield Item(path="img/missing.png", key="a/missing", label=1, generator="a/gen", family="sd")


def _items_b(repo):
    yield Item(path="copy.png", key="b/copy", label=0, generator="real", family="real")
    yield Item(path="pack.zip", member="in/z.png", key="b/zipped", label=0, generator="real", family="real")
    yield Item(path="pack.zip", member="in/absent.png", key="b/absent", label=0, generator="real", family="real")
    for i, box in enumerate(grid_crops(2 * 130 + 2, 130 + 2, 128, 2)):
        yield Item(path="grid.png", key=f"b/grid{i}", label=1, generator="b/gan", family="stylegan", crop=box)


@pytest.fixture
def corpus(tmp_path):
    grid = Image.new("RGB", (262, 132))
    grid.paste(Image.open(io.BytesIO(_png(10, (128, 128)))), (2, 2))
    grid.paste(Image.open(io.BytesIO(_png(11, (128, 128)))), (132, 2))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    files_a = {f"img/{n}.png": _png(n) for n in range(6)}
    files_a.update({"img/lfs.png": LFS_MAGIC + b"\noid sha256:00\nsize 1\n", "img/tiny.png": _png(7, (64, 300)),
                    "img/broken.png": b"\x89PNG not really"})
    commit_a = _mirror(tmp_path, "a", files_a)
    pack = io.BytesIO()
    with zipfile.ZipFile(pack, "w") as z:
        z.writestr("in/z.png", _png(12))
    _mirror(tmp_path, "b", {"copy.png": files_a["img/0.png"], "grid.png": buf.getvalue(), "pack.zip": pack.getvalue()})
    sources = [Source("a", "owner/a", "MIT", True, _items_a), Source("b", "owner/b", "no licence file", False, _items_b)]
    out = tmp_path / "out"
    assert build.main(["--mirrors", str(tmp_path / "mirrors"), "--out", str(out)], sources=sources) == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    return out, rows, commit_a


def test_manifest_rows_and_drops(corpus):
    out, rows, commit_a = corpus
    assert set(rows) == {f"a/{n}" for n in range(6)} | {"b/grid0", "b/grid1", "b/zipped"}
    drops = (out / "STATUS.md").read_text()
    for why in ("Git LFS pointer", "too small (64x300)", "does not decode", "not in the tree",
                "b: copy.png: duplicate of a:a/0", "pack.zip:in/absent.png: cannot be read from the archive"):
        assert why in drops
    r = rows["a/1"]
    assert (r["label"], r["generator"], r["family"], r["commit"], r["permissive"]) == ("1", "a/gen", "sd", commit_a, "yes")
    assert (out / r["path"]).read_bytes() == _png(1)
    assert r["true_format"] == "PNG" and (r["width"], r["height"]) == ("160", "140")
    z = rows["b/zipped"]
    assert z["repo_path"] == "pack.zip/in/z.png" and (out / z["path"]).read_bytes() == _png(12)


def test_grid_tiles_are_cut_exactly(corpus):
    out, rows, _ = corpus
    for i, seed in enumerate((10, 11)):
        tile = Image.open(out / rows[f"b/grid{i}"]["path"])
        assert tile.size == (128, 128)
        assert np.array_equal(np.asarray(tile), np.asarray(Image.open(io.BytesIO(_png(seed, (128, 128))))))


def test_groups_are_never_cut_and_manifest_is_extractable(corpus):
    out, rows, _ = corpus
    for g in ("a/prompt0", "a/prompt1", "a/prompt2"):
        assert len({r["split"] for r in rows.values() if r["group"] == g}) == 1
    from clipdetect.data.sources import ManifestSource

    samples = list(ManifestSource(out / "manifest.csv").iterate())
    assert len(samples) == len(rows) and all(Path(s.path).is_file() for s in samples)
    assert {s.split for s in samples} <= {"train", "val", "test"}


def test_grid_layout_is_checked():
    assert len(grid_crops(1042, 1042, 128, 2)) == 64
    with pytest.raises(ValueError, match="not a grid"):
        grid_crops(1040, 1042, 128, 2)


def test_caps_keep_a_deterministic_subset():
    items = [Item(path=f"{i}.png", key=f"s/{i}", label=1, generator="s/g", family="sd") for i in range(50)]
    src = Source("s", "o/s", "MIT", True, lambda repo: items)
    kept = build.apply_caps(items, src, cap_generator=10, cap_real=5)
    assert len(kept) == 10 and kept == build.apply_caps(list(reversed(items)), src, cap_generator=10, cap_real=5)


def test_since_writes_only_new_rows_and_names_changed_keys(corpus):
    from experiments.corpus.report import compare_with
    from experiments.corpus.schema import COLUMNS

    out, rows, _ = corpus
    old = {k: dict(r) for k, r in rows.items() if k != "a/1"}
    old["a/2"]["split"] = "val" if rows["a/2"]["split"] != "val" else "test"
    old["gone/x"] = {**rows["a/0"], "key": "gone/x"}
    prev = out.parent / "previous.csv"
    with open(prev, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(old.values())
    diff = compare_with(prev, list(rows.values()), out)
    with open(out / "manifest_new.csv", newline="") as f:
        assert [r["key"] for r in csv.DictReader(f)] == ["a/1"]
    assert diff["changed_keys"] == {"a/2": ["split"]} and diff["missing_keys"] == ["gone/x"]
    assert (diff["new_rows"], diff["shared_keys"]) == (1, len(rows) - 1)


def test_mirror_dir_reads_a_clone_through_its_git_folder(tmp_path):
    (tmp_path / "o+clone" / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "o+bare" / "repo").mkdir(parents=True)
    assert build.mirror_dir(tmp_path, "o/clone") == tmp_path / "o+clone" / "repo" / ".git"
    assert build.mirror_dir(tmp_path, "o/bare") == tmp_path / "o+bare" / "repo"
    assert build.mirror_dir(tmp_path, "o/none") == tmp_path / "o+none"


def test_sdfd_adapter_reads_each_face_with_its_prompt(tmp_path):
    from experiments.corpus.gitrepo import GitRepo
    from experiments.corpus.registry import all_sources
    from experiments.corpus.sources_round3 import sdfd_items

    prompts = '"anB-1,3","Black, androgynous person, Nikon Z9",4.78,3\n"anB-2,5","old woman, hat",4.78,5\n'
    _mirror(tmp_path, "sdfd", {"allImages/anB-1,3.jpg": _png(1), "allImages/anB-2,5.jpg": _png(2),
                               "examplesSDFD.png": _png(3), "finalPrompts.csv": prompts.encode()})
    items = list(sdfd_items(GitRepo(tmp_path / "mirrors" / "owner+sdfd" / "repo")))
    assert [(it.key, it.label, it.family, it.prompt) for it in items] == [
        ("sdfd/anB-1,3", 1, "sd", "Black, androgynous person, Nikon Z9"), ("sdfd/anB-2,5", 1, "sd", "old woman, hat")]
    names = [s.name for s in all_sources()]
    assert names[-7:] == ["sdfd", "hit", "xflux", "insightface", "photomaker", "ootd", "openpose"]
