"""More real photographs, each collection from its own repository: photo-editing examples, image
restoration test sets (Kodak, McMaster, low-light captures), pose-estimation test images drawn from
many datasets, salient-object and portrait test photos, face-detection examples. Drawings, renders,
masks, composites, mirrored copies and artificially degraded inputs are left out by name."""
from __future__ import annotations

import re
from typing import Callable, Container, Iterator, Optional, Union

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source

#: at most this many photos per source (generated images: per generator), so no collection dominates
CAP = 150

#: a content label, or a function of the regex match that gives one
Content = Union[str, Callable[[re.Match], str]]


def photos(name: str, pattern: str, content: Content, *, skip: Container[str] = (),
           group: Optional[Callable[[re.Match], str]] = None) -> Callable[[GitRepo], Iterator[Item]]:
    """Real photos whose path fully matches ``pattern``; its group ``id`` names the photo (the key is
    ``<name>/<id>``, and ``skip`` lists ids left out); ``group`` maps a match to a content group suffix
    (photos of one scene, frames of one video)."""
    rx = re.compile(pattern)

    def items(repo: GitRepo) -> Iterator[Item]:
        for path in sorted(repo.tree()):
            m = rx.fullmatch(path)
            if not m or m.group("id") in skip:
                continue
            yield Item(path=path, key=f"{name}/{m.group('id')}", label=0, generator="real", family="real",
                       content=content(m) if callable(content) else content,
                       group=f"{name}/{group(m)}" if group else "")
    return items


#: deep-photo-styletransfer: a 3D render (in18), a CG wallpaper twice (in48, in49), a painting (tar21),
#: a composited fireball (tar16) and second copies of the same photo (in9 = in22, in12 = in11, tar22 = tar10)
_DPST_SKIP = {"in18", "in48", "in49", "tar21", "tar16", "in9", "in12", "tar22"}
_DPST_CONTENT = {"in11": "faces", "tar11": "faces", "tar12": "faces", "in16": "object", "in17": "object",
                 "in23": "object", "in26": "object", "in33": "object", "in36": "object", "in41": "object",
                 "in42": "object", "in45": "object", "in22": "object", "in29": "object", "tar17": "object",
                 "tar18": "object", "tar29": "object", "tar41": "object", "tar42": "object", "tar45": "object",
                 "tar9": "object", "tar26": "object"}


def _dpst_content(m: re.Match) -> str:
    return _DPST_CONTENT.get(m.group("id"), "scene")


#: U-2-Net test images: a calligraphy scroll is not a photograph
_U2NET_SKIP = {"test_images/long"}


def _u2net_content(m: re.Match) -> str:
    return {"test_images": "object", "test_human_images": "people"}.get(m.group("set"), "faces")


#: mmpose test data per dataset folder: left out are rendered hands (rhd), green-screen composites
#: (freihand), near-black low-light frames (exlpose), drawn and figurine humans (humanart virtual),
#: masks (posetrack18/mask, h36m PNG silhouettes) and the mirrored copy of each Panoptic hand (``_l``)
_MMPOSE_SKIP_SETS = {"rhd", "freihand", "exlpose"}
_MMPOSE_FACES = {"300w", "300vw", "300wlp", "aflw", "cofw", "lapa", "wflw"}
_MMPOSE_ANIMALS = {"ap10k", "animalpose", "atrw", "horse10", "macaque", "fly", "locust", "zebra", "carfusion"}


def mmpose_items(repo: GitRepo) -> Iterator[Item]:
    rx = re.compile(r"tests/data/(?P<set>[^/]+)/(?P<rest>.+)\.(jpe?g|png)", re.I)
    for path in sorted(repo.tree()):
        m = rx.fullmatch(path)
        if not m:
            continue
        ds, rest, ext = m.group("set"), m.group("rest"), path.rsplit(".", 1)[1].lower()
        if (ds in _MMPOSE_SKIP_SETS or "virtual_human" in rest or "/mask/" in f"/{rest}"
                or (ds == "h36m" and ext == "png") or (ds == "panoptic" and rest.endswith("_l"))):
            continue
        content = "faces" if ds in _MMPOSE_FACES else ("object" if ds in _MMPOSE_ANIMALS else "people")
        yield Item(path=path, key=f"mmpose/{ds}/{rest}", label=0, generator="real", family="real",
                   content=content, group=f"mmpose/{ds}")


