"""Experiments on the real multi-generator sets (see experiments/realgen_README.md).

Every stage runs on two caches of the same 1,376 images: ``asis`` (files as published) and
``norm`` (every image re-encoded identically by the toolkit's NormalizedSource: 256x256
bicubic, JPEG q90, see realgen_extract_normalized.py). Outputs go to
experiments/results/realgen/<cache>/... (JSON + Markdown + PNG); detectors and derived
caches go under --work (default: work/ in the data folder, ``--data`` or $CLIPDETECT_DATA,
which holds realgen/manifest.csv and the two caches under caches/). Detectors use the
toolkit's default training schedule (no tuning to these sets).

    python experiments/realgen_experiments.py train      # paper head (clipdetect train, defaults)
    python experiments/realgen_experiments.py evaluate   # clipdetect evaluate + plot, per generator
    python experiments/realgen_experiments.py probe      # scikit-learn logistic regression probe
    python experiments/realgen_experiments.py format     # format-only baselines
    python experiments/realgen_experiments.py logo       # leave one generator family out
    python experiments/realgen_experiments.py cross      # CIFAKE <-> realgen
    python experiments/realgen_experiments.py report     # clipdetect report (one Markdown report)
    python experiments/realgen_experiments.py all

The toolkit is driven through its command line (``python -m clipdetect ...``) where a
command exists; the Python API is used for the scikit-learn probe, the format tables and
the cross-dataset scoring.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from clipdetect import Detector, FeatureCache, open_source
from clipdetect.core.metrics import binary_metrics, evaluate_scores
from clipdetect.core.tables import to_markdown
from clipdetect.data.perturb import NormalizedSource
from clipdetect.eval.evaluate import group_values
from clipdetect.eval.format_bias import format_only_baseline, source_format_table
from clipdetect.eval.plots import roc_figure, save_figure
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.splits import resolve_split_rows
from common import RESULTS as ALL_RESULTS, ROOT, add_data_arg, data_root, save_json, save_text

RESULTS = ALL_RESULTS / "realgen"
#: set by :func:`use_data` from --data / $CLIPDETECT_DATA
MANIFEST, CACHES = Path("realgen/manifest.csv"), {}
NORMALISED = {"norm"}
NORM = dict(size=256, fmt="JPEG", quality=90)
CIFAKE = ROOT / "clipdetect" / "sample_data" / "cifake-b16-sample"
N_BOOT = 1000
PROBE_C = (0.01, 0.1, 1.0, 10.0, 100.0)


def cli(*args) -> None:
    cmd = [sys.executable, "-m", "clipdetect", *map(str, args)]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def use_data(data=None) -> Path:
    """Point :data:`MANIFEST` and :data:`CACHES` at the data folder (``--data``, else $CLIPDETECT_DATA)."""
    global MANIFEST, CACHES
    root = data_root(data)
    MANIFEST = root / "realgen" / "manifest.csv"
    CACHES = {"asis": root / "caches" / "realgen-asis-b16", "norm": root / "caches" / "realgen-norm-jpeg90-256-b16"}
    return root


def save_probe(model, path: Path) -> None:
    """A StandardScaler + LogisticRegression pipeline as plain JSON (what :func:`load_probe` reads)."""
    scaler, lr = model[0], model[-1]
    save_json(path, {"mean": scaler.mean_, "scale": scaler.scale_, "coef": lr.coef_[0], "intercept": lr.intercept_[0]})


class LinearProbe:
    """The decision function of a probe saved by :func:`save_probe`."""

    def __init__(self, path: Path):
        d = json.loads(Path(path).read_text())
        self.mean, self.scale, self.coef = (np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef"))
        self.intercept = float(d["intercept"])

    def decision_function(self, X) -> np.ndarray:
        x = np.array(X, copy=True)
        x -= self.mean  # in the input's dtype, as StandardScaler.transform does
        x /= self.scale
        return x @ self.coef + self.intercept


def det_dir(work: Path, cache: str, head: str = "paper") -> Path:
    return work / "detectors" / f"realgen-{cache}-{head}"


def rows_of(cache):
    return {s: np.sort(resolve_split_rows(cache, s)) for s in ("train", "val", "test")}


def per_generator_table(cache, rows, scores, *, threshold=0.0, by="generator"):
    """Overall and per-generator metrics (each generator's fakes vs all the rows' reals)."""
    y = cache.labels(rows)
    groups = group_values(cache.meta.loc[rows].reset_index(drop=True), [by], y) if by else {}
    return evaluate_scores(y, np.asarray(scores, dtype=np.float64), groups=groups, threshold=threshold,
                           n_boot=N_BOOT, seed=0, scores_are_probs=False, reference="real")


TABLE_COLS = ["group", "value", "n_real", "n_fake", "auc", "ap", "tpr@fpr=1%", "acc@0.5", "eer"]


def save_table(df: pd.DataFrame, stem: Path, title: str, config: dict) -> None:
    save_json(stem.with_suffix(".json"), {"config": config, "rows": json.loads(df.to_json(orient="records"))})
    cols = [c for c in TABLE_COLS if c in df.columns]
    save_text(stem.with_suffix(".md"), f"# {title}\n\n" + to_markdown(df, columns=cols))


# ------------------------------------------------------------------ 1. train + evaluate (toolkit CLI)
def stage_train(args):
    for c in args.caches:
        out = det_dir(args.work, c)
        if (out / "detector.json").is_file() and not args.force:
            continue
        t0 = time.time()
        cli("train", CACHES[c], "--out", out, "--seed", 0, "--threads", args.threads, "--no-progress")
        print(f"trained {out} in {time.time() - t0:.0f}s", file=sys.stderr)


def stage_evaluate(args):
    for c in args.caches:
        res, det = RESULTS / c, det_dir(args.work, c)
        cli("evaluate", f"paper={det}", CACHES[c], "--split", "test", "--n-boot", N_BOOT, "--out", res / "eval")
        cli("plot", f"paper={det}", CACHES[c], "--split", "test", "--formats", "png",
            "--title", f"paper head, realgen {c}, test split", "--out", res / "roc_paper")


def stage_report(args):
    """The toolkit's one-command honest report on each cache (generator families)."""
    for c in args.caches:
        cli("report", det_dir(args.work, c), family_cache(c, args.work), "--out", RESULTS / c / "report",
            "--n-boot", N_BOOT)


