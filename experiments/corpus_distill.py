"""Distilled student vs. the CLIP ViT-B/16 teacher detector on the corpus (44 public sources).

1. Teacher detector: the paper head trained on the corpus cache's cached ViT-B/16 embeddings
   (train rows of the ``--views`` views, ``orig`` by default; validation rows of ``orig`` pick the
   epoch and fit the calibration), the toolkit's default schedule.
2. Student: ``clipdetect distill --views`` on the same train / validation rows (with ``--views
   all`` every image is also fed as each degraded view the cache holds, matched to the teacher's
   embedding of that view), EfficientNet-Lite0 with ImageNet weights at ``--image-size`` px, best
   epoch on validation AUC.
3. On the SAME test rows (the cache's test split, ``orig`` view): the teacher's scores from its
   cached embeddings, the student's end to end (encoded file -> decode -> preprocess -> student
   -> head); AUC with bootstrap CIs and the paired-bootstrap difference (teacher - student).
4. Speed: the first ``--speed-n`` test images, batch ``--batch-size``, ``--threads`` torch
   threads, on ``predict``'s engine with ``--workers`` decode processes (``student_speed.py``:
   also the in-process rate and the decode ceiling), on every runtime of ``--runtimes``; median of
   ``--repeats`` passes. The fastest runtime of each model gives the speed-up.

    python experiments/corpus_distill.py $CLIPDETECT_DATA/caches/corpus-b16 \\
        $CLIPDETECT_DATA/corpus2/manifest.csv --work $CLIPDETECT_DATA/distill --epochs 12
    python experiments/corpus_distill.py ... --views all --epochs 6   # -> distill_224_all.{json,md}
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_distill import image_tower, n_params
from clipdetect import Detector, FeatureCache, open_source
from clipdetect.core.metrics import evaluate_scores
from clipdetect.core.numerics import logit
from clipdetect.data.imaging import decode_image
from clipdetect.data.views import apply_view
from clipdetect.distill.compress_report import score_refs
from clipdetect.distill.images import collect_images
from clipdetect.distill.images import teacher_rows
from clipdetect.distill.targets import IMAGE_TARGET, standardise, teacher_targets
from clipdetect.eval.compare import paired_auc_difference
from clipdetect.features.backbones import create_backbone
from clipdetect.features.pipeline import default_workers
from clipdetect.features.splits import SplitSpec
from clipdetect.models.train import TrainConfig
from common import ROOT, save_json, save_text
from student_speed import fastest, measure

N_BOOT = 1000


def student_args(args) -> list:
    if args.arch == "clip":
        out = ["--arch", "clip", "--target", args.target]
        out += ["--blocks", str(args.blocks)] if args.blocks else []
        return out + (["--encoder-lr", str(args.encoder_lr)] if args.encoder_lr else [])
    return ["--arch", "tf_efficientnet_lite0", "--pretrained", "efficientnet-lite0", "--target", args.target]


def student_tag(args) -> str:
    """'lite0' or 'clip8' (a clip student's block count)."""
    if args.arch != "clip":
        return "lite0"
    return f"clip{args.blocks or int(args.target.removeprefix('block'))}"


def distill_student(args, sdir: Path) -> float | None:
    if (sdir / "detector" / "detector.json").is_file():
        return None
    cmd = [sys.executable, "-m", "clipdetect", "distill", str(args.manifest), "--teacher-cache", str(args.cache),
           "--out", str(sdir), *student_args(args),
           "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--batch-size",
           str(args.batch_size_train), "--augment", args.augment, "--workers", "1", "--threads", str(args.threads),
           "--views", args.views, "--seed", "0", "--no-progress"]
    if (sdir / "checkpoints").is_dir():
        cmd.append("--resume")
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    return time.time() - t0


def teacher_detector(cache, work: Path, views: str) -> Detector:
    out = work / ("teacher" if views == "orig" else f"teacher-{tag(views)}")
    if (out / "detector.json").is_file():
        return Detector.load(out)
    split = SplitSpec().labels(cache)
    tr = teacher_rows(cache, np.flatnonzero(split == "train"), views.split(","))
    va = teacher_rows(cache, np.flatnonzero(split == "val"))
    det = Detector.fit_rows(cache, tr, va, feature_set="image", config=TrainConfig(seed=0))
    det.save(out)
    return det


def test_images(cache, manifest: str) -> tuple:
    """The cache's test rows (``orig`` view) and their image files from ``manifest``, in row order."""
    test = teacher_rows(cache, np.sort(SplitSpec().rows(cache, "test")))
    keys = cache.meta["key"].astype(str).to_numpy()[test]
    images = collect_images(open_source(manifest), keys)
    return test, [images[k] for k in keys]


def token_head_logits(cache, tr: np.ndarray, va: np.ndarray, target: str, *scored: np.ndarray,
                      config: TrainConfig) -> list:
    """The paper head on the teacher's ``target`` token, standardised with the ``tr`` rows' statistics
    and L2-normalised as a clip student's output is, fitted on ``tr`` (``va`` picks the epoch): its
    logits on each row set of ``scored``."""
    (x_tr, x_va, *xs), _ = standardise(*(teacher_targets(cache, r, target) for r in (tr, va, *scored)))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    det = Detector.fit(unit(x_tr), cache.labels(tr), X_val=unit(x_va), y_val=cache.labels(va), config=config)
    return [np.asarray(det.logits(unit(x)), dtype=np.float64) for x in xs]


def token_teacher(cache, views: str, target: str, test: np.ndarray) -> np.ndarray:
    """Test logits of the paper head on the teacher's own ``target`` token (224 px, every block before
    it): the teacher's accuracy on exactly what the student imitates."""
    split = SplitSpec().labels(cache)
    tr = teacher_rows(cache, np.flatnonzero(split == "train"), views.split(","))
    va = teacher_rows(cache, np.flatnonzero(split == "val"))
    return token_head_logits(cache, tr, va, target, test, config=TrainConfig(seed=0))[0]


def view_refs(refs, keys, view: str) -> list:
    """The images of ``refs`` turned into ``view`` (the key-seeded transform the teacher cache's rows of
    that view were extracted from), as lossless PNG bytes for the student's end-to-end scoring."""
    out = []
    for ref, key in zip(refs, keys):
        img, _ = decode_image(ref)
        buf = io.BytesIO()
        apply_view(img, view, key).convert("RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def other_views(args, cache, teacher, student_backbone, student, test, refs, keys) -> dict:
    """Teacher (cached rows of the view) and student (end to end on the same pictures) on each of
    ``--also-views``, for the same test images: AUCs and the paired gap."""
    out = {}
    views = cache.columns("view")["view"].astype(str).to_numpy()
    all_keys = cache.meta["key"].astype(str).to_numpy()
    for view in [v for v in args.also_views.split(",") if v]:
        row_of = {k: i for i, k in enumerate(all_keys) if views[i] == view}
        rows = np.array([row_of[k] for k in keys[test]])
        y = cache.labels(rows)
        t = np.asarray(teacher.logits(teacher.features(cache, rows)), dtype=np.float64)
        p = score_refs(student_backbone, student, view_refs(refs, keys[test], view),
                       batch_size=args.batch_size)
        s = logit(np.clip(p, 1e-12, 1 - 1e-12))
        auc = {name: evaluate_scores(y, v, threshold=0.0, n_boot=N_BOOT, seed=0, scores_are_probs=False).iloc[0]
               for name, v in (("teacher", t), ("student", s))}
        d = paired_auc_difference(y, t, s, n_boot=N_BOOT, seed=0)
        out[view] = {**{f"{n}_auc": {k: float(a[k]) for k in ("auc", "auc_lo", "auc_hi")} for n, a in auc.items()},
                     "gap_teacher_minus_student": {k: float(v) for k, v in d.items() if isinstance(v, (int, float))}}
    return out


def tag(views: str) -> str:
    """A file-name tag for a ``--views`` value ('' for orig)."""
    return "" if views == "orig" else views.replace(",", "+").replace(":", "-")


def speeds(args, refs, models) -> dict:
    """img/s of each model on each runtime on ``predict``'s engine (decode workers), with the in-process
    rate and the decode ceiling (:func:`student_speed.measure`)."""
    out = {}
    for name, spec, det in models:
        rates = measure(args, name, spec, det, refs)
        for entry in args.runtimes.split(","):
            out[f"{name}:{entry}"] = {"images_per_second": rates[entry]["predict"],
                                      "in_process_images_per_second": rates[entry]["in_process"],
                                      "model_images_per_second": rates[entry]["model"],
                                      "pass_seconds": rates[entry]["predict_pass_seconds"],
                                      "decode_ceiling": rates["decode_ceiling"], "input_px": rates["input_px"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", help="the corpus's teacher cache (ViT-B/16)")
    ap.add_argument("manifest", help="the manifest the cache was extracted from")
    ap.add_argument("--work", required=True, help="folder for the teacher detector and the student")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--arch", default="lite0", choices=["lite0", "clip"], help="the student: EfficientNet-Lite0 "
                    "(ImageNet weights) or the teacher's own first blocks (distill --arch clip)")
    ap.add_argument("--target", default=IMAGE_TARGET, help="distill --target: image, or a block token (block8) "
                    "of a cache extracted with --layers; with a block, the teacher's head on that token is "
                    "also scored")
    ap.add_argument("--blocks", type=int, help="distill --blocks (clip students; default the target's)")
    ap.add_argument("--encoder-lr", type=float, help="distill --encoder-lr (default: distill's)")
    ap.add_argument("--also-views", default="", help="also score the test images in these views of the cache "
                    "(e.g. norm:256:90): the teacher from its cached rows, the student end to end")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--augment", default="flip")
    ap.add_argument("--views", default="orig", help="the cache's views both models train on (distill --views): "
                    "orig, a list, or all; the test rows are orig either way")
    ap.add_argument("--batch-size-train", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="inference batch (both models)")
    ap.add_argument("--speed-n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=default_workers(), help="decode processes of the speed "
                    "measurement (predict's default)")
    ap.add_argument("--runtimes", default="torch,openvino", help="CPU runtimes the speed is measured on, "
                    "RUNTIME[:PRECISION] (e.g. torch,openvino:bf16; precision default fp32)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "corpus_distill"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    suffix = f"_{tag(args.views)}" if tag(args.views) else ""
    name = f"{student_tag(args)}-{args.image_size}" + (f"-{args.target}" if args.arch != "clip" and
                                                         args.target != IMAGE_TARGET else "")
    sdir = work / f"student-{name}{suffix.replace('_', '-')}"
    t_distill = distill_student(args, sdir)
    cache = FeatureCache(args.cache)
    teacher, student = teacher_detector(cache, work, args.views), Detector.load(sdir / "detector")

    test, refs = test_images(cache, str(args.manifest))
    keys = cache.meta["key"].astype(str).to_numpy()
    y = cache.labels(test)
    t_logits = np.asarray(teacher.logits(teacher.features(cache, test)), dtype=np.float64)
    t0 = time.perf_counter()
    student_backbone = create_backbone(f"student:{sdir}")
    s_probs = score_refs(student_backbone, student, refs, batch_size=args.batch_size)
    s_seconds = time.perf_counter() - t0
    s_logits = logit(np.clip(s_probs, 1e-12, 1 - 1e-12))
    tt = evaluate_scores(y, t_logits, threshold=0.0, n_boot=N_BOOT, seed=0, scores_are_probs=False).iloc[0]
    ss = evaluate_scores(y, s_logits, threshold=0.0, n_boot=N_BOOT, seed=0, scores_are_probs=False).iloc[0]
    diff = paired_auc_difference(y, t_logits, s_logits, n_boot=N_BOOT, seed=0)
    token = None
    if args.target != IMAGE_TARGET:  # the teacher's head on the very token the student imitates
        k_logits = token_teacher(cache, args.views, args.target, test)
        kk = evaluate_scores(y, k_logits, threshold=0.0, n_boot=N_BOOT, seed=0, scores_are_probs=False).iloc[0]
        kd = paired_auc_difference(y, k_logits, s_logits, n_boot=N_BOOT, seed=0)
        token = {"auc": {k: float(kk[k]) for k in ("auc", "auc_lo", "auc_hi")},
                 "gap_minus_student": {k: float(v) for k, v in kd.items() if isinstance(v, (int, float))}}

    extra_views = other_views(args, cache, teacher, student_backbone, student, test, refs, keys)
    models = [("teacher", cache.backbone["spec"], teacher), ("student", f"student:{sdir}", student)]
    speed = speeds(args, refs[:args.speed_n], models)
    params = {name: n_params(image_tower(create_backbone(spec)), det.head) for name, spec, det in models}
    def by_model(key: str) -> dict:  # {model: {model:runtime: rate}}
        return {m: {k: v[key] for k, v in speed.items() if k.startswith(m + ":")} for m in ("teacher", "student")}

    best, ratio = fastest(by_model("images_per_second"))
    best_model, ratio_model = fastest(by_model("model_images_per_second"))
    doc = {"setup": {**{k: v for k, v in vars(args).items() if k not in ("cache", "manifest", "work", "out")},
                     "test_rows": int(len(test)), "test_fake": int(y.sum()), "distill_wall_seconds": t_distill,
                     "student_test_seconds": s_seconds, "torch": torch.__version__},
           "teacher_auc": {k: float(tt[k]) for k in ("auc", "auc_lo", "auc_hi")},
           "student_auc": {k: float(ss[k]) for k in ("auc", "auc_lo", "auc_hi")},
           "gap_teacher_minus_student": {k: float(v) for k, v in diff.items() if isinstance(v, (int, float))},
           "teacher_token": token, "other_views": extra_views,
           "speed": speed, "parameters": params, "fastest": best, "speedup_fastest": ratio,
           "fastest_model": best_model, "speedup_model": ratio_model}
    out = Path(args.out)
    plain = args.arch != "clip" and args.target == IMAGE_TARGET  # the original runs' file names
    stem = f"distill_{args.image_size}{suffix}" if plain else f"distill_{name}{suffix}"
    save_json(out / f"{stem}.json", doc)
    d = doc["gap_teacher_minus_student"]
    what = ("EfficientNet-Lite0" + ("" if plain else f", distilled to the teacher's {args.target} token at 224 px")
            if args.arch != "clip" else
            f"the teacher's first {student_tag(args)[4:]} blocks, distilled to its {args.target} token at 224 px")
    md = [f"# Distilled student ({args.image_size} px, {what}) vs ViT-B/16 teacher, corpus test split", "",
          f"{len(test)} test images ({int(y.sum())} generated) of the corpus's 44 sources, the same for both; "
          f"95 % bootstrap CIs ({N_BOOT}); gap = teacher AUC - student AUC with its paired-bootstrap CI. "
          f"Both trained on the views '{args.views}' of the train rows. Student: {args.epochs} epochs, batch "
          f"{args.batch_size_train}, augment '{args.augment}', best epoch by validation AUC; teacher: the paper "
          "head on the cached embeddings, default schedule.", "",
          "| model | AUC [95% CI] |", "|---|---|",
          f"| ViT-B/16 + head | {tt['auc']:.3f} [{tt['auc_lo']:.3f}, {tt['auc_hi']:.3f}] |",
          f"| student + head | {ss['auc']:.3f} [{ss['auc_lo']:.3f}, {ss['auc_hi']:.3f}] |", "",
          f"Gap {d.get('delta_auc', float('nan')):+.3f} [{d.get('delta_auc_lo', float('nan')):+.3f}, "
          f"{d.get('delta_auc_hi', float('nan')):+.3f}].", ""]
    if token:
        ka, kg = token["auc"], token["gap_minus_student"]
        md += [f"The teacher's head on its own {args.target} token (224 px, standardised and normalised as the "
               f"student's output, same head and schedule): AUC {ka['auc']:.3f} [{ka['auc_lo']:.3f}, "
               f"{ka['auc_hi']:.3f}]; gap to the student {kg['delta_auc']:+.3f} [{kg['delta_auc_lo']:+.3f}, "
               f"{kg['delta_auc_hi']:+.3f}].", ""]
    for view, r in extra_views.items():
        ta, sa, g = r["teacher_auc"], r["student_auc"], r["gap_teacher_minus_student"]
        md += [f"The same test images as view `{view}` (the teacher from its cached rows of that view, the student "
               f"end to end on the same pictures): teacher {ta['auc']:.3f} [{ta['auc_lo']:.3f}, {ta['auc_hi']:.3f}], "
               f"student {sa['auc']:.3f} [{sa['auc_lo']:.3f}, {sa['auc_hi']:.3f}], gap {g['delta_auc']:+.3f} "
               f"[{g['delta_auc_lo']:+.3f}, {g['delta_auc_hi']:+.3f}].", ""]
    md += [
          f"Speed (CPU, {args.threads} threads, batch {args.batch_size}, first {args.speed_n} test images end to end "
          f"from the files on predict's engine with {args.workers} decode processes, median of {args.repeats} "
          "passes; `student_speed.py`):", "",
          "| model:runtime | input px | images/s | in process | model alone | decode ceiling |",
          "|---|---|---|---|---|---|"]
    md += [f"| {k} | {v['input_px']} | {v['images_per_second']:.2f} | {v['in_process_images_per_second']:.2f} | "
           f"{v['model_images_per_second']:.2f} | {v['decode_ceiling']:.1f} |" for k, v in speed.items()]
    md += ["", f"End to end, fastest runtime of each: {best['teacher']} vs {best['student']}: student {ratio:.1f}x "
           "the teacher.", f"The model alone (decoded beforehand; tensor stage, tower and head), fastest of each: "
           f"{best_model['teacher']} vs {best_model['student']}: student {ratio_model:.1f}x the teacher.", ""]
    save_text(out / f"{stem}.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