#: face-detector test photos: a 3D-rendered advert (imgs/22) and, among the masked-face photos, an
#: icon drawing (img1) and two collages of cut-out portraits (img2, img4)
_LINZAER_SKIP = {"imgs/22", "masked_face/imgs/img1", "masked_face/imgs/img2", "masked_face/imgs/img4"}


def _mmocr_content(m: re.Match) -> str:
    return "object" if "kie" in m.group("id") else "scene"


def _dlib_content(m: re.Match) -> str:
    i = m.group("id")
    return "object" if "dogs" in i else ("scene" if "cars" in i else ("faces" if m.group("who") else "people"))


SOURCES = [
    Source("dpst", "luanfujun/deep-photo-styletransfer", "no licence file; README: academic and "
           "non-commercial use only; photos from the web", False,
           photos("dpst", r"examples/(input|style)/(?P<id>(in|tar)\d+)\.png", _dpst_content, skip=_DPST_SKIP),
           cap=CAP,
           note="input and reference photographs of the style-transfer examples (cities, landscapes, "
                "interiors, night scenes, still lifes, two portraits), 700 px; a render, a painting, a "
                "composite, a CG wallpaper and second copies left out; some are strongly edited (HDR, infrared)."),
    Source("kodak", "cszn/FFDNet", "no licence file; Kodak PhotoCD images (free for research use) and "
           "McMaster images, their own terms", False,
           photos("kodak", r"testsets/(?P<id>(Kodak24|McMaster)/[^/]+)\.(png|tif)",
                  lambda m: "scene" if m.group("id").startswith("Kodak") else "object"),
           cap=CAP,
           note="Kodak24 (768x512 film scans) and McMaster18 (500x500 crops of film-scanned photos), "
                "the clean colour denoising test sets."),
    Source("zerodce", "Li-Chongyi/Zero-DCE", "README: non-commercial use only (CC BY-NC 4.0 for the code); "
           "DICM and LIME test photos, their own terms", False,
           photos("zerodce", r"Zero-DCE_code/data/test_data/(?P<id>(DICM|LIME)/[^/]+)\.(jpg|bmp)", "scene"),
           cap=CAP,
           note="DICM and LIME low-light test photos: real under-exposed camera captures (not synthetically "
                "darkened), 640-960 px."),
    Source("mmpose", "open-mmlab/mmpose", "Apache-2.0 (LICENSE) for the repository; the test images come "
           "from COCO, MPII, AIC, CrowdPose, OCHuman, AP-10K, 300W, WFLW and other datasets, their own terms",
           True, mmpose_items,
           cap=CAP,
           note="pose and landmark test images from 32 datasets (people, crowds, faces, hands, animals); "
                "renders, composites, masks, drawn humans and near-black frames left out; one content group "
                "per dataset (frames of one video stay together)."),
    Source("u2net", "xuebinqin/U-2-Net", "Apache-2.0 (LICENSE) for the repository; web photos, their "
           "photographers' rights not stated", True,
           photos("u2net", r"test_data/(?P<id>(?P<set>test_images|test_human_images|"
                           r"test_portrait_images/your_portrait_im)/[^/]+)\.(jpe?g|png)",
                  _u2net_content, skip=_U2NET_SKIP),
           cap=CAP,
           note="salient-object, human-segmentation and portrait test photos (objects, animals, athletes, "
                "groups, studio portraits); a calligraphy scroll left out."),
    Source("dlib", "davisking/dlib", "Boost Software Licence 1.0 (dlib/LICENSE.txt, LICENSE.txt) for the "
           "library; PASCAL VOC and web photos, their own terms", True,
           photos("dlib", r"examples/(?P<id>faces/[^/]+|johns/(?P<who>[^/]+)/[^/]+|mmod_cars_test_image2?)\.jpg",
                  _dlib_content, group=lambda m: m.group("who") or m.group("id")),
           cap=CAP,
           note="face-detection example photos (PASCAL VOC people, a portrait, a group, dogs), 150 px LFW "
                "face crops of five people (one content group per person) and two street scenes with cars; "
                "the video frames are not used."),
    Source("faceapi", "justadudewhohacks/face-api.js", "MIT (LICENSE) for the repository; TV stills and "
           "web photos, their own terms", True,
           photos("faceapi", r"examples/images/(?P<id>[^/]+)\.jpg",
                  lambda m: "people" if m.group("id").startswith("bbt") else "faces"),
           cap=CAP,
           note="TV-series stills of a cast and facial-expression photos; the 150 px grey face crops left out."),
    Source("linzaer", "Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB", "MIT (LICENSE) for the "
           "repository; web photos, their own terms", True,
           photos("linzaer", r"(?P<id>imgs/\d+|masked_face/imgs/img\d+)\.(jpe?g|webp)", "people",
                  skip=_LINZAER_SKIP),
           cap=CAP,
           note="face-detector test photos: group photos, crowds, people in face masks; a rendered "
                "advert, an icon drawing and two portrait collages left out."),
    Source("mmdet3d", "open-mmlab/mmdetection3d", "Apache-2.0 (LICENSE) for the repository; nuScenes, KITTI, "
           "Waymo and SUN RGB-D frames under their datasets' non-commercial terms", False,
           photos("mmdet3d", r"(?P<id>(demo|tests)/data/(kitti|nuscenes|sunrgbd|waymo)/.+)\.(jpg|png)", "scene"),
           cap=CAP,
           note="camera frames of the 3D-detection demos and tests: six nuScenes cameras and one more "
                "nuScenes frame, KITTI and Waymo street scenes, SUN RGB-D rooms."),
    Source("mmocr", "open-mmlab/mmocr", "Apache-2.0 (LICENSE) for the repository; ICDAR 2015 and WildReceipt "
           "photos, their own terms", True,
           photos("mmocr", r"(?P<id>tests/data/det_toy_dataset/imgs/test/img_\d+|tests/data/kie_toy_dataset/"
                           r"wildreceipt/1|demo/demo_(densetext_det|kie|text_det|text_ocr))\.jpe?g",
                  _mmocr_content),
           cap=CAP,
           note="scene-text photos (ICDAR 2015 street captures, signs) and photographed receipts; "
                "word crops and visualisations left out."),
    Source("barbershop", "ZPdesu/Barbershop", "MIT (LICENSE) for the repository; FFHQ (CC BY-NC-SA 4.0 as a "
           "dataset) and AFHQ (CC BY-NC 4.0) photos", False,
           photos("barbershop", r"input/(?P<id>(face|cat|dog|wild)/[^/]+)\.(png|jpg)",
                  lambda m: "faces" if m.group("id").startswith("face") else "object"),
           cap=CAP,
           note="FFHQ-aligned real faces at 1024 px (the hairstyle-transfer inputs) and AFHQ cat, dog "
                "and wildlife photos at 512 px; the MetFaces painting left out."),
    Source("openface", "cmusatyalab/openface", "Apache-2.0 (LICENSE) for the repository; press photos of "
           "public figures, their own terms", True,
           photos("openface", r"images/examples/(?P<id>[^/]+)\.jpg", "faces"),
           cap=CAP,
           note="face-recognition example photos of public figures (two of the same person twice)."),
    Source("facenet", "timesler/facenet-pytorch", "MIT (LICENSE.md) for the repository; press photos of "
           "public figures, their own terms", True,
           photos("facenet", r"data/(?P<id>test_images/[^/]+/1|multiface)\.jpg",
                  lambda m: "people" if m.group("id") == "multiface" else "faces"),
           cap=CAP,
           note="full-size test portraits of actors (up to 2048 px) and a group photo; aligned and cropped "
                "copies and the detector output left out."),
]
