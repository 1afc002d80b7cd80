"""``clipdetect predict``: score images end to end (decode → backbone → detector)."""
from __future__ import annotations

import argparse

from clipdetect.cli.extract import add_limit_args
from clipdetect.cli.main import COMMANDS, print_json
from clipdetect.cli.options import add_runtime_args, load_detector

PREDICT_EXAMPLES = """examples:
  clipdetect predict runs/det photos/ --out scores.csv                 # every image under photos/
  clipdetect predict runs/det photo.jpg --out one.jsonl
  clipdetect predict runs/det-it photos/ --out s.csv --caption-template "a photo of a {label_name}"
  clipdetect predict runs/det ../shared/data/cifake_dev.parquet --out s.csv --limit 500 --device cuda
Images that cannot be decoded get a row with their error and no score. Limits: more than
64,000,000 pixels is refused (--max-pixels); images thinner than 1:100 are centre-cropped to
1:100 unless --max-aspect R refuses those thinner than 1:R. Ctrl-C leaves no partial file."""


def add_parser(sub) -> None:
    from clipdetect.features.pipeline import default_workers

    p = sub.add_parser("predict", help=COMMANDS["predict"][1],
                       epilog=PREDICT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detector", help="detector bundle directory")
    p.add_argument("source", help="image file, folder, manifest, parquet or hf:NAME")
    p.add_argument("--out", required=True, help="predictions file: .csv or .jsonl")
    p.add_argument("--backbone",
                   help="backbone spec overriding the detector's (e.g. a new path to its weights)")
    p.add_argument("--weights", metavar="PATH",
                   help="the detector's checkpoint file (or its folder) when it is not where it was recorded; "
                        "checked by sha256 (also: $CLIPDETECT_WEIGHTS)")
    p.add_argument("--force", action="store_true", help="accept a backbone whose identity differs")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="decode processes; 0 decodes in the main process (default: CPU count, max 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (GPU number N) or mps (default cpu)")
    add_runtime_args(p)
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--caption-template", help="captions for text features, e.g. 'a photo of a {cifar_class}'")
    p.add_argument("--source-split", "--split", dest="split",
                   help="the source's own split to read (a hub split such as train or validation; "
                        "default: the source's); not a cache split")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_limit_args(p)
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    from clipdetect.core.device import check_device
    from clipdetect.models.predict import check_captions, open_predict_source, predict_source, resolve_backbone

    from clipdetect.features.runtime import check_runtime

    device = check_device(args.device)
    check_runtime(args.runtime, args.precision, device)
    det = load_detector(args.detector)
    source = open_predict_source(args.source, caption_template=args.caption_template, split=args.split)
    check_captions(det, source)
    backbone = resolve_backbone(det, args.backbone, force=args.force, device=device,
                                precision=args.precision, weights=args.weights, runtime=args.runtime)
    summary = predict_source(det, source, args.out, backbone=backbone, batch_size=args.batch_size,
                             workers=args.workers, limit=args.limit, max_pixels=args.max_pixels,
                             max_aspect=args.max_aspect, progress=not args.no_progress)
    print_json(summary.to_dict())
    return 0
