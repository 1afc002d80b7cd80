"""Sources whose samples are grids of known layout, cut into single tiles."""
from __future__ import annotations

import io
import re
from typing import Iterator

from PIL import Image

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source, grid_crops


def _size(repo: GitRepo, path: str):
    data = repo.read(path)
    return Image.open(io.BytesIO(data)).size if data else None


def tiles(repo: GitRepo, path: str, tile: int, pad: int, **item) -> Iterator[Item]:
    """One Item per tile; a file that is absent yields one Item so the builder logs why."""
    size = _size(repo, path)
    if size is None:
        yield Item(path=path, **item)
        return
    for i, box in enumerate(grid_crops(*size, tile, pad)):
        yield Item(path=path, crop=box, **{**item, "key": f"{item['key']}/t{i:02d}"})


#: lucidrains/stylegan2-pytorch ``samples/``: 8x8 grids saved with torchvision's 2 px padding
LUCIDRAINS = {"samples/celebrities.jpg": (128, "faces"), "samples/celebrities-2.jpg": (128, "faces"),
              "samples/hands.jpg": (256, "object")}


def lucidrains_items(repo: GitRepo) -> Iterator[Item]:
    """Samples of StyleGAN2 models the author trained (celebrity faces at 128 px, hands at 256 px)."""
    for path, (tile, content) in LUCIDRAINS.items():
        stem = path.rsplit("/", 1)[1].split(".")[0]
        yield from tiles(repo, path, tile, 2, key=f"lucidrains/{stem}", label=1, generator="lucidrains/stylegan2",
                          family="stylegan", content=content)  # unconditional samples: each tile its own group


def mindalle_items(repo: GitRepo) -> Iterator[Item]:
    """``examples/*.jpg``: DALL·E Mega outputs, single 256 px images or square grids of 256 px tiles."""
    for path in sorted(repo.tree()):
        if re.fullmatch(r"examples/[^/]+\.jpg", path):
            stem = path.rsplit("/", 1)[1][:-4]
            prompt = stem.replace("_", " ")
            yield from tiles(repo, path, 256, 0, key=f"mindalle/{stem}", label=1, generator="mindalle/dalle-mega",
                              family="dalle-mini", content="art", group=f"mindalle/{stem}", prompt=prompt)


def karlo_items(repo: GitRepo) -> Iterator[Item]:
    """``assets/<prompt>.png``: four 256 px samples side by side per prompt (and image variations)."""
    for path in sorted(repo.tree()):
        m = re.fullmatch(r"assets/(variation_)?(.+)\.png", path)
        if not m:
            continue
        prompt = m.group(2).rstrip(".")
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40]
        content = "faces" if "portrait" in prompt or "Photo of" in prompt else "art"
        yield from tiles(repo, path, 256, 0, key=f"karlo/{'var-' if m.group(1) else ''}{slug}", label=1,
                          generator="karlo/unclip", family="karlo", content=content, group=f"karlo/{slug}",
                          prompt=prompt)


SOURCES = [
    Source("lucidrains", "lucidrains/stylegan2-pytorch", "MIT (LICENSE)", True, lucidrains_items,
           note="StyleGAN2 sample grids (celebrity faces 128 px, hands 256 px) cut into tiles."),
    Source("mindalle", "kuprel/min-dalle", "MIT (LICENSE)", True, mindalle_items,
           note="DALL·E Mega (VQGAN, autoregressive) example grids cut into 256 px tiles."),
    Source("karlo", "kakaobrain/karlo", "CreativeML Open RAIL-M (LICENSE)", False, karlo_items,
           note="Karlo (unCLIP) strips of four 256 px samples per prompt, cut into tiles."),
]
