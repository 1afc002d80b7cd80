"""Tables and files of the generalisation benchmark (:mod:`clipdetect.eval.benchmark`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd

from clipdetect.core.escape import md_code, md_text
from clipdetect.core.io import write_csv, write_json, write_text
from clipdetect.core.tables import records, to_markdown


def _ci(draws: np.ndarray) -> Tuple[float, float]:
    return (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))) if len(draws) else (math.nan,) * 2


def delta_tables(draws: Dict[tuple, tuple]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Per fold: AUC(variant) − AUC(reference) with its paired CI; per protocol: the mean of
    those differences over folds, its CI from the mean of the per-fold bootstrap draws (fold
    ``b`` of every fold taken together)."""
    rows = []
    for (protocol, held, name, ref, view), (a, b, d) in draws.items():
        lo, hi = _ci(d)
        rows.append({"protocol": protocol, "held_out": held, "variant": name, "vs": ref, "view": view,
                     "delta_auc": a - b, "lo": lo, "hi": hi})
    per_fold = pd.DataFrame(rows)
    means = []
    keys = sorted({(p, n, r, v) for p, _, n, r, v in draws})
    for protocol, name, ref, view in keys:
        ds = [d for (p, _, n, r, v), d in draws.items() if (p, n, r, v) == (protocol, name, ref, view)]
        point = float(np.mean([a - b for a, b, _ in ds]))
        lo, hi = _ci(np.mean(np.stack([d for _, _, d in ds]), axis=0))
        means.append({"protocol": protocol, "variant": name, "vs": ref, "view": view, "folds": len(ds),
                      "mean_delta_auc": point, "lo": lo, "hi": hi, "above_by_more_than_ci": bool(lo > 0)})
    return per_fold, pd.DataFrame(means)


def seed_table(seed_aucs: Dict[tuple, List[tuple]], first_seed: int = 0) -> pd.DataFrame:
    """With several training seeds: per (protocol, variant, reference, view) and seed, the mean
    over folds of the same-seed AUC difference (how far one training run alone moves it), from
    each fold's per-seed ``(AUC(variant), AUC(reference))``. Empty with one seed."""
    if not seed_aucs or all(len(v) < 2 for v in seed_aucs.values()):
        return pd.DataFrame()
    rows = []
    for protocol, name, ref, view in sorted({(p, n, r, v) for p, _, n, r, v in seed_aucs}):
        per = [d for (p, _, n, r, v), d in seed_aucs.items() if (p, n, r, v) == (protocol, name, ref, view)]
        for k in range(min(len(d) for d in per)):
            rows.append({"protocol": protocol, "variant": name, "vs": ref, "view": view, "seed": first_seed + k,
                         "folds": len(per), "mean_delta_auc": float(np.mean([d[k][0] - d[k][1] for d in per]))})
    return pd.DataFrame(rows)


def summary_table(folds: pd.DataFrame, mean_deltas: pd.DataFrame) -> pd.DataFrame:
    """One row per (protocol, variant): mean AUC over folds, mean FPR on held-out reals, mean
    ECE, and the mean paired difference to the baseline and to the probe with CIs. With several
    training seeds a fold's numbers are first averaged over its seeds."""
    out = []
    for (protocol, view, name), g in folds.groupby(["protocol", "view", "variant"], sort=False):
        if "seed" in g:
            g = g.groupby("held_out", sort=False)[["auc", "fpr", "tpr", "ece"]].mean()
        row: Dict[str, Any] = {"protocol": protocol, "view": view, "variant": name, "folds": len(g),
                               "mean_auc": g["auc"].mean(), "min_auc": g["auc"].min(),
                               "mean_fpr_heldout_reals": g["fpr"].mean(skipna=True),
                               "max_fpr_heldout_reals": g["fpr"].max(skipna=True), "mean_tpr": g["tpr"].mean(),
                               "mean_ece": g["ece"].mean()}
        for ref in ("baseline", "probe"):
            m = mean_deltas[(mean_deltas.protocol == protocol) & (mean_deltas.variant == name) &
                            (mean_deltas.vs == ref) & (mean_deltas.view == view)] if len(mean_deltas) else mean_deltas
            if len(m):
                r = m.iloc[0]
                row[f"vs_{ref}"] = r.mean_delta_auc
                row[f"vs_{ref}_lo"], row[f"vs_{ref}_hi"] = r.lo, r.hi
        out.append(row)
    return pd.DataFrame(out)


