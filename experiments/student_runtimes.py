"""A distilled student on the CPU runtimes: its accuracy on each, paired against torch fp32.

``student_speed.py`` times the student on every runtime; this checks what each runtime costs in
accuracy, on the same test images as ``corpus_distill.py`` (the cache's test split, ``orig``
view, end to end from the files): per runtime the student detector's AUC with its bootstrap CI,
the paired AUC difference to torch fp32, and the per-image cosine between the runtime's
embeddings and torch fp32's (same decoded pixels). Writes
``experiments/results/corpus_distill/student_runtimes_TAG.{json,md}``. ::

    python experiments/student_runtimes.py $CLIPDETECT_DATA/caches/corpus-b16 \\
        $CLIPDETECT_DATA/corpus2/manifest.csv --student $CLIPDETECT_DATA/distill/student-clip8-112 \\
        --runtimes openvino:bf16,openvino:int8,torch:bf16 --tag clip8-112
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from clipdetect import Detector, FeatureCache
from clipdetect.core.metrics import evaluate_scores
from clipdetect.eval.compare import paired_auc_difference
from clipdetect.features.backbones import create_backbone
from clipdetect.models.predict import ImageScorer, score_batch
from common import ROOT, save_json, save_text
from corpus_distill import test_images
from student_speed import decode_all

N_BOOT = 1000


def scored(det, bb, decoded: list, batch: int):
    """(embeddings [N, D], logits [N]) of decoded images on ``bb``: the encoder stage and scoring of
    :class:`ImageScorer`, the step ``predict`` and the service run per batch."""
    encoder = ImageScorer(det, bb).encoder
    embs, logits = [], []
    for i in range(0, len(decoded), batch):
        part = decoded[i:i + batch]
        x = encoder.encode([d[1] for d in part])
        embs.append(x)
        logits += [row["logit"] for row in score_batch(det, bb, part, [None] * len(part), x)]
    return np.concatenate(embs), np.asarray(logits, dtype=np.float64)


def auc_ci(y: np.ndarray, logits: np.ndarray) -> dict:
    row = evaluate_scores(y, logits, threshold=0.0, n_boot=N_BOOT, seed=0, scores_are_probs=False).iloc[0]
    return {k: float(row[k]) for k in ("auc", "auc_lo", "auc_hi")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", help="the teacher cache the student was distilled from (its test split is scored)")
    ap.add_argument("manifest", help="the manifest the cache was extracted from")
    ap.add_argument("--student", required=True, help="student directory (clipdetect distill --out)")
    ap.add_argument("--runtimes", default="openvino:bf16,openvino:int8", help="RUNTIME:PRECISION,... to compare "
                    "with torch fp32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "corpus_distill"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = FeatureCache(args.cache)
    test, refs = test_images(cache, args.manifest)
    y = cache.labels(test)
    det = Detector.load(Path(args.student) / "detector")
    spec = f"student:{args.student}"
    ref_bb = create_backbone(spec)
    decoded = decode_all(ImageScorer(det, ref_bb), refs)  # once: every runtime shares the preprocessing
    ref_emb, ref_logit = scored(det, ref_bb, decoded, args.batch_size)
    rows = {"torch:fp32": {"auc": auc_ci(y, ref_logit)}}
    for entry in [e for e in args.runtimes.split(",") if e]:
        runtime, _, precision = entry.partition(":")
        emb, lg = scored(det, create_backbone(spec, runtime=runtime, precision=precision or "fp32"), decoded,
                         args.batch_size)
        cos = np.sum(emb * ref_emb, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref_emb, axis=1))
        diff = paired_auc_difference(y, lg, ref_logit, n_boot=N_BOOT, seed=0)
        rows[entry] = {"auc": auc_ci(y, lg), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                       "minus_fp32": {k: float(v) for k, v in diff.items() if isinstance(v, (int, float))}}
        print(entry, rows[entry], file=sys.stderr, flush=True)
    tag = f"_{args.tag}" if args.tag else ""
    save_json(Path(args.out) / f"student_runtimes{tag}.json", {"images": len(refs), "fake": int(y.sum()),
                                                              "student": spec, "runtimes": rows})
    md = [f"# The student on each CPU runtime: {len(refs)} test images end to end, paired against torch fp32", "",
          "| runtime | AUC [95% CI] | minus torch fp32 [95% CI] | cosine to fp32 (mean / min) |", "|---|---|---|---|"]
    for k, v in rows.items():
        a, d = v["auc"], v.get("minus_fp32")
        md.append(f"| {k} | {a['auc']:.4f} [{a['auc_lo']:.4f}, {a['auc_hi']:.4f}] | " +
                  (f"{d['delta_auc']:+.4f} [{d['delta_auc_lo']:+.4f}, {d['delta_auc_hi']:+.4f}] | "
                   f"{v['cosine_mean']:.5f} / {v['cosine_min']:.5f} |" if d else "— | — |"))
    save_text(Path(args.out) / f"student_runtimes{tag}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
