"""Third round: diffusion-generated people and more real photographs of people.

The corpus's weak leave-one-source-out folds were real photo collections of faces and people: its
faces were mostly GAN-generated, so a face leaned "generated". This round adds photoreal faces made
by a diffusion model (Stable Diffusion 2.1), SDXL and FLUX outputs, and real photos of people from
face-analysis test data, fashion photos and COCO scenes. Each image of the smaller sources was looked
at (SDFD through a sample); inputs, control maps, strips, inpainted photos, drawings, rotated or
cropped copies and images of unclear origin are left out by listing only the files used."""
from __future__ import annotations

import csv
import io
import re
from typing import Iterator

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source
from experiments.corpus.sources_assets import table
from experiments.corpus.sources_photos import photos

#: photoreal faces per SDFD generator are capped lower than other sources' 150: faces already lean
#: generated in this corpus, and one prompt template should not dominate
SDFD_CAP = 100
CAP = 150


def sdfd_items(repo: GitRepo) -> Iterator[Item]:
    """SDFD: 1,000 Stable Diffusion 2.1 faces, each with its prompt (finalPrompts.csv: key, prompt)."""
    prompts = {row[0]: row[1] for row in csv.reader(io.StringIO(repo.text("finalPrompts.csv"))) if len(row) > 1}
    rx = re.compile(r"allImages/(?P<id>[^/]+)\.jpg")
    for path in sorted(repo.tree()):
        m = rx.fullmatch(path)
        if m:
            yield Item(path=path, key=f"sdfd/{m.group('id')}", label=1, generator="sdfd/sd21", family="sd",
                       content="faces", prompt=prompts.get(m.group("id"), ""))


#: CreativeAI-Portraits: the README's SDXL base + refiner ComfyUI outputs (text2image/output; the
#: 2x4 grid 00001 and the inpaintings of a Yosemite photo, 00019-00025, left out) and the portfolio's
#: all_images, made with a Stable Diffusion version the README does not name per image
_HIT_SDXL = {2: "scene", 3: "scene", 4: "scene", 5: "people", 6: "scene", 7: "art", 8: "scene", 9: "art",
             10: "faces", 11: "object", 12: "object", 13: "object", 14: "object", 15: "object", 16: "object",
             17: "object", 18: "object", 104: "scene", 105: "scene", 119: "people", 120: "scene", 125: "scene",
             128: "object", 130: "scene", 131: "scene"}
_HIT_OTHER = {"Ancient_Library_Monastery": "scene", "Astronaut_Neon_Alien_Marketplace": "art",
              "Cyberpunk_Street_Noir": "art", "Epic_Space_Battle_Galaxy": "art", "Magical_Garden_Midnight": "art",
              "Medieval_Banquet_Castle_Hall": "scene", "PostApocalyptic_Cityscape_Nature": "scene",
              "Serene_Lake_Sunset_Mountains": "scene", "Underwater_City_Merpeople": "art",
              "Whimsical_Crystal_Forest": "art"}
HIT = [(f"text2image/output/ComfyUI_{n:05d}_.png", "sdxl", "sdxl", c, "") for n, c in _HIT_SDXL.items()] + \
      [(f"all_images/{s}.png", "sd-unnamed", "sd", c, "") for s, c in _HIT_OTHER.items()]

#: x-flux: FLUX.1-dev (LoRA and ControlNet fine-tunes) single outputs; the strips with their control
#: maps, the example input statue and the banners left out
_XFLUX = {"picture-5-rev1": "people", "picture-6-rev1": "people", "picture-7-rev1": "faces",
          "result_12": "art", "result_13": "people", "result_14": "art", "result_15": "art", "result_18": "art",
          "result_19": "art", "result_21": "art", "result_22": "scene", "result_23": "art", "result_24": "scene",
          "furry1": "art", "furry2": "art", "furry3": "art", "furry4": "art"}
XFLUX = [(f"assets/readme/examples/{s}.png", "flux-dev", "flux", c, "") for s, c in _XFLUX.items()]

