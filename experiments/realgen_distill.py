"""Distilled student vs. the CLIP ViT-B/16 teacher detector on the realgen images.

1. Student: ``clipdetect distill`` on the as-is manifest with the as-is teacher cache
   (teacher embeddings read from the cache; train rows only, best epoch on val AUC),
   EfficientNet-Lite0 with ImageNet weights at ``--image-size`` px.
2. Teacher detector: the paper head trained on the same cache by realgen_experiments.py
   (train split, explicit schedule).
3. On the SAME held-out rows (the manifest's test split): the teacher's scores from its
   cached embeddings, the student's end to end (encoded file -> decode -> preprocess ->
   student -> head); per-generator AUC with bootstrap CIs and the paired-bootstrap AUC
   difference (teacher - student).
4. Speed: the first ``--speed-n`` test images, batch ``--batch-size``, CPU, ``--threads``
   torch threads, the same decode path for both; median of ``--repeats`` passes.

    python experiments/realgen_distill.py --image-size 160 --epochs 8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import realgen_experiments as rx
from bench_distill import image_tower, n_params, timed_scores
from clipdetect import Detector, FeatureCache, open_source
from clipdetect.core.metrics import evaluate_scores
from clipdetect.core.numerics import logit
from clipdetect.data.imaging import SplitPreprocess, decode_image
from clipdetect.distill.compress_report import score_refs
from clipdetect.distill.images import collect_images
from clipdetect.eval.compare import paired_auc_difference
from clipdetect.features.backbones import create_backbone
from clipdetect.features.splits import resolve_split_rows
from common import ROOT, add_data_arg, save_json, save_text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size-train", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="inference batch (both models)")
    ap.add_argument("--speed-n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    add_data_arg(ap)
    ap.add_argument("--work", help="detectors and students (default: work/ in the data folder)")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    rx.use_data(args.data)
    torch.set_num_threads(args.threads)
    work = Path(args.work or rx.use_data(args.data) / "work")
    cache_m = FeatureCache(rx.CACHES["asis"])
    sdir = work / "students" / f"realgen-lite0-{args.image_size}"
    t_distill = None
    if not args.skip_train and not (sdir / "detector" / "detector.json").is_file():
        cmd = [sys.executable, "-m", "clipdetect", "distill", str(rx.MANIFEST), "--teacher-cache", str(rx.CACHES["asis"]),
               "--out", str(sdir), "--arch", "tf_efficientnet_lite0", "--pretrained", "efficientnet-lite0",
               "--image-size", str(args.image_size), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size_train), "--augment", "flip", "--workers", "1",
               "--threads", str(args.threads), "--seed", "0", "--no-progress"]
        if (sdir / "checkpoints").is_dir():  # continue a stopped run (a changed --epochs reshapes the lr schedule)
            cmd.append("--resume")
        print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        t_distill = time.time() - t0

    teacher_det = Detector.load(rx.det_dir(work, "asis", "paper"))
    student_det = Detector.load(sdir / "detector")
    test_rows = np.sort(resolve_split_rows(cache_m, "test"))
    keys = cache_m.meta["key"].astype(str).to_numpy()
    y = cache_m.labels(test_rows)
    gen = cache_m.meta.loc[test_rows, "generator"].astype(str).to_numpy()
    images = collect_images(open_source(str(rx.MANIFEST)), keys[test_rows])
    refs = [images[k] for k in keys[test_rows]]

    student_bb = create_backbone(f"student:{sdir}")
    t_logits = np.asarray(teacher_det.logits(teacher_det.features(cache_m, test_rows)), dtype=np.float64)
    t0 = time.perf_counter()
    s_probs = score_refs(student_bb, student_det, refs, batch_size=args.batch_size)
    s_seconds_all = time.perf_counter() - t0
    s_logits = logit(np.clip(s_probs, 1e-12, 1 - 1e-12))

    # per-generator AUC, both models on the same rows, plus paired AUC difference
    rows = []
    groups = [("overall", np.ones_like(y, dtype=bool))] + [(g, (y == 0) | (gen == g)) for g in sorted(set(gen[y == 1]))]
    for name, m in groups:
        tt = evaluate_scores(y[m], t_logits[m], threshold=0.0, n_boot=rx.N_BOOT, seed=0, scores_are_probs=False).iloc[0]
        ss = evaluate_scores(y[m], s_logits[m], threshold=0.0, n_boot=rx.N_BOOT, seed=0, scores_are_probs=False).iloc[0]
        d = paired_auc_difference(y[m], t_logits[m], s_logits[m], n_boot=rx.N_BOOT, seed=0)
        rows.append({"generator": name, "n_real": int(tt["n_real"]), "n_fake": int(tt["n_fake"]),
                     "teacher_auc": tt["auc"], "teacher_auc_lo": tt["auc_lo"], "teacher_auc_hi": tt["auc_hi"],
                     "student_auc": ss["auc"], "student_auc_lo": ss["auc_lo"], "student_auc_hi": ss["auc_hi"],
                     "gap": tt["auc"] - ss["auc"], **{f"paired_{k}": v for k, v in d.items()}})
    table = pd.DataFrame(rows)

    # speed on the same images, same batch size
    teacher_bb = create_backbone(cache_m.backbone["spec"])
    speed_refs = refs[:args.speed_n]
    speed = {}
    for name, bb, det in (("teacher", teacher_bb, teacher_det), ("student", student_bb, student_det)):
        _, sec, times = timed_scores(bb, det, speed_refs, args.batch_size, args.repeats)
        speed[name] = {"images_per_second": len(speed_refs) / sec, "pass_seconds": times,
                       "input_px": bb.identity["preprocess"]["size"][0],
                       "parameters": n_params(image_tower(bb), det.head)}
        print(name, speed[name], file=sys.stderr, flush=True)
    # decode + preprocess alone (the shared floor)
    pre = SplitPreprocess(student_bb.preprocess)
    t0 = time.perf_counter()
    for r in speed_refs:
        pre.worker(decode_image(r)[0])
    decode_ips = len(speed_refs) / (time.perf_counter() - t0)

    sjson = json.loads((sdir / "student.json").read_text())
    hist = json.loads((sdir / "history.json").read_text())
    doc = {"setup": {"image_size": args.image_size, "epochs": args.epochs, "batch_size_train": args.batch_size_train,
                     "inference_batch_size": args.batch_size, "threads": args.threads, "speed_images": len(speed_refs),
                     "speed_fake": int(y[:args.speed_n].sum()), "repeats": args.repeats, "test_rows": int(len(test_rows)),
                     "distill_wall_seconds": t_distill, "student_dir": str(sdir), "torch": torch.__version__},
           "student_distill": sjson.get("distill"), "history": hist,
           "per_generator": json.loads(table.to_json(orient="records")),
           "speed": speed, "speedup": speed["student"]["images_per_second"] / speed["teacher"]["images_per_second"],
           "decode_preprocess_images_per_second": decode_ips,
           "student_test_split_seconds": s_seconds_all}
    tag = f"distill_{args.image_size}"
    save_json(rx.RESULTS / "asis" / f"{tag}.json", doc)
    t, s = speed["teacher"], speed["student"]
    md = [f"# Distilled student ({args.image_size} px EfficientNet-Lite0) vs ViT-B/16 teacher detector, realgen as-is",
          "", f"Student: `clipdetect distill` on the train split, {args.epochs} epochs, batch {args.batch_size_train}, "
          f"best epoch by val AUC. Teacher: paper head on cached ViT-B/16 embeddings. Same {len(test_rows)} test rows "
          f"for both; 95% bootstrap CIs ({rx.N_BOOT}); gap = teacher AUC - student AUC with paired-bootstrap CI.", "",
          "| generator | n_real | n_fake | teacher AUC | student AUC | gap [95% CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r.get("paired_delta_auc_lo"), r.get("paired_delta_auc_hi")
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        md.append(f"| {r['generator']} | {r['n_real']} | {r['n_fake']} | {r['teacher_auc']:.3f} "
                  f"[{r['teacher_auc_lo']:.3f}, {r['teacher_auc_hi']:.3f}] | {r['student_auc']:.3f} "
                  f"[{r['student_auc_lo']:.3f}, {r['student_auc_hi']:.3f}] | {r['gap']:+.3f}{ci} |")
    md += ["", f"Speed (CPU, {args.threads} threads, batch {args.batch_size}, first {len(speed_refs)} test images, "
           f"median of {args.repeats} passes, end to end from the encoded files):", "",
           "| model | input px | parameters | images/s |", "|---|---|---|---|",
           f"| ViT-B/16 + paper head | {t['input_px']} | {t['parameters']:,} | {t['images_per_second']:.2f} |",
           f"| student + head | {s['input_px']} | {s['parameters']:,} | {s['images_per_second']:.2f} |", "",
           f"Speed-up {doc['speedup']:.1f}x. Decode + preprocess alone: {decode_ips:.1f} images/s "
           "(the floor both share: these are 512-1024 px PNGs and JPEGs).", ""]
    save_text(rx.RESULTS / "asis" / f"{tag}.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
