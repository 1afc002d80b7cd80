"""Training throughput and memory: clipdetect's cache trainer vs a reference-style loop vs compute.

Builds a synthetic feature cache (random L2-normalised fp16 embeddings, balanced labels)
with ``CacheWriter`` in a temporary directory and measures, with the paper's head and loss
(MLP depth 3, width = input dim, CVaR+AUC, SAM over AdamW, batch 2048):

(a) ``clipdetect.models.train.train`` on the cache (stratified batches gathered from the memory maps);
(b) a reference-style loop: the whole array loaded from a ``.npy`` (``np.load``, no mmap),
    a map-style per-sample ``Dataset`` + ``DataLoader(shuffle=True)``, the CVaR threshold
    found by ``scipy.optimize.fminbound`` on every batch, then the same SAM step;
(c) the compute ceiling: the same SAM step (two forward/backward passes) on one batch that
    is already in memory.

(a), (b) and (c) run interleaved in rounds so that background load affects them alike.
Then the trainer runs one full epoch over caches of two sizes, each in its own subprocess,
while a thread samples the process's resident memory: anonymous (heap: what the trainer
allocates) and file-backed (pages of the memory-mapped cache, which the kernel can drop).

    python experiments/bench_train.py                 # defaults: 100k rows x 1536, memory at 100k/400k
    python experiments/bench_train.py --rows 20000 --mem-rows 20000,80000 --rounds 1   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

import torch
from clipdetect.features.cache import FeatureCache
from clipdetect.features.cache_writer import CacheWriter
from clipdetect.features.manifest import ERROR_COLUMNS
from clipdetect.models.heads import create_head
from clipdetect.models.sam import SAM
from clipdetect.models.samplers import StratifiedBatchSampler
from clipdetect.models.step import sam_step
from clipdetect.models.sources import CacheSource
from clipdetect.models.train import TrainConfig, build_loss, train


def build_cache(root: Path, rows: int, dim: int, *, shard: int = 50_000, seed: int = 0) -> FeatureCache:
    identity = {"arch": "bench", "spec": "bench:random", "weights": "random", "seed": seed, "embed_dim": dim,
                "has_text": False, "preprocess": {}}
    writer = CacheWriter(root, backbone=identity)
    writer.begin_run("bench", {"source": "synthetic"})
    rng = np.random.default_rng(seed)
    for a in range(0, rows, shard):
        b = min(rows, a + shard)
        x = rng.standard_normal((b - a, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y = rng.integers(0, 2, b - a)
        meta = pd.DataFrame({"key": [f"img-{i:08d}" for i in range(a, b)], "label": y,
                             "generator": np.where(y == 1, "gen", "real"), "split": "train", "path": "",
                             "caption": "", "width": 512, "height": 512, "format": "PNG", "mode": "RGB"})
        writer.write_shard("bench", start=a, stop=b, img=x, txt=None, meta=meta,
                           errors=pd.DataFrame(columns=ERROR_COLUMNS))
    writer.finish_run("bench", {"rows": rows}, complete=True)
    return FeatureCache(root)


# ---- (b) the reference-style loop ------------------------------------------------------------------
class PerSampleDataset(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), torch.tensor(float(self.y[i]))


def fminbound_cvar(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """CVaR by a scalar search for the threshold λ on every batch (the reference code's way)."""
    from scipy.optimize import fminbound

    l = losses.detach().cpu().numpy().astype(np.float64)
    lam = fminbound(lambda t: t + np.maximum(l - t, 0).mean() / alpha, l.min(), l.max())
    return lam + torch.relu(losses - float(lam)).mean() / alpha


def reference_loss(config: TrainConfig):
    from clipdetect.models.losses import pairwise_auc_loss
    import torch.nn.functional as F

    def loss(logits, y):
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        fake = y == 1
        return (config.gamma * fminbound_cvar(bce, config.alpha)
                + (1 - config.gamma) * pairwise_auc_loss(logits, fake, margin=config.margin, p=config.p))
    return loss


def new_head_opt(config: TrainConfig, dim: int):
    torch.manual_seed(config.seed)
    head = create_head(config.head_config(dim)).train()
    opt = SAM(head.parameters(), torch.optim.AdamW, rho=config.rho, lr=config.lr, weight_decay=config.weight_decay)
    return head, opt


def run_reference(loader_iter, head, opt, loss_fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        xb, yb = next(loader_iter)
        xb = xb.float()
        float(sam_step(head, opt, loss_fn, xb, yb, True))
    return time.perf_counter() - t0


def run_ceiling(xb, yb, head, opt, loss_fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        float(sam_step(head, opt, loss_fn, xb, yb, True))
    return time.perf_counter() - t0


# ---- memory child ------------------------------------------------------------------------------------
def _proc_status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def memory_child(root: str, head: str, batch_size: int) -> dict:
    peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            s = _proc_status()
            for k in peak:
                peak[k] = max(peak[k], s.get(k, 0.0))
            time.sleep(0.02)

    cache = FeatureCache(root)
    # what training loads of the metadata (FeatureCache.columns); paths and captions stay on disk
    meta_mib = float(cache.columns("key", "label", "split").memory_usage(deep=True).sum()) / 2**20
    base = _proc_status()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    config = TrainConfig(head=head, epochs=1, batch_size=batch_size, patience=0)
    rows = np.arange(len(cache))
    t0 = time.perf_counter()
    res = train(CacheSource(cache, rows, "image"), config=config, progress=False)
    secs = time.perf_counter() - t0
    stop.set()
    t.join()
    # VmHWM: this process's peak RSS (ru_maxrss would include the parent's RSS at fork: Linux keeps it over exec)
    return {"rows": len(cache), "steps": res.steps, "seconds": round(secs, 2), "baseline_mib": base,
            "peak_mib": peak, "vmhwm_mib": _proc_status()["VmHWM"], "meta_mib": meta_mib}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the throughput cache (default 100k)")
    ap.add_argument("--dim", type=int, default=1536, help="feature dimension (default 1536 = image+text ViT-L/14)")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (a), (b), (c)")
    ap.add_argument("--steps", type=int, default=3, help="optimisation steps per method per round")
    ap.add_argument("--mem-rows", default="100000,400000", help="cache sizes for the memory runs ('' skips)")
    ap.add_argument("--mem-head", default="linear", choices=["linear", "mlp"],
                    help="head for the full-epoch memory runs (linear: the epoch is quick; data path is the same)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workdir", help="where to build caches (default: a temporary directory)")
    ap.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.mem_head, args.batch_size)))
        return 0

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        print(f"host: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"load average {os.getloadavg()[0]:.2f} (shared machine: timings are noisy)")
        t0 = time.perf_counter()
        cache = build_cache(tmp / "cache", args.rows, args.dim)
        print(f"cache: {args.rows} rows x {args.dim} float16 ({args.rows * args.dim * 2 / 2**20:.0f} MiB), "
              f"built in {time.perf_counter() - t0:.1f} s")
        config = TrainConfig(batch_size=args.batch_size, patience=0)
        loss_fn = build_loss(config)
        rows = np.arange(len(cache))
        labels = cache.labels(rows)
        # (b) data: the whole array as float32 .npy, loaded without memory mapping
        npy = tmp / "features.npy"
        np.save(npy, cache.embeddings("image", rows))
        t0 = time.perf_counter()
        x_all = np.load(npy)
        load_s = time.perf_counter() - t0
        loader = torch.utils.data.DataLoader(PerSampleDataset(x_all, labels), batch_size=args.batch_size,
                                             shuffle=True, num_workers=0)
        ref_iter = iter(loader)
        ref_loss = reference_loss(config)
        # (c) one stratified batch, in memory
        idx = next(StratifiedBatchSampler(labels, args.batch_size).epoch(0))
        xb = torch.from_numpy(cache.features("image", idx))
        yb = torch.from_numpy(labels[idx]).float()
        train(CacheSource(cache, rows[:4096], "image"), config=TrainConfig(epochs=1, max_steps=1, patience=0,
                                                                          batch_size=args.batch_size),
              progress=False)  # warm-up (first optimiser import, first kernels)
        src = CacheSource(cache, rows, "image")
        tot = {"a": [0.0, 0], "b": [0.0, 0], "c": [0.0, 0]}
        for r in range(args.rounds):
            cfg = TrainConfig(batch_size=args.batch_size, patience=0, max_steps=args.steps, seed=r)
            res = train(src, config=cfg, progress=False)
            tot["a"][0] += sum(h["seconds"] for h in res.history)
            tot["a"][1] += res.steps
            head, opt = new_head_opt(config, args.dim)
            tot["b"][0] += run_reference(ref_iter, head, opt, ref_loss, args.steps)
            tot["b"][1] += args.steps
            head, opt = new_head_opt(config, args.dim)
            tot["c"][0] += run_ceiling(xb, yb, head, opt, loss_fn, args.steps)
            tot["c"][1] += args.steps
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v[1] * args.batch_size / v[0]:.0f} rows/s" for k, v in tot.items()), flush=True)
        rate = {k: v[1] * args.batch_size / v[0] for k, v in tot.items()}
        print(f"\nthroughput, {args.dim}-d, MLP depth 3 width {args.dim}, CVaR+AUC, SAM, batch {args.batch_size} "
              f"({args.rounds} rounds x {args.steps} steps each):")
        print(f"  (a) clipdetect trainer, memory-mapped cache : {rate['a']:9.0f} rows/s")
        print(f"  (b) reference-style loop (.npy in RAM, per-sample Dataset, fminbound CVaR): {rate['b']:9.0f} rows/s"
              f"  (+ {load_s:.1f} s np.load of {x_all.nbytes / 2**20:.0f} MiB before the first step)")
        print(f"  (c) compute ceiling (SAM step on an in-memory batch): {rate['c']:9.0f} rows/s")
        print(f"  a/b = {rate['a'] / rate['b']:.3f}   a/c = {rate['a'] / rate['c']:.3f}")
        del x_all, loader, ref_iter
        sizes = [int(s) for s in args.mem_rows.split(",") if s.strip()]
        if sizes:
            print(f"\nmemory: one full epoch of the trainer ({args.mem_head} head, batch {args.batch_size}) per cache "
                  "size, each in a fresh subprocess; MiB")
            print(f"  {'rows':>8} {'cache MiB':>9} {'steps':>5} {'s':>6} {'meta':>6} {'base anon':>9} "
                  f"{'peak anon':>9} {'peak file':>9} {'peak RSS':>8}")
        for n in sizes:
            root = tmp / f"mem-{n}"
            build_cache(root, n, args.dim, seed=1)
            cmd = [sys.executable, __file__, "--_memory-child", str(root), "--mem-head", args.mem_head,
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"  {n:>8} {n * args.dim * 2 / 2**20:>9.0f} {out['steps']:>5} {out['seconds']:>6.1f} "
                  f"{out['meta_mib']:>6.0f} {out['baseline_mib']['RssAnon']:>9.0f} {out['peak_mib']['RssAnon']:>9.0f} "
                  f"{out['peak_mib']['RssFile']:>9.0f} {out['vmhwm_mib']:>8.0f}", flush=True)
            for p in sorted(root.rglob("*.npy")):
                p.unlink()  # free disk before the next size
        if sizes:
            print("  meta = the metadata columns training loads (key, label, split; FeatureCache.columns, "
                  "O(rows)); base anon = heap after opening the cache, before training; peak anon = heap peak during "
                  "training; peak file = resident pages of the memory-mapped cache (page cache: shared, dropped by the "
                  "kernel under memory pressure); peak RSS = VmHWM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
