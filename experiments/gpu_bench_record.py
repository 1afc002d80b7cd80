"""Results of experiments/gpu_bench.py: sections that record their error and go on, a JSON kept current."""
from __future__ import annotations

import contextlib
import gc
import json
import time
import traceback

from clipdetect.core.io import write_text
from common import stamped

#: dense datasheet peaks of one H200 SXM, TFLOP/s
PEAK = {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0}
SKIPPED = {"skipped": "needs CUDA"}
RESULT: dict = {}
OUT: list = [None]  # the JSON file, set by main()


def save() -> None:
    if OUT[0] is None:
        return
    write_text(OUT[0], json.dumps(stamped(RESULT), indent=2) + "\n")  # sections in the order they ran


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


@contextlib.contextmanager
def matmul_tf32(enabled: bool):
    """TF32 tensor cores for fp32 matrix products on CUDA inside the block (off again after it)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def sam_head(cfg, dim: int, lr: float, **opt_kw):
    """``(head, optimiser)``: the trainer's head for ``dim`` inputs on ``cfg.device``, in training mode,
    and SAM over AdamW with ``cfg``'s rho and weight decay (``opt_kw``: e.g. fused, capturable)."""
    import torch
    from clipdetect.models.heads import create_head
    from clipdetect.models.sam import SAM

    head = create_head(cfg.head_config(dim)).to(cfg.device).train()
    return head, SAM(head.parameters(), torch.optim.AdamW, rho=cfg.rho, lr=lr, weight_decay=cfg.weight_decay,
                     **opt_kw)
