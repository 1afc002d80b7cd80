"""CPU runtimes for the image tower, side by side in one run: speed, fidelity, detector AUC.

Every runtime (``--runtimes``, default torch fp32, onnx fp32, openvino fp32, openvino int8) encodes
the same batches through the extraction encoder stage (``encoder_for``: uint8 batch → normalise
→ tower → L2 norm), interleaved batch by batch with the order rotated, so load from other
processes on a shared machine hits all of them alike. Reported per runtime:

* img/s and the ratio to torch fp32 (sum of torch's batch times / sum of its own, same batches),
  with the median and range of the per-batch ratios;
* per-row cosine to the torch fp32 embedding (mean, min), on CIFAKE rows (32×32 upscaled to
  224) and, separately, on crops of larger real photos (scikit-image's bundled photos);
* the AUC of one fixed detector, trained on torch fp32 features (the package's sample cache:
  CIFAKE rows 0–2047), scoring each runtime's features of held-out CIFAKE rows, with a paired
  bootstrap CI of AUC(runtime) − AUC(torch fp32).

    nice -n 10 python experiments/bench_runtime.py          # needs clipdetect[onnx,openvino]; photos: scikit-image

Writes experiments/results/bench_runtime.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from common import b16_backbone, cifake_parquet, save_json, save_text

HERE = Path(__file__).resolve().parent
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "stereo_motorcycle", "retina",
          "immunohistochemistry", "camera", "coins", "moon", "clock", "grass", "gravel", "brick")


def cifake(pre, data: str, start: int, n: int):
    from clipdetect.data.hf import HFSource
    from clipdetect.data.imaging import decode_image

    arrays, labels = [], []
    for i, s in enumerate(HFSource(data).iterate(start)):
        if i >= n:
            break
        arrays.append(pre.worker(decode_image(s.image)[0]))
        labels.append(int(s.label))
    return arrays, np.array(labels)


def photo_crops(pre, n: int, seed: int = 0):
    """``n`` random crops (side 25–100 % of the short side, anywhere) of scikit-image's photos."""
    if n <= 0:
        return [], []
    try:
        import skimage.data as sd
    except ImportError:
        print("scikit-image not installed: no photo crops (pip install scikit-image)", file=sys.stderr)
        return [], []
    from PIL import Image

    rng, photos, names = np.random.default_rng(seed), [], []
    for name in PHOTOS:
        a = getattr(sd, name)()
        a = a[0] if isinstance(a, tuple) else a
        photos.append(Image.fromarray(a).convert("RGB"))
        names.append(name)
    out, which = [], []
    for i in range(n):
        j = i % len(photos)
        img = photos[j]
        side = int(min(img.size) * rng.uniform(0.25, 1.0))
        x, y = (int(rng.integers(0, d - side + 1)) for d in img.size)
        out.append(pre.worker(img.crop((x, y, x + side, y + side))))
        which.append(names[j])
    return out, which


def prepare(backbone, specs, cache_dir):
    """One encoder per runtime; the tower is exported (or loaded) here and timed."""
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.features.encoder import encoder_for
    from clipdetect.features.runtime import compile_tower

    pre, encoders, info = SplitPreprocess(backbone.preprocess), {}, {}
    for spec in specs:
        rt, prec = spec.split(":")
        t0 = time.perf_counter()
        if rt == "torch":  # the reference itself, or a copy of its model at the precision asked
            bb = backbone if prec == "fp32" else copy.deepcopy(backbone).to(backbone.device, prec)
        else:
            tower = compile_tower(backbone, rt, prec, cache_dir=cache_dir)
            bb = dataclasses.replace(backbone, tower=tower)
            info[spec] = {"export": str(tower.path), "export_record": json.loads((tower.path / "export.json").read_text())}
        info.setdefault(spec, {})["prepare_seconds"] = round(time.perf_counter() - t0, 1)
        encoders[spec] = encoder_for(bb, pre)
    return encoders, info