def _fmt(x: Any, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def to_markdown_report(result: Dict[str, Any], provenance: Dict[str, Any]) -> str:
    """The benchmark as one Markdown page: the summary, then every fold."""
    s = result["summary"]
    lines = [f"# Generalisation benchmark{' (partial: ' + result['partial'] + ')' if result.get('partial') else ''}\n",
             f"Cache {md_code(result['config']['cache'])}, evaluated on view {md_code(result['eval_view'])}; "
             f"{result['config']['n_boot']} paired bootstrap resamples per fold"
             f"{_seeds_note(result['config'])}. "
             f"clipdetect {provenance.get('version')}, commit {provenance.get('commit')}, {provenance.get('date')}.\n",
             "## Summary (means over folds)\n",
             "| protocol | view | variant | folds | mean AUC | min AUC | vs baseline [95% CI] | vs probe [95% CI] | "
             "mean FPR on held-out reals | max FPR | mean ECE |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        vs = [f"{_fmt(r.get(f'vs_{k}'))} [{_fmt(r.get(f'vs_{k}_lo'))}, {_fmt(r.get(f'vs_{k}_hi'))}]"
              if isinstance(r.get(f"vs_{k}"), float) and math.isfinite(r.get(f"vs_{k}")) else "—"
              for k in ("baseline", "probe")]
        lines.append(f"| {r.protocol} | {md_text(r.view)} | {r.variant} | {r.folds} | {_fmt(r.mean_auc)} | {_fmt(r.min_auc)} | {vs[0]} | "
                     f"{vs[1]} | {_fmt(r.mean_fpr_heldout_reals)} | {_fmt(r.max_fpr_heldout_reals)} | "
                     f"{_fmt(r.mean_ece)} |")
    seeds = result.get("seeds")
    if seeds is not None and len(seeds):
        lines += ["", "## Each training seed on its own (mean over folds of the same-seed difference)", "",
                  to_markdown(seeds, columns=["protocol", "view", "variant", "vs", "seed", "folds", "mean_delta_auc"])]
    many = result["config"].get("seeds", 1) > 1
    lines += ["", "## Every fold", "", to_markdown(result["folds"], columns=[
        "protocol", "held_out", "view", "variant", *(["seed"] if many else []), "completed", "n_real", "n_fake",
        "auc", "ap", "fpr", "tpr", "ece", "threshold"]), "",
        f"## Paired differences per fold{' (averaged over the seeds)' if many else ''}", "",
        to_markdown(result["deltas"], columns=["protocol", "held_out", "view", "variant", "vs", "delta_auc", "lo",
                                                "hi"]),
        "", "`fpr`: share of the held-out source's real photos called fake at the fold detector's own threshold "
        "(held-out sources only: loso and sets). `completed`: the held-out source had one class; the other came from the "
        "other sources' test rows."]
    return "\n".join(lines) + "\n"


def _seeds_note(config: Dict[str, Any]) -> str:
    n = config.get("seeds", 1)
    if n <= 1:
        return f", training seed {config.get('seed', 0)} (the CIs hold the test images' noise, not the training run's)"
    first = config.get("seed", 0)
    return (f", training seeds {first}–{first + n - 1} (each fold's difference is averaged over the seeds and its draws "
            "also resample them, so the CIs hold the training run's noise too)")


def save_benchmark(result: Dict[str, Any], out: str | Path, provenance: Dict[str, Any]) -> List[Path]:
    """``benchmark.json`` (config, provenance, every table), ``benchmark.md``, ``folds.csv`` and
    ``scores.csv`` (every test image's logit under every detector, to recompute anything)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {k: records(result[k]) for k in ("summary", "folds", "deltas")}
    paths = [out / n for n in ("benchmark.json", "benchmark.md", "folds.csv", "scores.csv", "benchmark_config.json")]
    if len(result.get("seeds", ())):
        tables["seeds"] = records(result["seeds"])
    write_json(paths[0], {"config": result["config"], "provenance": provenance, "eval_view": result["eval_view"],
                          "partial": result.get("partial"), **tables})
    write_text(paths[1], to_markdown_report(result, provenance))
    write_csv(paths[2], result["folds"])
    write_csv(paths[3], result["scores"])
    write_json(paths[4], result["config"])
    return paths
