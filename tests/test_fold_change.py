"""experiments/fold_change.py: two benchmark runs side by side, seeds averaged, shared folds only."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from fold_change import compare  # noqa: E402


def _run(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    pd.DataFrame(rows, columns=["protocol", "held_out", "variant", "view", "seed", "auc"]).to_csv(d / "folds.csv", index=False)
    return d


def test_seeds_are_averaged_and_only_shared_folds_compared(tmp_path):
    v = "norm:256:90"
    before = _run(tmp_path, "a", [("loso", "x", "views", v, 0, 0.80), ("loso", "x", "views", v, 1, 0.90),
                                  ("loso", "y", "views", v, 0, 0.70), ("loso", "x", "views", "orig", 0, 0.1)])
    after = _run(tmp_path, "b", [("loso", "x", "views", v, 0, 0.95), ("loso", "y", "views", v, 0, 0.60),
                                 ("loso", "z", "views", v, 0, 0.99)])
    res = compare(before, after, ["views"], v)
    assert res["shared_folds"] == 2 and res["only_after"] == ["loso/z"]
    m = res["mean"]["views"]
    assert m["before"] == pytest.approx((0.85 + 0.70) / 2) and m["after"] == pytest.approx((0.95 + 0.60) / 2)
    assert m["change"] == pytest.approx(0.0) and m["folds_up"] == 1
    assert res["per_fold"]["loso/x"]["views"] == [0.85, 0.95]
