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
                       family="gan-unnamed" if cat == "gan" else "unnamed", content="other")


#: generator named in the caption panel under each fake (read off the images)
DECLAN_FAKES = {"flux-pro": (1, 2, 4, 5, 8, 9, 17, 25, 26, 29, 30), "flux-1.1-pro": (15, 16, 23, 24, 28),
                "imagen3": (3, 6, 10, 11, 13, 18, 19, 20, 21, 27), "recraft-v3": (7, 12, 14, 22)}
DECLAN_FAMILY = {"flux-pro": "flux", "flux-1.1-pro": "flux", "imagen3": "imagen", "recraft-v3": "recraft"}
#: content of the fakes A1..A30 (from their prompts) and of the photographs B1..B30 (by eye)
DECLAN_FAKE_CONTENT = ("people people people scene scene people people object people people people scene scene "
                       "scene scene object people people people scene object object scene object people people "
                       "people people object object").split()
DECLAN_REAL = ("people people people scene scene object object scene faces people people people scene object "
               "scene object people people scene faces scene object scene scene faces people object people "
               "scene scene").split()
#: each file is a 1024x1536 panel: the image (1024x768) on top, a caption on black below
DECLAN_CROP = (0, 0, 1024, 766)


def declan_items(repo: GitRepo) -> Iterator[Item]:
    """30 fakes ``A<n>.jpg`` and 30 photos ``B<n>.jpg`` (EXIF-checked, pre-2021), same size and panel layout."""
    for gen, nums in DECLAN_FAKES.items():
        for n in nums:
            yield Item(path=f"A{n}.jpg", key=f"declan/{gen}/A{n}", label=1, generator=f"declan/{gen}",
                       family=DECLAN_FAMILY[gen], content=DECLAN_FAKE_CONTENT[n - 1], crop=DECLAN_CROP)
    for n, content in enumerate(DECLAN_REAL, start=1):
        yield Item(path=f"B{n}.jpg", key=f"declan/real/B{n}", label=0, generator="real", family="real",
                   content=content, crop=DECLAN_CROP)


#: testIMG/dataset.zip: ChatGPT (GPT image) and Gemini images; ``view`` pairs each with the real photo
#: its prompt describes (``edit_N``: the real photo ``not_edit_N`` re-rendered by the model)
AIF_ZIP = "testIMG/dataset.zip"
AIF_SCENES = {"autumn_fruit": "object", "spring_Sinchon": "people", "summer_France": "scene",
              "winter_Christmas": "scene", "edit_1": "scene", "edit_2": "scene"}
AIF_GEN = {"ChatGPT": ("gpt-image", "gpt-image"), "Gemini": ("gemini-image", "gemini-image")}


def aif_items(repo: GitRepo) -> Iterator[Item]:
    for tool, (gen, fam) in AIF_GEN.items():
        for age in range(10, 70, 10):
            for sex in ("man", "woman"):
                yield Item(path=AIF_ZIP, member=f"human/{tool}_{age}_{sex}.jpg", key=f"aif/{gen}/human_{age}_{sex}",
                           label=1, generator=f"aif/{gen}", family=fam, content="faces")
        for scene, content in AIF_SCENES.items():
            yield Item(path=AIF_ZIP, member=f"view/{tool}_{scene}.jpg", key=f"aif/{gen}/{scene}", label=1,
                       generator=f"aif/{gen}", family=fam, content=content, group=f"aif/{scene}")
    for scene, content in AIF_SCENES.items():
        real = scene.replace("edit", "not_edit")
        yield Item(path=AIF_ZIP, member=f"view/real_{real}.jpg", key=f"aif/real/{real}", label=0,
                   generator="real", family="real", content=content, group=f"aif/{scene}")


SOURCES = [
    Source("avt", "Telecommunication-Telemedia-Assessment/avt_ai_images", "GPL-3.0 (LICENSE.md)", False,
           avt_items, note="27 prompts × Craiyon, DALL-E 2, GLIDE, SD, Midjourney; the authors' own photos of "
                           "prompts p17–p27. Cite Göring et al., IEEE Access 2023."),
    Source("bingo", "lipsumar/ai-bingo", "no licence file", False, bingo_items,
           note="77 prompts × DALL-E, Stable Diffusion, Midjourney (late 2022); labels from src/data/items.ts."),
    Source("ml72", "ML72/AI-Image-Classifier-Playground", "MIT (LICENSE); the README says the images were "
           "chosen to be free of copyright restrictions", True, ml72_items,
           note="50 photos (animals, city, food, nature, people), 50 photorealistic fakes (GAN, four diffusion eras)."),
    Source("declan", "declan-wright/Image-Dataset", "MIT (LICENSE)", True, declan_items,
           note="30 fakes (FLUX-pro, FLUX-1.1-pro, Imagen 3, Recraft V3; generator read from each caption) and 30 "
                "photos, 1024x768, six content categories; the caption panel below each image is cut off."),
    Source("aif", "necenzurat/ai-image-filter", "MIT (LICENSE)", True, aif_items,
           note="from testIMG/dataset.zip: 24 ID-style portraits (ChatGPT, Gemini), 6 scenes each from ChatGPT and "
                "Gemini with the 6 real photos they describe or re-render (content groups); all JPEG, logo removed."),
]
