"""Detectors shipped with the package, loadable by name: ``Detector.load("general-b16")``,
``clipdetect predict general-b16 photos/``.

Each is an ordinary bundle (``model.safetensors`` + ``detector.json``) under
``clipdetect/models/shipped/<name>/``, with its model card (``MODEL_CARD.md``; the same facts
in ``detector.json``'s ``extra.card``): what it was trained on and under which licences, its
feature set, the numbers measured for it, and its limits. The head is small; the backbone
(CLIP) is loaded through open_clip as for any detector (see the card for the weights).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

SHIPPED_DIR = Path(__file__).parent / "shipped"


def shipped() -> Dict[str, Path]:
    """name → folder of every detector shipped with this installation."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir()) if (p / "detector.json").is_file()}


def resolve_detector_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists, else the shipped detector of that name; an unknown name is
    left as is (the bundle reader then says the folder is not a detector)."""
    p = Path(path)
    if p.exists():
        return p
    return shipped().get(str(path), p)


def model_card(name: str) -> Optional[str]:
    """The Markdown model card of a shipped detector (None when it has none)."""
    card = shipped().get(name, Path("/nonexistent")) / "MODEL_CARD.md"
    return card.read_text() if card.is_file() else None
