"""Command line: ``clipdetect <command> ...``; every command is ``main(argv) -> int``.

Stages, in the order data flows::

    clipdetect extract   images → a feature cache of CLIP embeddings
    clipdetect cache     inspect or verify a cache
    clipdetect train     a detector on a cache
    clipdetect evaluate  metrics per generator, with confidence intervals
    clipdetect plot      ROC curves and score histograms
    clipdetect predict   score images end to end
    clipdetect report    the whole honest report on a cache (one Markdown file)
    clipdetect demo      the whole pipeline on the bundled sample cache
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from typing import List, Optional

from clipdetect import __version__

logger = logging.getLogger("clipdetect")

#: subcommand → module that defines ``add_parser(subparsers)``; imported lazily at parse time
COMMAND_MODULES = ["clipdetect.cli.fetch", "clipdetect.cli.extract", "clipdetect.cli.train",
                   "clipdetect.cli.evaluate", "clipdetect.cli.report", "clipdetect.cli.demo", "clipdetect.cli.distill"]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipdetect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipdetect {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a stage not built into this installation
            raise
        module.add_parser(sub)
    return parser


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        (getattr(args, "help_parser", None) or parser).print_help()
        return 2
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, KeyError) as exc:
        logger.error("%s", exc if not isinstance(exc, KeyError) else f"missing {exc}")
        return 2
    except OSError as exc:  # a full disk, a read-only folder ...: the message names the path
        logger.error("%s", exc.strerror if exc.strerror and exc.filename is None else exc)
        return 1
    except KeyboardInterrupt:
        if argv is None:  # the process is ending: a second Ctrl-C must not turn into a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        logger.error("interrupted; re-run the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
