"""Experiments on the real multi-generator sets (see experiments/realgen_README.md).

Every stage runs on two caches of the same images: ``asis`` (files as published) and
``norm`` (every image re-encoded identically by the toolkit's NormalizedSource: 256x256
bicubic, JPEG q90, see realgen_extract_normalized.py). Outputs go to
experiments/results/realgen/<cache>/... (JSON + Markdown + PNG); detectors and derived
caches go under --work (outside the repository).

    python experiments/realgen_experiments.py train      # paper head + toolkit linear head (clipdetect train)
    python experiments/realgen_experiments.py evaluate   # clipdetect evaluate + plot, per generator
    python experiments/realgen_experiments.py probe      # scikit-learn logistic regression probe
    python experiments/realgen_experiments.py format     # format-only baselines
    python experiments/realgen_experiments.py logo       # leave one generator (family) out
    python experiments/realgen_experiments.py cross      # CIFAKE <-> realgen
    python experiments/realgen_experiments.py all

The toolkit is driven through its command line (``python -m clipdetect ...``) where a
command exists; the Python API is used for the scikit-learn probe, the format tables and
the cross-dataset scoring.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "realgen"
DATA = Path(os.environ.get("REALGEN_DATA", "/work/data"))
MANIFEST = DATA / "realgen" / "manifest.csv"
# The normalised cache holds a reduced real set (all fakes, all avt reals, 40 % of the ImageNet reals
# by key hash, every split): CPU time did not allow re-encoding all 1,000 ImageNet reals. "asis-sub"
# is the as-is cache restricted to exactly those rows (derived, no re-extraction), so asis-sub vs
# norm-sub compares the same images; "asis" is the full as-is set.
MANIFEST_SUB = DATA / "realgen" / "manifest_sub40.csv"
CACHES = {"asis": DATA / "caches" / "realgen-asis-b16",
          "asis-sub": DATA / "caches" / "realgen-sub40-asis-b16",
          "norm-sub": DATA / "caches" / "realgen-sub40-norm-jpeg90-256-b16-common"}
NORM_MERGED = DATA / "caches" / "realgen-sub40-norm-jpeg90-256-b16-merged"
# the normalised subset was extracted by two processes (the manifest in order, and its rows 400+
# from a second manifest) to get more of a contended CPU; "merge" joins them by key
NORM_PARTS = (DATA / "caches" / "realgen-sub40-norm-jpeg90-256-b16", DATA / "caches" / "realgen-sub40-norm-part3",
              DATA / "caches" / "realgen-sub40-norm-part2")
MANIFESTS = {"asis": MANIFEST, "norm": MANIFEST, "asis-sub": MANIFEST_SUB, "norm-sub": MANIFEST_SUB}  # format tables: the 40 % sub-manifest  # "norm": format tables only
NORMALISED = {"norm", "norm-sub"}
NORM = dict(size=256, fmt="JPEG", quality=90)
CIFAKE = ROOT / "features" / "cifake-b16-sample"
# an explicit schedule: the default (batch 2048, 32 epochs) is one optimiser step per epoch here
SCHEDULE = {"batch_size": 128, "epochs": 150, "patience": 30}
HEADS = {
    "paper": [],  # MLP, CVaR+AUC, SAM (the paper's recipe)
    # "linear": ["--head", "linear", "--loss", "bce", "--no-sam"],  # toolkit linear head: dropped for CPU time
}
N_BOOT = 1000
PROBE_C = (0.01, 0.1, 1.0, 10.0, 100.0)


# ------------------------------------------------------------------ imports that survive a re-layout
def _mod(*names):
    """The first of ``names`` that imports from THIS checkout's package (an editable install of
    another checkout can otherwise serve submodules this one lacks)."""
    pkg = (ROOT / "clipdetect").resolve()
    for n in names:
        try:
            m = importlib.import_module(n)
        except ImportError:
            continue
        if Path(m.__file__).resolve().is_relative_to(pkg):
            return m
    raise ImportError(f"none of {names} importable from {pkg}")


def api():
    """The toolkit functions used here, from the flat or the subpackage layout."""
    import clipdetect  # noqa: F401  (torchvision guard)

    class A:
        pass

    a = A()
    cache_m = _mod("clipdetect.features.cache", "clipdetect.cache")
    splits_m = _mod("clipdetect.features.splits", "clipdetect.splits")
    metrics_m = _mod("clipdetect.core.metrics", "clipdetect.eval.metrics", "clipdetect.metrics")
    eval_m = _mod("clipdetect.eval.evaluate", "clipdetect.eval.report", "clipdetect.evaluate")
    plots_m = _mod("clipdetect.eval.plots", "clipdetect.plots")
    fmt_m = _mod("clipdetect.eval.protocols_format", "clipdetect.eval.format_bias", "clipdetect.protocols_format")
    perturb_m = _mod("clipdetect.data.perturb", "clipdetect.perturb")
    sources_m = _mod("clipdetect.data.registry", "clipdetect.sources")
    det_m = _mod("clipdetect.models.detector", "clipdetect.detector")
    a.FeatureCache = cache_m.FeatureCache
    a.resolve_split_rows = splits_m.resolve_split_rows
    a.evaluate_scores, a.to_markdown = metrics_m.evaluate_scores, metrics_m.to_markdown
    a.binary_metrics = metrics_m.binary_metrics
    a.group_values, a.paired_auc_difference = eval_m.group_values, eval_m.paired_auc_difference
    a.roc_figure, a.save_figure = plots_m.roc_figure, plots_m.save_figure
    a.format_only_baseline, a.source_format_table = fmt_m.format_only_baseline, fmt_m.source_format_table
    a.NormalizedSource = perturb_m.NormalizedSource
    a.open_source = sources_m.open_source
    a.Detector = det_m.Detector
    return a


def cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "clipdetect", *map(str, args)]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_default) + "\n")


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def det_dir(work: Path, cache: str, head: str) -> Path:
    return work / "detectors" / f"realgen-{cache}-{head}"


def schedule_args():
    return ["--batch-size", SCHEDULE["batch_size"], "--epochs", SCHEDULE["epochs"],
            "--patience", SCHEDULE["patience"]]


# ------------------------------------------------------------------ 1. train + evaluate
def stage_train(args):
    for c in args.caches:
        for head, extra in HEADS.items():
            out = det_dir(args.work, c, head)
            if (out / "detector.json").is_file() and not args.force:
                continue
            t0 = time.time()
            cli("train", CACHES[c], "--out", out, *schedule_args(), *extra, "--seed", 0, "--threads",
                args.threads, "--no-progress")
            print(f"trained {out} in {time.time() - t0:.0f}s", file=sys.stderr)


def stage_evaluate(args):
    for c in args.caches:
        res = RESULTS / c
        dets = ",".join(f"{h}={det_dir(args.work, c, h)}" for h in HEADS)
        cli("evaluate", dets, CACHES[c], "--split", "test", "--n-boot", N_BOOT, "--out", res / "eval")
        for h in HEADS:
            cli("plot", f"{h}={det_dir(args.work, c, h)}", CACHES[c], "--split", "test", "--formats", "png",
                "--title", f"{h} head, realgen {c}, test split", "--out", res / f"roc_{h}")


# ------------------------------------------------------------------ sklearn probe
def fit_probe(x_tr, y_tr, x_va, y_va, *, binary_metrics):
    """StandardScaler + LogisticRegression (lbfgs, max_iter 20000), C chosen on validation AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    trace = []
    for C in PROBE_C:
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=20000, tol=1e-6))
        m.fit(x_tr, y_tr)
        auc = float(binary_metrics(y_va, m.decision_function(x_va))["auc"]) if len(set(y_va)) == 2 else float("nan")
        n_iter = int(m[-1].n_iter_[0])
        trace.append({"C": C, "val_auc": auc, "n_iter": n_iter, "converged": n_iter < 20000})
        if best is None or auc > best[0]:
            best = (auc, C, m)
    return best[2], {"C": best[1], "val_auc": best[0], "trace": trace}


