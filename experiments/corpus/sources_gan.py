"""GAN face samples: single images written by the StyleGAN generation scripts (``out/seedNNNN.png``),
and the seeprettyface StyleGAN / StyleGAN2 face generators' examples (full-size faces, 4x4 grids of
256 px faces and strips of one face edited along a latent direction, cut into 256 px tiles)."""
from __future__ import annotations

import re
from typing import Callable, Iterator

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source
from experiments.corpus.sources_grids import tiles


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


#: seeprettyface generators (StyleGAN, one repository per model): full-size examples and strips of
#: one face edited along a latent direction (``edit_*``, ``age``...). The 8x8 grids of 128 px JPEG
#: thumbnails (``64_examples.jpg``) are left out: too small to stand for these generators.
_SPF_STRIP = re.compile(r"examples/(edit_\w+|age|angle|exposure|gender|smile)\.jpg")


def seeprettyface_items(name: str, model: str) -> Callable[[GitRepo], Iterator[Item]]:
    gen = dict(label=1, generator=f"{name}/stylegan-{model}", family="stylegan", content="faces")

    def items(repo: GitRepo) -> Iterator[Item]:
        for path in sorted(repo.tree()):
            stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            if re.fullmatch(r"examples/(256px_)?example\d\.png", path):
                yield Item(path=path, key=f"{name}/{stem}", **gen)
            elif _SPF_STRIP.fullmatch(path):  # one face per strip: one content group
                yield from tiles(repo, path, 256, 0, key=f"{name}/{stem}", group=f"{name}/{stem}", **gen)
    return items


#: generators-with-stylegan2: which StyleGAN2 model made each example (the ``*-style`` grids come
#: from its Asian-beauty model; the attribute-edit strips do not say, so they are their own generator)
_SPF2_MODEL = {"kid": "kids", "example_kids": "kids", "mixed-blood": "mixed-blood", "example_mixed-blood":
               "mixed-blood", "model": "model", "example_model": "model", "star": "star", "example_star": "star",
               "wanghong": "wanghong", "example_wanghong": "wanghong", "yellow": "yellow",
               "example_yellow": "yellow"}


def spf2_items(repo: GitRepo) -> Iterator[Item]:
    for path in sorted(repo.tree()):
        m = re.fullmatch(r"examples/(edit_photo/)?([\w-]+)\.(jpg|png)", path)
        if not m:
            continue
        stem = m.group(2)
        model = "edit" if m.group(1) else ("asian-beauty" if stem.endswith("-style") else _SPF2_MODEL.get(stem))
        if model is None:  # black_model.jpg (8x8 grid of 128 px) and the SMVC figures
            continue
        gen = dict(label=1, generator=f"spf2/stylegan2-{model}", family="stylegan", content="faces")
        if path.endswith(".png"):
            yield Item(path=path, key=f"spf2/{stem}", **gen)
        else:  # 4x4 grids of different faces, or strips of one edited face (one group)
            yield from tiles(repo, path, 256, 0, key=f"spf2/{m.group(1) or ''}{stem}",
                             group=f"spf2/{stem}" if m.group(1) else "", **gen)


_SPF_LICENCE = ("no licence file; the README offers the generated faces for free use without portrait "
                "rights concerns")


SOURCES = [
    Source("katatech", "KataTech/stylegan3", "NVIDIA Source Code Licence, non-commercial (LICENSE.txt of "
           "the StyleGAN3 fork)", False, seeds("katatech", r"out/(?P<id>seed\d{4})\.png", _katatech_generator),
           cap=CAP,
           note="StyleGAN3 samples: 24 FFHQ faces at 256 px and one AFHQ cat at 512 px (out/seedNNNN.png)."),
    Source("nicobly", "nico-bly/stylegan-face-edit", "NVIDIA Source Code Licence, non-commercial (LICENSE.txt "
           "of the StyleGAN2-ADA fork)", False,
           seeds("nicobly", r"out/(?P<id>seed\d{4})\.png", lambda m: "stylegan2-ada-ffhq"),
           cap=CAP,
           note="four StyleGAN2-ADA FFHQ faces at 1024 px (the README's seeds 85, 265, 297, 849)."),
    *[Source(f"spf-{model}", f"a312863063/seeprettyface-generator-{repo}", _SPF_LICENCE, False,
             seeprettyface_items(f"spf-{model}", model), cap=CAP,
             note=f"StyleGAN (v1) {what} faces: full-size 1024 px examples and latent-edit strips cut into "
                  "256 px tiles (one group per strip).")
      for model, repo, what in (("yellow", "yellow", "East-Asian"), ("star", "star", "celebrity-like"),
                                ("wanghong", "wanghong", "influencer-style"), ("babies", "babies", "baby"),
                                ("model", "model", "fashion-model"))],
    Source("spf2", "a312863063/generators-with-stylegan2", "NVIDIA Source Code Licence, non-commercial "
           "(LICENSE.txt, copyright seeprettyface.com)", False, spf2_items, cap=CAP,
           note="StyleGAN2 face generators (kids, mixed-race, fashion models, celebrities, influencers, East "
                "Asian, Asian beauty): six 1024 px examples, 4x4 grids of 256 px faces cut into tiles, and "
                "attribute-edit strips cut into 256 px tiles (one group per strip)."),
]
