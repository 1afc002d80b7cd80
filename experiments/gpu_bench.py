"""The GPU table, measured side by side in one run (< 8 minutes on one H200 with 16 cores).

On D3-like images made here (half JPEG with sides 400–800 px, half 512² PNG, unique captions):

* decode ceilings: all cores decoding + resizing with the pipeline's decoder, no model — exact,
  JPEG draft mode (``--fast-decode draft``), and ``torchvision.io.decode_jpeg`` on the GPU;
* per model (ViT-L-14 image+text fp16, ViT-B-16 image-only fp16 and bf16; random weights:
  speed does not depend on them): the forward ceiling with uint8 inputs already on the GPU
  (+ the text tower on unique captions for image+text), ``extract()`` end to end (wall rate
  and steady rate after the first shard), with draft decoding too, and for ViT-L-14 the naive
  one-image-at-a-time loop; ratio = pipeline / min(forward ceiling, decode ceiling), and
  which ceiling binds;
* training (paper head, CVaR+AUC, SAM, batch 2048, 262,144 × 1536 fp16 rows): the trainer
  (rows resident on the GPU), the trainer with ``torch.compile``, a reference-style loop
  (np.load, per-sample DataLoader, fminbound CVaR), and the SAM step's own ceiling on one
  resident batch in fp32 / tf32 / bf16 autocast with the achieved TFLOP/s.

Command (from the project root, after ``bash ../shared/tools/device_prepare.sh``; carry [".whl"])::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 experiments/gpu_bench.py --out $OUT

``--quick`` shrinks every size (a smoke test of the script on the GPU machine; it needs CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import clipdetect  # noqa: E402,F401
from clipdetect.data.sources import Sample, Source  # noqa: E402

#: dense datasheet peaks of one H200 SXM, TFLOP/s
PEAK = {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0}
RESULT: dict = {}


def say(key, value):
    RESULT[key] = value
    print(f"{key}: {json.dumps(value)}", flush=True)


# ------------------------------------------------------------------ images
def _make(args):
    i, folder = args
    from PIL import Image

    rng = np.random.default_rng(i)
    if i % 2 == 0:
        w, h = (int(x) for x in rng.integers(400, 801, 2))
        fmt, ext = "JPEG", "jpg"
    else:
        w = h = 512
        fmt, ext = "PNG", "png"
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), rng.integers(0, 255))], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path = os.path.join(folder, f"{i:06d}.{ext}")
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


class FilesSource(Source):
    kind = "bench-files"

    def __init__(self, paths):
        self.paths = paths

    def size(self):
        return len(self.paths)

    def iterate(self, start=0):
        for i, p in enumerate(self.paths[start:], start):
            yield Sample(key=f"k{i}", image=p, label=i % 2, caption=f"a photo number {i} of something")

    def describe(self):
        return {"kind": self.kind, "n": len(self.paths)}


# ------------------------------------------------------------------ extraction
def decode_ceiling(paths, pre, workers, fast="none", reps=1):
    from clipdetect.features.pipeline import Decoder

    dec = Decoder(pre, workers=workers, fast_decode=fast)
    tasks = [(i, paths[i:i + 64]) for i in range(0, len(paths), 64)]
    list(dec(iter(tasks[:workers])))  # pool start-up outside the clock
    t0 = time.perf_counter()
    for _ in range(reps):
        n = sum(len(d) for _, d in dec(iter(tasks)))
    return n * reps / (time.perf_counter() - t0)


def gpu_decode_rate(paths, side):
    import torch
    import torchvision
    from torchvision.io import decode_jpeg

    jpgs = [p for p in paths if p.endswith(".jpg")]
    data = [torchvision.io.read_file(p) for p in jpgs]
    decode_jpeg(data[:8], device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(data), 128):
        imgs = decode_jpeg(data[i:i + 128], device="cuda")
        [torch.nn.functional.interpolate(x[None].float(), size=(side, side), mode="bilinear") for x in imgs]
    torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - t0)


def forward_ceiling(backbone, enc, batch, side, text: bool, iters):
    import torch

    x = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, device=backbone.device)
    tokens = backbone.tokenizer([f"a photo number {i} of something" for i in range(batch)]).to(backbone.device) \
        if text else None
    with torch.inference_mode():
        for k in range(iters + 2):
            if k == 2:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            backbone.model.encode_image(enc.pixels(x))
            if text:
                backbone.model.encode_text(tokens)
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def pipeline_rate(source, spec, backbone, workers, fast, text, batch, shard):
    from clipdetect.features.extract import ExtractConfig, extract

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExtractConfig(backbone=spec, out=tmp, batch_size=batch, workers=workers, device="cuda",
                            precision=backbone_precision(backbone), shard_size=shard, text=text,
                            fast_decode=fast)
        stamps = []
        import clipdetect.features.extract as ex

        orig = ex.CacheWriter.write_shard

        def stamped(self, *a, **k):
            out = orig(self, *a, **k)
            stamps.append((time.perf_counter(), k["stop"] - k["start"]))
            return out
        ex.CacheWriter.write_shard = stamped
        try:
            t0 = time.perf_counter()
            s = extract(source, cfg, backbone=backbone, progress=False)
            wall = time.perf_counter() - t0
        finally:
            ex.CacheWriter.write_shard = orig
    steady = (sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0])) if len(stamps) > 2 else None
    return {"wall": round(s.seen / wall, 1), "steady": round(steady, 1) if steady else None,
            "startup_s": round(stamps[0][0] - t0, 2) if stamps else None}


def backbone_precision(backbone):
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[backbone.dtype]


def naive_rate(paths, backbone, n):
    import torch
    from clipdetect.data.imaging import decode_image

    t0 = time.perf_counter()
    for p in paths[:n]:
        img, _ = decode_image(p)
        backbone.encode_images(backbone.preprocess(img)[None])
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def bench_models(paths, args, decode_rate, draft_rate):
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.features.backbones import create_backbone
    from clipdetect.features.encoder import ImageEncoder
    from clipdetect.features.pipeline import input_size

    source = FilesSource(paths)
    workers = max(1, (os.cpu_count() or 2) - 1)
    for spec, precision, text in args.models:
        t0 = time.perf_counter()
        bb = create_backbone(spec, device="cuda", precision=precision)
        pre = SplitPreprocess(bb.preprocess)
        enc, side = ImageEncoder(bb, pre), input_size(pre)
        name = f"{spec.split(':')[0]} {precision} {'image+text' if text == 'yes' else 'image'}"
        fwd = forward_ceiling(bb, enc, args.batch, side, text == "yes", args.iters)
        pipe = pipeline_rate(source, spec, bb, workers, "none", text, args.batch, args.shard)
        draft = pipeline_rate(source, spec, bb, workers, "draft", text, args.batch, args.shard)
        rate = pipe["steady"] or pipe["wall"]
        ceiling = min(fwd, decode_rate)
        row = {"forward_on_gpu": round(fwd, 1), "decode_all_cores": round(decode_rate, 1),
               "binds": "forward" if fwd <= decode_rate else "decode", "pipeline": pipe, "pipeline_draft": draft,
               "ratio_to_lower_ceiling": round(rate / ceiling, 3),
               "ratio_draft_to_lower_ceiling_draft": round((draft["steady"] or draft["wall"])
                                                           / min(fwd, draft_rate), 3),
               "model_setup_s": round(time.perf_counter() - t0, 1)}
        if args.naive and spec == args.models[0][0]:
            row["naive"] = round(naive_rate(paths, bb, args.naive), 1)
            row["pipeline_over_naive"] = round(rate / row["naive"], 1)
        say(f"extract {name}", row)
        del bb, enc


# ------------------------------------------------------------------ training
def sam_flops_per_row(head) -> float:
    """2 SAM passes × (forward + backward ≈ 3 × forward) × 2 FLOP per multiply-add."""
    import torch

    macs = sum(m.in_features * m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear))
    return 2 * 3 * 2 * macs


def bench_train(args):
    import torch
    from bench_train import PerSampleDataset, reference_loss
    from clipdetect.models.heads import create_head
    from clipdetect.models.sam import SAM
    from clipdetect.models.train import ArraySource, TrainConfig, build_loss, sam_step, train

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X = X.astype(np.float16)
    y = (rng.random(args.rows) < 0.5).astype(np.int64)
    steps = args.train_steps
    cfg = TrainConfig(batch_size=2048, epochs=1000, max_steps=steps, patience=0, device="cuda")
    out = {}
    for label, kw in (("trainer", {}), ("trainer_compiled", {"compile": True})):
        try:
            train(ArraySource(X[:8192], y[:8192]), config=TrainConfig(batch_size=2048, max_steps=20, patience=0,
                                                                    device="cuda"), progress=False, **kw)
            t0 = time.perf_counter()
            res = train(ArraySource(X, y), config=cfg, progress=False, **kw)
            torch.cuda.synchronize()
            out[label] = round(res.steps * 2048 / (time.perf_counter() - t0), 0)
        except Exception as exc:  # torch.compile may be unavailable; report, go on
            out[label] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    # reference-style loop
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", X)
        Xr = np.load(Path(tmp) / "x.npy")
    loader = iter(torch.utils.data.DataLoader(PerSampleDataset(Xr, y), batch_size=2048, shuffle=True,
                                              drop_last=True))
    torch.manual_seed(0)
    head = create_head(cfg.head_config(args.dim)).cuda().train()
    opt = SAM(head.parameters(), torch.optim.AdamW, rho=cfg.rho, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_ref = reference_loss(cfg)
    n_ref = max(5, steps // 10)
    t0 = time.perf_counter()
    for _ in range(n_ref):
        xb, yb = next(loader)
        float(sam_step(head, opt, loss_ref, xb.float().cuda(), yb.cuda(), True))
    out["reference"] = round(n_ref * 2048 / (time.perf_counter() - t0), 0)
    # the SAM step's own ceiling on one resident batch
    xb = torch.from_numpy(X[:2048].astype(np.float32)).cuda()
    yb = torch.from_numpy(y[:2048].astype(np.float32)).cuda()
    flops = sam_flops_per_row(head)
    ceil = {}
    for mode in ("fp32", "tf32", "bf16"):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        head = create_head(cfg.head_config(args.dim)).cuda().train()
        opt = SAM(head.parameters(), torch.optim.AdamW, rho=cfg.rho, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  fused=True)
        loss_fn = build_loss(cfg)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if mode == "bf16" else torch.autocast("cuda", enabled=False)
        with ctx:
            for k in range(steps + 10):
                if k == 10:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                sam_step(head, opt, loss_fn, xb, yb, True)
            torch.cuda.synchronize()
        rate = steps * 2048 / (time.perf_counter() - t0)
        ceil[mode] = {"rows_per_s": round(rate, 0), "tflops": round(rate * flops / 1e12, 2),
                      "of_peak": round(rate * flops / 1e12 / PEAK[mode], 4)}
    torch.backends.cuda.matmul.allow_tf32 = False
    out["sam_step_ceiling"] = ceil
    best = out["trainer"] if isinstance(out["trainer"], float) else 0.0
    out["trainer_over_reference"] = round(best / out["reference"], 1)
    out["trainer_over_ceiling_fp32"] = round(best / ceil["fp32"]["rows_per_s"], 3)
    out["flop_per_row_per_step"] = flops
    out["peak_tflops_assumed"] = PEAK
    say(f"train {args.rows}x{args.dim} batch 2048 ({steps} steps)", out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--shard", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--naive", type=int, default=128)
    ap.add_argument("--rows", type=int, default=262_144)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: decode,extract,train")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_bench.json")
    args = ap.parse_args(argv)
    args.models = [("ViT-L-14:random", "fp16", "yes"), ("ViT-B-16:random", "fp16", "no"),
                   ("ViT-B-16:random", "bf16", "no")]
    if args.quick:
        args.images, args.batch, args.shard, args.iters, args.naive = 256, 64, 128, 3, 16
        args.rows, args.dim, args.train_steps = 16384, 256, 30
    import torch

    say("device", {"gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "torch": torch.__version__})
    t_start = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="gpu_bench_")
    with Pool(os.cpu_count()) as pool:
        paths = pool.map(_make, [(i, folder) for i in range(args.images)])
    say("images", {"n": len(paths), "made_in_s": round(time.perf_counter() - t_start, 1)})
    skip = set(filter(None, args.skip.split(",")))
    if "extract" not in skip or "decode" not in skip:
        from clipdetect.data.imaging import SplitPreprocess
        from clipdetect.features.backbones import create_backbone
        from clipdetect.features.pipeline import input_size

        pre = SplitPreprocess(create_backbone("ViT-B-16:random").preprocess)
        cpus = os.cpu_count() or 1
        decode = {"exact": decode_ceiling(paths, pre, cpus), "draft": decode_ceiling(paths, pre, cpus, "draft")}
        try:
            decode["gpu_decode_jpeg_only"] = gpu_decode_rate(paths, input_size(pre))
        except Exception as exc:
            decode["gpu_decode_jpeg_only"] = f"failed: {type(exc).__name__}: {exc}"
        say("decode-only img/s, all cores", {k: round(v, 1) if isinstance(v, float) else v for k, v in decode.items()})
        if "extract" not in skip:
            bench_models(paths, args, decode["exact"], decode["draft"])
    if "train" not in skip:
        bench_train(args)
    RESULT["seconds"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_bench.json").write_text(json.dumps(RESULT, indent=2) + "\n")
    print(f"total {RESULT['seconds']} s -> {Path(args.out) / 'gpu_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
