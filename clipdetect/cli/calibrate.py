"""``clipdetect calibrate``: the threshold at a target FPR and, optionally, Platt scaling or a
temperature, refitted on validation rows."""
from __future__ import annotations

from clipdetect.cli.main import CLIError, emit
from clipdetect.cli.options import add_command, add_force_arg, add_split_args, check_new_output, open_cache

CALIBRATE_EXAMPLES = """examples:
  clipdetect calibrate runs/det features/cifake-b16 --target-fpr 0.01            # re-saved in place
  clipdetect calibrate runs/det features/cifake-b16 --calibration platt --out runs/det-cal
  clipdetect calibrate runs/det features/cifake-b16 --keep-threshold --calibration temperature
A refit that the validation rows do not support (too few rows, a fit on a bound of its search,
a worse ECE) is not applied: the detector keeps its calibration, and a warning says why."""


def add_parser(sub) -> None:
    p = add_command(sub, "calibrate", epilog=CALIBRATE_EXAMPLES)
    p.add_argument("detector", help="detector bundle directory (re-saved in place unless --out)")
    p.add_argument("cache", help="the feature cache it was trained on (its validation split is used)")
    p.add_argument("--target-fpr", type=float, default=0.01,
                   help="false-positive rate on the validation reals the threshold targets (default 0.01)")
    p.add_argument("--keep-threshold", action="store_true",
                   help="keep the decision rule (only refit the calibration)")
    p.add_argument("--calibration", choices=["platt", "temperature", "keep"], default="keep",
                   help="refit the probability calibration: platt (scale and offset), temperature, or keep the "
                        "detector's (default keep)")
    p.add_argument("--temperature", dest="calibration", action="store_const", const="temperature",
                   help="same as --calibration temperature")
    p.add_argument("--split", default="val", help="calibration split (default val; test is refused)")
    p.add_argument("--out", help="save the calibrated bundle here instead of in place")
    add_force_arg(p)
    add_split_args(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    from clipdetect.core.guards import guard
    from clipdetect.eval.calibrate import calibrate_detector
    from clipdetect.models.detector import load_detector
    from clipdetect.models.thresholds import describe_target

    if args.calibration == "keep" and args.keep_threshold:
        raise CLIError("nothing to do: --keep-threshold without --calibration platt|temperature")
    if args.out:
        check_new_output(args.out, args.force)
    det = load_detector(args.detector)
    result = calibrate_detector(det, open_cache(args.cache), target_fpr=None if args.keep_threshold
                                else args.target_fpr, method=None if args.calibration == "keep" else args.calibration,
                                split=args.split, val=args.val_fraction, test=args.test_fraction,
                                split_seed=args.split_seed)
    path = det.save(args.out or args.detector)
    fit = result.fit
    payload = {"saved": str(path), **result.to_dict()}
    why = guard("ece", {"n": result.n_val})
    if why:  # an ECE of a handful of rows is not shown
        payload.update(ece_before=None, ece_after=None, not_shown={"ece": why})
    text = (f"saved {path}\nprobability: {det.calibration.describe()}"
            + (f" (refit not applied: {fit.get('reason')})" if fit and not fit.get("applied") else "")
            + f"\nthreshold: P(fake) > {result.threshold:.4g} (target: {describe_target(det.threshold_target)})"
            f"\non {result.n_val} {result.split} rows ({result.n_val_real} real): FPR {result.val_fpr:.4f}, "
            f"TPR {result.val_tpr:.4f}, "
            + (f"ECE n/a ({why})" if why else f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f}"))
    emit(args, payload, text)
    return 0
