"""Export real multi-generator images from three public GitHub repositories and write a
CSV manifest that ``clipdetect extract`` reads.

Sources (bare git dirs as produced by a mirror/clone, or already-exported folders):

* ``Telecommunication-Telemedia-Assessment/avt_ai_images`` (GPL-3.0, LICENSE.md):
  ``images/<generator>/pNN.png`` for craiyon, dall-e, glide, stable_diffusion, midjourney,
  plus ``own`` (the authors' own photographs = reals); prompts in ``images/prompts.csv``.
* ``lipsumar/ai-bingo`` (no licence file in the repository): ``public/images/prompts/N/*``
  with generator labels ``de`` (DALL-E) / ``sd`` / ``mj`` and prompts in ``src/data/items.ts``.
* ``EliSchwartz/imagenet-sample-images`` (no licence file; ImageNet terms of access apply):
  one real JPEG photo per ImageNet-1k class.

Every file is copied out one by one (``git cat-file blob``); files whose blob is absent
from the snapshot are skipped and logged. The manifest has one row per exported image:

``key, path, label, generator, family, dataset, split, source, licence, prompt,
true_format, ext_format, width, height, mode, bytes, sha1``

* ``generator`` keeps the two repositories apart (``avt/sd`` vs ``bingo/sd``): they are
  different model versions, prompts and post-processing; ``family`` merges them
  (``sd``, ``dalle``, ``mj``, ``craiyon``, ``glide``; ``real`` for photos).
* ``split``: deterministic and stratified by ``generator`` (reals by dataset): within each
  group keys are ordered by ``blake2b(seed:key)`` and the first ``round(test*n)`` go to
  test, the next ``round(val*n)`` to val, the rest to train, so every group has test rows.
* ``true_format`` is what the bytes decode as (PIL), ``ext_format`` what the file name says
  (ai-bingo's DALL-E ``.jpg`` files are PNG inside). Exported files keep their original
  name; the toolkit decodes by content.

Usage::

    python experiments/realgen_manifest.py --avt DIR --bingo DIR --imagenet DIR \
        --out /work/data/realgen [--val 0.15 --test 0.30 --seed 0]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

AVT_GENERATORS = {"craiyon": "craiyon", "dall-e": "dalle", "glide": "glide",
                  "stable_diffusion": "sd", "midjourney": "mj", "own": "real"}
BINGO_GENERATORS = {"de": "dalle", "sd": "sd", "mj": "mj"}
REPOS = {
    "avt": ("Telecommunication-Telemedia-Assessment/avt_ai_images", "GPL-3.0 (LICENSE.md)"),
    "bingo": ("lipsumar/ai-bingo", "no licence file (all rights reserved by default)"),
    "imagenet": ("EliSchwartz/imagenet-sample-images",
                 "no licence file; ImageNet images, ImageNet terms of access"),
}
COLUMNS = ["key", "path", "label", "generator", "family", "dataset", "split", "source", "licence",
           "prompt", "true_format", "ext_format", "width", "height", "mode", "bytes", "sha1"]


# ------------------------------------------------------------------ reading a repo
class Repo:
    """Files of a bare git dir (HEAD) or of an exported folder, read by relative path."""

    def __init__(self, location: str):
        self.root = Path(location)
        self.bare = (self.root / "HEAD").is_file() and (self.root / "objects").is_dir()
        self._tree = None

    def _git(self, *args, text=True):
        return subprocess.run(["git", f"--git-dir={self.root}", *args], check=True,
                              capture_output=True, text=text).stdout

    def tree(self) -> dict:
        """relative path -> blob id (bare) or absolute path (folder)."""
        if self._tree is None:
            if self.bare:
                self._tree = {}
                for line in self._git("ls-tree", "-r", "HEAD").splitlines():
                    meta, path = line.split("\t", 1)
                    _, kind, blob = meta.split()
                    if kind == "blob":
                        self._tree[path] = blob
            else:
                self._tree = {str(p.relative_to(self.root)): str(p) for p in self.root.rglob("*") if p.is_file()}
        return self._tree

    def read(self, path: str):
        """The file's bytes, or None when its blob is missing from the snapshot."""
        ref = self.tree()[path]
        if not self.bare:
            return Path(ref).read_bytes()
        r = subprocess.run(["git", f"--git-dir={self.root}", "cat-file", "blob", ref], capture_output=True)
        return r.stdout if r.returncode == 0 else None

    def commit(self) -> str:
        return self._git("rev-parse", "HEAD").strip() if self.bare else ""


# ------------------------------------------------------------------ the three sources
def avt_items(repo: Repo):
    prompts = {}
    text = repo.read("images/prompts.csv")
    if text:
        for row in csv.DictReader(io.StringIO(text.decode("utf-8"))):
            prompts[row["ID"]] = row["prompts"]
    for path in sorted(repo.tree()):
        m = re.fullmatch(r"images/([^/]+)/(p\d+)\.(\w+)", path)
        if not m or m.group(1) not in AVT_GENERATORS:
            continue
        folder, pid, _ = m.groups()
        fam = AVT_GENERATORS[folder]
        yield {"repo_path": path, "dataset": "avt", "family": fam,
               "generator": "real" if fam == "real" else f"avt/{fam}",
               "key": f"avt/{folder}/{pid}", "prompt": prompts.get(pid, "")}


