"""Train the shipped general detector on the whole corpus, with a threshold that holds on new photos.

    python experiments/general_detector.py CACHE --benchmark DIR --manifest MANIFEST.csv \\
        --out clipdetect/models/shipped/general-b16 [--variant views] [--rule worst --target-fpr 0.10]

* **Configuration**: the benchmark variant (``--variant``; default: the one with the best mean
  leave-one-source-out AUC in ``DIR/benchmark.json``), trained exactly as the benchmark trains
  it, on every source: training rows = the cache's train and test splits, validation rows
  (epoch, calibration) = its val split.
* **Threshold**: a threshold chosen on validation rows of the training sources is optimistic
  on photos from a new source. The leave-one-source-out folds of the benchmark show by how
  much: for each fold, the held-out source's real photos' logits minus the fold detector's own
  threshold (both on the logit scale). The shipped threshold is the final detector's own, moved
  by the smallest shift at which the false-positive rate on those out-of-source margins is at
  most ``--target-fpr`` in *every* held-out source (``--rule worst``, the default: a new photo
  collection is one source, and its users see that source's rate, not an average) or on
  average over them (``--rule mean``). Nothing is chosen on test rows.
* **Model card**: sources, licences, feature set, the benchmark's numbers, limits; written into
  ``detector.json`` (``extra.card``) and ``MODEL_CARD.md``.

The backbone recorded is the CLIP ViT-B/16 image tower converted from OpenAI's weights
(``clip_b16.pt``, found by its sha256 through ``--weights``/``$CLIPDETECT_WEIGHTS``), with open_clip's
``ViT-B-16-quickgelu:openai`` / ``ViT-B-16:openai`` as alternatives (the same model).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from clipdetect.core.io import write_json, write_text
from clipdetect.core.provenance import provenance
from clipdetect.eval.benchmark import VARIANTS, BenchmarkConfig, Fold, train_variant
from clipdetect.features.cache import FeatureCache
from clipdetect.features.splits import SplitSpec

logger = logging.getLogger("general_detector")
ALTERNATIVES = [{"spec": "ViT-B-16-quickgelu:openai", "arch": "ViT-B-16-quickgelu", "weights": "pretrained",
                 "tag": "openai"},
                {"spec": "ViT-B-16:openai", "arch": "ViT-B-16", "weights": "pretrained", "tag": "openai"}]


def choose_variant(bench: Dict[str, Any], wanted: str | None) -> str:
    if wanted:
        return wanted
    loso = [r for r in bench["summary"] if r["protocol"] == "loso" and r["variant"] in VARIANTS
            and r["view"] == bench["eval_view"]]
    return max(loso, key=lambda r: r["mean_auc"])["variant"]


def fold_margins(bench_dir: Path, variant: str, view: str | None = None) -> Dict[str, Dict[str, np.ndarray]]:
    """Per held-out source of the leave-one-source-out folds: its images' logits minus the fold
    detector's own threshold logit, split into ``real`` and ``fake`` (all views, or ``view``)."""
    folds = pd.read_csv(bench_dir / "folds.csv")
    scores = pd.read_csv(bench_dir / "scores.csv")
    folds = folds[(folds.protocol == "loso") & (folds.variant == variant)].drop_duplicates("held_out")
    folds = folds.set_index("held_out")
    held = scores[(scores.protocol == "loso") & scores.held & scores.held_out.isin(folds.index)]
    if view is not None:
        held = held[held.view == view]
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for src, g in held.groupby("held_out"):
        m = g[variant].to_numpy() - float(folds.loc[src, "threshold_logit"])
        out[src] = {"real": m[g.label.to_numpy() == 0], "fake": m[g.label.to_numpy() == 1]}
    return out


#: how the per-source false-positive rates of the held-out sources' reals are combined
RULES = {"mean": np.mean, "worst": np.max}
RULE_WORDS = {"mean": "mean over sources of the", "worst": "largest per-source"}


def shift_for(margins: Dict[str, np.ndarray], target_fpr: float, rule: str = "mean") -> float:
    """The smallest logit shift >= 0 at which the real photos' FPR is <= target: on average over
    the sources (``rule="mean"``) or in every source (``"worst"``)."""
    combine = RULES[rule]
    grid = np.unique(np.concatenate([np.zeros(1), *margins.values()]))
    for s in grid[grid >= 0]:
        if combine([(m > s).mean() for m in margins.values()]) <= target_fpr:
            return float(s)
    return float(grid.max())


