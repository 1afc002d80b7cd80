"""GAN samples written one image per file by the StyleGAN generation scripts (``out/seedNNNN.png``)."""
from __future__ import annotations

import re
from typing import Callable, Iterator

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source


#: at most this many images per generator
CAP = 150


def seeds(name: str, pattern: str, generator: Callable[[re.Match], str], content: str = "faces",
          family: str = "stylegan") -> Callable[[GitRepo], Iterator[Item]]:
    """Generated images whose path fully matches ``pattern`` (group ``id`` names the image);
    ``generator`` maps a match to the generator (prefixed with the source name)."""
    rx = re.compile(pattern)

    def items(repo: GitRepo) -> Iterator[Item]:
        for path in sorted(repo.tree()):
            m = rx.fullmatch(path)
            if m:
                gen = generator(m)
                yield Item(path=path, key=f"{name}/{m.group('id')}", label=1, generator=f"{name}/{gen}",
                           family=family, content="object" if "afhq" in gen else content)
    return items


#: seed0002 is a 512 px AFHQ cat; seeds 727-750 are 256 px FFHQ faces (checked by eye)
def _katatech_generator(m: re.Match) -> str:
    return "stylegan3-afhq" if m.group("id") == "seed0002" else "stylegan3-ffhq256"


SOURCES = [
    Source("katatech", "KataTech/stylegan3", "NVIDIA Source Code Licence, non-commercial (LICENSE.txt of "
           "the StyleGAN3 fork)", False, seeds("katatech", r"out/(?P<id>seed\d{4})\.png", _katatech_generator),
           cap=CAP, note="StyleGAN3 samples: 24 FFHQ faces at 256 px and one AFHQ cat at 512 px (out/seedNNNN.png)."),
    Source("nicobly", "nico-bly/stylegan-face-edit", "NVIDIA Source Code Licence, non-commercial (LICENSE.txt "
           "of the StyleGAN2-ADA fork)", False,
           seeds("nicobly", r"out/(?P<id>seed\d{4})\.png", lambda m: "stylegan2-ada-ffhq"),
           cap=CAP, note="four StyleGAN2-ADA FFHQ faces at 1024 px (the README's seeds 85, 265, 297, 849)."),
]
