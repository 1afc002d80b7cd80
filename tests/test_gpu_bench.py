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
    assert "seconds" in result
    # written before the training section started: the earlier sections were already on disk
    assert seen_before_train["images"]["n"] == 4
    assert "error" in seen_before_train["decode-only img/s, all cores"]


@pytest.mark.slow  # runs the benchmark script end to end
def test_cuda_only_pieces_are_skipped_on_the_cpu(bench, tmp_path):
    bench.main(["--device", "cpu", "--images", "4", "--skip", "extract,train", "--out", str(tmp_path)])
    decode = json.loads((tmp_path / "gpu_bench.json").read_text())["decode-only img/s, all cores"]
    assert decode["gpu_decode_jpeg_only"] == {"skipped": "needs CUDA"}
    assert decode["exact"] > 0 and decode["draft"] > 0