# ------------------------------------------------------------------ scikit-learn probe
def fit_probe(x_tr, y_tr, x_va, y_va):
    """StandardScaler + LogisticRegression (lbfgs, max_iter 20000), C chosen on validation AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best, trace = None, []
    for C in PROBE_C:
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=20000, tol=1e-6)).fit(x_tr, y_tr)
        auc = float(binary_metrics(y_va, m.decision_function(x_va))["auc"])
        n_iter = int(m[-1].n_iter_[0])
        trace.append({"C": C, "val_auc": auc, "n_iter": n_iter, "converged": n_iter < 20000})
        if best is None or auc > best[0]:
            best = (auc, C, m)
    return best[2], {"C": best[1], "val_auc": best[0], "trace": trace}


def roc_per_generator(cache, rows, scores, title, stem):
    y = cache.labels(rows)
    gen = cache.meta.loc[rows, "generator"].astype(str).to_numpy()
    curves = {"overall": (y, scores)}
    for g in sorted(set(gen[y == 1])):
        m = (y == 0) | (gen == g)
        curves[g] = (y[m], scores[m])
    save_figure(roc_figure(curves, title=title), stem, formats=("png",))


def stage_probe(args):
    for c in args.caches:
        cache = FeatureCache(CACHES[c])
        r = rows_of(cache)
        X = {s: cache.features("image", r[s]) for s in r}
        Y = {s: cache.labels(r[s]) for s in r}
        model, sel = fit_probe(X["train"], Y["train"], X["val"], Y["val"])
        s_test = model.decision_function(X["test"])
        save_table(per_generator_table(cache, r["test"], s_test), RESULTS / c / "probe_sklearn",
                   f"scikit-learn logistic-regression probe, realgen {c}, test split",
                   {"cache": str(CACHES[c]), "model": "StandardScaler + LogisticRegression(lbfgs, max_iter=20000, "
                    "tol=1e-6)", "selection": sel, "n_train": len(r["train"]), "n_val": len(r["val"]),
                    "n_test": len(r["test"]), "threshold": "decision_function > 0", "n_boot": N_BOOT})
        roc_per_generator(cache, r["test"], s_test, f"scikit-learn probe, realgen {c}, test split",
                          RESULTS / c / "roc_probe_sklearn")
        save_probe(model, args.work / f"probe-{c}.json")  # local artefact (outside the repository)


# ------------------------------------------------------------------ format-only baselines
def stage_format(args):
    for c in args.caches:
        man = pd.read_csv(MANIFEST)
        src = open_source(str(MANIFEST))
        if c in NORMALISED:
            src = NormalizedSource(src, **NORM)
        table = source_format_table(src)
        table.insert(0, "key", man["key"].to_numpy())
        table["generator"], table["split"] = man["generator"].to_numpy(), man["split"].to_numpy()
        y = table["label"].to_numpy()
        feats_all = table.drop(columns=["key", "label", "generator", "split"])
        keep = table["split"].isin(["train", "test"]).to_numpy()
        rows = []
        for feats in ("container", "container+bytes"):
            f = feats_all[[k for k in feats_all.columns if feats == "container+bytes" or k != "bytes_per_pixel"]]

            def fit(mask):
                return format_only_baseline(f[mask].reset_index(drop=True), y[mask],
                                            train_mask=(table["split"][mask] == "train").to_numpy(),
                                            n_boot=N_BOOT, seed=0)
            rows.append({"features": feats, "protocol": "fit train, score test", "generator": "all", **fit(keep)})
            rows.append({"features": feats, "protocol": "5-fold CV, all rows", "generator": "all",
                         **format_only_baseline(f, y, folds=5, n_boot=N_BOOT, seed=0)})
            for g in sorted(set(table.loc[y == 1, "generator"])):
                try:
                    r = fit(keep & ((y == 0) | (table["generator"] == g).to_numpy()))
                except ValueError as exc:  # e.g. one class in the training rows
                    r = {"error": str(exc)}
                rows.append({"features": feats, "protocol": "fit train, score test", "generator": g, **r})
        df = pd.DataFrame(rows)
        summary = (table.assign(cls=np.where(y == 1, table["generator"], "real"))
                   .groupby(["cls", "format"]).agg(n=("label", "size"), width_median=("width", "median"),
                                                   height_median=("height", "median"),
                                                   jpeg_quality_median=("jpeg_quality", "median"),
                                                   bytes_per_pixel_median=("bytes_per_pixel", "median"))
                   .reset_index())
        save_json(RESULTS / c / "format_only.json", {"config": {"cache": c, "manifest": str(MANIFEST), "normalisation": NORM if c in NORMALISED else None,
                         "model": "DecisionTree(max_depth=4, min_samples_leaf=2) on container metadata"},
              "rows": json.loads(df.to_json(orient="records")),
              "format_summary": json.loads(summary.to_json(orient="records"))})
        cols = [k for k in ("features", "protocol", "generator", "n_real", "n_fake", "auc", "acc@0.5")
                if k in df.columns]
        save_text(RESULTS / c / "format_only.md", f"# Format-only baseline, realgen {c}\n\n"
                  + to_markdown(df, columns=cols) + "\n\n## Container metadata per class\n\n" + to_markdown(summary))


# ------------------------------------------------------------------ leave one generator family out
def family_cache(c: str, work: Path) -> Path:
    """Cache ``c`` with the fakes' ``generator`` set to the generator family (avt/sd and bingo/sd
    -> sd), written by the toolkit's CacheWriter; embeddings are copied, nothing re-extracted.
    Holding a family out then removes it from both source repositories."""
    src = FeatureCache(CACHES[c])
    dst = work / "caches" / f"{CACHES[c].name}-family"
    if (dst / "manifest.json").is_file() and len(FeatureCache(dst)) == len(src):
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    fam = pd.read_csv(MANIFEST).set_index("key")["family"]
    meta = src.meta.copy()
    meta["generator"] = np.where(meta["label"].astype(int) == 1, meta["key"].map(fam).astype(str), meta["generator"])
    cols = ["key", "label", "generator", "split", "path", "caption", "width", "height", "format", "mode"]
    with CacheWriter(dst, backbone=src.backbone, dtype="float16") as w:
        run = "family"
        w.begin_run(run, {"source": f"{src.root} with generator = family (experiments/realgen_experiments.py)"})
        w.write_shard(run, start=0, stop=len(meta), img=src.embeddings("image"), txt=None,
                      meta=meta[[k for k in cols if k in meta.columns]],
                      errors=pd.DataFrame(columns=["key", "path", "reason", "detail"]))
        w.finish_run(run, {"rows": len(meta)}, complete=True)
    return dst


def stage_logo(args):
    for c in args.caches:
        fc = family_cache(c, args.work)
        out = RESULTS / c / "logo_paper"
        if not (out / "logo.json").is_file() or args.force:
            cli("protocol", "logo", fc, "--out", out, "--n-boot", N_BOOT)
        logo_probe(c, fc)


def logo_probe(c: str, fc: Path) -> None:
    """The scikit-learn probe under the same protocol as ``clipdetect protocol logo``."""
    cache = FeatureCache(fc)
    r = rows_of(cache)
    y, X = cache.labels(), cache.features("image")
    gen = cache.meta["generator"].astype(str).to_numpy()
    test_reals = r["test"][y[r["test"]] == 0]
    rows = []
    for g in sorted(set(gen[y == 1])):
        tr, va = (rr[(y[rr] == 0) | (gen[rr] != g)] for rr in (r["train"], r["val"]))
        model, sel = fit_probe(X[tr], y[tr], X[va], y[va])
        held = np.concatenate([test_reals, np.flatnonzero((y == 1) & (gen == g))])
        seen = np.concatenate([test_reals, r["test"][(y[r["test"]] == 1) & (gen[r["test"]] != g)]])
        th, ts = (evaluate_scores(y[rr], model.decision_function(X[rr]), threshold=0.0, n_boot=N_BOOT, seed=0,
                                  scores_are_probs=False).iloc[0] for rr in (held, seen))
        rows.append({"held_out": g, "n_train": len(tr), "C": sel["C"], "n_real": int(th["n_real"]),
                     "n_fake": int(th["n_fake"]), "auc": th["auc"], "auc_lo": th["auc_lo"], "auc_hi": th["auc_hi"],
                     "ap": th["ap"], "tpr@fpr=1%": th["tpr@fpr=1%"], "in_auc": ts["auc"], "in_auc_lo": ts["auc_lo"],
                     "in_auc_hi": ts["auc_hi"], "auc_drop": ts["auc"] - th["auc"]})
    df = pd.DataFrame(rows)
    save_json(RESULTS / c / "logo_probe_sklearn.json", {"config": {"cache": str(fc), "protocol": "train on train-split reals + other families' train fakes "
                     "(C chosen on val likewise); test on all held-out fakes vs test-split reals"},
          "rows": json.loads(df.to_json(orient="records"))})
    save_text(RESULTS / c / "logo_probe_sklearn.md",
              f"# Leave one generator family out, scikit-learn probe, realgen {c}\n\n" + to_markdown(df))


# ------------------------------------------------------------------ cross-dataset
def stage_cross(args):
    cif_det = args.work / "detectors" / "cifake-sample-paper"
    if not (cif_det / "detector.json").is_file() or args.force:
        cli("train", CIFAKE, "--out", cif_det, "--seed", 0, "--threads", args.threads, "--no-progress")
    cif = FeatureCache(CIFAKE)
    rc = rows_of(cif)
    cif_probe, cif_sel = fit_probe(cif.features("image", rc["train"]), cif.labels(rc["train"]),
                                   cif.features("image", rc["val"]), cif.labels(rc["val"]))
    paper = Detector.load(cif_det)
    config = {"cifake_cache": str(CIFAKE), "cifake_rows": len(cif), "cifake_splits": {k: len(v) for k, v in rc.items()},
              "schedule": "toolkit default", "cifake_probe_selection": cif_sel, "n_boot": N_BOOT}
    out_rows = []

    def add(direction, train_on, test_on, detector, table):
        for _, t in table.iterrows():
            out_rows.append({"direction": direction, "train_on": train_on, "test_on": test_on, "detector": detector,
                             "group": t["value"] if t["group"] != "overall" else "overall",
                             **{k: t[k] for k in ("n_real", "n_fake", "auc", "auc_lo", "auc_hi", "ap", "ap_lo",
                                                  "ap_hi", "tpr@fpr=1%", "acc@0.5") if k in t}})

    def both(direction, train_on, test_on, cache, rows, det, probe, by="generator"):
        add(direction, train_on, test_on, "paper",
            per_generator_table(cache, rows, det.logits(det.features(cache, rows)), by=by))
        add(direction, train_on, test_on, "probe",
            per_generator_table(cache, rows, probe.decision_function(cache.features("image", rows)), by=by))

    both("in-domain", "cifake-sample", "cifake-sample test", cif, rc["test"], paper, cif_probe, by=None)
    for c in args.caches:
        cache = FeatureCache(CACHES[c])
        r = rows_of(cache)
        for part, rows in (("test", r["test"]), ("all", np.arange(len(cache)))):
            both("cifake->realgen", "cifake-sample", f"realgen-{c} {part}", cache, rows, paper, cif_probe)
        rg_probe = LinearProbe(args.work / f"probe-{c}.json")
        for part, rows in (("test", rc["test"]), ("all", np.arange(len(cif)))):
            both("realgen->cifake", f"realgen-{c}", f"cifake-sample {part}", cif, rows,
                 Detector.load(det_dir(args.work, c)), rg_probe, by=None)
    df = pd.DataFrame(out_rows)
    save_json(RESULTS / "cross_dataset.json", {"config": config, "rows": json.loads(df.to_json(orient="records"))})
    save_text(RESULTS / "cross_dataset.md", "# Cross-dataset: CIFAKE sample cache <-> realgen\n\n" + to_markdown(df))


STAGES = {"train": stage_train, "evaluate": stage_evaluate, "probe": stage_probe, "format": stage_format,
          "logo": stage_logo, "cross": stage_cross, "report": stage_report}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", choices=[*STAGES, "all"])
    ap.add_argument("--caches", default="asis,norm")
    add_data_arg(ap)
    ap.add_argument("--work", help="detectors and derived caches (default: work/ in the data folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    args.caches = [c for c in args.caches.split(",") if c]
    root = use_data(args.data)
    args.work = Path(args.work or root / "work")
    args.work.mkdir(parents=True, exist_ok=True)
    for s in (list(STAGES) if "all" in args.stages else args.stages):
        t0 = time.time()
        STAGES[s](args)
        print(f"stage {s}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
