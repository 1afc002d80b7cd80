"""Shared fixtures: tiny random-weight CLIP models and images the tests make themselves."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402

from helpers.images import TINY, copy_folder, write_image_folder  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids oversubscription stalls on a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_backbone():
    from clipdetect.features.backbones import create_backbone

    return create_backbone(TINY)


@pytest.fixture(scope="session")
def shared_image_folder(tmp_path_factory):
    """root/real/*.png and root/fake/*.jpg, 6 of each, made once: read it, never write into it."""
    return write_image_folder(tmp_path_factory.mktemp("shared") / "imgs", n=6, fake_offset=100,
                              exts=("png", "jpg"), name="{i:03d}")


@pytest.fixture
def image_folder(shared_image_folder, tmp_path):
    """A copy of ``shared_image_folder`` of the test's own, which it may change."""
    return copy_folder(shared_image_folder, tmp_path / "imgs")


@pytest.fixture(scope="session")
def images_60(tmp_path_factory):
    """60 real and 60 fake 32-px PNGs (15 shards of 8), made once: read it, never write into it."""
    return write_image_folder(tmp_path_factory.mktemp("images60") / "imgs", n=60, fake_offset=500, size=(32, 32),
                              name="{i:03d}")


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory, tiny_backbone):
    """A saved detector on the tiny backbone's features (trained on random arrays: its scores only
    need to exist); read it, never write into it."""
    from helpers.training import tiny_detector

    return tiny_detector(tiny_backbone).save(tmp_path_factory.mktemp("tinydet") / "det")


@pytest.fixture(scope="session")
def synthetic_detector(tmp_path_factory):
    """A 300-row synthetic cache whose classes separate well and a detector fit on it with FAST:
    (cache, detector), made once; do not change either (save copies with ``detector.save``)."""
    import torch

    from helpers.training import fit_on_synthetic

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids oversubscription stalls
    try:
        return fit_on_synthetic(tmp_path_factory.mktemp("synthetic") / "c", n=300, shift=3.0)
    finally:
        torch.set_num_threads(threads)
