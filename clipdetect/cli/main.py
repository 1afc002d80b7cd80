"""Command line: ``clipdetect <command> ...``; every command is ``main(argv) -> int``.

Stages, in the order data flows::

    clipdetect extract   images → a feature cache of CLIP embeddings
    clipdetect cache     inspect or verify a cache
    clipdetect train     a detector on a cache
    clipdetect evaluate  metrics per generator, with confidence intervals
    clipdetect plot      ROC curves and score histograms
    clipdetect predict   score images end to end
    clipdetect fuse      one detector from several (feature sets combined)
    clipdetect benchmark generalisation to unseen sources and generator families
    clipdetect report    the whole honest report on a cache (Markdown, or one HTML file)
    clipdetect serve     an HTTP scoring service and web page for a detector
    clipdetect demo      the whole pipeline on the bundled sample cache
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import signal
import sys
from typing import List, Optional

from clipdetect import __version__

logger = logging.getLogger("clipdetect")

#: command → (its module, one-line help): ``clipdetect --help`` lists the commands from here
#: and imports only the chosen command's module (command modules import torch, pandas ...).
#: A command missing here still works: its name makes every module load, as before.
COMMANDS = {
    "fetch": ("clipdetect.cli.fetch", "download images from URLs (D3's real images) into a store"),
    "extract": ("clipdetect.cli.extract", "images → a feature cache of CLIP embeddings"),
    "cache": ("clipdetect.cli.extract", "inspect or verify a feature cache"),
    "train": ("clipdetect.cli.train", "train a detector on a feature cache"),
    "evaluate": ("clipdetect.cli.evaluate", "metrics per generator with bootstrap CIs"),
    "plot": ("clipdetect.cli.evaluate", "ROC curves (linear + log FPR) and score histograms"),
    "predict": ("clipdetect.cli.predict", "score images end to end (decode → backbone → detector)"),
    "calibrate": ("clipdetect.cli.calibrate", "threshold at a target FPR (validation reals) + temperature"),
    "protocol": ("clipdetect.cli.protocol", "leave-one-generator-out, robustness, format-bias, text-leakage"),
    "fuse": ("clipdetect.cli.fuse", "combine detectors on different feature sets (chosen on validation rows)"),
    "benchmark": ("clipdetect.cli.benchmark", "leave-one-source-out and leave-one-family-out, with ablations"),
    "report": ("clipdetect.cli.report", "per-generator metrics, ROC, leave-one-generator-out, format-only "
                                        "baseline and calibration, as one Markdown (or self-contained HTML) report"),
    "serve": ("clipdetect.cli.serve", "an HTTP scoring service and web page for a detector (the 'serve' extra)"),
    "demo": ("clipdetect.cli.demo", "train + evaluate + plot on the bundled sample cache (offline)"),
    "distill": ("clipdetect.cli.distill", "train a lightweight student encoder from a teacher cache"),
    "compress": ("clipdetect.cli.distill", "SVD low-rank factorisation and magnitude pruning, with a report"),
}

#: the modules that define ``add_parser(subparsers)``, in listing order; imported lazily at parse time
COMMAND_MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _setup_logging(verbosity: int) -> None:
    """clipdetect logs at INFO (DEBUG with -v); other libraries only at WARNING (DEBUG with -vv).

    The handler sits on the root logger, so records are printed once and pytest/applications
    that configure logging themselves still see them.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_clipdetect", False)]
    handler._clipdetect = True
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    logging.getLogger("clipdetect").setLevel(logging.DEBUG if verbosity else logging.INFO)


def _requested(argv: Optional[List[str]]) -> Optional[str]:
    """The command named on the command line (the first word that is not an option)."""
    return next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)


def build_parser(argv: Optional[List[str]] = None, *, full: bool = False) -> argparse.ArgumentParser:
    """The parser for ``argv``: the full parser of the command it names, one-line stubs for
    the others (so ``--help`` is fast); every command in full with ``full=True`` or when
    ``argv`` names one not in COMMANDS."""
    command = _requested(argv)
    load = set(COMMAND_MODULES) if full or (command is not None and command not in COMMANDS) else (
        {COMMANDS[command][0]} if command else set())
    parser = argparse.ArgumentParser(
        prog="clipdetect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipdetect {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if name not in load:
            if importlib.util.find_spec(name) is not None:
                for cmd, (module, text) in COMMANDS.items():
                    if module == name:
                        sub.add_parser(cmd, help=text)
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a stage not built into this installation
            raise
        module.add_parser(sub)
    return parser


def config_override(text: str):
    """``FIELD=VALUE`` of a ``--set`` option → (field, value); VALUE is read as JSON when it parses."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set wants FIELD=VALUE (a training config field), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        (getattr(args, "help_parser", None) or parser).print_help()
        return 2
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as exc:  # user errors: one line, exit 2
        logger.error("%s", exc)
        return 2
    except OSError as exc:  # a full disk, a read-only folder ...: the message names the path
        logger.error("%s", exc.strerror if exc.strerror and exc.filename is None else exc)
        return 1
    except KeyboardInterrupt:
        if argv is None:  # the process is ending: a second Ctrl-C must not turn into a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if "clipdetect.features.workers" in sys.modules:  # decode processes stop now, not at exit
            sys.modules["clipdetect.features.workers"].abort_all()
        logger.error("interrupted; re-run the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
