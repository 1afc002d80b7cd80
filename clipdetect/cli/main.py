"""Command line: ``clipdetect <command> ...``; every command is ``main(argv) -> int``.

Stages, in the order data flows::

    clipdetect extract   images → a feature cache of CLIP embeddings
    clipdetect cache     inspect or verify a cache
    clipdetect train     a detector on a cache
    clipdetect evaluate  metrics per generator, with confidence intervals
    clipdetect plot      ROC curves, P(fake) histograms and the reliability diagram
    clipdetect predict   score images end to end
    clipdetect fuse      one detector from several (feature sets combined)
    clipdetect benchmark generalisation to unseen sources and generator families
    clipdetect report    everything about a detector on a cache, in one Markdown (or HTML) file
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
    "cache": ("clipdetect.cli.cache", "inspect or verify a feature cache"),
    "train": ("clipdetect.cli.train", "train a detector on a feature cache"),
    "evaluate": ("clipdetect.cli.evaluate", "metrics per generator with bootstrap CIs"),
    "plot": ("clipdetect.cli.evaluate", "ROC curves with bootstrap bands, P(fake) histograms, reliability diagram"),
    "predict": ("clipdetect.cli.predict", "score images end to end (decode → backbone → detector)"),
    "calibrate": ("clipdetect.cli.calibrate", "threshold at a target FPR (validation reals); Platt or temperature"),
    "protocol": ("clipdetect.cli.protocol", "leave-one-generator-out, robustness, format-bias, text-leakage"),
    "fuse": ("clipdetect.cli.fuse", "combine detectors on different feature sets (chosen on validation rows)"),
    "benchmark": ("clipdetect.cli.benchmark", "leave-one-source-out and leave-one-family-out, with ablations"),
    "report": ("clipdetect.cli.report", "per-generator metrics, ROC, the logistic-probe comparison, leave-one-"
                                        "generator-out, format-only baseline and calibration, as one Markdown "
                                        "(or self-contained HTML) report"),
    "serve": ("clipdetect.cli.serve", "an HTTP scoring service and web page for a detector (the 'serve' extra)"),
    "demo": ("clipdetect.cli.demo", "train + evaluate + plot on the bundled sample cache (offline)"),
    "distill": ("clipdetect.cli.distill", "train a lightweight student encoder from a teacher cache"),
    "compress": ("clipdetect.cli.distill", "SVD low-rank factorisation and magnitude pruning, with a report"),
}

#: the modules that define ``add_parser(subparsers)``, in listing order; imported lazily at parse time
COMMAND_MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _printed_below(record: logging.LogRecord) -> bool:
    """Whether a logger between the record's own and the root has a handler that prints it
    (some libraries attach their own stream handler and still propagate to the root)."""
    logger_ = logging.getLogger(record.name)
    while logger_ is not None and logger_ is not logging.getLogger():
        if any(not isinstance(h, logging.NullHandler) and record.levelno >= h.level for h in logger_.handlers):
            return True
        logger_ = logger_.parent
    return False


def setup_logging(verbosity: int) -> None:
    """clipdetect logs at INFO (DEBUG with -v); other libraries only at WARNING (DEBUG with -vv).

    The handler sits on the root logger, so records are printed once and pytest/applications
    that configure logging themselves still see them; a record that a library's own handler
    already printed is not printed a second time.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: not _printed_below(record))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_clipdetect", False)]
    handler._clipdetect = True
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    logging.getLogger("clipdetect").setLevel(logging.DEBUG if verbosity else logging.INFO)


EXIT_CODES = """exit status:
  0    done
  1    it ran but could not finish: a failed write (disk full, read-only folder), `cache
       verify` found damage, or not one image could be read (every path missing or unreadable)
  2    refused: a bad option, or an input that is not what it claims (a damaged cache or
       bundle, a JSON file that is not a regular file)
  130  stopped by Ctrl-C (SIGINT); 143 by SIGTERM; 129 by SIGHUP: decode workers stopped,
       partial output removed, one line; re-running the same command resumes an extraction"""


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
        prog="clipdetect", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    for command in sub.choices.values():
        for leaf in _leaf_parsers(command):
            _add_output_options(leaf)
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser):
    """The parsers that run something: ``parser`` itself, or those under its sub-commands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaf_parsers(child)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--no-progress`` on every command (the one place they are defined)."""
    if parser.get_default("func") is None:
        return  # a one-line stub of `clipdetect --help`
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true",
                   help="print the result as one JSON document on stdout (for scripts); default: readable text")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars are drawn only when stderr is a terminal anyway); without one, "
                        "long runs log done/total, rate and time left once a minute")


def emit(args, payload, text: Optional[str] = None) -> None:
    """The command's result on stdout: ``payload`` as JSON with ``--json``, else ``text``
    (default: ``payload`` as indented ``key: value`` lines)."""
    if getattr(args, "json", False):
        from clipdetect.core.escape import plain_json

        text = json.dumps(plain_json(payload), indent=2, sort_keys=True, default=str,
                          allow_nan=False)
    sys.stdout.write((text if text is not None else readable(payload)).rstrip("\n") + "\n")


def readable(obj, indent: int = 0) -> str:
    """Nested dicts and lists as indented ``key: value`` lines (floats to 4 significant digits)."""
    pad = "  " * indent
    if isinstance(obj, dict):
        return "\n".join(
            f"{pad}{k}:\n{readable(v, indent + 1)}" if isinstance(v, (dict, list)) and v
            else f"{pad}{k}: {_scalar(v)}" for k, v in obj.items())
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return pad + ", ".join(_scalar(v) for v in obj)
        return "\n".join(readable(v, indent) + ("\n" if isinstance(v, dict) else "") for v in obj).rstrip()
    return pad + _scalar(obj)


def _scalar(v) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def config_override(text: str):
    """``FIELD=VALUE`` of a ``--set`` option → (field, value); VALUE is read as JSON when it parses."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set wants FIELD=VALUE (a training config field), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Optional[List[str]] = None) -> int:
    from clipdetect.core.signals import SHUTDOWN_SIGNALS, shutdown_signals

    with shutdown_signals():  # SIGTERM and SIGHUP take Ctrl-C's clean-up path
        try:
            return _run(argv)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP
            status = _stopped(exc)
    if argv is None:  # the process is ending: a second signal must not turn into a traceback
        for s in SHUTDOWN_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    return status


def _run(argv: Optional[List[str]]) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        (getattr(args, "help_parser", None) or parser).print_help()
        return 2
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as exc:  # user errors: one line, exit 2
        logger.error("%s", exc)
        return 2
    except OSError as exc:  # a full disk, a read-only folder ...: the message names the path
        logger.error("%s", exc.strerror if exc.strerror and exc.filename is None else exc)
        return 1


def _stopped(exc: KeyboardInterrupt) -> int:
    """Decode processes stop now, not at exit; one line; 128 + the signal."""
    from clipdetect.core.signals import exit_status, signal_name

    if "clipdetect.features.workers" in sys.modules:
        sys.modules["clipdetect.features.workers"].abort_all()
    name = signal_name(exc)
    what = "interrupted" if name == "SIGINT" else f"terminated by {name}"
    logger.error("%s; re-run the same command to resume", what)
    return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
