"""Evaluate a detector on a feature cache: metrics overall, per generator and per column.

Scores are the detector's logits (rank metrics are computed on logits, which never
saturate the way float probabilities do); ``acc@0.5`` thresholds ``P(fake) = 0.5`` (logit 0)
and ``acc@thr`` the detector's validation-chosen threshold, mapped to the logit scale as
``T * logit(threshold)``. ECE and Brier use the temperature-scaled probability
``sigmoid(logit / T)``, i.e. :meth:`Detector.fake_probability`.

Per-generator rows are D3-style: the fakes of one generator against **all** reals of the
split. Any other metadata column (``format``, ``width`` ...) groups rows as they are.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from clipdetect.core.metrics import brier_score, evaluate_scores, expected_calibration_error, to_markdown
from clipdetect.core.io import atomic_write, write_json, write_text
from clipdetect.features.splits import SplitSpec

logger = logging.getLogger(__name__)

#: columns shown in ``metrics.md`` (bootstrap bounds are folded into the metric cells)
TABLE_COLUMNS = ["group", "value", "vs", "n_real", "n_fake", "auc", "ap", "acc@0.5", "acc@thr", "eer",
                 "tpr@fpr=1%", "tpr@fpr=0.1%", "ece", "brier"]
#: columns whose real rows are left out of the groups (reals are the shared reference)
FAKE_ONLY_COLUMNS = ("generator",)


@dataclass
class EvalConfig:
    """Options of one evaluation; saved as ``eval_config.json`` next to the metrics."""

    detector: str = ""
    cache: str = ""
    split: str = "test"
    by: List[str] = field(default_factory=lambda: ["generator"])
    n_boot: int = 1000
    seed: int = 0
    val: Optional[float] = None  # split fractions; None: the detector's training values
    test: Optional[float] = None
    split_seed: Optional[int] = None


def split_params(detector, *, val: Optional[float] = None, test: Optional[float] = None,
                 seed: Optional[int] = None) -> SplitSpec:
    """The detector's split: explicit values, else those recorded at training, else defaults."""
    return SplitSpec.of(detector, val=val, test=test, seed=seed)


def split_rows(cache, split: str, spec: Optional[SplitSpec] = None) -> np.ndarray:
    """Row ids of ``split`` in ``cache`` ("all" = every row); see :class:`SplitSpec`."""
    if split == "all":
        return np.arange(len(cache), dtype=np.int64)
    rows = (spec or SplitSpec()).rows(cache, split)
    if rows.size == 0:
        raise ValueError(f"split {split!r} of cache {str(cache.root)!r} is empty; "
                         "pick another with --split (train, val, test or all)")
    return rows


def is_training_cache(detector, cache) -> bool:
    """Whether ``cache`` is the cache ``detector`` was trained on (path and creation stamp)."""
    extra = dict(getattr(detector, "extra", None) or {})
    if not extra.get("cache"):
        return False
    same = Path(str(extra["cache"])).resolve() == Path(str(cache.root)).resolve()
    created = extra.get("cache_created")
    return same and (created is None or created == cache.manifest.get("created"))


def choose_rows(detector, cache, split: str, spec: Optional[SplitSpec] = None) -> tuple:
    """``(rows, split, note)``: the rows to score, the split actually used and a note (or "").

    ``split="auto"``: "test" when the cache names held-out rows or is the detector's training
    cache, else "all" (a held-out set extracted as "train" is scored whole). A hash-derived
    subset of a cache the detector was not trained on is scored only when asked for, and
    then with a loud warning: it silently drops most of the rows.
    """
    from clipdetect.features.splits import has_heldout_splits

    heldout = has_heldout_splits(cache.columns("split")["split"].astype(str).str.lower().unique())
    own = is_training_cache(detector, cache)
    note = ""
    if split == "auto":
        split = "test" if heldout or own else "all"
        if split == "all":
            note = (f"cache {str(cache.root)!r} holds no val/test rows and is not the cache this detector was "
                    f"trained on: scoring all {len(cache)} rows")
            logger.info(note)
    rows = split_rows(cache, split, spec)
    if split != "all" and not heldout and not own:
        note = (f"scoring a hash subset: {rows.size} of {len(cache)} rows of {str(cache.root)!r} (the rows its "
                f"key hash assigns to {split!r}; val={spec.val}, test={spec.test}); this is not "
                "the detector's training cache, so --split all (or auto) scores every row")
        logger.warning(note)
    return rows, split, note