def parse_items_ts(text: str):
    """(prompt, image, ai) triples from ai-bingo's ``src/data/items.ts``."""
    out = []
    for block in re.split(r"\n\s*\{\s*\n\s*id:", text)[1:]:
        pm = re.search(r'prompt:\s*"((?:[^"\\]|\\.)*)"', block, re.S)
        prompt = pm.group(1) if pm else ""
        for im, ai in re.findall(r'\{\s*image:\s*"([^"]+)",\s*ai:\s*"(\w+)"\s*\}', block):
            out.append((prompt, im, ai))
    return out


def bingo_items(repo: Repo, log):
    triples = parse_items_ts(repo.read("src/data/items.ts").decode("utf-8"))
    seen = set()
    for prompt, im, ai in triples:
        if im in seen:
            continue
        seen.add(im)
        if ai not in BINGO_GENERATORS:
            log.append(f"bingo: unknown generator label {ai!r} for {im}")
            continue
        fam = BINGO_GENERATORS[ai]
        stem = im.rsplit(".", 1)[0]
        yield {"repo_path": f"public/images/prompts/{im}", "dataset": "bingo", "family": fam,
               "generator": f"bingo/{fam}", "key": f"bingo/{fam}/{stem}", "prompt": prompt}
    listed = {f"public/images/prompts/{im}" for _, im, _ in triples}
    for path in repo.tree():
        if path.startswith("public/images/prompts/") and path not in listed:
            log.append(f"bingo: {path} has no generator label in items.ts; skipped")


def imagenet_items(repo: Repo):
    for path in sorted(repo.tree()):
        if path.endswith(".JPEG") and "/" not in path:
            stem = path[:-5]
            wnid, _, name = stem.partition("_")
            yield {"repo_path": path, "dataset": "imagenet", "family": "real", "generator": "real",
                   "key": f"imagenet/{stem}", "prompt": name.replace("_", " ")}


# ------------------------------------------------------------------ split, export
def key_unit(key: str, seed: int) -> float:
    d = hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2.0 ** 64


def stratified_splits(rows, *, val: float, test: float, seed: int) -> None:
    groups = defaultdict(list)
    for r in rows:
        groups[r["generator"] if r["label"] == 1 else f"real/{r['dataset']}"].append(r)
    for members in groups.values():
        members.sort(key=lambda r: key_unit(r["key"], seed))
        n = len(members)
        n_test = max(1, round(test * n))
        n_val = max(1, round(val * n)) if n - n_test > 2 else 0
        for i, r in enumerate(members):
            r["split"] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")


def probe(data: bytes) -> dict:
    img = Image.open(io.BytesIO(data))
    img.load()
    return {"true_format": img.format, "width": img.size[0], "height": img.size[1], "mode": img.mode}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avt", required=True)
    ap.add_argument("--bingo", required=True)
    ap.add_argument("--imagenet", required=True)
    ap.add_argument("--out", required=True, help="export folder (images/ + manifest.csv)")
    ap.add_argument("--val", type=float, default=0.15)
    ap.add_argument("--test", type=float, default=0.30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    out = Path(args.out)
    img_root = out / "images"
    log: list = []
    repos = {"avt": Repo(args.avt), "bingo": Repo(args.bingo), "imagenet": Repo(args.imagenet)}
    items = (list(avt_items(repos["avt"])) + list(bingo_items(repos["bingo"], log))
             + list(imagenet_items(repos["imagenet"])))
    rows = []
    for it in items:
        repo = repos[it["dataset"]]
        if it["repo_path"] not in repo.tree():
            log.append(f"{it['dataset']}: {it['repo_path']} listed but not in the tree; skipped")
            continue
        data = repo.read(it["repo_path"])
        if data is None:
            log.append(f"{it['dataset']}: {it['repo_path']} blob missing from the snapshot; skipped")
            continue
        try:
            info = probe(data)
        except Exception as exc:  # noqa: BLE001
            log.append(f"{it['dataset']}: {it['repo_path']} does not decode ({exc}); skipped")
            continue
        dest = img_root / it["dataset"] / it["repo_path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != data:
            dest.write_bytes(data)
        ext = it["repo_path"].rsplit(".", 1)[-1].upper().replace("JPG", "JPEG")
        name, licence = REPOS[it["dataset"]]
        rows.append({"key": it["key"], "path": str(dest.relative_to(out)), "label": 0 if it["family"] == "real" else 1,
                     "generator": it["generator"], "family": it["family"], "dataset": it["dataset"],
                     "source": f"github:{name}@{repo.commit()[:12]}", "licence": licence,
                     "prompt": it["prompt"], "ext_format": ext, "bytes": len(data),
                     "sha1": hashlib.sha1(data).hexdigest(), **info})
    stratified_splits(rows, val=args.val, test=args.test, seed=args.seed)
    rows.sort(key=lambda r: r["key"])
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
    counts = Counter((r["generator"] if r["label"] else f"real/{r['dataset']}", r["split"]) for r in rows)
    fmts = Counter((r["generator"] if r["label"] else f"real/{r['dataset']}", r["true_format"], r["ext_format"],
                    f"{r['width']}x{r['height']}") for r in rows)
    summary = {"n": len(rows), "args": vars(args),
               "commits": {k: r.commit() for k, r in repos.items()},
               "counts": {f"{g}|{s}": n for (g, s), n in sorted(counts.items())},
               "formats": {"|".join(map(str, k)): n for k, n in sorted(fmts.items())},
               "log": log}
    (out / "manifest_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for line in log:
        print("note:", line, file=sys.stderr)
    print(f"wrote {out / 'manifest.csv'}: {len(rows)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
