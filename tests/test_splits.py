import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest

from clipdetect.features import splits as splits_module
from clipdetect.features.splits import assign_splits, resolve_all, resolve_split_rows

from helpers.synthetic import write_synthetic_cache


def test_assign_splits_fractions_and_stability():
    keys = [f"img-{i}" for i in range(4000)]
    s = assign_splits(keys, val=0.2, test=0.1, seed=3)
    assert set(s) == {"train", "val", "test"}
    assert abs((s == "val").mean() - 0.2) < 0.03 and abs((s == "test").mean() - 0.1) < 0.03
    # independent of order and of the other keys
    assert assign_splits(keys[::-1], val=0.2, test=0.1, seed=3)[::-1].tolist() == s.tolist()
    assert assign_splits(keys[:10], val=0.2, test=0.1, seed=3).tolist() == s[:10].tolist()
    # a different seed gives a different assignment
    assert (assign_splits(keys, val=0.2, test=0.1, seed=4) != s).mean() > 0.2


def test_assign_splits_same_in_another_process():
    # load the module file alone (no package import, so no torch start-up) under another hash seed
    path = Path(splits_module.__file__)
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('splits', %r); "
            "m = sys.modules['splits'] = u.module_from_spec(s); s.loader.exec_module(m); print(','.join(m.assign_splits([f'k{i}' for i in range(50)])))" % str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert out.split(",") == assign_splits([f"k{i}" for i in range(50)]).tolist()


def test_bad_fractions():
    with pytest.raises(ValueError, match="sum to < 1"):
        assign_splits(["a"], val=0.6, test=0.5)


def test_resolve_derives_heldout_from_all_train_cache(tmp_path):
    cache = write_synthetic_cache(tmp_path / "c", n=300)
    tr, va, te = resolve_all(cache, val=0.2, test=0.2)
    assert len(tr) + len(va) + len(te) == 300
    assert not (set(tr) & set(va)) and not (set(va) & set(te)) and len(va) > 20 and len(te) > 20
    assert resolve_split_rows(cache, "validation", val=0.2, test=0.2).tolist() == va.tolist()
    expected = assign_splits(cache.meta["key"], val=0.2, test=0.2)
    assert np.array_equal(np.flatnonzero(expected == "test"), te)


def test_resolve_uses_existing_splits(tmp_path):
    splits = ["train"] * 50 + ["validation"] * 20 + ["test"] * 30
    cache = write_synthetic_cache(tmp_path / "c", n=100, splits=splits)
    assert resolve_split_rows(cache, "val").tolist() == list(range(50, 70))
    assert resolve_split_rows(cache, "test").tolist() == list(range(70, 100))
    assert resolve_split_rows(cache, "train").tolist() == list(range(50))
    with pytest.raises(ValueError, match="not one of"):
        resolve_split_rows(cache, "holdout")


def test_split_spec_is_the_one_naming_of_a_split():
    from clipdetect.features.splits import SplitSpec
    from clipdetect.models.train import TrainConfig

    spec = SplitSpec.of(TrainConfig(val_fraction=0.2, test_fraction=0.1, split_seed=3))
    assert spec == SplitSpec(0.2, 0.1, 3)
    assert SplitSpec.of({"val_fraction": 0.2, "test_fraction": 0.1, "split_seed": 3}) == spec
    assert SplitSpec.of(spec, seed=4) == SplitSpec(0.2, 0.1, 4)  # explicit values win
    keys = [f"k{i}" for i in range(200)]
    assert spec.assign(keys).tolist() == assign_splits(keys, val=0.2, test=0.1, seed=3).tolist()
    with pytest.raises(ValueError, match="sum to < 1"):
        SplitSpec(0.6, 0.5)