def run_interleaved(encoders, arrays, batch_size: int, on_progress=None, every: int = 4):
    """Every batch through every runtime, the order rotated per batch; ``on_progress(emb, times,
    done)`` every ``every`` batches and at the end (so a run cut short still leaves its numbers)."""
    names = list(encoders)
    for enc in encoders.values():  # warm-up (first-call allocations, kernel selection)
        enc.encode(arrays[:batch_size])
    emb = {k: [] for k in names}
    times = {k: [] for k in names}
    n_batches = -(-len(arrays) // batch_size)
    for b, i in enumerate(range(0, len(arrays), batch_size)):
        batch = arrays[i:i + batch_size]
        for k in names[b % len(names):] + names[:b % len(names)]:
            t0 = time.perf_counter()
            emb[k].append(enc_out := encoders[k].encode(batch))
            times[k].append(time.perf_counter() - t0)
            assert enc_out.shape[0] == len(batch)
        print(f"batch {b + 1}/{n_batches}: " + ", ".join(f"{k} {len(batch) / times[k][-1]:.2f}" for k in names),
              file=sys.stderr, flush=True)
        if on_progress and ((b + 1) % every == 0 or b + 1 == n_batches):
            on_progress({k: np.concatenate(v) for k, v in emb.items()}, {k: np.array(v) for k, v in times.items()},
                        min(i + batch_size, len(arrays)))


def cos_stats(a, b):
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean": float(c.mean()), "min": float(c.min()), "p01": float(np.percentile(c, 1))}


def fixed_detector(seed: int):
    import clipdetect

    cache = clipdetect.FeatureCache(clipdetect.SAMPLE_CACHE)
    return clipdetect.Detector.fit_cache(cache, config=clipdetect.TrainConfig(epochs=8, seed=seed))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="default: the ViT-B/16 weights in $CLIPDETECT_DATA/weights")
    ap.add_argument("--data", help="CIFAKE parquet (default $CLIPDETECT_DATA/cifake_dev.parquet)")
    ap.add_argument("--runtimes", default="torch:fp32,onnx:fp32,openvino:fp32,openvino:int8")
    ap.add_argument("--images", type=int, default=256, help="CIFAKE rows evaluated (from --eval-start)")
    ap.add_argument("--eval-start", type=int, default=2048, help="first evaluated row (the detector trained on 0-2047)")
    ap.add_argument("--photos", type=int, default=128, help="crops of larger real photos (cosine only; 0: none)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--cache-dir", help="runtime export cache (default: the user's, $CLIPDETECT_RUNTIME_CACHE)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_runtime"))
    args = ap.parse_args(argv)
    args.backbone, args.data = args.backbone or b16_backbone(), args.data or cifake_parquet()

    import torch

    torch.set_num_threads(args.threads)
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.eval.compare import paired_auc_difference
    from clipdetect.features.backbones import create_backbone

    backbone = create_backbone(args.backbone)
    pre = SplitPreprocess(backbone.preprocess)
    specs = [s.strip() for s in args.runtimes.split(",") if s.strip()]
    assert specs[0] == "torch:fp32", "the first runtime is the reference: torch:fp32"
    eval_arrays, y = cifake(pre, args.data, args.eval_start, args.images)
    photos, photo_names = photo_crops(pre, args.photos)
    encoders, info = prepare(backbone, specs, Path(args.cache_dir) if args.cache_dir else None)
    arrays = eval_arrays + photos
    det = fixed_detector(seed=0)
    n_all, t0 = len(eval_arrays), time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(emb, times, done):
        n = min(done, n_all)
        ref_scores = np.asarray(det.logits(emb["torch:fp32"][:n])).ravel()
        rows = {}
        for k in specs:
            ratios = times["torch:fp32"] / times[k]
            scores = np.asarray(det.logits(emb[k][:n])).ravel()
            rows[k] = {
                "img_per_s": done / times[k].sum(),
                "speedup_vs_torch_fp32": float(times["torch:fp32"].sum() / times[k].sum()),
                "batch_ratio_median": float(np.median(ratios)), "batch_ratio_min": float(ratios.min()),
                "batch_ratio_max": float(ratios.max()),
                "cosine_cifake": cos_stats(emb[k][:n], emb["torch:fp32"][:n]),
                "cosine_photos": cos_stats(emb[k][n:], emb["torch:fp32"][n:]) if done > n else None,
                "cosine_all": cos_stats(emb[k], emb["torch:fp32"]),
                "auc": paired_auc_difference(y[:n], scores, ref_scores, n_boot=args.n_boot, seed=0)
                if 0 < (y[:n] == 1).sum() < n else None,
                **info.get(k, {})}
        result.update({"complete": done == len(arrays), "n_cifake": n, "n_photos": done - n,
                       "n_real": int((y[:n] == 0).sum()), "n_fake": int((y[:n] == 1).sum()),
                       "wall_seconds": round(time.perf_counter() - t0, 1), "runtimes": rows})
        result["machine"]["loadavg_end"] = os.getloadavg()
        save_json(out.with_suffix(".json"), result)
        save_text(out.with_suffix(".md"), markdown(result))

    result = {"config": vars(args), "photo_sources": sorted(set(photo_names)),
              "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "torch_capability": torch.backends.cpu.get_cpu_capability()}}
    run_interleaved(encoders, arrays, args.batch_size, on_progress=write)
    print(markdown(result))
    return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(r) -> str:
    c = r["config"]
    status = "" if r.get("complete") else " — PARTIAL: the run was cut short; the rows done so far"
    lines = [f"# Image tower on CPU runtimes ({c['backbone'].split(':')[0]}, {c['threads']} threads, batch "
             f"{c['batch_size']}){status}", "",
             f"{r['n_cifake']} CIFAKE rows ({r['n_real']} real, {r['n_fake']} fake; rows {c['eval_start']}–"
             f"{c['eval_start'] + r['n_cifake'] - 1}) + {r['n_photos']} crops of {len(r['photo_sources'])} larger "
             f"photos, every batch through every runtime in turn (one run, {r['wall_seconds']} s). CPU: "
             f"{r['machine']['cpu']}, torch capability {r['machine']['torch_capability']}, load average at the "
             f"end {', '.join(f'{x:.1f}' for x in r['machine']['loadavg_end'])}. Detector: the paper head trained "
             "on torch fp32 features of CIFAKE rows 0–2047 (the package's sample cache), fixed seed.", "",
             "| runtime | img/s | × torch fp32 (batch median, range) | cosine CIFAKE mean / min | cosine photos "
             "mean / min | AUC | ΔAUC vs torch fp32 [95% CI] |", "|---|---|---|---|---|---|---|"]
    for k, v in r["runtimes"].items():
        ph = v["cosine_photos"]
        ph_txt = "–" if ph is None else f"{ph['mean']:.5f} / {ph['min']:.5f}"
        a = v["auc"] or {"auc_a": float("nan"), "delta_auc": float("nan"), "delta_auc_lo": float("nan"),
                         "delta_auc_hi": float("nan")}
        lines.append(f"| {k} | {v['img_per_s']:.2f} | {v['speedup_vs_torch_fp32']:.2f} ({v['batch_ratio_median']:.2f}, "
                     f"{v['batch_ratio_min']:.2f}–{v['batch_ratio_max']:.2f}) | {v['cosine_cifake']['mean']:.5f} / "
                     f"{v['cosine_cifake']['min']:.5f} | "
                     f"{ph_txt} | {a['auc_a']:.4f} | "
                     f"{a['delta_auc']:+.4f} [{a['delta_auc_lo']:+.4f}, {a['delta_auc_hi']:+.4f}] |")
    lines += ["", "Targets: ≥ 2× torch fp32 img/s; cosine ≥ 0.995 mean and ≥ 0.99 min; the ΔAUC CI includes 0."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
