"""``clipdetect calibrate``: the threshold at a target FPR and a temperature, fit on validation rows."""
from __future__ import annotations

import argparse

from clipdetect.cli.main import CLIError, COMMANDS, print_json
from clipdetect.cli.options import add_split_args, load_detector, open_cache

CALIBRATE_EXAMPLES = """examples:
  clipdetect calibrate runs/det features/cifake-b16 --target-fpr 0.01            # re-saved in place
  clipdetect calibrate runs/det features/cifake-b16 --temperature --out runs/det-cal
  clipdetect calibrate runs/det features/cifake-b16 --keep-threshold --temperature"""


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help=COMMANDS["calibrate"][1],
                       epilog=CALIBRATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detector", help="detector bundle directory (re-saved in place unless --out)")
    p.add_argument("cache", help="the feature cache it was trained on (its validation split is used)")
    p.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate on validation reals")
    p.add_argument("--keep-threshold", action="store_true", help="only fit the temperature")
    p.add_argument("--temperature", action="store_true", help="also fit a temperature (NLL on validation)")
    p.add_argument("--split", default="val", help="calibration split (default val; test is refused)")
    p.add_argument("--out", help="save the calibrated bundle here instead of in place")
    add_split_args(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    from clipdetect.eval.calibrate import calibrate_detector

    if not args.temperature and args.keep_threshold:
        raise CLIError("nothing to do: --keep-threshold without --temperature")
    det = load_detector(args.detector)
    result = calibrate_detector(det, open_cache(args.cache), target_fpr=None if args.keep_threshold
                                else args.target_fpr, temperature=args.temperature, split=args.split,
                                val=args.val_fraction, test=args.test_fraction, split_seed=args.split_seed)
    path = det.save(args.out or args.detector)
    print_json({"saved": str(path), **result.to_dict()})
    return 0
