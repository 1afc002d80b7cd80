"""Sources of real photographs: objects, faces and people, scenes."""
from __future__ import annotations

import re
from typing import Iterator

from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.schema import Item, Source


def imagenet_items(repo: GitRepo) -> Iterator[Item]:
    """One JPEG per ImageNet-1k class, named ``<wnid>_<class>.JPEG``; n09* classes are landforms."""
    for path in sorted(repo.tree()):
        if path.endswith(".JPEG") and "/" not in path:
            stem = path[:-5]
            wnid, _, name = stem.partition("_")
            yield Item(path=path, key=f"imagenet/{stem}", label=0, generator="real", family="real",
                       content="scene" if wnid.startswith("n09") else "object", prompt=name.replace("_", " "))


def deepface_items(repo: GitRepo) -> Iterator[Item]:
    """Photographs of public figures in ``tests/unit/dataset`` (the mirrored ``*_reflection`` copy is left out)."""
    for path in sorted(repo.tree()):
        if re.fullmatch(r"tests/(unit|integration)/dataset/[^/]+\.(jpe?g|png)", path, re.I) and "reflection" not in path:
            stem = path.rsplit("/", 1)[1].rsplit(".", 1)[0]
            many = any(w in stem for w in ("couple", "many", "people"))
            yield Item(path=path, key=f"deepface/{stem}", label=0, generator="real", family="real",
                       content="people" if many else "faces")


#: the same Obama portrait re-saved at several sizes, in 32-bit PNG and as partial crops: one copy is enough
_FACEREC_SKIP = re.compile(r"obama-\d+p|obama_small|partial_face|32bit")


def face_recognition_items(repo: GitRepo) -> Iterator[Item]:
    """Photos of people in ``examples/`` and ``examples/knn_examples``; resized copies are skipped."""
    for path in sorted(repo.tree()):
        if not path.lower().endswith((".jpg", ".jpeg", ".png")) or not path.startswith(("examples/", "tests/test_images/")):
            continue
        name = path.rsplit("/", 1)[1]
        if _FACEREC_SKIP.search(name):
            continue
        stem = path.replace("/", "_").rsplit(".", 1)[0]
        many = any(w in name for w in ("two_people", "and_", "with_"))
        yield Item(path=path, key=f"facerec/{stem}", label=0, generator="real", family="real",
                   content="people" if many else "faces")


#: Set14 images that are not photographs (a book cover, a drawn comic)
_SET14_SKIP = {"img_005", "img_013"}
_SR_CONTENT = {"Set5": "object", "Set14": "object", "BSD100": "scene", "Urban100": "scene", "Sun-Hays80": "scene"}


def selfexsr_items(repo: GitRepo) -> Iterator[Item]:
    """High-resolution originals of the SR test sets (Set5, Set14, BSD100, Urban100 at ×2; Sun-Hays80 at ×8)."""
    for path in sorted(repo.tree()):
        m = re.fullmatch(r"data/([^/]+)/image_SRF_(\d)/(img_\d+)_SRF_\d_HR\.png", path)
        if not m:
            continue
        ds, srf, stem = m.groups()
        if ds not in _SR_CONTENT or srf != ("8" if ds == "Sun-Hays80" else "2"):
            continue
        if ds == "Set14" and stem in _SET14_SKIP:
            continue
        yield Item(path=path, key=f"srsets/{ds}/{stem}", label=0, generator="real", family="real",
                   content=_SR_CONTENT[ds])


#: the photographs among scikit-image's sample data (textures, scans, micrographs and synthetic images left out)
SKIMAGE = {"astronaut.png": "people", "camera.png": "people", "chelsea.png": "object", "coffee.png": "object",
           "motorcycle_left.png": "object", "rocket.jpg": "scene"}


def skimage_items(repo: GitRepo) -> Iterator[Item]:
    for path in sorted(repo.tree()):
        m = re.fullmatch(r"src/_skimage2/data/([^/]+)", path)
        if m and m.group(1) in SKIMAGE:
            yield Item(path=path, key=f"skimage/{m.group(1).rsplit('.', 1)[0]}", label=0, generator="real",
                       family="real", content=SKIMAGE[m.group(1)])


SOURCES = [
    Source("imagenet", "EliSchwartz/imagenet-sample-images", "no licence file; ImageNet images, ImageNet terms "
           "of access apply", False, imagenet_items, cap=400,
           note="one validation-style JPEG per ImageNet-1k class; 400 drawn by a hash of the key."),
    Source("deepface", "serengil/deepface", "MIT (LICENSE) for the repository; the photos are press photos "
           "of public figures", True, deepface_items, note="test photos of celebrities (faces, a few groups)."),
    Source("facerec", "ageitgey/face_recognition", "MIT (LICENSE) for the repository; press photos", True,
           face_recognition_items, note="example photos of people; resized copies of one portrait skipped."),
    Source("srsets", "jbhuang0604/SelfExSR", "no licence file; the test sets' own terms apply (BSD: research use)",
           False, selfexsr_items, note="Set5, Set14 (minus a book cover and a comic), BSD100, Urban100, Sun-Hays80."),
    Source("skimage", "scikit-image/scikit-image", "BSD-3-Clause (LICENSE.txt); the photos are CC0 or public "
           "domain per the notes in src/_skimage2/data/_fetchers.py", True, skimage_items,
           note="six sample photographs (astronaut, cameraman, cat, coffee, motorcycle, rocket)."),
]
