"""Sample images published by model and tool repositories (one or a few per model)."""
from __future__ import annotations

import io
import json
from typing import Dict, Iterator, Tuple

from PIL import Image

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source, guess_content

#: ComfyUI_examples: single text-to-image (or fully generated, conditioned) outputs only; workflow
#: screenshots, inpainting of input photos, video frames and control inputs are left out.
COMFY: Dict[str, Tuple[str, str]] = {
    "aura_flow/aura_flow_0.1_example.png": ("auraflow", "auraflow"),
    "aura_flow/aura_flow_0.2_example.png": ("auraflow", "auraflow"),
    "chroma/chroma_example.png": ("chroma", "chroma"),
    "chroma/fennec_girl_flowers.png": ("chroma", "chroma"),
    "chroma/fennec_girl_hug.png": ("chroma", "chroma"),
    "chroma/fennec_girl_sing.png": ("chroma", "chroma"),
    "cosmos_predict2/cosmos_predict2_2b_t2i_example.png": ("cosmos-predict2", "cosmos"),
    "flux/flux_dev_example.png": ("flux-dev", "flux"),
    "flux/flux_dev_checkpoint_example.png": ("flux-dev", "flux"),
    "flux/flux_schnell_example.png": ("flux-schnell", "flux"),
    "flux/flux_schnell_checkpoint_example.png": ("flux-schnell", "flux"),
    "flux/girl_in_field.png": ("flux-dev", "flux"),
    "flux/flux_canny_model_example.png": ("flux-dev", "flux"),
    "flux/flux_controlnet_example.png": ("flux-dev", "flux"),
    "flux/flux_redux_model_example.png": ("flux-dev", "flux"),
    "flux/flux_kontext_example.png": ("flux-kontext", "flux"),
    "flux2/flux2_example.png": ("flux2", "flux"),
    "hidream/hidream_dev_example.png": ("hidream", "hidream"),
    "hidream/hidream_full_example.png": ("hidream", "hidream"),
    "hidream/hidream_e1_example.png": ("hidream", "hidream"),
    "hidream/hidream_e1.1_example.png": ("hidream", "hidream"),
    "hunyuan_dit/hunyuan_dit_1.2_example.png": ("hunyuandit", "hunyuandit"),
    "lcm/lcm_basic_example.png": ("sd15-lcm", "sd"),
    "lumina2/lumina2_basic_example.png": ("lumina2", "lumina"),
    "omnigen/omnigen2_example.png": ("omnigen2", "omnigen"),
    "qwen_image/qwen_image_basic_example.png": ("qwen-image", "qwen-image"),
    "qwen_image/qwen_image_edit_basic_example.png": ("qwen-image", "qwen-image"),
    "qwen_image/qwen_image_edit_2509_basic_example.png": ("qwen-image", "qwen-image"),
    "sd3/sd3_simple_example.png": ("sd3", "sd3"),
    "sd3/sd3_text_encoders_example.png": ("sd3", "sd3"),
    "sd3/sd3_anime_example.png": ("sd3", "sd3"),
    "sd3/sd3_controlnet_example.png": ("sd3", "sd3"),
    "sd3/sd3.5_simple_example.png": ("sd3.5", "sd3"),
    "sd3/sd3.5_text_encoders_example.png": ("sd3.5", "sd3"),
    "sd3/sd3.5_large_canny_controlnet_example.png": ("sd3.5", "sd3"),
    "sdturbo/sdxlturbo_example.png": ("sdxl-turbo", "sdxl"),
    "sdxl/sdxl_simple_example.png": ("sdxl", "sdxl"),
    "sdxl/sdxl_refiner_prompt_example.png": ("sdxl", "sdxl"),
    "edit_models/sdxl_edit_model.png": ("sdxl", "sdxl"),
    "stable_cascade/stable_cascade__text_to_image.png": ("stable-cascade", "stable-cascade"),
    "stable_cascade/stable_cascade__canny_controlnet.png": ("stable-cascade", "stable-cascade"),
    "stable_cascade/stable_cascade__image_remixing.png": ("stable-cascade", "stable-cascade"),
    "stable_cascade/stable_cascade__image_remixing_multiple.png": ("stable-cascade", "stable-cascade"),
    "stable_cascade/stable_cascade__image_to_image.png": ("stable-cascade", "stable-cascade"),
    "z_image/z_image_turbo_example.png": ("z-image-turbo", "z-image"),
    "2_pass_txt2img/latent_upscale_different_prompt_model.png": ("sd15", "sd"),
    "area_composition/square_area_for_subject.png": ("sd15", "sd"),
    "area_composition/square_area_for_2_subjects.png": ("sd15", "sd"),
    "area_composition/morning_day_evening_night.png": ("sd15", "sd"),
    "noisy_latent_composition/noisy_latents_3_subjects.png": ("sd15", "sd"),
    "controlnet/2_pass_pose_worship.png": ("sd15", "sd"),
    "hypernetworks/hypernetwork_example_output.png": ("sd15", "sd"),
    "unclip/unclip_2pass.png": ("sd21-unclip", "sd"),
}


def comfy_prompt(data: bytes) -> str:
    """The longest text-encoder prompt in a ComfyUI PNG's embedded ``prompt`` graph ('' if none)."""
    try:
        graph = json.loads(Image.open(io.BytesIO(data)).info.get("prompt", "{}"))
    except (ValueError, OSError):
        return ""
    texts = [v for node in graph.values() if isinstance(node, dict) and "TextEncode" in str(node.get("class_type"))
             for k, v in node.get("inputs", {}).items() if isinstance(v, str) and k.startswith("text")]
    return max(texts, key=len, default="")


def comfy_items(repo: GitRepo) -> Iterator[Item]:
    for path, (gen, fam) in COMFY.items():
        data = repo.read(path)
        prompt = comfy_prompt(data) if data else ""
        stem = path.rsplit(".", 1)[0]
        yield Item(path=path, key=f"comfy/{stem}", label=1, generator=f"comfy/{gen}", family=fam,
                   content=guess_content(prompt, default="other"), prompt=prompt[:300])


SOURCES = [
    Source("comfy", "comfyanonymous/ComfyUI_examples", "0BSD-style permission for the workflows (LICENSE: "
           "use, copy, modify, distribute for any purpose)", True, comfy_items,
           note="example outputs of many open models (Flux, SD3, SDXL, Cascade, HiDream, Qwen-Image, ...)."),
]
