"""Collect the realgen results (experiments/results/realgen/**.json) into side-by-side
Markdown tables, as-is vs normalised: writes experiments/results/realgen/tables.md.

    python experiments/realgen_summary.py
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from common import save_text

RES = Path(__file__).resolve().parent / "results" / "realgen"
CACHES = ("asis", "norm")  # the same 1,376 images, as published and format-normalised
FORMAT_CACHES = CACHES


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def ci(r, k="auc", d=3):
    v = r.get(k)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{v:.{d}f}"
    return f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def per_generator(lines):
    lines += ["## 1. Per-generator metrics on the test split (each generator's fakes vs all test reals)", ""]
    models = [("paper", lambda c: load(RES / c / "eval" / "metrics.json") or load(RES / c / "eval" / "paper" / "metrics.json"), "metrics"),
              ("sklearn probe", lambda c: load(RES / c / "probe_sklearn.json"), "rows")]
    for metric, label in (("auc", "ROC-AUC"), ("ap", "AP"), ("tpr@fpr=1%", "TPR at 1 % FPR")):
        lines += [f"### {label} [95 % bootstrap CI]", "",
                  "| generator | n_real | n_fake | " + " | ".join(f"{m} {c}" for m, _, _ in models for c in CACHES)
                  + " |", "|---|---|---|" + "---|" * (len(models) * len(CACHES))]
        tables = {(m, c): (f(c) or {}).get(key, []) for m, f, key in models for c in CACHES}
        ref = next((t for t in tables.values() if t), [])
        for row in ref:
            g = row["value"] if row["group"] != "overall" else "overall"
            cells, counts = [], set()
            for m, _, _ in models:
                for c in CACHES:
                    hit = [r for r in tables[(m, c)] if (r["value"] if r["group"] != "overall" else "overall") == g]
                    cells.append(ci(hit[0], metric) if hit else "–")
                    counts |= {(hit[0]["n_real"], hit[0]["n_fake"])} if hit else set()
            if len(counts) > 1:  # every column must score the same rows, or the table would mislead
                raise ValueError(f"generator {g}: the columns score different rows {sorted(counts)}")
            lines.append(f"| {g} | {row['n_real']} | {row['n_fake']} | " + " | ".join(cells) + " |")
        lines.append("")


def format_only(lines):
    lines += ["## Format-only baseline (depth-4 tree on container metadata; fit on train, score test)", "",
              "`norm` = the same 1,376 images, every one re-encoded as 256 px JPEG q90.", "",
              "| features | generator | " + " | ".join(f"{c} AUC" for c in FORMAT_CACHES) + " |",
              "|---|---|" + "---|" * len(FORMAT_CACHES)]
    t = {c: (load(RES / c / "format_only.json") or {}).get("rows", []) for c in FORMAT_CACHES}
    for r in t["asis"]:
        cells = []
        for c in FORMAT_CACHES:
            o = [x for x in t[c] if x["features"] == r["features"] and x["protocol"] == r["protocol"]
                 and x["generator"] == r["generator"]]
            cells.append(ci(o[0]) if o else "–")
        name = r["generator"] + ("" if r["protocol"].startswith("fit") else " (5-fold CV, all rows)")
        lines.append(f"| {r['features']} | {name} | " + " | ".join(cells) + " |")
    lines.append("")


def logo(lines):
    lines += ["## 2. Leave one generator family out (held-out family's fakes, all of them, vs test reals)", "",
              "| held out | n_fake | " + " | ".join(f"{m} {c}" for m in ("paper", "probe") for c in CACHES)
              + " | in-distribution AUC of the paper head (" + " / ".join(CACHES) + ") |",
              "|---|---|" + "---|" * (2 * len(CACHES) + 1)]
    t = {}
    for c in CACHES:
        t[("paper", c)] = (load(RES / c / "logo_paper" / "logo.json") or {}).get("rows", [])
        t[("probe", c)] = (load(RES / c / "logo_probe_sklearn.json") or {}).get("rows", [])
    ref = next((v for v in t.values() if v), [])
    for r in ref:
        g = r["held_out"]
        cells = []
        for m in ("paper", "probe"):
            for c in CACHES:
                hit = [x for x in t[(m, c)] if x["held_out"] == g]
                cells.append(ci(hit[0]) if hit else "–")
        ins = []
        for c in CACHES:
            hit = [x for x in t[("paper", c)] if x["held_out"] == g]
            ins.append(ci(hit[0], "in_auc") if hit else "–")
        lines.append(f"| {g} | {r.get('n_fake', '')} | " + " | ".join(cells) + f" | {' / '.join(ins)} |")
    lines.append("")


def cross(lines):
    doc = load(RES / "cross_dataset.json")
    if not doc:
        return
    lines += ["## 3. Cross-dataset (CIFAKE sample cache <-> realgen)", "",
              "| direction | trained on | scored on | detector | group | n_real | n_fake | AUC |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['direction']} | {r['train_on']} | {r['test_on']} | {r['detector']} | {r['group']} | "
                     f"{r['n_real']} | {r['n_fake']} | {ci(r)} |")
    lines.append("")


def distill(lines):
    for p in sorted((RES / "asis").glob("distill_*.json")):
        d = load(p)
        lines += [f"## 4. Student at {d['setup']['image_size']} px vs teacher (as-is cache)", "",
                  "| generator | n_fake | teacher AUC | student AUC | gap (paired 95 % CI) |", "|---|---|---|---|---|"]
        for r in d["per_generator"]:
            lines.append(f"| {r['generator']} | {r['n_fake']} | {ci(r, 'teacher_auc')} | {ci(r, 'student_auc')} | "
                         f"{r['gap']:+.3f} [{r['paired_delta_auc_lo']:+.3f}, {r['paired_delta_auc_hi']:+.3f}] |")
        s = d["speed"]
        lines += ["", f"Speed: teacher {s['teacher']['images_per_second']:.2f} img/s, student "
                  f"{s['student']['images_per_second']:.2f} img/s -> {d['speedup']:.1f}x (decode+preprocess alone "
                  f"{d['decode_preprocess_images_per_second']:.1f} img/s).", ""]


def main() -> int:
    lines = ["# realgen result tables (generated by experiments/realgen_summary.py)", ""]
    for fn in (per_generator, format_only, logo, cross, distill):
        try:
            fn(lines)
        except Exception as exc:  # noqa: BLE001
            lines += [f"({fn.__name__}: not available: {exc})", ""]
    save_text(RES / "tables.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