def loso_shift(bench_dir: Path, variant: str, target_fpr: float, rule: str = "mean",
               view: str | None = None) -> Dict[str, Any]:
    """The logit shift s such that the mean (``rule="mean"``) or the largest (``"worst"``) over
    held-out sources of P(real logit − fold threshold > s) is at most ``target_fpr``, from the
    benchmark's leave-one-source-out scores; and the honest
    estimate of what it does on a new source: for each source, the shift chosen *without* it
    (the other sources' folds), applied to its reals (FPR) and fakes (TPR). ``view``: the margins
    of that view only (a detector with an input view sees no other), else of every view scored."""
    per = fold_margins(bench_dir, variant, view)
    reals = {k: v["real"] for k, v in per.items() if len(v["real"])}
    if not reals:
        raise ValueError(f"no leave-one-source-out fold with real photos for variant {variant!r}")
    shift = shift_for(reals, target_fpr, rule)
    mean_fpr = lambda sh: float(np.mean([(m > sh).mean() for m in reals.values()]))  # noqa: E731
    loo = {}
    for src, v in per.items():
        others = {k: m for k, m in reals.items() if k != src}
        s = shift_for(others, target_fpr, rule) if others else shift
        loo[src] = {"shift": s, "fpr": float((v["real"] > s).mean()) if len(v["real"]) else None,
                    "tpr": float((v["fake"] > s).mean()) if len(v["fake"]) else None,
                    "tpr_unshifted": float((v["fake"] > 0).mean()) if len(v["fake"]) else None}
    fprs = [r["fpr"] for r in loo.values() if r["fpr"] is not None]
    tprs = [r["tpr"] for r in loo.values() if r["tpr"] is not None]
    tpr0 = [r["tpr_unshifted"] for r in loo.values() if r["tpr_unshifted"] is not None]
    return {"method": "leave-one-source-out margin", "rule": rule, "target_fpr": target_fpr, "shift_logit": shift,
            "sources": sorted(reals), "mean_fpr_before": mean_fpr(0.0), "mean_fpr_after": mean_fpr(shift),
            "per_source_after": {k: float((m > shift).mean()) for k, m in reals.items()},
            "n_reals": {k: int(len(m)) for k, m in reals.items()},
            "cross_validated": {"per_source": loo, "mean_fpr": float(np.mean(fprs)), "max_fpr": float(np.max(fprs)),
                                "n_sources": len(fprs), "n_above_target": int(sum(f > target_fpr for f in fprs)),
                                "mean_tpr": float(np.mean(tprs)) if tprs else None,
                                "mean_tpr_unshifted": float(np.mean(tpr0)) if tpr0 else None}}


def sources_table(manifest: Path, used: List[str]) -> List[Dict[str, Any]]:
    m = pd.read_csv(manifest)
    m = m[m.source.isin(used)]
    out = []
    for src, g in m.groupby("source"):
        out.append({"source": src, "repository": g.repo.iloc[0], "commit": str(g.commit.iloc[0])[:12],
                    "licence": g.licence.iloc[0], "permissive": str(g.permissive.iloc[0]) == "yes",
                    "real": int((g.label == 0).sum()), "fake": int((g.label == 1).sum()),
                    "families": sorted(set(g.family[g.label == 1]))})
    return out


def lofo_summary(folder: str | None) -> List[Dict[str, Any]]:
    """The summary rows of a leave-one-family-out run (none without one)."""
    if not folder:
        return []
    return [r for r in json.loads((Path(folder) / "benchmark.json").read_text())["summary"] if r["protocol"] == "lofo"]


