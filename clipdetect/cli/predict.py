"""``clipdetect predict``: score images end to end (decode → backbone → detector)."""
from __future__ import annotations

import logging

from clipdetect.cli.extract import add_limit_args
from clipdetect.cli.main import emit
from clipdetect.cli.options import (add_command, add_device_arg, add_runtime_args, add_workers_arg,
                                    check_new_output)

PREDICT_EXAMPLES = """examples:
  clipdetect predict runs/det photos/ --out scores.csv                 # every image under photos/
  clipdetect predict runs/det photo.jpg --out -                        # CSV on stdout
  clipdetect predict runs/det photos/ --out - --format jsonl | jq .probability
  clipdetect predict runs/det-it photos/ --out s.csv --caption-template "a photo of a {label_name}"
  clipdetect predict runs/det ../shared/data/cifake_dev.parquet --out s.csv --limit 500 --device cuda

Columns, one row per image in source order:
  key, path    the image
  logit        the detector head's raw output (higher = more likely fake)
  probability  calibrated P(fake) (the detector's Platt scaling or temperature)
  threshold    the detector's threshold on that same probability (chosen for a stated target,
               by default an FPR of 5% on validation reals; printed in the summary)
  label        1 = fake, exactly when probability > threshold; 0 = real
  true_label   from a labelled source (real/ and fake/ folders, a manifest), else empty
  error        why an image has no score (decoding failed, too large, no caption ...)
An existing --out file is refused without --force. With --out - the rows go to stdout and
the summary to stderr. Images that cannot be decoded get a row with their error and no score.
Limits: more than 64,000,000 pixels is refused (--max-pixels); images thinner than 1:100 are
centre-cropped to 1:100 unless --max-aspect R refuses those thinner than 1:R; a path that is
not a regular file (a FIFO, /dev/zero) is refused as unreadable, a file over 256 MiB as
too_large (--max-bytes), one not read in 60 s as read_timeout (--read-timeout). Text cells a
spreadsheet would run as a formula (starting with = + - @ or a tab) are written with a
leading '. Ctrl-C or SIGTERM leaves no partial file; --out may not be the source manifest
itself. Exit 1 when not one image could be read, every path missing or unreadable (the file
is still written)."""


def add_parser(sub) -> None:
    p = add_command(sub, "predict", epilog=PREDICT_EXAMPLES)
    p.add_argument("detector", help="detector bundle directory")
    p.add_argument("source", help="image file, folder, manifest, parquet or hf:NAME")
    p.add_argument("--out", required=True, help="predictions file: .csv or .jsonl, or - for stdout")
    p.add_argument("--format", choices=["csv", "jsonl"],
                   help="file format (default: from the --out suffix; csv for stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--backbone",
                   help="backbone spec overriding the detector's (e.g. a new path to its weights)")
    p.add_argument("--weights", metavar="PATH",
                   help="the detector's checkpoint file (or its folder) when it is not where it was recorded; "
                        "checked by sha256 (also: $CLIPDETECT_WEIGHTS)")
    p.add_argument("--any-backbone", action="store_true",
                   help="accept a backbone whose identity differs from the detector's (its scores mean little)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_workers_arg(p)
    add_device_arg(p)
    add_runtime_args(p)
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--caption-template", help="captions for text features, e.g. 'a photo of a {cifar_class}'")
    p.add_argument("--source-split", "--split", dest="split",
                   help="the source's own split to read (a hub split such as train or validation; "
                        "default: the source's); not a cache split")
    add_limit_args(p)
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    import json
    import sys

    from clipdetect.core.device import check_device
    from clipdetect.core.inputs import none_readable
    from clipdetect.data.filelist import open_predict_source
    from clipdetect.features.runtime import check_runtime
    from clipdetect.models.detector import load_detector
    from clipdetect.models.predict import check_captions, predict_source, resolve_backbone
    from clipdetect.models.thresholds import describe_target

    to_stdout = args.out == "-"
    if not to_stdout:
        check_new_output(args.out, args.force)
    device = check_device(args.device)
    check_runtime(args.runtime, args.precision, device)
    det = load_detector(args.detector)
    source = open_predict_source(args.source, caption_template=args.caption_template, split=args.split)
    check_captions(det, source)
    backbone = resolve_backbone(det, args.backbone, force=args.any_backbone, device=device,
                                precision=args.precision, weights=args.weights, runtime=args.runtime)
    summary = predict_source(det, source, sys.stdout if to_stdout else args.out, fmt=args.format,
                             backbone=backbone, batch_size=args.batch_size, workers=args.workers, limit=args.limit,
                             max_pixels=args.max_pixels, max_aspect=args.max_aspect, max_bytes=args.max_bytes,
                             read_timeout=args.read_timeout, progress=not args.no_progress)
    payload = {**summary.to_dict(), "threshold": det.threshold, "threshold_target": det.threshold_target,
               "calibration": det.calibration.to_json()}
    text = (f"{summary.scored} of {summary.n} images scored"
            + (f" ({sum(summary.errors.values())} could not be: {summary.errors})" if summary.errors else "")
            + f", {summary.predicted_fake} called fake -> {'stdout' if to_stdout else args.out}\n"
            f"threshold: P(fake) > {det.threshold:.4g} (target: {describe_target(det.threshold_target)})\n"
            f"probability: {det.calibration.describe()}"
            + (f"\naccuracy against the source's labels: {summary.accuracy:.4f}" if summary.accuracy is not None
               else ""))
    if to_stdout:  # stdout holds the rows: the summary goes to stderr
        sys.stderr.write((json.dumps(payload, default=str) if args.json else text) + "\n")
    else:
        emit(args, payload, text)
    if none_readable(summary.n, summary.scored, summary.errors):
        logging.getLogger(__name__).error("not one of the %d images could be read (%s); %s lists each error",
                                          summary.n, ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors.items())),
                                          args.out)
        return 1
    return 0
