"""Student vs. teacher speed, end to end from image files, as ``clipdetect predict`` runs them.

The speed half of the distillation target ("student ≥ 5× the teacher's img/s, both on their
fastest CPU runtime"). ``corpus_distill.py`` times ``Detector.score_images``, which decodes in
the calling process, one image after another, before each batch's forward pass: for a model as
fast as the student that measures the decoder on one core. ``clipdetect predict`` decodes in
worker processes while the model runs. This script times that path, on the same images for both
models, per runtime:

* ``decode ceiling``: the decode workers alone (decode + the PIL stage of each model's
  preprocessing, no model), pool start-up left out: no end-to-end rate can exceed it;
* ``predict``: decode workers + model + head (``score_tasks``, the engine of ``predict``), the
  pool started inside the timed pass as a ``predict`` run starts it; median of ``--repeats``;
* ``in process``: ``score_images`` (no workers), as ``corpus_distill.py`` measured;
* ``model``: the runtime alone: the same images decoded and resized beforehand (outside the
  clock), then timed through :class:`ImageScorer`'s ``score`` (to float, normalise, tower, head),
  the step a service runs per batch: the model's img/s, free of the decoder.

Speed does not depend on the weights' values, so any student directory of the architecture
and input size (and any head on the teacher's embeddings) measures the same; the student's
accuracy is ``corpus_distill.py``'s. ::

    python experiments/student_speed.py MANIFEST --student DIR --teacher general-b16 \\
        --teacher-backbone ViT-B-16-quickgelu:$CLIPDETECT_DATA/weights/clip_b16.pt \\
        --runtimes torch,openvino:bf16 --n 256
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from clipdetect import Detector, open_source
from clipdetect.data.imaging import SplitPreprocess
from clipdetect.data.sources import Sample
from clipdetect.features.backbones import create_backbone
from clipdetect.features.pipeline import default_workers, plan_tasks
from clipdetect.features.splits import assign_splits
from clipdetect.models.predict import ImageScorer, score_images, score_tasks
from common import ROOT, save_json, save_text
from gpu_bench import decode_ceiling


def split_refs(manifest: str, split: str, n: int) -> list:
    """The first ``n`` image references of ``split`` (the key-hash split every cache uses)."""
    samples = list(open_source(manifest).iterate())
    labels = assign_splits([s.key for s in samples])
    refs = [s.image for s, lab in zip(samples, labels) if lab == split]
    if len(refs) < n:
        raise SystemExit(f"only {len(refs)} {split} images in {manifest}; lower --n")
    return refs[:n]


def predict_pass(det, bb, refs, workers: int, batch: int) -> float:
    samples = (Sample(key=str(i), image=r, label=-1) for i, r in enumerate(refs))
    t0 = time.perf_counter()
    rows = [r for _, res in score_tasks(det, bb, plan_tasks(samples, 0, None, batch, batch), workers=workers)
            for r in res]
    seconds = time.perf_counter() - t0
    bad = [r["error"] for r in rows if r.get("error")]
    if bad:
        raise SystemExit(f"{len(bad)} images failed to score, e.g. {bad[0]}")
    return seconds


def decode_all(scorer, refs) -> list:
    """``scorer.decode`` of every image (the PIL stage, done once outside any clock); a clear exit
    when one fails, since a rate or an AUC over fewer images would not be the one named."""
    decoded = [scorer.decode(r) for r in refs]
    bad = [d for d in decoded if d[0] != "ok"]
    if bad:
        raise SystemExit(f"{len(bad)} images failed to decode, e.g. {bad[0][1:]}")
    return decoded


def model_pass(det, bb, refs, batch: int, repeats: int) -> float:
    """img/s of the runtime alone (median of ``repeats``): decoding and the PIL stage run first,
    outside the clock; the clock covers the tensor stage, the tower and the head per batch."""
    scorer = ImageScorer(det, bb)
    decoded = decode_all(scorer, refs)
    batches = [decoded[i:i + batch] for i in range(0, len(decoded), batch)]
    scorer.score(batches[0])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            scorer.score(b)
        times.append(time.perf_counter() - t0)
    return len(refs) / statistics.median(times)


def fastest(rates: dict) -> tuple:
    """``({model: fastest label}, student's rate / teacher's)`` from ``{model: {label: img/s}}``."""
    best = {m: max(r, key=r.get) for m, r in rates.items()}
    return best, rates["student"][best["student"]] / rates["teacher"][best["teacher"]]


def measure(args, name, spec, det, refs) -> dict:
    out = {}
    for entry in args.runtimes.split(","):
        runtime, _, precision = entry.partition(":")
        bb = create_backbone(spec, runtime=runtime, precision=precision or "fp32")
        if not out:
            out["decode_ceiling"] = decode_ceiling(refs, SplitPreprocess(bb.preprocess), args.workers,
                                                   batch=args.batch_size)
            out["input_px"] = bb.identity["preprocess"]["size"][0]
        score_images(det, refs[:args.batch_size], backbone=bb, batch_size=args.batch_size)  # warm-up
        times = [predict_pass(det, bb, refs, args.workers, args.batch_size) for _ in range(args.repeats)]
        t0 = time.perf_counter()
        score_images(det, refs, backbone=bb, batch_size=args.batch_size)
        inproc = time.perf_counter() - t0
        out[entry] = {"predict": len(refs) / statistics.median(times), "predict_pass_seconds": times,
                      "in_process": len(refs) / inproc,
                      "model": model_pass(det, bb, refs, args.batch_size, args.repeats)}
        print(name, entry, out[entry], file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="the image manifest (its test split is timed)")
    ap.add_argument("--student", required=True, help="student directory (clipdetect distill --out)")
    ap.add_argument("--teacher", required=True, help="a detector on the teacher's embeddings (name or folder)")
    ap.add_argument("--teacher-backbone", required=True, help="the teacher's backbone spec (weights path)")
    ap.add_argument("--runtimes", default="torch,openvino:bf16", help="RUNTIME[:PRECISION],...")
    ap.add_argument("--n", type=int, default=256, help="images timed")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=default_workers(), help="decode processes (predict's default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "corpus_distill"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    refs = split_refs(args.manifest, args.split, args.n)
    student_dir = Path(args.student)
    models = {"teacher": (args.teacher_backbone, Detector.load(args.teacher)),
              "student": (f"student:{student_dir}", Detector.load(student_dir / "detector"))}
    speed = {name: measure(args, name, spec, det, refs) for name, (spec, det) in models.items()}
    runtimes = args.runtimes.split(",")
    best, ratio = fastest({m: {r: speed[m][r]["predict"] for r in runtimes} for m in speed})
    best_model, ratio_model = fastest({m: {r: speed[m][r]["model"] for r in runtimes} for m in speed})
    doc = {"setup": {k: v for k, v in vars(args).items() if k != "out"}, "torch": torch.__version__,
           "speed": speed, "fastest": best, "student_over_teacher_fastest": ratio,
           "fastest_model": best_model, "student_over_teacher_model": ratio_model}
    tag = f"_{args.tag}" if args.tag else ""
    save_json(Path(args.out) / f"student_speed{tag}.json", doc)
    md = [f"# Student vs teacher, end to end from {args.n} {args.split} images ({args.workers} decode processes, "
          f"{args.threads} torch threads, batch {args.batch_size}, median of {args.repeats})", "",
          "| model | input px | runtime | predict img/s | in process img/s | model alone img/s | decode ceiling img/s "
          "| predict / ceiling |", "|---|---|---|---|---|---|---|---|"]
    for m, s in speed.items():
        md += [f"| {m} | {s['input_px']} | {r} | {s[r]['predict']:.2f} | {s[r]['in_process']:.2f} | {s[r]['model']:.2f} | "
               f"{s['decode_ceiling']:.1f} | {s[r]['predict'] / s['decode_ceiling']:.2f} |" for r in runtimes]
    md += ["", f"End to end, fastest of each: teacher {best['teacher']}, student {best['student']}: student "
           f"{ratio:.2f}x the teacher.", f"The model alone, fastest of each: teacher {best_model['teacher']}, student "
           f"{best_model['student']}: student {ratio_model:.2f}x the teacher.", ""]
    save_text(Path(args.out) / f"student_speed{tag}.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
