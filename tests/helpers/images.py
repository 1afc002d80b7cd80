"""Images and image folders the tests make themselves, and the tiny random-weight backbone's spec."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

TINY = "clipdetect-tiny-vit:random"


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


def write_image_folder(root, n: int = 8, fake_offset: int = 50, *, size=(48, 40), exts: Sequence[str] = ("png", "png"),
                       name: str = "{i:02d}", seed: int = 0) -> Path:
    """root/real/NAME.EXT and root/fake/NAME.EXT, ``n`` of each: reals from seeds ``seed + i``, fakes
    from ``seed + i + fake_offset``; ``exts``: the (real, fake) file extensions; ``name``: a format
    string of ``i``."""
    root = Path(root)
    for label, ext in zip(("real", "fake"), exts):
        fake = label == "fake"
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            make_image(seed + i + (fake_offset if fake else 0), size=size, fake=fake).save(
                root / label / f"{name.format(i=i)}.{ext}")
    return root


def copy_folder(src: Path, dst: Path) -> Path:
    """A writable copy of a shared (session-scoped) folder."""
    import shutil

    shutil.copytree(src, dst)
    return Path(dst)
