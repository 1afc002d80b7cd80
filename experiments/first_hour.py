"""Time the README's "Your own images, start to finish" on a folder of 120 images, as a new user runs it.

    python experiments/first_hour.py --manifest data/corpus/manifest.csv \\
        --weights path/to/clip_b16.pt --work /tmp/first-hour --out experiments/results/first_hour.json

Builds ``photos/`` as a user lays it out — ``fake/<generator>/`` and ``real/<source>/``, 30
images each from two generators and two photo sources of a corpus manifest (any manifest with
``path, label, generator, source``; chosen by a hash of the key, so the same every run) — and
``new_photos/`` with 6 more, then runs the section's five commands in order as separate
processes (``python -m clipdetect ...``, the CLI a user types), with the checkpoint given as
``ViT-B-16-quickgelu:WEIGHTS``. Records each command's wall time and exit status, the total,
and the machine's load average before and after (a shared machine's numbers depend on it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from clipdetect.core.io import write_json
from clipdetect.core.provenance import provenance

PER_FOLDER, NEW = 30, 6


def _order(keys: pd.Series) -> pd.Series:
    return keys.map(lambda k: hashlib.sha1(str(k).encode()).hexdigest())


def build_folders(manifest: Path, work: Path) -> dict:
    """``work/photos`` (two generators, two photo sources, 30 images each) and ``work/new_photos``."""
    m = pd.read_csv(manifest)
    m = m.assign(order=_order(m.key)).sort_values("order")
    root = manifest.parent
    fakes = m[m.label == 1].groupby("generator").size().sort_values(ascending=False)
    reals = m[m.label == 0].groupby("source").size().sort_values(ascending=False)
    plan = [("fake", g, m[(m.label == 1) & (m.generator == g)]) for g in fakes.index[:2]] + \
           [("real", s, m[(m.label == 0) & (m.source == s)]) for s in reals.index[:2]]
    used, layout = set(), {}
    for kind, name, rows in plan:
        folder = work / "photos" / kind / name.replace("/", "_")
        folder.mkdir(parents=True)
        for _, r in rows.head(PER_FOLDER).iterrows():
            shutil.copy(root / r.path, folder / Path(r.path).name)
            used.add(r.key)
        layout[f"{kind}/{name}"] = int(min(PER_FOLDER, len(rows)))
    (work / "new_photos").mkdir()
    for _, r in m[~m.key.isin(used)].head(NEW).iterrows():
        shutil.copy(root / r.path, work / "new_photos" / Path(r.path).name)
    return layout


def readme_commands(readme: Path, weights: str) -> list:
    section = readme.read_text().split("## Your own images, start to finish")[1].split("\n## ")[0]
    block = section.split("```bash\n")[1].split("```")[0]
    out = []
    for line in block.splitlines():
        if line.startswith("clipdetect "):
            argv = line.split("#")[0].split()[1:]
            out.append([f"ViT-B-16-quickgelu:{weights}" if a.startswith("ViT-B-16-quickgelu:") else a for a in argv])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, type=Path, help="corpus manifest (path,label,generator,source)")
    p.add_argument("--weights", required=True, help="the CLIP ViT-B/16 checkpoint file")
    p.add_argument("--work", required=True, type=Path, help="an empty folder to work in")
    p.add_argument("--out", required=True, type=Path, help="results JSON")
    args = p.parse_args(argv)
    if args.work.exists() and any(args.work.iterdir()):
        p.error(f"--work {args.work} is not empty")
    args.work.mkdir(parents=True, exist_ok=True)
    layout = build_folders(args.manifest.resolve(), args.work)
    commands = readme_commands(Path(__file__).resolve().parent.parent / "README.md", str(Path(args.weights).resolve()))
    load_before, steps, t_all = os.getloadavg(), [], time.perf_counter()
    for cmd in commands:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "clipdetect", *cmd, "--no-progress"], cwd=args.work,
                              capture_output=True, text=True)
        steps.append({"command": "clipdetect " + " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1),
                      "exit": proc.returncode, "stdout_tail": proc.stdout.strip().splitlines()[-3:]})
        print(f"{steps[-1]['seconds']:7.1f} s  exit {proc.returncode}  {steps[-1]['command']}", flush=True)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            break
    result = {"layout": layout, "new_photos": NEW, "steps": steps,
              "total_seconds": round(time.perf_counter() - t_all, 1), "load_before": load_before,
              "load_after": os.getloadavg(), "cpus": os.cpu_count(), "provenance": provenance()}
    write_json(args.out, result)
    print(f"total {result['total_seconds']} s (load average {load_before[0]:.1f} -> {result['load_after'][0]:.1f}, "
          f"{os.cpu_count()} CPUs); wrote {args.out}")
    return 0 if all(s["exit"] == 0 for s in steps) and len(steps) == len(commands) else 1


if __name__ == "__main__":
    raise SystemExit(main())
