"""Sources with several generators (and sometimes photographs) for the same prompts."""
from __future__ import annotations

import csv
import io
import re
from typing import Iterator, List, Tuple

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source, guess_content

AVT_FOLDERS = {"craiyon": "craiyon", "dall-e": "dalle", "glide": "glide",
               "stable_diffusion": "sd", "midjourney": "midjourney", "own": "real"}
BINGO_LABELS = {"de": "dalle", "sd": "sd", "mj": "midjourney"}


def avt_items(repo: GitRepo) -> Iterator[Item]:
    """``images/<generator>/pNN.png``; ``own`` holds the authors' photographs of prompts p17–p27."""
    prompts = {row["ID"]: row["prompts"] for row in csv.DictReader(io.StringIO(repo.text("images/prompts.csv")))}
    for path in sorted(repo.tree()):
        m = re.fullmatch(r"images/([^/]+)/(p\d+)\.\w+", path)
        if not m or m.group(1) not in AVT_FOLDERS:
            continue
        folder, pid = m.groups()
        fam = AVT_FOLDERS[folder]
        prompt = prompts.get(pid, "")
        yield Item(path=path, key=f"avt/{folder}/{pid}", label=0 if fam == "real" else 1,
                   generator="real" if fam == "real" else f"avt/{fam}", family=fam,
                   content=guess_content(prompt), group=f"avt:{pid}", prompt=prompt)


def parse_items_ts(text: str) -> List[Tuple[str, str, str]]:
    """(prompt, image, generator label) triples from ai-bingo's ``src/data/items.ts``."""
    out = []
    for block in re.split(r"\n\s*\{\s*\n\s*id:", text)[1:]:
        pm = re.search(r'prompt:\s*"((?:[^"\\]|\\.)*)"', block, re.S)
        prompt = pm.group(1) if pm else ""
        for im, ai in re.findall(r'\{\s*image:\s*"([^"]+)",\s*ai:\s*"(\w+)"\s*\}', block):
            out.append((prompt, im, ai))
    return out


def bingo_items(repo: GitRepo) -> Iterator[Item]:
    """``public/images/prompts/N/*``: DALL-E / SD / Midjourney for each of 77 prompts."""
    seen = set()
    for prompt, im, ai in parse_items_ts(repo.text("src/data/items.ts")):
        if im in seen or ai not in BINGO_LABELS:
            continue
        seen.add(im)
        fam = BINGO_LABELS[ai]
        stem = im.rsplit(".", 1)[0]
        yield Item(path=f"public/images/prompts/{im}", key=f"bingo/{fam}/{stem}", label=1,
                   generator=f"bingo/{fam}", family=fam, content=guess_content(prompt),
                   group=f"bingo:{im.split('/')[0]}", prompt=prompt)


ML72_REAL = {"animals": "object", "city": "scene", "food": "object", "nature": "scene", "people": "people"}


def ml72_items(repo: GitRepo) -> Iterator[Item]:
    """``public/images/real/<category>_N.jpg`` photographs and ``public/images/ai/{gan,diffusionK}_N.jpg``
    (photorealistic fakes ordered by the author from older GANs to recent diffusion models;
    the models are not named)."""
    for path in sorted(repo.tree()):
        m = re.fullmatch(r"public/images/(ai|real)/([a-z]+)(\d?)_(\d+)\.jpg", path)
        if not m:
            continue
        kind, cat, era, n = m.groups()
        if kind == "real" and cat in ML72_REAL:
            yield Item(path=path, key=f"ml72/real/{cat}_{n}", label=0, generator="real", family="real",
                       content=ML72_REAL[cat])
        elif kind == "ai":
            gen = "gan" if cat == "gan" else f"diffusion{era}"
            yield Item(path=path, key=f"ml72/{gen}/{n}", label=1, generator=f"ml72/{gen}",
                       family="gan-unnamed" if cat == "gan" else "diffusion-unnamed", content="other")


SOURCES = [
    Source("avt", "Telecommunication-Telemedia-Assessment/avt_ai_images", "GPL-3.0 (LICENSE.md)", False,
           avt_items, note="27 prompts × Craiyon, DALL-E 2, GLIDE, SD, Midjourney; the authors' own photos of "
                           "prompts p17–p27. Cite Göring et al., IEEE Access 2023."),
    Source("bingo", "lipsumar/ai-bingo", "no licence file", False, bingo_items,
           note="77 prompts × DALL-E, Stable Diffusion, Midjourney (late 2022); labels from src/data/items.ts."),
    Source("ml72", "ML72/AI-Image-Classifier-Playground", "MIT (LICENSE); the README says the images were "
           "chosen to be free of copyright restrictions", True, ml72_items,
           note="50 photos (animals, city, food, nature, people), 50 photorealistic fakes (GAN, four diffusion eras)."),
]
