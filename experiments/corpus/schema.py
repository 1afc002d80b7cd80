"""What an adapter hands the builder: one ``Item`` per image file, one ``Source`` per repository."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Tuple

from experiments.corpus.gitrepo import GitRepo

CONTENTS = ("faces", "people", "scene", "object", "art", "screenshot", "other")
COLUMNS = ["key", "path", "label", "generator", "family", "source", "group", "split", "content",
           "licence", "permissive", "repo", "commit", "repo_path", "true_format", "ext_format",
           "width", "height", "mode", "bytes", "sha1", "prompt"]


@dataclass
class Item:
    """One image of a source. ``path`` is the file inside the repository (``member``: a file inside
    that zip archive); ``crop`` (left, top, right, bottom) cuts one tile out of a sample grid of known
    layout (exported as PNG)."""

    path: str
    key: str
    label: int  # 0 real photograph, 1 generated
    generator: str  # source-specific: "avt/sd", "bingo/sd"; "real" for photographs
    family: str  # merged across sources: "sd", "dalle", "stylegan", "real"
    content: str = "other"
    group: str = ""  # content group (same prompt / same scene); the key when empty
    prompt: str = ""
    crop: Optional[Tuple[int, int, int, int]] = None
    member: str = ""

    def __post_init__(self):
        if self.content not in CONTENTS:
            raise ValueError(f"{self.key}: content {self.content!r} is not one of {CONTENTS}")
        if self.label not in (0, 1):
            raise ValueError(f"{self.key}: label {self.label!r} must be 0 (real) or 1 (generated)")
        self.group = self.group or self.key


@dataclass
class Source:
    """A public repository and the adapter that lists its usable images."""

    name: str  # short tag, also the export folder: images/<name>/...
    repo: str  # owner/name on GitHub
    licence: str  # as found in the repository ("no licence file" when absent)
    permissive: bool  # licence allows reuse in shipped weights (MIT, BSD, Apache, CC-BY, 0BSD, ...)
    items: Callable[[GitRepo], Iterable[Item]]
    note: str = ""
    cap: Optional[int] = None  # at most this many images per generator (reals: per source)
    tags: List[str] = field(default_factory=list)


_RULES = [
    ("art", r"\b(painting|painted|illustration|drawing|cartoon|anime|manga|comic|sketch|watercolou?r|"
            r"oil on canvas|digital art|concept art|pixel art|artstation|in the style of|style of|poster|"
            r"sculpture|fantasy|render|3d|logo|emoji|origami)\b"),
    ("faces", r"\b(portrait|face|headshot|selfie|closeup of a (man|woman|person))\b"),
    ("people", r"\b(man|woman|men|women|person|people|girl|boy|child|children|kid|baby|lady|guy|crowd|"
               r"couple|astronaut|soldier|king|queen|doctor|chef|student|family|teenager|player|dancer)\b"),
    ("scene", r"\b(landscape|city|street|mountains?|forest|beach|sea|ocean|lake|river|room|kitchen|"
              r"house|building|castle|village|sky|sunset|sunrise|desert|field|garden|park|road|bridge|"
              r"skyline|valley|island|waterfall|interior|harbou?r|market|town|night)\b"),
]


def guess_content(text: str, default: str = "object") -> str:
    """Best-effort content label from a prompt, caption or file name (first matching rule)."""
    t = text.lower().replace("_", " ")
    for label, rx in _RULES:
        if re.search(rx, t):
            return label
    return default


def grid_crops(width: int, height: int, tile: int, pad: int = 0):
    """(left, top, right, bottom) of every tile of a sample grid: tiles of ``tile`` px separated and
    framed by ``pad`` px (torchvision ``save_image`` padding), row by row."""
    cols, rows = (width - pad) // (tile + pad), (height - pad) // (tile + pad)
    if cols * (tile + pad) + pad != width or rows * (tile + pad) + pad != height:
        raise ValueError(f"a {width}x{height} image is not a grid of {tile}px tiles with {pad}px padding")
    return [(pad + c * (tile + pad), pad + r * (tile + pad), pad + c * (tile + pad) + tile, pad + r * (tile + pad) + tile)
            for r in range(rows) for c in range(cols)]


def unit(text: str, salt: str = "corpus") -> float:
    """A deterministic number in [0, 1) from ``text``."""
    d = hashlib.blake2b(f"{salt}:{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2.0 ** 64


def split_of(group: str, *, val: float, test: float) -> str:
    """train / val / test from a hash of the content group: a group is never cut."""
    u = unit(group, "split")
    return "test" if u < test else ("val" if u < test + val else "train")
