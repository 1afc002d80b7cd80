"""Shared fixtures: tiny random-weight CLIP models and images the tests make themselves."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


TINY = "clipdetect-tiny-vit:random"


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


def make_image(seed: int, size=(48, 40), fake: bool = False) -> Image.Image:
    """A deterministic RGB image; 'fake' ones are smooth gradients, 'real' ones noisy."""
    rng = np.random.default_rng(seed)
    w, h = size
    if fake:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), rng.integers(0, 255))], -1)
        arr = base + rng.normal(0, 4, base.shape)
    else:
        arr = rng.integers(0, 255, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_image_folder(root, n: int = 8, fake_offset: int = 50):
    """root/real/NN.png and root/fake/NN.png, ``n`` of each (fakes from seeds offset by ``fake_offset``)."""
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            make_image(i + (fake_offset if label == "fake" else 0), fake=label == "fake").save(root / label / f"{i:02d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    """root/real/*.png and root/fake/*.jpg, 6 of each."""
    root = tmp_path / "imgs"
    for label, ext in (("real", "png"), ("fake", "jpg")):
        (root / label).mkdir(parents=True)
        for i in range(6):
            make_image(i + (100 if label == "fake" else 0), fake=label == "fake").save(root / label / f"{i:03d}.{ext}")
    return root
