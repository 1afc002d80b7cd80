"""README.md as the tests read it: its fenced code blocks and its sections."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def code_blocks(lang: str, text: str = README) -> list:
    """The bodies of the ```LANG fenced blocks of ``text``, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def section(title: str, text: str = README) -> str:
    """The text of the ``## TITLE`` section, up to the next ``## `` heading."""
    return text.split(f"## {title}")[1].split("\n## ")[0]
