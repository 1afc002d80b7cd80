"""Start-up: importing clipdetect and asking for help import no torch; file weights skip random init."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers.images import TINY

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "sklearn", "open_clip", "torchvision")


def _loaded_after(code: str) -> list:
    probe = (f"import contextlib, io, sys\nwith contextlib.redirect_stdout(io.StringIO()):\n"
             + "".join(f"    {line}\n" for line in code.splitlines())
             + f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_import_and_help_do_not_import_torch():
    assert _loaded_after("import clipdetect") == []
    help_code = ("from clipdetect.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert _loaded_after(help_code) == []
    assert _loaded_after(help_code.replace("'--help'", "'extract', '--help'")) == []


@pytest.mark.slow  # a fresh interpreter importing torch
def test_guard_runs_when_torchvision_is_imported():
    assert _loaded_after("import clipdetect, torchvision\nfrom clipdetect.core import compat\n"
                         "assert compat._HOOK not in sys.meta_path") == ["torch", "torchvision"]


def test_every_listed_command_is_defined_by_its_module():
    from clipdetect.cli import main

    full = main.build_parser(["no-such-command"])._subparsers._group_actions[0].choices
    lazy = main.build_parser([])._subparsers._group_actions[0].choices
    assert set(main.COMMANDS) <= set(full) and set(lazy) == set(full)
    for name, (module, text) in main.COMMANDS.items():
        assert full[name].prog.endswith(name)
    train = main.build_parser(["train", "x"])._subparsers._group_actions[0].choices["train"]
    assert any(a.dest == "lr" for a in train._actions)  # the chosen command's full parser


def test_checkpoint_backbone_is_not_randomly_initialised_first(tmp_path, monkeypatch):
    from clipdetect.features.backbones import create_backbone

    ref = create_backbone(TINY, seed=3)
    full, visual = tmp_path / "full.pt", tmp_path / "visual.pt"
    sd = ref.model.state_dict()
    torch.save(sd, full)
    torch.save({k: v for k, v in sd.items() if k.startswith("visual.")}, visual)
    calls = []
    for name in ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_"):
        fn = getattr(torch.nn.init, name)
        monkeypatch.setattr(torch.nn.init, name, lambda t, *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(t, *a, **k))
    create_backbone(TINY, seed=3)
    assert calls  # a random model is initialised
    calls.clear()
    arch = TINY.split(":")[0]
    loaded = create_backbone(f"{arch}:{full}")
    image_only = create_backbone(f"{arch}:{visual}")
    assert calls == []
    x = torch.rand(2, 3, *ref.model.visual.image_size)
    assert np.array_equal(loaded.encode_images(x), ref.encode_images(x))
    assert np.array_equal(image_only.encode_images(x), ref.encode_images(x))
    assert np.array_equal(loaded.encode_texts(["a", "b c"]), ref.encode_texts(["a", "b c"]))
    assert loaded.has_text and not image_only.has_text
    assert all(torch.isfinite(p).all() for p in image_only.model.parameters())
