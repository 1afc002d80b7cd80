"""Build the training corpus: export images from bare git mirrors of public repositories and write
``manifest.csv`` (read directly by ``clipdetect extract``), ``summary.json`` and ``STATUS.md``.

    python -m experiments.corpus.build --mirrors MIRRORS [--out DIR] [--only avt,bingo]
        [--since earlier/manifest.csv]   # also manifest_new.csv: the rows that manifest lacks

Each source is one small adapter (``sources_*.py``) that lists image files with label, generator,
family, content group and content; this module does everything else the same way for all of them:
caps (at most ``--cap-generator`` images per generator and ``--cap-real`` per real source, drawn by a
hash of the key), reading the blob (absent blobs and Git LFS pointers are skipped and logged), the
image checks (decodes with PIL, one frame, shortest side ≥ ``--min-side``), SHA-1 de-duplication
across sources (the first source in registry order keeps the image), and the split by a hash of
the content group (a group is never cut across train/val/test).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from PIL import Image

from clipdetect.core.io import write_json
from experiments.common import in_data
from experiments.corpus.gitrepo import GitRepo
from experiments.corpus.registry import all_sources
from experiments.corpus.report import compare_with, write_outputs
from experiments.corpus.schema import Item, Source, split_of, unit

log = logging.getLogger("corpus")


def mirror_dir(mirrors: Path, repo: str) -> Path:
    """``mirrors/owner+name/repo`` (the layout of the mirrors; ``repo/.git`` when the snapshot is a
    clone with a work tree), or ``mirrors/owner+name``."""
    base = mirrors / repo.replace("/", "+")
    for where in (base / "repo" / ".git", base / "repo"):
        if where.is_dir():
            return where
    return base


def apply_caps(items: List[Item], src: Source, cap_generator: int, cap_real: int) -> List[Item]:
    """Keep at most the cap per generator (reals: per source), chosen by a hash of the key."""
    by: Dict[str, List[Item]] = defaultdict(list)
    for it in items:
        by[it.generator if it.label else "real"].append(it)
    kept = []
    for gen, members in by.items():
        cap = src.cap or (cap_real if gen == "real" else cap_generator)
        members.sort(key=lambda it: unit(it.key, "cap"))
        kept += members[:cap]
    return sorted(kept, key=lambda it: it.key)


def probe(data: bytes, crop) -> tuple:
    """(info, bytes to store): decodes fully; a crop is cut out and stored as PNG."""
    img = Image.open(io.BytesIO(data))
    fmt, frames = img.format, getattr(img, "n_frames", 1)
    img.load()
    if crop is not None:
        img = img.crop(crop)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, fmt = buf.getvalue(), "PNG"
    return {"true_format": fmt, "width": img.size[0], "height": img.size[1], "mode": img.mode,
            "frames": frames}, data


def export_source(src: Source, repo: GitRepo, out: Path, args, seen: Dict[str, str], drops: List[str]) -> List[dict]:
    items = apply_caps(list(src.items(repo)), src, args.cap_generator, args.cap_real)
    for it in items:
        if not (it.key.startswith(f"{src.name}/") and it.group.startswith(src.name)):
            raise ValueError(f"source {src.name!r}: key {it.key!r} / group {it.group!r} must start with the "
                             "source name, so keys and groups stay unique across sources")
    commit = repo.commit()
    rows = []
    for it in items:
        data = repo.read(it.path)
        if data is None:
            drops.append(f"{src.name}: {it.path}: {repo.why(it.path)}")
            continue
        if it.member:
            try:
                data = zipfile.ZipFile(io.BytesIO(data)).read(it.member)
            except (zipfile.BadZipFile, KeyError) as exc:
                drops.append(f"{src.name}: {it.path}:{it.member}: cannot be read from the archive ({exc})")
                continue
        try:
            info, data = probe(data, it.crop)
        except Exception as exc:  # noqa: BLE001 - any decode failure drops the file, logged
            drops.append(f"{src.name}: {it.path}: does not decode ({type(exc).__name__}: {exc})")
            continue
        if info.pop("frames") > 1:
            drops.append(f"{src.name}: {it.path}: animated ({info['true_format']}), not a still image")
            continue
        if min(info["width"], info["height"]) < args.min_side:
            drops.append(f"{src.name}: {it.path}: too small ({info['width']}x{info['height']})")
            continue
        sha1 = hashlib.sha1(data).hexdigest()
        if sha1 in seen:
            drops.append(f"{src.name}: {it.path}: duplicate of {seen[sha1]} (sha1 {sha1[:12]})")
            continue
        seen[sha1] = f"{src.name}:{it.key}"
        name = f"{it.path}/{it.member}" if it.member else it.path
        rel = Path("images") / src.name / (name if it.crop is None else f"{name}.crop{'_'.join(map(str, it.crop))}.png")
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != data:
            dest.write_bytes(data)
        ext = name.rsplit(".", 1)[-1].upper().replace("JPG", "JPEG") if it.crop is None else "PNG"
        rows.append({"key": it.key, "path": rel.as_posix(), "label": it.label, "generator": it.generator,
                     "family": it.family, "source": src.name, "group": it.group, "content": it.content,
                     "licence": src.licence, "permissive": "yes" if src.permissive else "no",
                     "repo": src.repo, "commit": commit, "repo_path": name, "ext_format": ext,
                     "bytes": len(data), "sha1": sha1, "prompt": it.prompt,
                     "split": split_of(it.group, val=args.val, test=args.test), **info})
    return rows


def parse_args(argv: Optional[Sequence[str]]):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--mirrors", required=True, help="folder of bare mirrors named owner+name[/repo]")
    ap.add_argument("--out", help="export folder: images/, manifest.csv, summary.json (default $CLIPDETECT_DATA/corpus)")
    ap.add_argument("--only", default="", help="comma-separated source names (default: all)")
    ap.add_argument("--cap-generator", type=int, default=300, help="most images per generator of a source")
    ap.add_argument("--cap-real", type=int, default=400, help="most real photos per source")
    ap.add_argument("--min-side", type=int, default=128, help="skip images whose shorter side is smaller")
    ap.add_argument("--val", type=float, default=0.10, help="share of content groups in val")
    ap.add_argument("--test", type=float, default=0.20, help="share of content groups in test")
    ap.add_argument("--since", default="", help="an earlier manifest.csv: also write manifest_new.csv (rows whose "
                                                 "key it lacks) and since.json (its keys missing or changed here)")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, sources: Optional[List[Source]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out, mirrors = Path(args.out) if args.out else in_data("corpus"), Path(args.mirrors)
    sources = sources if sources is not None else all_sources()
    wanted = {s for s in args.only.split(",") if s}
    unknown = wanted - {s.name for s in sources}
    if unknown:
        raise SystemExit(f"--only names unknown source(s) {sorted(unknown)}; known: {[s.name for s in sources]}")
    seen: Dict[str, str] = {}
    drops: List[str] = []
    rows: List[dict] = []
    used = []
    for src in sources:
        if wanted and src.name not in wanted:
            continue
        where = mirror_dir(mirrors, src.repo)
        if not where.exists():
            drops.append(f"{src.name}: no mirror of {src.repo} at {where}; source skipped")
            continue
        repo = GitRepo(where)
        got = export_source(src, repo, out, args, seen, drops)
        log.info("%-10s %5d images  (%s @ %s)", src.name, len(got), src.repo, repo.commit()[:12])
        rows += got
        used.append((src, repo.commit()))
    write_outputs(out, rows, used, drops, vars(args))
    if args.since:
        diff = compare_with(Path(args.since), rows, out)
        write_json(out / "since.json", diff)
        log.info("since %s: %d new rows, %d shared keys, %d missing, %d changed", args.since, diff["new_rows"],
                 diff["shared_keys"], len(diff["missing_keys"]), len(diff["changed_keys"]))
    for line in drops:
        log.info("dropped: %s", line)
    log.info("wrote %s: %d rows (%d real, %d generated)", out / "manifest.csv", len(rows),
             sum(r["label"] == 0 for r in rows), sum(r["label"] == 1 for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
