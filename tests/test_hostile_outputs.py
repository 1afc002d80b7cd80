"""Files the toolkit creates, in a folder someone else can write to: links and files planted
under the temporary names or the final names are never written through, a victim file outside
the output stays as it was, and a command never overwrites the file it reads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import clipdetect.core.io as cio
from helpers.hostile import deadline_fixture
from helpers.procs import ROOT
from clipdetect.cli.main import main
from clipdetect.core.io import WriteError, atomic_write, open_new, staged_output, write_text
from helpers.images import write_image_folder

_deadline = deadline_fixture(300)


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim.txt"
    v.write_text("precious\n")
    return v


@pytest.fixture
def known_tokens(monkeypatch):
    """Temporary names made predictable (as an attacker who guessed them would have them)."""
    tokens = iter(f"{i:016x}" for i in range(10**6))
    monkeypatch.setattr(cio.secrets, "token_hex", lambda n: next(tokens))


def test_a_link_planted_at_the_temporary_name_is_skipped(tmp_path, victim, known_tokens):
    out = tmp_path / "shared"
    out.mkdir()
    first = out / f".result.csv.tmp-{os.getpid()}-{0:016x}"
    first.symlink_to(victim)
    atomic_write(out / "result.csv", lambda f: f.write(b"rows\n"))
    assert victim.read_text() == "precious\n" and (out / "result.csv").read_bytes() == b"rows\n"
    assert first.is_symlink() and not [p for p in out.iterdir() if p.name.startswith(".result.csv.tmp") and
                                       not p.is_symlink()]


def test_when_every_temporary_name_is_taken_nothing_is_written(tmp_path, victim, known_tokens):
    for i in range(cio._TRIES if hasattr(cio, "_TRIES") else 16):
        (tmp_path / f".r.csv.tmp-{os.getpid()}-{i:016x}").symlink_to(victim)
    with pytest.raises(WriteError, match="planting"):
        write_text(tmp_path / "r.csv", "rows")
    assert victim.read_text() == "precious\n" and not (tmp_path / "r.csv").exists()


def test_a_staged_folder_is_never_a_planted_one(tmp_path, known_tokens):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f".det.tmp-{os.getpid()}-{0:016x}").symlink_to(elsewhere, target_is_directory=True)
    with staged_output(tmp_path / "det") as stage:
        (stage / "model.txt").write_text("w")
    assert (tmp_path / "det" / "model.txt").read_text() == "w" and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_an_interrupt_while_the_file_object_is_built_stays_an_interrupt(tmp_path, monkeypatch, mode):
    """Ctrl-C can land inside ``open`` after the file object owns its descriptor (a text wrapper
    runs Python code): it must surface as the interrupt, not as EBADF from a second close of the
    same descriptor (a run would exit 1 instead of 130), and leave no temporary file."""
    real_open = open

    def interrupted(file, mode="r", **kwargs):
        real_open(file, mode, **kwargs).close()  # owned, then released by the file object
        raise KeyboardInterrupt

    monkeypatch.setattr(cio, "open", interrupted, raising=False)
    with pytest.raises(KeyboardInterrupt):
        cio.AtomicFile(tmp_path / "r.csv", mode)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        open_new(tmp_path / "log.jsonl", mode)


def test_links_at_final_names_are_replaced_not_followed(tmp_path, victim):
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    write_text(link, "{}")
    assert not link.is_symlink() and link.read_text() == "{}" and victim.read_text() == "precious\n"
    log = tmp_path / "train_log.jsonl"
    log.symlink_to(victim)
    with open_new(log) as f:
        f.write("epoch 1\n")
    assert not log.is_symlink() and victim.read_text() == "precious\n"


def test_a_planted_lock_link_is_refused(tmp_path, victim):
    from clipdetect.core.lock import DirLock

    (tmp_path / ".writer.lock").symlink_to(victim)
    with pytest.raises(WriteError, match="symbolic link"):
        DirLock(tmp_path / ".writer.lock", what="cache").acquire()
    assert victim.read_text() == "precious\n"


def test_a_fifo_planted_as_the_cache_lock_is_refused_by_name(tmp_path, capsys):
    from clipdetect.features.cache_writer import LOCK_NAME
    from helpers.images import TINY

    cache = tmp_path / "cache"
    cache.mkdir()
    os.mkfifo(cache / LOCK_NAME)
    src = write_image_folder(tmp_path / "src", n=2)
    rc = main(["extract", str(src), "--out", str(cache), "--backbone", TINY, "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "is not a regular file" in err and LOCK_NAME in err, err
    assert not list((cache / "img_emb").glob("*"))  # nothing was written past the refusal


def test_figures_and_tables_are_written_without_following_links(tmp_path, victim):
    from helpers.synthetic import write_synthetic_cache

    write_synthetic_cache(tmp_path / "cache", n=80, dim=8)
    assert main(["train", str(tmp_path / "cache"), "--out", str(tmp_path / "det"), "--epochs", "1",
                 "--head", "linear", "--no-sam", "--no-progress"]) == 0
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("metrics.csv", "metrics.md", "scores.csv"):
        (out / name).symlink_to(victim)
    (tmp_path / "plot").mkdir()
    (tmp_path / "plot" / "roc.png").symlink_to(victim)
    assert main(["evaluate", str(tmp_path / "det"), str(tmp_path / "cache"), "--n-boot", "0", "--baseline", "none",
                 "--out", str(out), "--save-scores", "--force"]) == 0
    assert main(["plot", str(tmp_path / "det"), str(tmp_path / "cache"), "--out", str(tmp_path / "plot"),
                 "--formats", "png", "--force"]) == 0
    assert victim.read_text() == "precious\n"
    assert not any(p.is_symlink() for p in [*out.iterdir(), *(tmp_path / "plot").iterdir()])


@pytest.fixture(scope="module")
def det_and_images(tmp_path_factory, tiny_detector_dir):
    return tiny_detector_dir, write_image_folder(tmp_path_factory.mktemp("pred") / "imgs", n=3)


@pytest.mark.slow
def test_predict_in_a_shared_folder_with_the_old_predictable_name_planted(det_and_images, tmp_path, victim):
    """The attack as it worked: a link at ``.p.csv.tmp-PID`` (the pid known, since the command
    exec()s in place of the planting process) — the victim used to receive the predictions —
    and a link at the final name too."""
    det, imgs = det_and_images
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "p.csv").symlink_to(victim)
    plant = ("import os, sys; d, v = sys.argv[1], sys.argv[2]; "
             "os.symlink(v, os.path.join(d, '.p.csv.tmp-%d' % os.getpid())); "
             "os.execv(sys.executable, [sys.executable, '-m', 'clipdetect'] + sys.argv[3:])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-c", plant, str(shared), str(victim), "predict", str(det), str(imgs),
                        "--out", str(shared / "p.csv"), "--workers", "0", "--no-progress", "--force"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n"
    out = shared / "p.csv"
    assert out.read_text().startswith("key,path,logit") and not out.is_symlink()


def test_predict_never_overwrites_its_own_manifest(det_and_images, tmp_path, capsys):
    det, imgs = det_and_images
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{int(p.parent.name == 'fake')}\n"
                                                  for p in sorted(imgs.rglob("*.png"))))
    alias = tmp_path / "alias.csv"
    alias.symlink_to(manifest)
    before = manifest.read_text()
    for out in (manifest, alias):
        assert main(["predict", str(det), str(manifest), "--out", str(out), "--workers", "0", "--no-progress",
                     "--force"]) == 2  # not even with --force
        assert "is the input" in capsys.readouterr().err
    assert manifest.read_text() == before and alias.is_symlink()


def test_a_refused_command_keeps_the_previous_output(det_and_images, tmp_path, capsys):
    det, imgs = det_and_images
    out = tmp_path / "p.csv"
    out.write_text("yesterday's predictions\n")
    assert main(["predict", str(tmp_path / "no-such-detector"), str(imgs), "--out", str(out)]) == 2
    assert out.read_text() == "yesterday's predictions\n"
