"""Sample outputs shipped in model repositories, listed file by file (figures, inputs, masks and
grids of unknown layout are left out; where a repository also holds the real photo a sample was
made from, that photo is a real row of the same content group)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Tuple

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source

#: (path, generator, family, content, group suffix or "")
Row = Tuple[str, str, str, str, str]


def table(name: str, rows: Iterable[Row]) -> Callable[[GitRepo], Iterator[Item]]:
    rows = list(rows)

    def items(repo: GitRepo) -> Iterator[Item]:
        for path, gen, fam, content, group in rows:
            stem = path.rsplit(".", 1)[0]
            real = gen == "real"
            yield Item(path=path, key=f"{name}/{stem}", label=0 if real else 1,
                       generator="real" if real else f"{name}/{gen}", family="real" if real else fam,
                       content=content, group=f"{name}/{group}" if group else "")
    return items


def kolors_rows() -> Iterator[Row]:
    for stem in ("Canny_dog", "Canny_woman_1", "Depth_bird", "Depth_ipadapter_1", "Depth_ipadapter_woman_2",
                 "Depth_woman_2", "Pose_woman_3", "Pose_woman_4"):
        subject = stem.split("_", 1)[1].replace("ipadapter_", "")
        content = "people" if "woman" in stem else "object"
        yield f"controlnet/outputs/{stem}.jpg", "kolors", "kolors", content, f"cn-{subject}"
    for stem in ("Canny_woman_1", "Depth_bird", "Pose_woman_3"):
        yield f"controlnet/outputs/{stem}_sdxl.jpg", "sdxl", "sdxl", "object" if "bird" in stem else "people", \
            f"cn-{stem.split('_', 1)[1]}"
    for n in range(1, 6):  # one reference image, three image-prompted generators
        yield f"ipadapter/asset/{n}_kolors_ip_result.jpg", "kolors", "kolors", "people", f"ip{n}"
        yield f"ipadapter/asset/{n}_sdxl_ip_result.jpg", "sdxl", "sdxl", "people", f"ip{n}"
        yield f"ipadapter/asset/{n}_mj_cw_result.png", "midjourney", "midjourney", "people", f"ip{n}"
    for n in range(1, 5):  # a real portrait and two identity-preserving generations from it
        yield f"ipadapter_FaceID/assets/test_img{n}_org.png", "real", "real", "faces", f"faceid{n}"
        yield f"ipadapter_FaceID/assets/test_img{n}_Kolors.png", "kolors", "kolors", "faces", f"faceid{n}"
        yield f"ipadapter_FaceID/assets/test_img{n}_SDXL.png", "sdxl", "sdxl", "faces", f"faceid{n}"
    for n in (1, 2):
        yield f"ipadapter_FaceID/assets/image{n}.png", "real", "real", "faces", f"faceid-image{n}"
        yield f"ipadapter_FaceID/assets/image{n}_res.png", "kolors", "kolors", "faces", f"faceid-image{n}"
    for stem in ("sample_test", "sample_ip_test_ip", "sample_ip_test_ip2"):
        yield f"scripts/outputs/{stem}.jpg", "kolors", "kolors", "other", ""
    yield "dreambooth/ktxl_test_image.png", "kolors", "kolors", "object", ""
    yield "imgs/zl8.png", "kolors", "kolors", "people", ""


def hunyuan_rows() -> Iterator[Row]:
    out = "ipadapter/asset/output/"
    for stem in ("beach_res1", "beach_res2", "beach_res3", "beauty_glass", "beauty_green_cloth", "beauty_pig",
                 "tiger_book", "tiger_res1", "tiger_res2", "tiger_res3", "tiger_roar", "tiger_run",
                 "xunyicao_dog", "xunyicao_res", "xunyicao_style"):
        content = {"beach": "scene", "beauty": "people", "tiger": "object", "xunyicao": "scene"}[stem.split("_")[0]]
        yield f"{out}{stem}.png", "hunyuandit", "hunyuandit", content, ""
    for stem in ("cartoon_res1", "cartoon_res2", "cartoon_res3"):
        yield f"{out}{stem}.jpg", "hunyuandit", "hunyuandit", "art", ""
    for n in range(4):
        yield f"lora/asset/porcelain/inference/{n}.png", "hunyuandit-lora", "hunyuandit", "art", ""
    for stem in ("canny", "depth", "pose"):
        yield f"controlnet/asset/output/{stem}.jpg", "hunyuandit", "hunyuandit", "other", ""
    yield "mllm/images/demo1.png", "hunyuandit", "hunyuandit", "other", ""


OMNIGEN = [("imgs/demo_cases/" + s, "omnigen", "omnigen", c, "") for s, c in (
    ("edit.png", "people"), ("entity.png", "people"), ("id2.png", "people"), ("id3.png", "people"),
    ("reasoning.png", "people"), ("skeletal2img.png", "people"))]
#: left/right: the same prompt from the 2B model and from the 8B or 20B model (one content group)
INFINITY = [(f"assets/2b_{m}/{n}{s}.{e}", "infinity", "infinity", "other", f"{m}-{n}")
            for m, e in (("20b", "jpg"), ("8b", "webp")) for n in range(1, 5) for s in "lr"]
KANDINSKY3 = [(f"assets/{s}", "kandinsky3", "kandinsky", "other", "") for s in (
    "photo_2.jpg", "photo_7.jpg", "photo_8.jpg", "photo_13.jpg", "photo_14.jpg", "photo_15.jpg", "photo_16.jpg",
    "photo_17.jpg", "photo_19.jpg", "butterly_effect.jpg", "title.jpg")]
COGVIEW4 = [(f"inference/img/img_{n}.png", "cogview4", "cogview", "object", "") for n in (1, 2, 3)]
PIXART = [(f"asset/images/controlnet/0_{n}.png", "pixart-alpha", "pixart", c, "")
          for n, c in ((0, "art"), (2, "object"), (3, "people"))]
_DALABAD_CONTENT = {"animal": "object", "archviz": "scene", "building": "scene", "fashion": "people",
                    "landscape": "scene", "photograph_portrait": "faces", "photograph_closeup": "faces",
                    "vehicle": "object", "space": "scene", "postapocalyptic": "scene"}
DALABAD = [(f"images/{s}.png", "sd", "sd", _DALABAD_CONTENT.get(s, "art"), "") for s in (
    "animal archviz building cartoon concept cyberpunk digital_art digital_art_landscape drawing fashion "
    "landscape photograph_closeup photograph_portrait postapocalyptic sketch space steampunk vehicle").split()] + [
    (f"images/comparison/archviz_{s}_{m}.png", g, f, "scene", "archviz") for s in ("ddim", "eulera")
    for m, g, f in (("sd_v1", "sd1", "sd"), ("sd_v21", "sd21", "sd"), ("oj_v2", "openjourney", "sd"),
                    ("ad_v3", "arcane-diffusion", "sd"))]

#: StyleGAN2-ADA (NVIDIA's FFHQ model) faces written by its generate.py, seeds 0-30
AGEGAN = [(f"out/seed{n:04d}.png", "stylegan2-ada-ffhq", "stylegan", "faces", "") for n in range(31)]

SOURCES = [
    Source("kolors", "Kwai-Kolors/Kolors", "Apache-2.0 (LICENSE)", True, table("kolors", kolors_rows()),
           note="Kolors outputs with SDXL and Midjourney comparisons for the same inputs; four real portraits "
                "with their identity-preserving generations (content groups)."),
    Source("hunyuan", "Tencent/HunyuanDiT", "Tencent Hunyuan Community Licence (LICENSE.txt)", False,
           table("hunyuan", hunyuan_rows()), note="HunyuanDiT IP-adapter, LoRA, ControlNet and MLLM outputs."),
    Source("omnigen", "VectorSpaceLab/OmniGen", "MIT (LICENSE)", True, table("omnigen", OMNIGEN),
           note="OmniGen demo outputs (the real input photos in imgs/test_cases are not used)."),
    Source("infinity", "FoundationVision/Infinity", "MIT (LICENSE)", True, table("infinity", INFINITY),
           note="Infinity (bitwise autoregressive) 2B/8B/20B comparison outputs."),
    Source("kandinsky3", "ai-forever/Kandinsky-3", "Apache-2.0 (LICENSE)", True, table("kandinsky3", KANDINSKY3),
           note="Kandinsky 3 sample images."),
    Source("cogview4", "THUDM/CogView4", "Apache-2.0 (LICENSE)", True, table("cogview4", COGVIEW4),
           note="CogView4 inference examples."),
    Source("pixart", "PixArt-alpha/PixArt-alpha", "Apache-2.0 (LICENSE)", True, table("pixart", PIXART),
           note="PixArt-α ControlNet outputs."),
    Source("agegan", "ZhuoxuanZhangHarry/AgeGAN-FaceEvolution", "NVIDIA Source Code Licence, non-commercial "
           "(LICENSE.txt of the StyleGAN2-ADA fork)", False, table("agegan", AGEGAN),
           note="31 StyleGAN2-ADA FFHQ faces at 1024 px (out/seedNNNN.png)."),
    Source("dalabad", "Dalabad/stable-diffusion-prompt-templates", "MIT (LICENSE.md)", True,
           table("dalabad", DALABAD), note="Stable Diffusion prompt-template examples; one prompt × SD1/SD2.1/"
                                           "OpenJourney/Arcane Diffusion × two samplers (a content group)."),
]
