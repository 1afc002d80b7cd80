"""Results of experiments/gpu_bench.py: sections that record their error and go on, a JSON kept current."""
from __future__ import annotations

import gc
import json
import os
import time
import traceback

#: dense datasheet peaks of one H200 SXM, TFLOP/s
PEAK = {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0}
SKIPPED = {"skipped": "needs CUDA"}
RESULT: dict = {}
OUT: list = [None]  # the JSON file, set by main()


def save() -> None:
    if OUT[0] is None:
        return
    tmp = OUT[0].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(RESULT, indent=2) + "\n")
    os.replace(tmp, OUT[0])


def say(key, value):
    RESULT[key] = value
    print(f"{key}: {json.dumps(value)}", flush=True)
    save()


def error(exc: BaseException) -> dict:
    lines = [ln for ln in traceback.format_exc().strip().splitlines() if ln.strip(" ^~")]  # no marker lines
    return {"error": f"{type(exc).__name__}: {exc}"[:1000], "traceback": lines[-8:]}


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def guarded(fn, *args, **kwargs):
    """``fn(...)``, or the error it raised as ``{"error", "traceback"}``."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  a benchmark section must not end the run
        free()
        return error(exc)


def section(key, fn, *args, **kwargs):
    """Run one section, record its value (or error) and its seconds, rewrite the JSON."""
    t0 = time.perf_counter()
    value = guarded(fn, *args, **kwargs)
    if isinstance(value, dict):
        value = {**value, "section_s": round(time.perf_counter() - t0, 1)}
    say(key, value)
    return value


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def ok(value) -> bool:
    return not (isinstance(value, dict) and ("error" in value or "skipped" in value))