def check_both_classes(y: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` with the counts unless ``y`` holds reals and fakes."""
    n_fake = int(np.sum(np.asarray(y) == 1))
    n_real = int(np.size(y) - n_fake)
    if n_real == 0 or n_fake == 0:
        raise ValueError(f"{what} holds {n_real} real and {n_fake} fake rows: AUC, EER and TPR at FPR are "
                         "undefined with one class; evaluate a selection holding both (another --split, "
                         "a cache with both labels)")


def logit_threshold(detector) -> float:
    """The detector's probability threshold on the (un-tempered) logit scale."""
    p = float(detector.threshold)
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return float(detector.temperature) * math.log(p / (1.0 - p))


def group_values(meta: pd.DataFrame, columns: Sequence[str], y: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-sample group values of ``columns``; for generator-like columns reals get None."""
    out: Dict[str, np.ndarray] = {}
    for col in columns:
        if col not in meta.columns:
            raise ValueError(f"cannot group by {col!r}: the cache metadata has columns {list(meta.columns)}")
        vals = meta[col].to_numpy(dtype=object).copy()
        if col in FAKE_ONLY_COLUMNS:
            vals[y == 0] = None
        out[col] = vals
    return out


def _group_masks(y: np.ndarray, groups: Dict[str, np.ndarray]):
    """(group, value, mask) in the order :func:`metrics.evaluate_scores` emits rows."""
    yield "overall", "all", np.ones(y.size, dtype=bool)
    for col, values in groups.items():
        s = pd.Series(values)
        for value in sorted(s[s.notna()].unique(), key=str):
            mask = (s == value).to_numpy()
            if (y[mask] == 1).all():
                mask = mask | (y == 0)
            yield col, value, mask


def score_table(y: np.ndarray, logits: np.ndarray, probs: np.ndarray, *,
                groups: Optional[Dict[str, np.ndarray]] = None, threshold: Optional[float] = None,
                n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`metrics.evaluate_scores` on logits plus ``ece`` and ``brier`` on ``probs``."""
    groups = groups or {}
    table = evaluate_scores(y, logits, groups=groups, threshold=threshold, n_boot=n_boot, seed=seed,
                            scores_are_probs=False, reference="real")
    ece, brier = [], []
    for _, _, mask in _group_masks(y, groups):
        ece.append(expected_calibration_error(y[mask], probs[mask]))
        brier.append(brier_score(y[mask], probs[mask]))
    table["ece"], table["brier"] = ece, brier
    return table


@dataclass
class EvalReport:
    table: pd.DataFrame
    config: Dict[str, Any]
    scores: pd.DataFrame  # key, label, group columns, logit, probability

    def to_markdown(self, *, digits: int = 3) -> str:
        cols = [c for c in TABLE_COLUMNS if c in self.table.columns]
        c = self.config
        head = (f"Detector `{c.get('detector')}` on cache `{c.get('cache')}`, split `{c.get('split')}` "
                f"({len(self.scores)} images); threshold P(fake) > {c.get('threshold'):.4g}, "
                f"temperature {c.get('temperature'):.4g}; 95% bootstrap CIs ({c.get('n_boot')} resamples).")
        if c.get("rows_note"):
            head += f"\n\n**Note:** {c['rows_note']}."
        return head + "\n\n" + to_markdown(self.table, columns=cols, digits=digits) + "\n"

    def save(self, out: str | Path) -> List[Path]:
        """Write metrics.json, metrics.csv, metrics.md and eval_config.json into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        records = json.loads(self.table.to_json(orient="records"))
        paths = [out / n for n in ("metrics.json", "metrics.csv", "metrics.md", "eval_config.json")]
        write_json(paths[0], {"config": self.config, "metrics": records})
        atomic_write(paths[1], lambda f: self.table.to_csv(f, index=False))
        write_text(paths[2], self.to_markdown())
        write_json(paths[3], self.config)
        return paths


def score_rows(detector, cache, rows: np.ndarray) -> tuple:
    """(logits, probabilities) of ``rows``; the cache must match the detector's backbone."""
    x = detector.features(cache, rows)
    logits = np.asarray(detector.decision_function(x), dtype=np.float64).ravel()
    probs = np.asarray(detector.fake_probability(x), dtype=np.float64).ravel()
    return logits, probs


def evaluate_detector(detector, cache, *, split: str = "test", by: Sequence[str] = ("generator",),
                      n_boot: int = 1000, seed: int = 0, val: Optional[float] = None,
                      test: Optional[float] = None, split_seed: Optional[int] = None,
                      rows: Optional[np.ndarray] = None,
                      names: Optional[Dict[str, str]] = None) -> EvalReport:
    """Score ``split`` of ``cache`` (or explicit ``rows``) and tabulate the metrics.

    ``names`` (optional) records how the detector and cache are called in the report.
    ``split="auto"`` and hash subsets: see :func:`choose_rows`; a selection with one class
    is a ``ValueError`` naming the counts.
    """
    params = split_params(detector, val=val, test=test, seed=split_seed)
    note = ""
    if rows is None:
        rows, split, note = choose_rows(detector, cache, split, params)
    rows = np.asarray(rows, dtype=np.int64)
    meta = cache.meta.loc[rows].reset_index(drop=True)
    y = cache.labels(rows)
    check_both_classes(y, f"split {split!r} of cache {str(cache.root)!r}")
    logits, probs = score_rows(detector, cache, rows)
    groups = group_values(meta, list(by), y)
    table = score_table(y, logits, probs, groups=groups, threshold=logit_threshold(detector),
                        n_boot=n_boot, seed=seed)
    names = names or {}
    config = {**asdict(EvalConfig(detector=names.get("detector", ""),
                                  cache=names.get("cache", str(cache.root)), split=split, by=list(by),
                                  n_boot=n_boot, seed=seed)),
              "val": params.val, "test": params.test, "split_seed": params.seed,
              "threshold": float(detector.threshold), "temperature": float(detector.temperature),
              "feature_set": detector.feature_set, "n_rows": int(rows.size), "rows_note": note}
    scores = pd.DataFrame({"row": rows, "key": meta["key"], "label": y, "logit": logits,
                           "probability": probs})
    for col in by:
        scores[col] = meta[col].to_numpy()
    return EvalReport(table=table, config=config, scores=scores)


def roc_curves(detector, cache, rows: np.ndarray, *, by: Optional[str] = "generator") -> Dict[str, tuple]:
    """``{"overall": (y, logits), <generator>: (y, logits) ...}`` for ROC plots (fakes of each
    value of ``by`` against all reals of ``rows``)."""
    y = cache.labels(rows)
    logits, _ = score_rows(detector, cache, rows)
    curves = {"overall": (y, logits)}
    if by:
        values = group_values(cache.meta.loc[rows].reset_index(drop=True), [by], y)[by]
        for value, mask in ((v, m) for c, v, m in _group_masks(y, {by: values}) if c == by):
            if value is not None and 0 < y[mask].sum() < mask.sum() and not mask.all():
                curves[str(value)] = (y[mask], logits[mask])  # a group of every row would repeat "overall"
    return curves


def plot_detectors(detectors: Dict[str, Any], cache, out_stem: str | Path, *, split: str = "test",
                   by: Optional[str] = "generator", formats: Sequence[str] = ("png", "pdf"),
                   title: Optional[str] = None, dpi: int = 150) -> List[Path]:
    """ROC figure (linear + log-FPR panels) and score histograms (one panel per detector)
    as ``<stem>_roc.*`` and ``<stem>_hist.*``.

    One detector: a curve per value of ``by`` plus overall. Several: colour per generator
    and line style per detector, or a colour per detector when each has one curve only.
    """
    import matplotlib.pyplot as plt

    from clipdetect.eval.plots import plot_score_histograms, roc_figure, roc_figure_multi, save_figure

    curves: Dict[str, Dict[str, tuple]] = {}
    chosen = {}
    for name, det in detectors.items():
        chosen[name] = rows = choose_rows(det, cache, split, split_params(det))[0]
        check_both_classes(cache.labels(rows), f"split {split!r} of cache {str(cache.root)!r}")
        curves[name] = roc_curves(det, cache, rows, by=by)
    title = title or f"{Path(str(cache.root)).name} ({split})"
    if len(curves) == 1:
        fig = roc_figure(next(iter(curves.values())), title=f"{next(iter(curves))}: {title}")
    elif all(len(c) == 1 for c in curves.values()):
        fig = roc_figure({name: c["overall"] for name, c in curves.items()}, title=title)
    else:
        fig = roc_figure_multi(curves, title=title)
    paths = save_figure(fig, f"{out_stem}_roc", formats=formats, dpi=dpi)
    fig, axes = plt.subplots(1, len(detectors), figsize=(5.0 * len(detectors), 3.8), squeeze=False)
    for ax, (name, det) in zip(axes[0], detectors.items()):
        rows = chosen[name]
        y, s = curves[name]["overall"]
        groups = None
        if by:
            groups = cache.meta.loc[rows, by].to_numpy(dtype=object)
        plot_score_histograms(y, s, groups=groups, ax=ax)
        ax.set_title(name)
        ax.set_xlabel("logit (higher = more likely fake)")
    fig.tight_layout()
    return paths + save_figure(fig, f"{out_stem}_hist", formats=formats, dpi=dpi)


def baseline_probe(detector, cache, *, train_cache=None):
    """The logistic-regression probe (:func:`clipdetect.models.baseline.fit_probe_on_cache`) for
    ``detector``: fitted on the train rows of the cache it was trained on (``train_cache``, else
    the path recorded in the bundle, else ``cache``) with its split fractions and seed, on its
    feature set. Returns ``(probe, None)`` or ``(None, reason)`` when no train rows are at hand."""
    from clipdetect.features.cache import FeatureCache
    from clipdetect.models.baseline import fit_probe_on_cache

    if train_cache is None:
        recorded = (getattr(detector, "extra", None) or {}).get("cache")
        train_cache = cache
        if recorded and Path(str(recorded)).resolve() != Path(str(cache.root)).resolve():
            if not (Path(str(recorded)) / "manifest.json").is_file():
                return None, (f"the detector's training cache {recorded!r} is not at hand; pass "
                              "--baseline-cache DIR (the cache it was trained on)")
            train_cache = FeatureCache(recorded)
    elif not hasattr(train_cache, "features"):
        train_cache = FeatureCache(train_cache)
    detector.check_backbone(train_cache.backbone)
    p = split_params(detector)
    try:
        probe = fit_probe_on_cache(train_cache, feature_set=detector.feature_set, val_fraction=p.val,
                                   test_fraction=p.test, split_seed=p.seed)
    except ValueError as exc:
        return None, str(exc)
    return probe, None


def paired_auc_difference(y, scores_a, scores_b, *, n_boot: int = 1000, seed: int = 0) -> Dict[str, float]:
    """AUC(a) − AUC(b) on the same samples, with a paired stratified bootstrap 95% CI.

    Both detectors are scored on the same resample each time, so the interval reflects
    the difference itself (much narrower than comparing two separate CIs). ``p_le_0`` is
    the fraction of resamples where a is not better than b.
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(np.int64)
    s = np.stack([np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)])
    real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    if real.size == 0 or fake.size == 0:
        raise ValueError("a paired AUC difference needs reals and fakes")

    def aucs(idx_real, idx_fake):
        idx = np.concatenate([idx_real, idx_fake], axis=-1)
        r = rankdata(s[:, idx], axis=-1)[..., idx_real.shape[-1]:].sum(-1)
        return (r - fake.size * (fake.size + 1) / 2.0) / (real.size * fake.size)

    point = aucs(real, fake)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        a = aucs(rng.choice(real, real.size), rng.choice(fake, fake.size))
        diffs[b] = a[0] - a[1]
    lo, hi = (np.percentile(diffs, [2.5, 97.5]) if n_boot else (math.nan, math.nan))
    return {"auc_a": float(point[0]), "auc_b": float(point[1]), "delta_auc": float(point[0] - point[1]),
            "delta_auc_lo": float(lo), "delta_auc_hi": float(hi),
            "p_le_0": float((diffs <= 0).mean()) if n_boot else math.nan}


def compare_reports(reports: Dict[str, "EvalReport"], *, n_boot: int = 1000, seed: int = 0,
                    reference: Optional[str] = None) -> pd.DataFrame:
    """One row per detector: its overall metrics, plus ``delta_auc`` = AUC(this) − AUC(reference)
    with a paired bootstrap 95% CI (positive = better than the reference; ``reference``
    defaults to the first report). All reports must cover the same rows."""
    names = list(reports)
    reference = names[0] if reference is None else reference
    if reference not in reports:
        raise ValueError(f"reference {reference!r} is not one of the compared detectors {names}")
    base = reports[reference].scores
    rows = []
    for name in names:
        rep = reports[name]
        if not np.array_equal(rep.scores["row"].to_numpy(), base["row"].to_numpy()):
            raise ValueError(f"detector {name!r} was evaluated on other rows than {reference!r}; "
                             "compare detectors that share the split fractions and seed")
        overall = rep.table.iloc[0].to_dict()
        row = {"detector": name, **{k: v for k, v in overall.items() if k not in ("group", "value", "vs")}}
        if name != reference:
            d = paired_auc_difference(base["label"], rep.scores["logit"], base["logit"], n_boot=n_boot,
                                      seed=seed)
            row.update(delta_auc=d["delta_auc"], delta_auc_lo=d["delta_auc_lo"],
                       delta_auc_hi=d["delta_auc_hi"], p_le_0=d["p_le_0"])
        rows.append(row)
    return pd.DataFrame(rows)
