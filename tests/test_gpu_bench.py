"""experiments/gpu_bench.py: a failing section is recorded and the run goes on, the JSON is kept current."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gpu_bench.py"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as ``python experiments/gpu_bench.py`` has it
    spec = importlib.util.spec_from_file_location("gpu_bench_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its image maker is pickled for a process pool
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.sys, "path", list(module.sys.path))
    return module


@pytest.mark.slow  # runs the benchmark script end to end
def test_failures_are_recorded_and_earlier_numbers_kept(bench, tmp_path, monkeypatch):
    seen_before_train = {}

    def failing_decode(paths, spec, device):
        raise RuntimeError("decoder exploded")

    def fake_model(paths, args, spec, precision, text, first, decode):
        assert "error" in decode  # the failed decode section is handed on, not raised
        return {"forward_on_device": 1.0, "first": first}

    def failing_train(args, key):
        seen_before_train.update(json.loads((tmp_path / "gpu_bench.json").read_text()))
        raise MemoryError("out of memory")

    monkeypatch.setattr(bench, "bench_decode", failing_decode)
    monkeypatch.setattr(bench, "bench_model", fake_model)
    monkeypatch.setattr(bench, "bench_train", failing_train)
    monkeypatch.setattr(bench, "bench_profile", lambda args, key, say: {"ran_after_the_failure": True})
    assert bench.main(["--device", "cpu", "--images", "4", "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["images"]["n"] == 4
    decode = result["decode-only img/s, all cores"]
    assert decode["error"] == "RuntimeError: decoder exploded"
    assert any("failing_decode" in line for line in decode["traceback"])
    models = [v for k, v in result.items() if k.startswith("extract ")]
    assert [m["first"] for m in models] == [True, False]  # both CPU models ran after the failure
    train = next(v for k, v in result.items() if k.startswith("train "))
    assert train["error"] == "MemoryError: out of memory"
    profile = next(v for k, v in result.items() if k.startswith("profile "))
    assert profile["ran_after_the_failure"]
    assert "seconds" in result
    # written before the training section started: the earlier sections were already on disk
    assert seen_before_train["images"]["n"] == 4
    assert "error" in seen_before_train["decode-only img/s, all cores"]


@pytest.mark.slow  # runs the benchmark script end to end
def test_cuda_only_pieces_are_skipped_on_the_cpu(bench, tmp_path):
    bench.main(["--device", "cpu", "--images", "4", "--skip", "extract,train,profile", "--out", str(tmp_path)])
    decode = json.loads((tmp_path / "gpu_bench.json").read_text())["decode-only img/s, all cores"]
    assert decode["gpu_decode_jpeg_only"] == {"skipped": "needs CUDA"}
    assert decode["exact"] > 0 and decode["draft"] > 0


@pytest.mark.slow  # compiles the head for the graphs variant
def test_the_profile_section_times_each_variant_and_skips_tf32_on_the_cpu(bench, tmp_path):
    bench.main(["--device", "cpu", "--quick", "--skip", "decode,extract,train", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert "images" in result and "skipped" in result["images"]  # no images made when nothing decodes
    profile = next(v for k, v in result.items() if k.startswith("profile "))
    assert set(profile) == {"eager_256", "graphs_256", "eager_1024", "section_s"}  # tf32: CUDA only
    for name in ("eager_256", "graphs_256"):
        row = profile[name]
        assert row["wall_ms_per_step"] > 0 and row["rows_per_s"] > 0
        assert row["profile"]["top_by_host_ms"]  # the profiler saw the step's operators


def test_steady_rate_leaves_out_the_first_epoch(bench, monkeypatch):
    import gpu_bench_train
    from clipdetect.models.train import TrainConfig

    class Result:
        steps = 30
        history = [{"steps": 10, "seconds": 100.0, "train_loss": 1.0},
                   {"steps": 20, "seconds": 2.0, "train_loss": 0.5}, {"steps": 30, "seconds": 2.0, "train_loss": 0.4}]

    monkeypatch.setattr("clipdetect.models.train.train", lambda *a, **k: Result())
    import numpy as np
    cfg = TrainConfig(batch_size=8, max_steps=30)
    out = gpu_bench_train.trainer_rate(np.zeros((16, 4), np.float32), np.arange(16) % 2, cfg, "none", 2, 1.0, False)
    assert out["steady_rows_per_s"] == 20 * 8 / 4.0  # epochs 2 and 3: 20 steps of 8 rows in 4 s
    assert out["rows_per_s"] > 0
