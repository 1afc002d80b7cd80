"""End-to-end ``clipdetect extract`` on each CPU runtime, side by side on the same images.

Where ``bench_runtime.py`` times the image tower alone, this runs the whole command a user runs
(decode workers, preprocessing, the tower, cache writes) as a subprocess per runtime on the same
first ``--images`` rows of a CIFAKE parquet, in ``--rounds`` rounds with the runtime order
rotated each round (the CPU is shared; every runtime meets the same conditions). Before the
timed rounds, each runtime extracts 16 rows once so its export (ONNX / OpenVINO, cached) is
built and the timed runs only load it. Reported per runtime: the images/s that ``extract``
itself reports (model load excluded), its ratio to torch fp32 in the same round, and the
per-row cosine of its cached embeddings (fp16 on disk, as users get them) to torch fp32's.

    CLIPDETECT_DATA=... python experiments/extract_runtimes.py --images 512 --rounds 2

Writes experiments/results/extract_runtimes.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_runtime import cos_stats
from common import b16_backbone, cifake_parquet, save_json, save_text

HERE = Path(__file__).resolve().parent


def extract(data: str, out: Path, backbone: str, spec: str, limit: int, batch_size: int) -> dict:
    runtime, precision = spec.split(":")
    cmd = [sys.executable, "-m", "clipdetect", "extract", data, "--out", str(out), "--backbone", backbone,
           "--runtime", runtime, "--precision", precision, "--limit", str(limit), "--batch-size", str(batch_size),
           "--no-progress", "--json"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{spec} failed: {res.stderr[-2000:]}")
    summary = json.loads(res.stdout)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def embeddings(cache: Path) -> tuple:
    from clipdetect.features.cache import FeatureCache

    fc = FeatureCache(cache)
    keys = fc.columns("key")["key"].astype(str).to_numpy()
    order = np.argsort(keys)
    return keys[order], fc.embeddings("image")[order].astype(np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="default: ViT-B-16-quickgelu with the weights in $CLIPDETECT_DATA/weights")
    ap.add_argument("--data", help="CIFAKE parquet (default $CLIPDETECT_DATA/cifake_dev.parquet)")
    ap.add_argument("--runtimes", default="torch:fp32,openvino:bf16,openvino:int8,openvino:fp32")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "extract_runtimes"))
    args = ap.parse_args(argv)
    backbone = args.backbone or b16_backbone()
    data = args.data or str(cifake_parquet())
    specs = [s.strip() for s in args.runtimes.split(",") if s.strip()]
    assert specs[0] == "torch:fp32", "the first runtime is the reference: torch:fp32"
    runs = {s: [] for s in specs}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:  # exports built (or loaded) once, untimed
            extract(data, Path(tmp) / f"warm-{spec.replace(':', '-')}", backbone, spec, 16, args.batch_size)
        for r in range(args.rounds):
            order = specs[r % len(specs):] + specs[:r % len(specs)]
            for spec in order:
                out = Path(tmp) / f"r{r}-{spec.replace(':', '-')}"
                s = extract(data, out, backbone, spec, args.images, args.batch_size)
                runs[spec].append({"round": r, "images_per_second": s["images_per_second"], "seconds": s["seconds"],
                                   "wall_seconds": s["wall_seconds"], "embedded": s["embedded"]})
                print(f"round {r}: {spec} {s['images_per_second']:.2f} img/s", file=sys.stderr)
        ref = embeddings(Path(tmp) / "r0-torch-fp32")
        rows = {}
        for spec in specs:
            keys, x = embeddings(Path(tmp) / f"r0-{spec.replace(':', '-')}")
            assert (keys == ref[0]).all(), "the caches hold different rows"
            cos = cos_stats(ref[1], x)
            ratios = [run["images_per_second"] / base["images_per_second"] for run, base in zip(runs[spec], runs[specs[0]])]
            rows[spec] = {"runs": runs[spec], "ratio_per_round": [round(x, 3) for x in ratios],
                          "images_per_second_mean": round(float(np.mean([x["images_per_second"] for x in runs[spec]])), 2),
                          "cosine_mean": cos["mean"], "cosine_min": cos["min"], "rows": int(len(keys))}
    result = {"config": {**vars(args), "backbone": backbone, "data": data}, "cpu": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "runtimes": rows}
    save_json(args.out + ".json", result)
    lines = [f"# `clipdetect extract` end to end on each CPU runtime ({backbone.split(':')[0]}, {os.cpu_count()} CPUs)",
             "", f"The first {args.images} rows of the CIFAKE parquet, {args.rounds} rounds, runtime order rotated per "
             f"round; img/s as `extract --json` reports it (model load excluded); cosine of the cached (fp16) "
             f"embeddings to torch fp32's, per row. Load average at the end "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.", "",
             "| runtime | img/s per round | × torch fp32 per round | cosine mean / min |", "|---|---|---|---|"]
    for spec, row in rows.items():
        ips = ", ".join(f"{x['images_per_second']:.2f}" for x in row["runs"])
        ratios = ", ".join(f"{x:.2f}" for x in row["ratio_per_round"])
        lines.append(f"| {spec} | {ips} | {ratios} | {row['cosine_mean']:.5f} / {row['cosine_min']:.5f} |")
    save_text(args.out + ".md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
