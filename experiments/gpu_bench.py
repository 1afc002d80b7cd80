"""The GPU table, measured side by side in one run (planned for < 8 minutes on one H200 with 16 cores).

On D3-like images made here (half JPEG with sides 400–800 px, half 512² PNG, unique captions):

* decode ceilings: all cores decoding + resizing with the pipeline's decoder, no model — exact,
  JPEG draft mode (``--fast-decode draft``), and ``torchvision.io.decode_jpeg`` on the GPU;
* per model (ViT-L-14 image+text fp16, ViT-B-16 image-only fp16 and bf16; random weights:
  speed does not depend on them): the forward ceiling with uint8 inputs already on the GPU
  (+ the text tower on unique captions for image+text), ``extract()`` end to end (wall rate
  and steady rate after the first shard), with draft decoding too, and for the first model the
  naive one-image-at-a-time loop; ratio = pipeline / min(forward ceiling, decode ceiling), and
  which ceiling binds;
* training (paper head, CVaR+AUC, SAM, batch 2048, 262,144 × 1536 fp16 rows, labels exactly
  balanced so that every batch has 2048 rows and each compiled mode compiles one shape): the
  trainer (rows resident on the GPU) eager, with ``compile="default"`` and with
  ``compile="graphs"`` (CUDA graphs), each with its warm-up time (compilation included) and
  TFLOP/s against the fp32 peak; a reference-style loop (np.load, per-sample DataLoader,
  fminbound CVaR); and the SAM step's own ceiling on one resident batch in fp32 / tf32 / bf16
  autocast with the achieved TFLOP/s against the matching peak; each trainer run also reports its
  steady rate, from its own per-epoch seconds after the first epoch (no upload, no compilation);
* profile (``gpu_bench_profile.py``): one SAM step eager, compiled with CUDA graphs (fp32 and
  TF32) and eager at 4× the batch: ms per step, kernels launched and the GPU's busy time per step.

``--repeat N`` passes over the images N times in the decode and extract sections: with one pass
the 4,096 images fit in the decoders' read-ahead and the start-up weighs on the rates, so the
table is made with ``--repeat 4`` (``results/gpu_bench.md``).

Every section (images, decode, each model, each training variant) runs on its own: a failure is
recorded as ``{"error": ..., "traceback": [...]}`` and the run goes on; ``gpu_bench.json`` is
rewritten after every section, so numbers measured before a failure are kept
(``gpu_bench_record.py``; the training section is ``gpu_bench_train.py``).

Command (from the project root, on a machine with CUDA torch, open_clip and this project)::

    PYTHONPATH=$PWD python3 experiments/gpu_bench.py --out DIR

``--quick`` shrinks every size (a smoke test). ``--device cpu --quick`` is a dry run of every
code path that does not need CUDA, with the tiny test architecture instead of the ViTs (fp32
instead of fp16); the CUDA-only pieces (GPU JPEG decode, tf32 and bf16 autocast ceilings) are
recorded as ``{"skipped": "needs CUDA"}``. A couple of minutes on two CPU cores, most of it
compiling the two compiled training modes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from clipdetect.data.sources import Sample, Source
from gpu_bench_record import OUT, RESULT, SKIPPED, free, guarded, ok, save, say, section, sync
from gpu_bench_profile import bench_profile
from gpu_bench_train import bench_train

#: the tests' tiny open_clip architecture (random weights), used for the models on the CPU
TINY = "clipdetect-tiny-vit:random"


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
def decode_ceiling(paths, pre, workers, fast="none", reps=1, batch=64):
    """img/s of the decode workers alone (decode + the PIL stage of ``pre``, no model), the pool's
    start-up left out: the ceiling of any end-to-end rate on these images."""
    from clipdetect.features.pipeline import Decoder

    dec = Decoder(pre, workers=workers, fast_decode=fast)
    tasks = [(i, paths[i:i + batch]) for i in range(0, len(paths), batch)]
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


def bench_decode(paths, spec, device):
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.features.backbones import create_backbone
    from clipdetect.features.pipeline import input_size

    pre = SplitPreprocess(create_backbone(spec).preprocess)
    cpus = os.cpu_count() or 1
    out = {"exact": round(decode_ceiling(paths, pre, cpus), 1),
           "draft": round(decode_ceiling(paths, pre, cpus, "draft"), 1)}
    if str(device).startswith("cuda"):
        rate = guarded(gpu_decode_rate, paths, input_size(pre))
        out["gpu_decode_jpeg_only"] = round(rate, 1) if isinstance(rate, float) else rate
    else:
        out["gpu_decode_jpeg_only"] = SKIPPED
    return out


def forward_ceiling(backbone, enc, batch, side, text: bool, iters):
    import torch

    x = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, device=backbone.device)
    captions = [f"a photo number {i} of something" for i in range(batch)]
    tokens = backbone.tokenizer(captions).to(backbone.device) if text else None
    with torch.inference_mode():
        for k in range(iters + 2):
            if k == 2:
                sync(backbone.device)
                t0 = time.perf_counter()
            backbone.model.encode_image(enc.pixels(x))
            if text:
                backbone.model.encode_text(tokens)
        sync(backbone.device)
    return batch * iters / (time.perf_counter() - t0)


def pipeline_rate(source, spec, backbone, workers, fast, text, batch, shard):
    from clipdetect.features.cache_writer import CacheWriter
    from clipdetect.features.runner import ExtractConfig
    from clipdetect.features.extract import extract

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExtractConfig(backbone=spec, out=tmp, batch_size=batch, workers=workers,
                            device=str(backbone.device), precision=backbone_precision(backbone),
                            shard_size=shard, text=text, fast_decode=fast)
        stamps = []
        orig = CacheWriter.write_shard

        def stamped(self, *a, **k):
            out = orig(self, *a, **k)
            stamps.append((time.perf_counter(), k["stop"] - k["start"]))
            return out
        CacheWriter.write_shard = stamped
        try:
            t0 = time.perf_counter()
            s = extract(source, cfg, backbone=backbone, progress=False)
            wall = time.perf_counter() - t0
        finally:
            CacheWriter.write_shard = orig
    steady = (sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0])) if len(stamps) > 2 else None
    return {"wall": round(s.seen / wall, 1), "steady": round(steady, 1) if steady else None,
            "startup_s": round(stamps[0][0] - t0, 2) if stamps else None}


def backbone_precision(backbone):
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[backbone.dtype]


def naive_rate(paths, backbone, n):
    from clipdetect.data.imaging import decode_image

    t0 = time.perf_counter()
    for p in paths[:n]:
        img, _ = decode_image(p)
        backbone.encode_images(backbone.preprocess(img)[None])  # returns numpy: waits for the device
    return n / (time.perf_counter() - t0)


def bench_model(paths, args, spec, precision, text, first, decode):
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.features.backbones import create_backbone
    from clipdetect.features.encoder import ImageEncoder
    from clipdetect.features.pipeline import input_size

    t0 = time.perf_counter()
    bb = create_backbone(spec, device=args.device, precision=precision)
    pre = SplitPreprocess(bb.preprocess)
    enc, side = ImageEncoder(bb, pre), input_size(pre)
    workers = max(1, (os.cpu_count() or 2) - 1)
    source = FilesSource(paths)
    row = {"model_setup_s": round(time.perf_counter() - t0, 1)}
    fwd = forward_ceiling(bb, enc, args.batch, side, text == "yes", args.iters)
    row["forward_on_device"] = round(fwd, 1)
    pipe, draft = (pipeline_rate(source, spec, bb, workers, fast, text, args.batch, args.shard)
                   for fast in ("none", "draft"))
    row["pipeline"], row["pipeline_draft"] = pipe, draft
    rate = pipe["steady"] or pipe["wall"]
    if ok(decode):
        row["decode_all_cores"] = decode["exact"]
        row["binds"] = "forward" if fwd <= decode["exact"] else "decode"
        row["ratio_to_lower_ceiling"] = round(rate / min(fwd, decode["exact"]), 3)
        row["ratio_draft_to_lower_ceiling_draft"] = round((draft["steady"] or draft["wall"])
                                                          / min(fwd, decode["draft"]), 3)
    if args.naive and first:
        row["naive"] = round(naive_rate(paths, bb, args.naive), 1)
        row["pipeline_over_naive"] = round(rate / row["naive"], 1)
    del bb, enc
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the table) or cpu (a dry run: add --quick)")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--shard", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--naive", type=int, default=128)
    ap.add_argument("--rows", type=int, default=262_144)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="pass over the images this many times in the decode and extract sections (a longer "
                         "run: the start-up and the decoders' read-ahead weigh less in the rates)")
    ap.add_argument("--profile-steps", type=int, default=50, help="timed steps per variant of the profile section")
    ap.add_argument("--profile-batch", type=int, default=2048, help="batch of the profile section (and 4× it)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: decode,extract,train,profile")
    ap.add_argument("--out", default=".", help="folder for gpu_bench.json")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda:
        args.models = [("ViT-L-14:random", "fp16", "yes"), ("ViT-B-16:random", "fp16", "no"),
                       ("ViT-B-16:random", "bf16", "no")]
    else:  # fp16 is GPU-only
        args.models = [(TINY, "fp32", "yes"), (TINY, "bf16", "no")]
    args.depth = 3  # the paper head
    if args.quick and cuda:
        args.images, args.batch, args.shard, args.iters, args.naive = 256, 64, 128, 3, 16
        args.rows, args.dim, args.train_steps = 16384, 256, 30
    elif args.quick:  # a dry run: smaller still, and a one-block head (inductor compiles it faster)
        args.images, args.batch, args.shard, args.iters, args.naive = 64, 16, 16, 2, 8
        args.rows, args.dim, args.train_steps, args.depth, args.profile_steps = 4096, 64, 8, 1, 3
        args.profile_batch = 256
    Path(args.out).mkdir(parents=True, exist_ok=True)
    OUT[0] = Path(args.out) / "gpu_bench.json"
    RESULT.clear()
    import torch

    say("device", {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cpus": os.cpu_count(),
                   "torch": torch.__version__, "args": {k: v for k, v in vars(args).items() if k != "models"},
                   "models": args.models})
    t_start = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="gpu_bench_")
    skip = set(filter(None, args.skip.split(",")))
    try:
        def make_images():
            with Pool(os.cpu_count()) as pool:
                return pool.map(_make, [(i, folder) for i in range(args.images)])
        paths = guarded(make_images) if not {"decode", "extract"} <= skip else {"skipped": "--skip"}
        say("images", {"n": len(paths), "repeat": args.repeat, "made_in_s": round(time.perf_counter() - t_start, 1)}
            if isinstance(paths, list) else paths)
        if isinstance(paths, list):
            paths = paths * args.repeat
        decode = {"skipped": "no images"} if not isinstance(paths, list) else {"skipped": "--skip"}
        if isinstance(paths, list) and not {"decode", "extract"} <= skip:
            decode = section("decode-only img/s, all cores", bench_decode, paths, args.models[-1][0],
                             args.device)
        if isinstance(paths, list) and "extract" not in skip:
            for i, (spec, precision, text) in enumerate(args.models):
                name = f"{spec.split(':')[0]} {precision} {'image+text' if text == 'yes' else 'image'}"
                section(f"extract {name}", bench_model, paths, args, spec, precision, text, i == 0, decode)
                free()
        if "train" not in skip:
            key = f"train {args.rows}x{args.dim} batch 2048 ({args.train_steps} steps, depth {args.depth})"
            section(key, bench_train, args, key)
        if "profile" not in skip:
            key = f"profile of one SAM step, dim {args.dim}, depth {args.depth}"
            section(key, bench_profile, args, key, say)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        RESULT["seconds"] = round(time.perf_counter() - t_start, 1)
        save()
    print(f"total {RESULT['seconds']} s -> {OUT[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
