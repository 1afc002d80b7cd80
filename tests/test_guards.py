"""The small-sample guards: one table for every place a metric is printed."""
import numpy as np

from clipdetect.core.guards import ci_note, guard, guarded
from clipdetect.core.metrics import evaluate_scores
from clipdetect.core.tables import to_markdown


def test_each_metric_has_its_own_guard():
    assert guard("tpr@fpr=0.1%", {"n_real": 999, "n_fake": 50}) == "needs ≥ 1000 reals"
    assert guard("tpr@fpr=0.1%", {"n_real": 1000, "n_fake": 50}) is None
    assert guard("tpr@fpr=1%", {"n_real": 7, "n_fake": 9}) == "needs ≥ 100 reals"
    assert guard("ece", {"n": 99}) == "needs ≥ 100 rows" and guard("ece", {"n_real": 60, "n_fake": 40}) is None
    assert guard("auc", {"n_real": 5, "n_fake": 0}) == "needs reals and fakes"
    assert guard("auc", {"n_real": 1, "n_fake": 1}) is None and guard("brier", {"n": 3}) is None


def test_guarded_drops_the_value_and_its_bounds_and_says_why():
    m = {"n": 16, "n_real": 7, "n_fake": 9, "auc": 0.9, "tpr@fpr=0.1%": 0.5556, "tpr@fpr=0.1%_lo": 0.2,
         "tpr@fpr=0.1%_hi": 0.8}
    g = guarded(m)
    assert g["tpr@fpr=0.1%"] is None and g["tpr@fpr=0.1%_lo"] is None and g["auc"] == 0.9
    assert g["not_shown"] == {"tpr@fpr=0.1%": "needs ≥ 1000 reals"} and m["tpr@fpr=0.1%"] == 0.5556


def test_ci_notes():
    assert ci_note(0.80, 0.85) == "" and ci_note(0.6, 0.9) == " (wide: ±0.15)"
    assert ci_note(1.0, 1.0, {"n_real": 11, "n_fake": 1}) == " (only 1 fake: CI unreliable)"


def test_tables_never_show_a_refused_number():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(11, int), np.ones(40, int)]
    s = rng.normal(size=y.size) + 3 * y
    gen = np.where(y == 1, np.where(np.arange(y.size) == 11, "rare", "common"), None)
    t = evaluate_scores(y, s, groups={"generator": gen}, n_boot=50, scores_are_probs=False)
    assert t["tpr@fpr=1%"].isna().all() and t["tpr@fpr=1%_lo"].isna().all()  # 11 reals: not computed
    md = to_markdown(t, columns=["value", "n_real", "n_fake", "auc", "tpr@fpr=1%"])
    rare = next(line for line in md.splitlines() if "| rare |" in line)
    assert "n/a (needs ≥ 100 reals)" in rare and "(only 1 fake: CI unreliable)" in rare
