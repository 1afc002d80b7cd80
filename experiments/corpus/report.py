"""Write what the builder made: manifest.csv, summary.json (counts, commits, drops) and STATUS.md."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Dict, List

from clipdetect.core.io import write_json, write_text
from experiments.corpus.schema import COLUMNS


def write_manifest(path: Path, rows: List[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["key"]):
        w.writerow({c: r.get(c, "") for c in COLUMNS})
    write_text(path, buf.getvalue())


def compare_with(previous: Path, rows: List[dict], out: Path) -> Dict[str, object]:
    """Write ``manifest_new.csv`` (the rows whose key is not in the ``previous`` manifest) and say which
    shared keys changed, column by column (path excepted: the export folder differs)."""
    with open(previous, newline="", encoding="utf-8") as f:
        old = {r["key"]: r for r in csv.DictReader(f)}
    new = [r for r in rows if r["key"] not in old]
    write_manifest(out / "manifest_new.csv", new)
    changed = {r["key"]: [c for c in COLUMNS if c != "path" and str(r.get(c, "")) != old[r["key"]].get(c, "")]
               for r in rows if r["key"] in old}
    changed = {k: v for k, v in changed.items() if v}
    return {"previous": str(previous), "new_rows": len(new), "shared_keys": len(rows) - len(new),
            "missing_keys": sorted(set(old) - {r["key"] for r in rows}), "changed_keys": changed}


def tables(rows: List[dict]) -> Dict[str, Dict[str, Dict[str, int]]]:
    """count tables keyed by what they count, each {row label: {column: n}}."""
    def table(key, cols="split"):
        t: Dict[str, Counter] = {}
        for r in rows:
            t.setdefault(key(r), Counter())[r[cols]] += 1
        return {k: dict(v) for k, v in sorted(t.items())}
    return {
        "source_label": table(lambda r: f"{r['source']} ({'fake' if r['label'] else 'real'})"),
        "generator": table(lambda r: r["generator"] if r["label"] else f"real ({r['source']})"),
        "family": table(lambda r: r["family"]),
        "content_by_label": table(lambda r: r["content"], cols="label"),
    }


def _md_table(title: str, t: Dict[str, Dict[str, int]], cols: List[str]) -> List[str]:
    lines = [f"| {title} | " + " | ".join(cols) + " | total |", "|---" * (len(cols) + 2) + "|"]
    for k, v in t.items():
        lines.append(f"| {k} | " + " | ".join(str(v.get(c, 0)) for c in cols) + f" | {sum(v.values())} |")
    return lines + [""]


def sources_md(rows: List[dict], used) -> List[str]:
    """One line per source: repository @ commit, licence, permissive, what is used, counts per generator."""
    lines = ["| source | repository @ commit | licence | permissive | what is used | images: generator (n) |",
             "|---|---|---|---|---|---|"]
    for src, commit in used:
        mine = [r for r in rows if r["source"] == src.name]
        gens = Counter(r["generator"] for r in mine)
        counts = ", ".join(f"{g} {n}" for g, n in sorted(gens.items()))
        lines.append(f"| {src.name} | `{src.repo}` @ `{commit[:7]}` | {src.licence} | "
                     f"{'**yes**' if src.permissive else 'no'} | {src.note} | {len(mine)}: {counts} |")
    return lines + [""]


def status_md(rows: List[dict], used, drops: List[str]) -> str:
    t = tables(rows)
    n_real = sum(r["label"] == 0 for r in rows)
    fams = sorted({r["family"] for r in rows if r["label"]})
    lines = ["# Corpus status", "",
             f"`manifest.csv`: {len(rows)} images, {n_real} real ({100 * n_real / max(1, len(rows)):.0f} %), "
             f"{len(rows) - n_real} generated; {len(used)} sources, {len(fams)} generator families "
             f"({', '.join(fams)}). Paths are relative to this folder; `clipdetect extract manifest.csv` "
             "reads `key, path, label, generator, split`; the other columns (family, source, group, content, "
             "licence, permissive, ...) are for protocols and bookkeeping.", "",
             "## Sources", ""]
    lines += sources_md(rows, used)
    lines += ["## Counts", ""]
    splits = ["train", "val", "test"]
    lines += _md_table("source (label)", t["source_label"], splits)
    lines += _md_table("generator", t["generator"], splits)
    lines += _md_table("family", t["family"], splits)
    lines += _md_table("content", {k: {("real" if c == 0 else "fake"): n for c, n in v.items()}
                                   for k, v in t["content_by_label"].items()}, ["real", "fake"])
    lines += [f"## Dropped ({len(drops)})", ""] + [f"- {d}" for d in drops] + [""]
    return "\n".join(lines)


def write_outputs(out: Path, rows: List[dict], used, drops: List[str], args: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "manifest.csv", rows)
    summary = {"n": len(rows), "args": args, "commits": {s.name: c for s, c in used},
               "tables": tables(rows), "dropped": drops}
    write_json(out / "summary.json", summary)
    write_text(out / "STATUS.md", status_md(rows, used, drops))