def card_markdown(card: Dict[str, Any]) -> str:
    b = card["benchmark"]
    lines = [f"# {card['name']}: {card['summary']}", "", "## Use", "", card["use"], "",
             "## Input", "", card["input"], "", "## Decision", "", card["decision"], "",
             "## Training data", "", f"{card['training']['images']} images ({card['training']['real']} real photos, "
             f"{card['training']['fake']} generated) from {len(card['training']['sources'])} public repositories:", "",
             "| source | repository | commit | licence | permissive | real | fake | families |",
             "|---|---|---|---|---|---|---|---|"]
    for s in card["training"]["sources"]:
        lines.append(f"| {s['source']} | {s['repository']} | {s['commit']} | {s['licence']} | "
                     f"{'yes' if s['permissive'] else 'no'} | {s['real']} | {s['fake']} | {', '.join(s['families'])} |")
    lines += ["", "## Measured (leave-one-source-out and leave-one-family-out on the corpus)", "",
              "| protocol | view | variant | folds | mean AUC | min AUC | vs final-embedding MLP | mean FPR on held-out reals |",
              "|---|---|---|---|---|---|---|---|"]
    for r in b["summary"]:
        vs = (f"{r.get('vs_baseline', float('nan')):+.3f} [{r.get('vs_baseline_lo', float('nan')):+.3f}, "
              f"{r.get('vs_baseline_hi', float('nan')):+.3f}]" if r.get("vs_baseline") is not None else "—")
        fpr = r.get("mean_fpr_heldout_reals")
        lines.append(f"| {r['protocol']} | {r['view']} | {r['variant']} | {r['folds']} | {r['mean_auc']:.3f} | {r['min_auc']:.3f} | "
                     f"{vs} | {'—' if fpr is None or (isinstance(fpr, float) and math.isnan(fpr)) else f'{fpr:.3f}'} |")
    variant = b.get("variant") or re.search(r"\(([\w+]+): \{", card["input"]).group(1)  # cards without the field
    lines += ["", f"Benchmark: `clipdetect benchmark` on the corpus cache (run `{b['source']}`). This detector is "
              f"variant `{variant}` trained on every source: "
              f"that variant's rows are the estimates for it on sources and families it has not seen. "
              f"Evaluation view {b['eval_view']}.", "", "## Limits", ""]
    lines += [f"* {x}" for x in card["limits"]]
    return "\n".join(lines) + "\n"