def rows_of(a, cache):
    return {s: np.sort(a.resolve_split_rows(cache, s)) for s in ("train", "val", "test")}


def per_generator_table(a, cache, rows, scores, *, threshold=0.0, by="generator"):
    y = cache.labels(rows)
    meta = cache.meta.loc[rows].reset_index(drop=True)
    groups = a.group_values(meta, [by], y) if by else {}
    return a.evaluate_scores(y, np.asarray(scores, dtype=np.float64), groups=groups, threshold=threshold,
                             n_boot=N_BOOT, seed=0, scores_are_probs=False, reference="real")


TABLE_COLS = ["group", "value", "n_real", "n_fake", "auc", "ap", "tpr@fpr=1%", "acc@0.5", "eer"]


def save_table(a, df: pd.DataFrame, stem: Path, title: str, config: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    dump({"config": config, "rows": json.loads(df.to_json(orient="records"))}, stem.with_suffix(".json"))
    cols = [c for c in TABLE_COLS if c in df.columns]
    stem.with_suffix(".md").write_text(f"# {title}\n\n" + a.to_markdown(df, columns=cols) + "\n")


def stage_probe(args):
    a = api()
    for c in args.caches:
        cache = a.FeatureCache(CACHES[c])
        r = rows_of(a, cache)
        X = {s: cache.features("image", r[s]) for s in r}
        Y = {s: cache.labels(r[s]) for s in r}
        model, sel = fit_probe(X["train"], Y["train"], X["val"], Y["val"], binary_metrics=a.binary_metrics)
        s_test = model.decision_function(X["test"])
        table = per_generator_table(a, cache, r["test"], s_test)
        save_table(a, table, RESULTS / c / "probe_sklearn", f"scikit-learn logistic-regression probe, realgen {c}, test split",
                   {"cache": str(CACHES[c]), "model": "StandardScaler + LogisticRegression(lbfgs, max_iter=20000, tol=1e-6)",
                    "selection": sel, "n_train": len(r["train"]), "n_val": len(r["val"]), "n_test": len(r["test"]),
                    "threshold": "decision_function > 0", "n_boot": N_BOOT})
        # ROC: one curve per generator (its fakes vs all test reals)
        y = Y["test"]
        gen = cache.meta.loc[r["test"], "generator"].astype(str).to_numpy()
        curves = {"overall": (y, s_test)}
        for g in sorted(set(gen[y == 1])):
            m = (y == 0) | (gen == g)
            curves[g] = (y[m], s_test[m])
        fig = a.roc_figure(curves, title=f"scikit-learn probe, realgen {c}, test split")
        a.save_figure(fig, RESULTS / c / "roc_probe_sklearn", formats=("png",))
        np.save(args.work / f"probe-scores-{c}.npy", s_test)
        import pickle  # local artefact only (outside the repository), reused by the cross stage

        with open(args.work / f"probe-{c}.pkl", "wb") as f:
            pickle.dump(model, f)


# ------------------------------------------------------------------ format-only baselines
def stage_format(args):
    a = api()
    out = {}
    for c in args.caches:
        man = pd.read_csv(MANIFESTS[c])
        src = a.open_source(str(MANIFESTS[c]))
        if c in NORMALISED:
            src = a.NormalizedSource(src, **NORM)
        t0 = time.time()
        table = a.source_format_table(src)
        print(f"format table {c}: {time.time() - t0:.0f}s", file=sys.stderr)
        table.insert(0, "key", man["key"].to_numpy())
        table["generator"], table["split"] = man["generator"].to_numpy(), man["split"].to_numpy()
        table.to_csv(args.work / f"format-table-{c}.csv", index=False)
        y = table["label"].to_numpy()
        feats_all = table.drop(columns=["key", "label", "generator", "split"])
        rows = []
        for feats in ("container", "container+bytes"):
            cols = [k for k in feats_all.columns if feats == "container+bytes" or k != "bytes_per_pixel"]
            f = feats_all[cols]
            keep = table["split"].isin(["train", "test"]).to_numpy()
            res_split = a.format_only_baseline(f[keep].reset_index(drop=True), y[keep],
                                               train_mask=(table["split"][keep] == "train").to_numpy(),
                                               n_boot=N_BOOT, seed=0)
            rows.append({"features": feats, "protocol": "fit train, score test", "generator": "all", **res_split})
            res_cv = a.format_only_baseline(f, y, folds=5, n_boot=N_BOOT, seed=0)
            rows.append({"features": feats, "protocol": "5-fold CV, all rows", "generator": "all", **res_cv})
            for g in sorted(set(table.loc[y == 1, "generator"])):
                m = keep & ((y == 0) | (table["generator"] == g).to_numpy())
                try:
                    r = a.format_only_baseline(f[m].reset_index(drop=True), y[m],
                                               train_mask=(table["split"][m] == "train").to_numpy(),
                                               n_boot=N_BOOT, seed=0)
                except ValueError as exc:
                    r = {"error": str(exc)}
                rows.append({"features": feats, "protocol": "fit train, score test", "generator": g, **r})
        df = pd.DataFrame(rows)
        summary = (table.assign(cls=np.where(y == 1, table["generator"], "real"))
                   .groupby(["cls", "format"]).agg(n=("label", "size"), width_median=("width", "median"),
                                                   height_median=("height", "median"),
                                                   jpeg_quality_median=("jpeg_quality", "median"),
                                                   bytes_per_pixel_median=("bytes_per_pixel", "median"))
                   .reset_index())
        dump({"config": {"cache": c, "manifest": str(MANIFESTS[c]), "normalisation": NORM if c in NORMALISED else None,
                         "model": "DecisionTree(max_depth=4, min_samples_leaf=2) on container metadata"},
              "rows": json.loads(df.to_json(orient="records")),
              "format_summary": json.loads(summary.to_json(orient="records"))}, RESULTS / c / "format_only.json")
        md = (f"# Format-only baseline, realgen {c}\n\n"
              + a.to_markdown(df, columns=[k for k in ("features", "protocol", "generator", "n_real", "n_fake", "auc",
                                                       "acc@0.5") if k in df.columns])
              + "\n\n## Container metadata per class\n\n" + a.to_markdown(summary) + "\n")
        (RESULTS / c / "format_only.md").write_text(md)
        out[c] = df
    return out


# ------------------------------------------------------------------ leave one generator (family) out
def derive_cache(src: Path, dst: Path, *, keys=None, family: bool = False) -> Path:
    """A derived copy of cache ``src`` (one shard): only rows whose key is in ``keys`` (all when
    None) and, with ``family``, the fakes' ``generator`` replaced by the generator family
    (avt/sd and bingo/sd -> sd). Embeddings are copied bit for bit; nothing is re-extracted."""
    if (dst / "manifest.json").is_file():
        return dst
    man = json.loads((src / "manifest.json").read_text())
    embs, metas, errs = [], [], []
    for sh in man["shards"]:
        embs.append(np.load(src / "img_emb" / f"{sh['name']}.npy"))
        metas.append(pd.read_parquet(src / "meta" / f"{sh['name']}.parquet"))
        e = src / "errors" / f"{sh['name']}.parquet"
        if e.is_file():
            errs.append(pd.read_parquet(e))
    emb, meta = np.concatenate(embs), pd.concat(metas, ignore_index=True)
    keep = np.ones(len(meta), bool) if keys is None else meta["key"].astype(str).isin(set(map(str, keys))).to_numpy()
    emb, meta = emb[keep], meta[keep].reset_index(drop=True)
    if family:
        fam = pd.read_csv(MANIFEST).set_index("key")["family"]
        meta["generator"] = np.where(meta["label"].astype(int) == 1, meta["key"].map(fam).astype(str),
                                     meta["generator"])
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("img_emb", "meta", "errors", "txt_emb"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    np.save(tmp / "img_emb" / "part-00000.npy", emb)
    meta.to_parquet(tmp / "meta" / "part-00000.parquet", index=False)
    err = pd.concat(errs, ignore_index=True).iloc[:0] if errs else pd.DataFrame({"key": pd.Series(dtype=str)})
    err.to_parquet(tmp / "errors" / "part-00000.parquet", index=False)
    run = next(iter(man["runs"]))
    man["runs"] = {run: {**man["runs"][run], "note": f"derived from {src} (rows: {'subset' if keys is not None else 'all'}"
                         f", generator: {'family' if family else 'as extracted'}) by experiments/realgen_experiments.py",
                         "position": int(len(meta))}}
    man["shards"] = [{**man["shards"][0], "name": "part-00000", "rows": int(len(meta)), "start": 0,
                      "stop": int(len(meta)), "errors": 0, "run": run}]
    (tmp / "manifest.json").write_text(json.dumps(man, indent=2))
    tmp.rename(dst)
    return dst


def merge_caches(srcs, dst: Path, order_keys) -> Path:
    """One cache from the completed shards of several caches of the same backbone (rows
    de-duplicated by key, ordered as ``order_keys``); every key must be present."""
    mans = [json.loads((s / "manifest.json").read_text()) for s in srcs]
    ids = {json.dumps({k: v for k, v in m["backbone"].items() if k != "spec"}, sort_keys=True) for m in mans}
    if len(ids) != 1:
        raise ValueError("caches of different backbones")
    embs, metas = [], []
    for src, man in zip(srcs, mans):
        for sh in man["shards"]:
            embs.append(np.load(src / "img_emb" / f"{sh['name']}.npy"))
            metas.append(pd.read_parquet(src / "meta" / f"{sh['name']}.parquet"))
    emb, meta = np.concatenate(embs), pd.concat(metas, ignore_index=True)
    first = ~meta["key"].duplicated().to_numpy()
    emb, meta = emb[first], meta[first].reset_index(drop=True)
    pos = pd.Series(np.arange(len(meta)), index=meta["key"].astype(str))
    present = [k for k in map(str, order_keys) if k in pos.index]
    print(f"merge: {len(present)} of {len(order_keys)} keys extracted", file=sys.stderr)
    idx = pos.loc[present].to_numpy()
    emb, meta = emb[idx], meta.iloc[idx].reset_index(drop=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("img_emb", "meta", "errors", "txt_emb"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    np.save(tmp / "img_emb" / "part-00000.npy", emb)
    meta.to_parquet(tmp / "meta" / "part-00000.parquet", index=False)
    pd.DataFrame({"key": pd.Series(dtype=str)}).to_parquet(tmp / "errors" / "part-00000.parquet", index=False)
    man = mans[0]
    run = next(iter(man["runs"]))
    man["runs"] = {run: {**man["runs"][run], "note": f"merged from {[str(s) for s in srcs]} by "
                         "experiments/realgen_experiments.py (rows de-duplicated by key)", "position": int(len(meta)),
                         "complete": True}}
    man["shards"] = [{**man["shards"][0], "name": "part-00000", "rows": int(len(meta)), "start": 0,
                      "stop": int(len(meta)), "errors": 0, "run": run}]
    (tmp / "manifest.json").write_text(json.dumps(man, indent=2))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def stage_merge(args):
    keys = pd.read_csv(MANIFEST_SUB)["key"]
    parts = [p for p in NORM_PARTS if (p / "manifest.json").is_file()]
    print(f"merged {merge_caches(parts, NORM_MERGED, keys)}", file=sys.stderr)


def family_cache(a, c: str, work: Path) -> Path:
    """Cache ``c`` with the fakes' ``generator`` set to the generator family, so that holding out
    a generator removes it from both source repositories."""
    return derive_cache(CACHES[c], work / "caches" / f"{CACHES[c].name}-family", family=True)


def stage_derive(args):
    """asis-sub and norm-sub: the as-is and the normalised caches restricted to the keys both hold."""
    a = api()
    ka = set(a.FeatureCache(CACHES["asis"]).meta["key"].astype(str))
    kn = set(a.FeatureCache(NORM_MERGED).meta["key"].astype(str))
    common = ka & kn
    for c, src in (("asis-sub", CACHES["asis"]), ("norm-sub", NORM_MERGED)):
        shutil.rmtree(CACHES[c], ignore_errors=True)
        derive_cache(src, CACHES[c], keys=common)
    man = pd.read_csv(MANIFEST)
    sub = man[man["key"].isin(common)]
    counts = sub.assign(g=np.where(sub["label"] == 1, sub["generator"], "real/" + sub["dataset"])) \
        .groupby(["g", "split"]).size().unstack(fill_value=0)
    dump({"n_asis": len(ka), "n_norm": len(kn), "n_common": len(common),
          "counts": json.loads(counts.to_json(orient="index"))}, RESULTS / "common_subset.json")
    sub.drop(columns=["path"]).to_csv(args.work / "common_subset_manifest.csv", index=False)
    print(counts.to_string(), file=sys.stderr)


def stage_logo(args):
    a = api()
    for c in args.caches:
        fc = family_cache(a, c, args.work)
        sets = [f"--set=batch_size={SCHEDULE['batch_size']}", f"--set=epochs={SCHEDULE['epochs']}",
                f"--set=patience={SCHEDULE['patience']}"]
        for head, extra in (() if os.environ.get("REALGEN_LOGO_PAPER") == "0" else (("paper", []),)):  # linear head dropped for CPU time
            out = RESULTS / c / f"logo_{head}"
            if (out / "logo.json").is_file() and not args.force:
                continue
            t0 = time.time()
            cli("protocol", "logo", fc, "--out", out, "--n-boot", N_BOOT, *sets, *extra)
            print(f"logo {c} {head}: {time.time() - t0:.0f}s", file=sys.stderr)
        # the scikit-learn probe under the same protocol
        cache = a.FeatureCache(fc)
        r = rows_of(a, cache)
        y = cache.labels()
        gen = cache.meta["generator"].astype(str).to_numpy()
        X = cache.features("image")
        test_reals = r["test"][y[r["test"]] == 0]
        rows = []
        for g in sorted(set(gen[y == 1])):
            keep = lambda rr: rr[(y[rr] == 0) | (gen[rr] != g)]  # noqa: E731
            tr, va = keep(r["train"]), keep(r["val"])
            model, sel = fit_probe(X[tr], y[tr], X[va], y[va], binary_metrics=a.binary_metrics)
            held = np.concatenate([test_reals, np.flatnonzero((y == 1) & (gen == g))])
            seen = np.concatenate([test_reals, r["test"][(y[r["test"]] == 1) & (gen[r["test"]] != g)]])
            th = a.evaluate_scores(y[held], model.decision_function(X[held]), threshold=0.0, n_boot=N_BOOT,
                                   seed=0, scores_are_probs=False).iloc[0]
            ts = a.evaluate_scores(y[seen], model.decision_function(X[seen]), threshold=0.0, n_boot=N_BOOT,
                                   seed=0, scores_are_probs=False).iloc[0]
            rows.append({"held_out": g, "n_train": len(tr), "C": sel["C"], "n_real": int(th["n_real"]),
                         "n_fake": int(th["n_fake"]), "auc": th["auc"], "auc_lo": th["auc_lo"],
                         "auc_hi": th["auc_hi"], "ap": th["ap"], "tpr@fpr=1%": th["tpr@fpr=1%"],
                         "in_auc": ts["auc"], "in_auc_lo": ts["auc_lo"], "in_auc_hi": ts["auc_hi"],
                         "auc_drop": ts["auc"] - th["auc"]})
        df = pd.DataFrame(rows)
        dump({"config": {"cache": str(fc), "protocol": "train on train-split reals + other generators' train fakes "
                         "(C chosen on val likewise); test on all held-out fakes vs test-split reals"},
              "rows": json.loads(df.to_json(orient="records"))}, RESULTS / c / "logo_probe_sklearn.json")
        (RESULTS / c / "logo_probe_sklearn.md").write_text(
            f"# Leave one generator family out, scikit-learn probe, realgen {c}\n\n" + a.to_markdown(df) + "\n")


# ------------------------------------------------------------------ cross-dataset
def stage_cross(args):
    a = api()
    import pickle

    cif_det = args.work / "detectors" / "cifake-sample-paper"
    if not (cif_det / "detector.json").is_file():
        cli("train", CIFAKE, "--out", cif_det, *schedule_args(), "--seed", 0, "--threads", args.threads,
            "--no-progress")
    cif = a.FeatureCache(CIFAKE)
    rc = rows_of(a, cif)
    cif_probe, cif_sel = fit_probe(cif.features("image", rc["train"]), cif.labels(rc["train"]),
                                   cif.features("image", rc["val"]), cif.labels(rc["val"]),
                                   binary_metrics=a.binary_metrics)
    paper = a.Detector.load(cif_det)
    config = {"cifake_cache": str(CIFAKE), "cifake_rows": len(cif), "cifake_splits": {k: len(v) for k, v in rc.items()},
              "schedule": SCHEDULE, "cifake_probe_selection": cif_sel, "n_boot": N_BOOT}
    out_rows = []

    def add(direction, train_on, test_on, detector, table):
        for _, t in table.iterrows():
            out_rows.append({"direction": direction, "train_on": train_on, "test_on": test_on,
                             "detector": detector, "group": t["value"] if t["group"] != "overall" else "overall",
                             **{k: t[k] for k in ("n_real", "n_fake", "auc", "auc_lo", "auc_hi", "ap", "ap_lo",
                                                  "ap_hi", "tpr@fpr=1%", "acc@0.5") if k in t}})

    # in-domain reference on CIFAKE test
    add("in-domain", "cifake-sample", "cifake-sample test", "paper",
        per_generator_table(a, cif, rc["test"], paper.decision_function(paper.features(cif, rc["test"])), by=None))
    add("in-domain", "cifake-sample", "cifake-sample test", "probe",
        per_generator_table(a, cif, rc["test"], cif_probe.decision_function(cif.features("image", rc["test"])), by=None))
    for c in args.caches:
        cache = a.FeatureCache(CACHES[c])
        r = rows_of(a, cache)
        for part, rows in (("test", r["test"]), ("all", np.arange(len(cache)))):
            x = cache.features("image", rows)
            add("cifake->realgen", "cifake-sample", f"realgen-{c} {part}", "paper",
                per_generator_table(a, cache, rows, paper.decision_function(paper.features(cache, rows))))
            add("cifake->realgen", "cifake-sample", f"realgen-{c} {part}", "probe",
                per_generator_table(a, cache, rows, cif_probe.decision_function(x)))
        # reverse: realgen-trained (train split) -> CIFAKE
        rg_paper = a.Detector.load(det_dir(args.work, c, "paper"))
        with open(args.work / f"probe-{c}.pkl", "rb") as f:
            rg_probe = pickle.load(f)
        for part, rows in (("test", rc["test"]), ("all", np.arange(len(cif)))):
            add("realgen->cifake", f"realgen-{c}", f"cifake-sample {part}", "paper",
                per_generator_table(a, cif, rows, rg_paper.decision_function(rg_paper.features(cif, rows)), by=None))
            add("realgen->cifake", f"realgen-{c}", f"cifake-sample {part}", "probe",
                per_generator_table(a, cif, rows, rg_probe.decision_function(cif.features("image", rows)), by=None))
    df = pd.DataFrame(out_rows)
    dump({"config": config, "rows": json.loads(df.to_json(orient="records"))}, RESULTS / "cross_dataset.json")
    (RESULTS / "cross_dataset.md").write_text("# Cross-dataset: CIFAKE sample cache <-> realgen\n\n"
                                              + a.to_markdown(df) + "\n")


STAGES = {"merge": stage_merge, "derive": stage_derive, "train": stage_train, "evaluate": stage_evaluate, "probe": stage_probe, "format": stage_format,
          "logo": stage_logo, "cross": stage_cross}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", choices=[*STAGES, "all"])
    ap.add_argument("--caches", default="asis,asis-sub,norm-sub")
    ap.add_argument("--work", default=str(DATA / "work"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    args.caches = [c for c in args.caches.split(",") if c]
    args.work = Path(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    stages = list(STAGES) if "all" in args.stages else args.stages
    for s in stages:
        t0 = time.time()
        STAGES[s](args)
        print(f"stage {s}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
