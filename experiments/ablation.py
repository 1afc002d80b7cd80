"""Loss x SAM ablation of the robust CLIP detector on a feature cache.

Trains BCE, CVaR, AUC and CVaR+AUC heads, each with and without SAM, over several seeds,
on one feature set of a cache (default: image embeddings), with train / validation / test
rows from :mod:`clipdetect.features.splits` (the cache's own splits, or a key-hash split of its
"train" rows). Everything else is the paper's recipe (``TrainConfig`` defaults) unless
overridden. For each configuration it reports mean ± std over seeds of test ROC-AUC, AP,
accuracy at probability 0.5 and at the validation-chosen threshold, plus a paired
bootstrap (over test rows) of the AUC difference to the BCE-without-SAM baseline, computed
on seed-averaged scores.

    python experiments/ablation.py features/cifake-b16                      # 3 seeds → experiments/results/ablation.*
    python experiments/ablation.py CACHE --seeds 5 --epochs 16 --out-prefix /tmp/abl

Writes ``<prefix>.md``, ``<prefix>.json`` (every run) and ``<prefix>_config.json``.
Seeds vary initialisation, batch order and dropout; the split is fixed (``--split-seed``),
so the ± reflects optimisation noise, not test-set sampling (that is what the bootstrap
column is for).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

import torch
from clipdetect.features.cache import FeatureCache
from clipdetect.models.detector import Detector
from clipdetect.core.metrics import binary_metrics
from clipdetect.features.splits import resolve_all
from clipdetect.models.train import TrainConfig
from common import save_json, save_text

LOSSES = ("bce", "cvar", "auc", "cvar+auc")
METRICS = (("auc", "test AUC"), ("ap", "test AP"), ("acc@0.5", "acc@0.5"), ("acc@thr", "acc@val-thr"))


def paired_auc_delta(y, s_a, s_b, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same rows, with a stratified paired percentile bootstrap 95% CI."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    d = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        d.append(roc_auc_score(y[idx], s_a[idx]) - roc_auc_score(y[idx], s_b[idx]))
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(roc_auc_score(y, s_a) - roc_auc_score(y, s_b)), float(lo), float(hi)


def fmt(values, digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def render_markdown(doc: dict, config: dict) -> str:
    """The Markdown report from the JSON results (``doc``) and the run's config document."""
    tc, runs = config["train_config"], doc["runs"]
    baseline = doc.get("baseline", "bce")
    header = ["loss", "SAM"] + [label for _, label in METRICS] + ["best epoch", f"ΔAUC vs {baseline} [95% CI]"]
    lines = [f"# Loss × SAM ablation on `{doc['cache']}` ({doc['feature_set']} features)", "",
             f"Backbone `{doc['backbone']}`; {doc['rows']} rows; splits (rows / fake): "
             + ", ".join(f"{k} {v['rows']} / {v['fake']}" for k, v in doc["splits"].items()) + ".",
             f"Recipe: TrainConfig defaults (MLP depth {tc['depth']}, dropout {tc['dropout']}, AdamW lr {tc['lr']} "
             f"wd {tc['weight_decay']}, cosine; SAM rho {tc['rho']}; CVaR alpha {tc['alpha']}; AUC margin "
             f"{tc['margin']} p {tc['p']}; cvar+auc gamma {tc['gamma']}) except batch {tc['batch_size']}; "
             f"at most {tc['epochs']} epochs, best validation-AUC epoch kept, patience {tc['patience']}.",
             f"{len(config['seeds'])} seeds per row: mean ± std over seeds (the split and test set are fixed).",
             f"ΔAUC: test AUC of the seed-averaged scores minus that of {baseline}, paired stratified bootstrap over "
             f"test rows ({doc.get('n_boot', 1000)} resamples).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in doc["summary"]:
        rs = [r for r in runs if r["config"] == entry["config"]]
        cells = [entry["loss"], "yes" if entry["sam"] else "no"]
        for key, _ in METRICS:
            cells.append(fmt([r["test"][key] for r in rs], 4 if key in ("auc", "ap") else 3))
        cells.append(fmt([r["best_epoch"] for r in rs], 1))
        d = entry.get("delta_auc_vs_baseline")
        cells.append(f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "—")
        lines.append("| " + " | ".join(cells) + " |")
    secs = doc.get("seconds")
    lines += ["", (f"Total time {secs:.0f} s" if secs else "Total time not recorded")
              + f" on {doc.get('torch_threads', config.get('torch_threads'))} torch thread(s) of a shared 2-core CPU."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", nargs="?", default="features/cifake-b16", help="feature cache directory")
    ap.add_argument("--feature-set", default="image", choices=["image", "text", "image+text"])
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per configuration (default 3)")
    ap.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset of " + ",".join(LOSSES))
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--batch-size", type=int, default=256,
                    help="default 256: on a few thousand rows the paper's 2048 gives ~3 steps per epoch")
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--patience", type=int, default=TrainConfig.patience)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--test-fraction", type=float, default=0.15)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUC differences")
    ap.add_argument("--out-prefix", default="experiments/results/ablation",
                    help="writes PREFIX.md, PREFIX.json and PREFIX_config.json")
    ap.add_argument("--render-only", action="store_true",
                    help="only re-write PREFIX.md from existing PREFIX.json and PREFIX_config.json")
    args = ap.parse_args(argv)
    if args.render_only:
        doc = json.loads(Path(f"{args.out_prefix}.json").read_text())
        md = render_markdown(doc, json.loads(Path(f"{args.out_prefix}_config.json").read_text()))
        save_text(f"{args.out_prefix}.md", md)
        print(md)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    cache = FeatureCache(args.cache)
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction, split_seed=args.split_seed)
    tr, va, te = resolve_all(cache, val=args.val_fraction, test=args.test_fraction, seed=args.split_seed)
    y_te = cache.labels(te)
    data = {"cache": str(cache.root), "backbone": cache.backbone.get("spec"), "feature_set": args.feature_set,
            "rows": len(cache), "splits": {n: {"rows": int(len(r)), "fake": int(cache.labels(r).sum())}
                                           for n, r in (("train", tr), ("val", va), ("test", te))}}
    prefix = Path(args.out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    config_doc = {**data, "seeds": list(range(args.seeds)), "losses": losses, "sam": [False, True],
                  "train_config": dataclasses.asdict(base), "torch_threads": torch.get_num_threads(),
                  "n_boot": args.n_boot, "command": " ".join(sys.argv)}
    save_json(f"{prefix}_config.json", config_doc)
    print(json.dumps(data["splits"]), flush=True)

    runs, scores = [], {}
    t_all = time.perf_counter()
    for loss in losses:
        for sam in (False, True):
            name = f"{loss}{' + SAM' if sam else ''}"
            probs = []
            for seed in range(args.seeds):
                cfg = dataclasses.replace(base, loss=loss, sam=sam, seed=seed)
                det = Detector.fit_cache(cache, feature_set=args.feature_set, config=cfg)
                p = det.probability(det.features(cache, te))
                m = binary_metrics(y_te, p, threshold=det.threshold)
                probs.append(p)
                runs.append({"config": name, "loss": loss, "sam": sam, "seed": seed, "threshold": det.threshold,
                             "best_epoch": det.metrics["best_epoch"], "epochs_run": det.metrics["epochs_run"],
                             "train_seconds": det.metrics["train_seconds"],
                             "val_auc": det.metrics.get("val", {}).get("auc"), "test": m})
                print(f"{name:16s} seed {seed}: test auc {m['auc']:.4f} ap {m['ap']:.4f} acc@0.5 {m['acc@0.5']:.4f} "
                      f"acc@thr {m['acc@thr']:.4f} (best epoch {det.metrics['best_epoch']}/"
                      f"{det.metrics['epochs_run']}, {det.metrics['train_seconds']:.1f} s)", flush=True)
            scores[name] = np.mean(probs, axis=0)

    baseline = "bce" if "bce" in scores else next(iter(scores))
    summary = []
    for name, s in scores.items():
        rs = [r for r in runs if r["config"] == name]
        entry = {"config": name, "loss": rs[0]["loss"], "sam": rs[0]["sam"], "n_seeds": len(rs)}
        for key, _ in METRICS:
            vals = [r["test"][key] for r in rs]
            entry[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
        if name != baseline:
            d, lo, hi = paired_auc_delta(y_te, s, scores[baseline], n_boot=args.n_boot)
            entry["delta_auc_vs_baseline"] = {"delta": d, "lo": lo, "hi": hi}
        summary.append(entry)
    doc = {**data, "baseline": baseline, "n_boot": args.n_boot, "seconds": round(time.perf_counter() - t_all, 1),
           "torch_threads": torch.get_num_threads(), "summary": summary, "runs": runs}
    save_json(f"{prefix}.json", doc)
    md = render_markdown(doc, config_doc)
    save_text(f"{prefix}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
