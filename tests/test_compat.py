"""The torchvision guard: defines schemas only where torchvision's extension cannot load."""
import subprocess
import sys

import pytest
import torch

from clipdetect.core import compat as _compat


@pytest.mark.slow  # a fresh interpreter importing torch
def test_package_import_makes_torchvision_and_open_clip_importable():
    # fresh interpreter: the guard acts exactly when the extension does not load
    code = ("import clipdetect; from clipdetect.core import compat as c; "
            "installed = c._GUARD_LIBRARY is not None; loads = c.torchvision_extension_loads(); "
            "import torchvision, open_clip, timm; print(installed, loads)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    installed, loads = out.stdout.split()
    assert (installed == "True") != (loads == "True")


def test_guard_is_noop_when_extension_loads(monkeypatch):
    created = []
    monkeypatch.setattr(torch.library, "Library", lambda *a, **k: created.append(a))
    assert _compat.install_torchvision_guard(probe=lambda: True) is False
    assert created == []


def test_guard_defines_missing_schemas_when_extension_fails(monkeypatch):
    defined = []

    class FakeLibrary:
        def __init__(self, ns, kind):
            assert (ns, kind) == ("torchvision", "FRAGMENT")

        def define(self, schema):
            defined.append(schema)

    monkeypatch.setattr(_compat, "_GUARD_LIBRARY", None)  # first: reading it may run the real guard
    monkeypatch.setattr(_compat, "_has_op", lambda name: False)
    monkeypatch.setattr(torch.library, "Library", FakeLibrary)
    assert _compat.install_torchvision_guard(probe=lambda: False) is True
    assert [s.split("(")[0] for s in defined] == ["nms", "qnms"]
    assert all("float iou_threshold" in s for s in defined)


def test_guard_skips_schemas_that_already_exist(monkeypatch):
    monkeypatch.setattr(_compat, "_has_op", lambda name: True)
    assert _compat.install_torchvision_guard(probe=lambda: False) is False


def test_nms_schema_resolves_after_import():
    assert _compat._has_op("nms") and _compat._has_op("qnms")
