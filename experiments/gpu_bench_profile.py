"""The profile section of experiments/gpu_bench.py: where one SAM training step spends its time.

For the trainer's step (paper head, CVaR+AUC, SAM, AdamW fused on CUDA, batches from rows on
the device, the losses' device-only form) eager and with ``compile="graphs"`` (in fp32, and on
CUDA with TF32 matrix products too), eager at 4× the batch, and on CUDA the whole step (batch
gather, both SAM passes, a capturable fused AdamW) captured as one CUDA graph, fp32 and TF32 (not
yet run on a GPU: the table's next measurement): the step's wall time, then ``torch.profiler`` over a few steps: kernels launched per
step, the device's busy time per step (the sum of kernel times) and the top operators by host
and by device time. Busy time far below the wall time means the step waits on the host
(launches, dispatch), not on the GPU's arithmetic.
"""
from __future__ import annotations

import time

import numpy as np

from gpu_bench_record import guarded, matmul_tf32, sam_head, sync


def _ms(value_us: float, steps: int) -> float:
    return round(value_us / steps / 1000, 3)


def _profile(step, steps: int, device) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync(device)
    dev = torch.autograd.DeviceType.CUDA
    kernels = [e for e in prof.events() if e.device_type == dev]
    avg = prof.key_averages()

    def self_dev(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    top_dev = sorted(avg, key=self_dev, reverse=True)[:6]
    top_cpu = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    return {"kernels_per_step": round(len(kernels) / steps, 1),
            "device_busy_ms_per_step": _ms(sum(e.time_range.elapsed_us() for e in kernels), steps),
            "top_by_device_ms": {e.key[:60]: _ms(self_dev(e), steps) for e in top_dev if self_dev(e)},
            "top_by_host_ms": {e.key[:60]: _ms(e.self_cpu_time_total, steps) for e in top_cpu}}


def step_profile(X, y, cfg, mode: str, batch: int, steps: int = 50, tf32: bool = False) -> dict:
    with matmul_tf32(tf32):
        return _step_profile(X, y, cfg, mode, batch, steps) | {"tf32": tf32}


def _step_profile(X, y, cfg, mode: str, batch: int, steps: int) -> dict:
    import torch
    from clipdetect.models.losses import trusted_batches
    from clipdetect.models.schedule import DEFAULT_LR
    from clipdetect.models.step import forward_loss, sam_step
    from clipdetect.models.train import build_loss

    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    torch._dynamo.reset()
    Xd = torch.from_numpy(X).to(device)
    yd = torch.from_numpy(y.astype(np.float32)).to(device)
    whole = mode == "whole"  # the whole step (gather, both SAM passes, AdamW) as one CUDA graph
    fused = {"fused": True, **({"capturable": True} if whole else {})} if cuda else {}
    head, opt = sam_head(cfg, X.shape[1], cfg.lr or DEFAULT_LR[cfg.head], **fused)
    loss_fn = build_loss(cfg)
    step_loss = forward_loss(head, loss_fn, "none" if whole else mode)
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, len(Xd), (batch,), device=device, generator=gen)  # the graph's static input
    replay = []

    def body():
        xb, yb = Xd.index_select(0, idx).float(), yd.index_select(0, idx)
        sam_step(head, opt, loss_fn, xb, yb, True, step_loss=step_loss)

    def step():
        torch.randint(0, len(Xd), (batch,), device=device, generator=gen, out=idx)
        (replay[0] if replay else body)()

    with trusted_batches():
        if whole:
            replay.append(_captured(body, device))
        t0 = time.perf_counter()
        for _ in range(15):
            step()
        sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = (time.perf_counter() - t0) / steps
        prof = guarded(_profile, step, 3, device)
    return {"batch": batch, "compile": mode, "warmup_s": round(warm, 1), "wall_ms_per_step": round(wall * 1000, 3),
            "rows_per_s": round(batch / wall, 0), "profile": prof}


def _captured(body, device):
    """``body`` captured as one CUDA graph after a warm-up on a side stream; returns its replay."""
    import torch

    if device.type != "cuda":
        raise RuntimeError("whole-step capture needs CUDA")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def bench_profile(args, key, say) -> dict:
    """Eager and graphs at ``args.profile_batch`` (the trainer's 2048), eager at 4× that; each recorded as it
    finishes."""
    from clipdetect.models.train import TrainConfig

    rng = np.random.default_rng(0)
    X = rng.standard_normal((min(args.rows, 65536), args.dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X = X.astype(np.float16)
    y = rng.integers(0, 2, len(X))  # random draws: both classes in every batch of this size
    b = args.profile_batch
    cfg = TrainConfig(batch_size=b, depth=args.depth, device=args.device)
    out: dict = {}
    cuda = args.device.startswith("cuda")
    for name, mode, batch, tf32 in ((f"eager_{b}", "none", b, False), (f"graphs_{b}", "graphs", b, False),
                                    (f"graphs_{b}_tf32", "graphs", b, True), (f"eager_{4 * b}", "none", 4 * b, False),
                                    (f"whole_graph_{b}", "whole", b, False), (f"whole_graph_{b}_tf32", "whole", b, True)):
        if (tf32 or mode == "whole") and not cuda:
            continue
        out[name] = guarded(step_profile, X, y, cfg, mode, batch, args.profile_steps, tf32)
        say(key, out)
    return out