#: insightface test photos (faces, a few groups and one landscape): left out are a cartoon, rotated
#: and cropped copies of one portrait, a blurred copy, mask textures, a byte-identical PNG copy
#: (face_sample.png = woman.png, jntm.png = jntm.jpg) and a 112 px crop
_IF = ["RD/d1.jpeg", "RD/d2.jpeg", "RD/d3.jpeg", "RD/d4.jpeg", "RD/d5.jpeg",
       "attribute/1423.jpg", "attribute/1561.jpg", "attribute/1996.jpg", "attribute/2963.jpg", "attribute/7242.jpg",
       "bulk/Nathalie_Baye_0002.jpg", "bulk/Rob_Lowe_0001.jpg", "bulk/Rob_Lowe_0002.jpg", "bulk/image_T1.jpeg",
       "bulk/jntm.jpg", "bulk/kun.jpg", "bulk/mask.png", "bulk/mask2.jpg", "bulk/rgb_fake.jpg", "bulk/view.jpg",
       "bulk/woman.png", "bulk/woman_search.jpeg", "bulk/yifei.jpg",
       "emotion/anger.png", "emotion/happy.png", "emotion/sad.png",
       "pose/left_face.jpeg", "pose/left_wryneck.png", "pose/lower_face.jpeg", "pose/right_face.png",
       "pose/right_wryneck.png", "pose/rise_face.jpeg",
       "reaction/close_eyes.jpeg", "reaction/close_open_eyes.jpeg", "reaction/open_eyes.png",
       "search/Mary_Katherine_Smart_0001_5k.jpg", "search/Teresa_Williams_0001_1k.jpg"]
_IF_CONTENT = {"bulk/view.jpg": "scene", "bulk/woman_search.jpeg": "people", "bulk/yifei.jpg": "people",
               "bulk/mask2.jpg": "people", "bulk/rgb_fake.jpg": "screenshot"}
INSIGHTFACE = [(f"cpp-package/inspireface/test_res/data/{p}", "real", "real", _IF_CONTENT.get(p, "faces"),
                "rdj" if p.startswith("RD/") else "") for p in _IF] + \
              [("python-package/insightface/data/images/t1.jpg", "real", "real", "people", "")]

SOURCES = [
    Source("sdfd", "gebaltso/SDFD", "no licence file; the README cites Baltsou et al., FG 2024", False, sdfd_items,
           cap=SDFD_CAP,
           note="SDFD: photoreal faces generated with Stable Diffusion 2.1 from attribute prompts (age, "
                "ethnicity, hair, accessories, head coverings, make-up), 768 px JPEG; prompts from finalPrompts.csv."),
    Source("hit", "hitthecodelabs/CreativeAI-Portraits", "MIT (LICENSE)", True, table("hit", HIT), cap=CAP,
           note="SDXL base + refiner ComfyUI outputs (scenes, still lifes, two portraits) and ten portfolio "
                "images from an unnamed Stable Diffusion version; a grid, inpaintings of a real photo, "
                "workflow screenshots and video inputs left out."),
    Source("xflux", "XLabs-AI/x-flux", "Apache-2.0 (LICENSE); FLUX.1-dev outputs fall under the FLUX.1 [dev] "
           "non-commercial licence (models_licence)", False, table("xflux", XFLUX), cap=CAP,
           note="FLUX.1-dev LoRA and ControlNet outputs (people, illustrations, scenes), 1024 px; strips "
                "with control maps, inputs and banners left out."),
    Source("insightface", "deepinsight/insightface", "MIT (README) for the code; test photos of public figures "
           "and web photos, their own terms", True, table("insightface", INSIGHTFACE), cap=CAP,
           note="face-analysis test photos (portraits, pose and expression tests, LFW faces, people in masks, "
                "a phone photo of a screen, a TV group still, a landscape); a cartoon, rotated, cropped, "
                "blurred and byte-identical copies, mask textures and a 112 px crop left out."),
    Source("photomaker", "TencentARC/PhotoMaker", "Apache-2.0 (LICENSE) for the repository; press and "
           "promotional photos, their own terms", True,
           photos("photomaker", r"examples/(?P<id>(?P<who>scarletthead_woman|yangmi_woman|lenna_woman)/[^/]+)"
                                r"\.(jpe?g|png)", "faces", group=lambda m: m.group("who")),
           cap=CAP,
           note="identity reference photos of two actresses (retouched press and promotional photos) and the "
                "Lenna scan; the engravings of Newton, a statue and a pose reference left out."),
    Source("ootd", "levihsu/OOTDiffusion", "CC BY-NC-SA 4.0 (LICENSE); VITON-HD and Dress Code photos, their "
           "own terms", False,
           photos("ootd", r"run/examples/model/(?P<id>\d+_0+)\.jpg", "people"), cap=CAP,
           note="fashion photos of models from VITON-HD (half body) and Dress Code (full body); the nine "
                "model_N.png images are left out (their origin is not stated and they look generated)."),
    Source("openpose", "CMU-Perceptual-Computing-Lab/openpose", "academic or non-profit non-commercial "
           "research use only (LICENSE); COCO val2014 photos, their Flickr licences", False,
           photos("openpose", r"examples/media/(?P<id>COCO_val2014_\d+)\.jpg", "people"), cap=CAP,
           note="COCO val2014 photos of people (sports, rooms, streets, parties), 640 px."),
]
