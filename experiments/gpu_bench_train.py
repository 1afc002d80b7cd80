"""The training section of experiments/gpu_bench.py: the trainer per compile mode, a reference-style
loop and the SAM step's ceiling, with TFLOP/s against the peak."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from gpu_bench_record import PEAK, SKIPPED, guarded, matmul_tf32, ok, sam_head, say, sync


def sam_flops_per_row(head) -> float:
    """2 SAM passes × (forward + backward ≈ 3 × forward) × 2 FLOP per multiply-add."""
    import torch

    macs = sum(m.in_features * m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear))
    return 2 * 3 * 2 * macs


def throughput(rows_per_s, flops, precision, cuda):
    """rows/s with the achieved TFLOP/s and, on the GPU, the share of the H200 peak."""
    tflops = rows_per_s * flops / 1e12
    return {"rows_per_s": round(rows_per_s, 0), "tflops": float(f"{tflops:.4g}"),
            "of_peak": round(tflops / PEAK[precision], 4) if cuda else None}


def trainer_rate(X, y, cfg, mode, warm_steps, flops, cuda):
    """The trainer with ``compile=mode``: a short warm-up run (compiles), then the timed run."""
    import torch
    from clipdetect.models.sources import ArraySource
    from clipdetect.models.train import train

    torch._dynamo.reset()  # each mode compiles afresh (and gets its own recompile budget)
    t0 = time.perf_counter()
    train(ArraySource(X, y), config=dataclasses.replace(cfg, max_steps=warm_steps), progress=False,
          compile=mode)
    sync(cfg.device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = train(ArraySource(X, y), config=cfg, progress=False, compile=mode)
    sync(cfg.device)
    rate = res.steps * cfg.batch_size / (time.perf_counter() - t0)
    later = res.history[1:]  # epochs after the first: no upload, no (re)compilation, validation included
    steady = ((later[-1]["steps"] - res.history[0]["steps"]) * cfg.batch_size / sum(r["seconds"] for r in later)
              if later else None)
    return {**throughput(rate, flops, "fp32", cuda), "steps": res.steps, "warmup_s": round(warm, 1),
            "steady_rows_per_s": round(steady, 0) if steady else None,
            "final_train_loss": round(res.history[-1]["train_loss"], 5)}


def reference_rate(X, y, cfg, n_steps, lr):
    """The reference-style loop: np.load of the array, per-sample DataLoader, fminbound CVaR."""
    import torch
    from bench_train import PerSampleDataset, reference_loss
    from clipdetect.models.step import sam_step

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", X)
        Xr = np.load(Path(tmp) / "x.npy")
    loader = torch.utils.data.DataLoader(PerSampleDataset(Xr, y), batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=True)
    batches = (b for _ in range(n_steps) for b in loader)  # epochs on, however few batches one has
    torch.manual_seed(0)
    head, opt = sam_head(cfg, X.shape[1], lr)
    loss_ref = reference_loss(cfg)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        xb, yb = next(batches)
        float(sam_step(head, opt, loss_ref, xb.float().to(cfg.device), yb.to(cfg.device), True))
    return {"rows_per_s": round(n_steps * cfg.batch_size / (time.perf_counter() - t0), 0), "steps": n_steps}


def step_ceiling(X, y, cfg, precision, steps, lr, flops, cuda):
    """The SAM step alone on one batch already on the device (eager), in ``precision``."""
    import torch
    from clipdetect.models.losses import trusted_batches
    from clipdetect.models.step import sam_step
    from clipdetect.models.train import build_loss

    dev = cfg.device
    xb = torch.from_numpy(X[:cfg.batch_size].astype(np.float32)).to(dev)
    yb = torch.from_numpy(y[:cfg.batch_size].astype(np.float32)).to(dev)
    with matmul_tf32(precision == "tf32"):
        head, opt = sam_head(cfg, X.shape[1], lr, **({"fused": True} if cuda else {}))
        loss_fn = build_loss(cfg)
        ctx = torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with ctx, trusted_batches():  # as the trainer on a GPU: no device -> host read in the step
            for k in range(steps + 10):
                if k == 10:
                    sync(dev)
                    t0 = time.perf_counter()
                sam_step(head, opt, loss_fn, xb, yb, True)
            sync(dev)
    return throughput(steps * cfg.batch_size / (time.perf_counter() - t0), flops, precision, cuda)


def bench_train(args, key):
    from clipdetect.models.heads import create_head
    from clipdetect.models.schedule import DEFAULT_LR
    from clipdetect.models.train import TrainConfig

    cuda = args.device.startswith("cuda")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X = X.astype(np.float16)
    y = rng.permutation(np.repeat(np.array([0, 1], dtype=np.int64), args.rows // 2))
    steps = args.train_steps
    cfg = TrainConfig(batch_size=2048, epochs=1000, max_steps=steps, patience=0, depth=args.depth,
                      device=args.device)
    lr = cfg.lr or DEFAULT_LR[cfg.head]
    flops = sam_flops_per_row(create_head(cfg.head_config(args.dim)))
    out = {"flop_per_row_per_step": flops, "peak_tflops_assumed": PEAK if cuda else None}

    def part(name, fn, *a):
        t0 = time.perf_counter()
        value = guarded(fn, *a)
        seconds = round(time.perf_counter() - t0, 1)
        out[name] = {**value, "section_s": seconds} if isinstance(value, dict) else value
        say(key, out)  # the JSON holds every finished part

    warm = min(20, steps)  # the warm-up run compiles; its batches have the timed run's shape
    for name, mode in (("trainer_eager", "none"), ("trainer_compile_default", "default"),
                       ("trainer_compile_graphs", "graphs")):
        part(name, trainer_rate, X, y, cfg, mode, warm, flops, cuda)
    part("reference", reference_rate, X, y, cfg, max(5, steps // 10), lr)
    ceil = {}
    out["sam_step_ceiling"] = ceil
    for precision in ("fp32", "tf32", "bf16"):
        ceil[precision] = (guarded(step_ceiling, X, y, cfg, precision, steps, lr, flops, cuda)
                           if cuda or precision == "fp32" else SKIPPED)
        say(key, out)
    names = ("trainer_eager", "trainer_compile_default", "trainer_compile_graphs", "reference")
    rates = {k: out[k]["rows_per_s"] for k in names if ok(out.get(k))}
    steady = {k: out[k]["steady_rows_per_s"] for k in names[:3] if ok(out.get(k)) and out[k]["steady_rows_per_s"]}
    if rates.get("reference"):
        out["trainer_over_reference"] = {k: round(v / rates["reference"], 1) for k, v in rates.items()
                                         if k != "reference"}
    if rates.get("reference") and steady:
        out["trainer_steady_over_reference"] = {k: round(v / rates["reference"], 1) for k, v in steady.items()}
    if ok(ceil["fp32"]):
        out["trainer_over_ceiling_fp32"] = {k: round(v / ceil["fp32"]["rows_per_s"], 3)
                                            for k, v in rates.items() if k != "reference"}
    return out