LIMITS = [
    "Trained on at most a few hundred images per generator from public sample folders; generators and "
    "photo sources unlike these (new model families, heavy editing, screenshots, scans) may score "
    "anywhere: check its false-positive rate on your own real photos before relying on it.",
    "The threshold targets a false-positive rate on real photos from sources it never saw, measured "
    "on the corpus's photo collections; a new collection can still be above it (see the per-source "
    "numbers in threshold_rule.json), and the low false-alarm rate costs recall.",
    "Content confounds remain: generated art has no real counterpart in the corpus, so real paintings "
    "and illustrations are likely to be called generated.",
    "Scores are probabilities calibrated on the corpus's validation rows, not on your data.",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", help="the corpus cache (extract --layers --views default)")
    p.add_argument("--benchmark", required=True, help="folder of `clipdetect benchmark` on that cache")
    p.add_argument("--manifest", required=True, help="the corpus manifest (sources, licences)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--name", default="general-b16")
    p.add_argument("--variant", help="benchmark variant to ship (default: best mean leave-one-source-out AUC)")
    p.add_argument("--target-fpr", type=float, default=0.10, help="FPR on held-out sources' reals (see --rule)")
    p.add_argument("--rule", choices=sorted(RULES), default="worst",
                   help="worst: every held-out source's reals at or below --target-fpr; mean: their average")
    p.add_argument("--sources", help="train on these sources only (comma-separated; default all)")
    p.add_argument("--lofo", help="folder of a leave-one-family-out benchmark run, for the card")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cache = FeatureCache(args.cache)
    bench_dir = Path(args.benchmark)
    bench = json.loads((bench_dir / "benchmark.json").read_text())
    variant = choose_variant(bench, args.variant)
    config = BenchmarkConfig(**{k: v for k, v in bench["config"].items() if k in BenchmarkConfig.__dataclass_fields__})
    source = cache.columns("source")["source"].astype(str).to_numpy()
    used = sorted(set(args.sources.split(",")) if args.sources else set(source))
    split = SplitSpec.of(config.train).labels(cache)
    keep = np.isin(source, used)
    fold = Fold("all", "none", np.flatnonzero(keep & (split != "val")), np.flatnonzero(keep & (split == "val")),
                np.array([], dtype=np.int64))
    views = cache.columns("view")["view"].astype(str).to_numpy()
    logger.info("training %s on %d rows (%d sources), validating on %d", variant, len(fold.train), len(used),
                len(fold.val))
    det = train_variant(cache, fold, variant, config, views)
    from clipdetect.eval.evaluate import logit_threshold

    # a head that never saw the original files scores every image as the view it was benchmarked on
    view = bench["eval_view"] if VARIANTS[variant].get("degraded") else None
    if view is not None:
        det = det.replace(extra={**det.extra, "input_view": view})
    rule = loso_shift(bench_dir, variant, args.target_fpr, args.rule, view=view)
    own = logit_threshold(det)
    threshold = float(det.calibration.probability(own + rule["shift_logit"]))
    rule.update(own_threshold_logit=own, threshold=threshold)
    cv = rule["cross_validated"]
    target = {"metric": "fpr", "value": float(args.target_fpr),
              "on": f"real photos of held-out sources ({RULE_WORDS[args.rule]} over leave-one-source-out folds)",
              "n_reals": int(sum(rule["n_reals"].values())), "achieved_fpr": float(rule["mean_fpr_after"]),
              "resolved": True, "cross_validated_fpr": cv["mean_fpr"], "cross_validated_tpr": cv["mean_tpr"]}
    backbone = {**det.backbone, "spec": f"{det.backbone['arch']}:{det.backbone.get('checkpoint', 'clip_b16.pt')}",
                "checkpoint_path": None, "alternatives": ALTERNATIVES}
    det = det.replace(threshold=threshold, threshold_target=target, backbone=backbone)
    rows = np.flatnonzero(keep)
    images = pd.DataFrame({"key": cache.columns("key")["key"].to_numpy()[rows], "label": cache.labels(rows)})
    y = images.drop_duplicates("key").label.to_numpy()
    card = {"name": args.name, "summary": "is this image generated? A CLIP ViT-B/16 detector trained on many "
            "generators and photo collections", "use": f"`clipdetect predict {args.name} photos/ --out preds.csv`, or "
            f"`clipdetect.Detector.load(\"{args.name}\").score_images([...])`. The backbone is OpenAI CLIP ViT-B/16 "
            "(image tower): open_clip's `ViT-B-16-quickgelu:openai` weights, or the converted checkpoint "
            "`clip_b16.pt` (sha256 in detector.json) through `--weights` / `$CLIPDETECT_WEIGHTS`.",
            "input": f"feature set `{det.feature_set}` ({variant}: {VARIANTS[variant]}); images are decoded, "
            + (f"turned into view `{view}` (squashed to that square size and re-encoded as JPEG at that quality, "
               "as in training: the file's format, size and compression do not reach the head) " if view else "")
            + "and preprocessed as for any detector (resize to 224, centre crop).",
            "decision": f"label 1 (generated) when P(fake) > {det.threshold:.4g}: the detector's validation "
            f"threshold moved by {rule['shift_logit']:.3f} logits so that the {RULE_WORDS[args.rule]} false-positive "
            f"rate on real photos of held-out sources is at most {args.target_fpr:.0%} in the leave-one-source-out "
            f"folds (mean {rule['mean_fpr_before']:.1%} before the move, {rule['mean_fpr_after']:.1%} after; worst "
            f"source {max(rule['per_source_after'].values()):.1%} after). Estimated for a new photo collection (each "
            f"held-out source's shift chosen without it): mean FPR {cv['mean_fpr']:.1%} (worst source "
            f"{cv['max_fpr']:.1%}; {cv['n_above_target']} of {cv['n_sources']} sources above {args.target_fpr:.0%}), "
            f"with {cv['mean_tpr']:.0%} of generated images caught "
            f"({cv['mean_tpr_unshifted']:.0%} at the unmoved threshold): it trades recall for fewer false alarms.",
            "training": {"images": int(len(y)), "real": int((y == 0).sum()), "fake": int(y.sum()),
                         "sources": sources_table(Path(args.manifest), used)},
            "benchmark": {"source": bench_dir.name, "eval_view": bench["eval_view"], "variant": variant,
                          "summary": bench["summary"] + lofo_summary(args.lofo)},
            "threshold_rule": rule, "limits": LIMITS,
            "provenance": provenance(argv=[Path(a).name if os.sep in a else a for a in sys.argv])}  # no local paths
    det = det.replace(extra={**det.extra, "card": card, "cache": Path(args.cache).name})
    out = Path(args.out)
    det.save(out)
    write_text(out / "MODEL_CARD.md", card_markdown(card))
    write_json(out / "threshold_rule.json", rule)
    logger.info("wrote %s: threshold %.4g (shift %.3f logits), mean held-out FPR %.3f -> %.3f", out, det.threshold,
                rule["shift_logit"], rule["mean_fpr_before"], rule["mean_fpr_after"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
