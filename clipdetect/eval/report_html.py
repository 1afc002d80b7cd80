"""The report as one self-contained HTML file: the Markdown report rendered, figures inlined.

:func:`render_html` turns the Markdown that :func:`~clipdetect.eval.report.render_markdown`
writes (headings, paragraphs, pipe tables, ``![alt](figure.png)`` lines, inline code and
bold) into HTML, so the two never say different things. Every figure is read from the
report folder and embedded as a ``data:`` URI: the file needs nothing beside it, opens
offline, and can be mailed or served (``clipdetect serve --report``). It has no script.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import List

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
IMAGE_LINE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)$")
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 0 auto; padding: 1rem 1.5rem; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d5dae2; padding: 0.25rem 0.5rem; text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f3f8; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 0.5rem 0 1.5rem; }
figure img { max-width: 100%; height: auto; }
code { background: #f0f3f8; padding: 0 0.2rem; border-radius: 3px; }
"""


def _inline(text: str) -> str:
    """Escape ``text``, then render `code` and **bold**."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: List[str]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in _cells(lines[0]))
    rows = ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(line)) + "</tr>" for line in lines[2:]]
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed {str(path)!r}: not one of {sorted(MIME)}")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(alt: str, src: str, base: Path) -> str:
    path = (base / src).resolve()
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        raise FileNotFoundError(f"the report refers to figure {src!r}, which is not in {str(base)!r}")
    return (f'<figure><img alt="{html.escape(alt)}" src="{data_uri(path)}">'
            f"<figcaption>{_inline(alt)}</figcaption></figure>")


def render_html(markdown: str, base: Path, *, title: str = "clipdetect report") -> str:
    """HTML of ``markdown``; figures are resolved against folder ``base`` and inlined."""
    body: List[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            body.append(_table(lines[i:j]))
            i = j
        elif m := IMAGE_LINE.match(line):
            body.append(_figure(m["alt"], m["src"], base))
            i += 1
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("#", "|", "![")):
                j += 1
            body.append("<p>" + _inline(" ".join(x.strip() for x in lines[i:j])) + "</p>")
            i = j
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
