"""The command line as a whole: every command listed, every argument explained, user errors in one line."""
from __future__ import annotations

import argparse
import importlib

import pytest

from clipdetect.cli import main as cli_main


def _full_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipdetect")
    sub = parser.add_subparsers(dest="command")
    for name in cli_main.COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def _walk(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, path + (name,))
        else:
            yield path, action


def test_every_command_is_listed_for_the_fast_help():
    sub = next(a for a in _full_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(cli_main.COMMANDS)
    # the fast --help and each command's own parser show the same one-line help
    assert {a.dest: a.help for a in sub._choices_actions} == {k: v[1] for k, v in cli_main.COMMANDS.items()}


def test_every_argument_has_help():
    missing = [f"clipdetect {' '.join(path)} {'/'.join(a.option_strings) or a.dest}"
               for path, a in _walk(_full_parser())
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == [], "arguments without help:\n" + "\n".join(missing)


def test_caches_are_named_alike():
    """A positional cache argument is called CACHE wherever it appears."""
    names = {a.dest for path, a in _walk(_full_parser()) if not a.option_strings and "cache" in a.dest}
    assert names <= {"cache"}, names


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    """KeyError is a bug, not a user error: it is not turned into a one-line message."""
    def broken(args):
        raise KeyError("internal")

    parser = cli_main.build_parser(["demo"])
    monkeypatch.setattr(cli_main, "build_parser", lambda argv=None: parser)
    parser._subparsers._group_actions[0].choices["demo"].set_defaults(func=broken)
    with pytest.raises(KeyError):
        cli_main.main(["demo"])


def test_a_missing_column_is_a_user_error(tmp_path, capsys):
    from helpers.synthetic import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "c", n=40)
    with pytest.raises(ValueError, match="no metadata column"):
        cache.columns("nope")


def _leaves(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, path + (name,))


def test_every_help_text_renders():
    """Every command's --help as a user sees it: no escaped %%, no empty help, and the output
    options (--json, --no-progress) everywhere."""
    parser = cli_main.build_parser(full=True)
    rendered = {" ".join(path): p.format_help() for path, p in _leaves(parser)}
    assert len(rendered) >= 16 and parser.format_help().count("%%") == 0
    for name, text in rendered.items():
        assert "%%" not in text and "%(" not in text, name
        assert "--json" in text and "--no-progress" in text, name
        assert not [line for line in text.splitlines() if line.rstrip().endswith(("None)", "default: )"))], name
    assert "TPR@1% FPR" in rendered["report"]
    for name in ("train", "evaluate", "plot", "predict", "report", "demo", "calibrate", "protocol logo"):
        assert "--force" in rendered[name], name
    assert "split column win" in rendered["extract"]


def test_library_warnings_are_printed_once(capsys):
    """A library logger with its own stream handler (as huggingface_hub's) is not printed twice."""
    import logging

    lib = logging.getLogger("some_hub_library")
    own = logging.StreamHandler()
    lib.addHandler(own)
    try:
        cli_main.setup_logging(0)
        lib.warning("retrying in 2s")
        err = capsys.readouterr().err
        assert err.count("retrying in 2s") == 1
        logging.getLogger("clipdetect.x").warning("ours")
        assert capsys.readouterr().err.count("ours") == 1
    finally:
        lib.removeHandler(own)


def test_json_and_text_outputs(tmp_path, capsys):
    import json

    from helpers.synthetic import write_synthetic_cache

    write_synthetic_cache(tmp_path / "c", n=60, dim=8)
    assert cli_main.main(["cache", "info", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "rows: 60" in text and not text.startswith("{")
    assert cli_main.main(["cache", "info", str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 60
    assert cli_main.main(["cache", "verify", str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


@pytest.mark.slow  # the whole demo: three detectors, figures, bootstrap
def test_demo_on_a_small_cache_says_what_it_cannot_measure(tmp_path, capsys):
    import json

    from helpers.synthetic import write_synthetic_cache

    write_synthetic_cache(tmp_path / "c", n=300, dim=8, shift=2.0)
    args = ["demo", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "d"), "--epochs", "2", "--n-boot", "20"]
    assert cli_main.main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {p.rsplit("/", 1)[-1] for p in summary["figures"]} == {"demo_roc.png", "demo_hist.png",
                                                                  "demo_reliability.png"}
    test = summary["test"]["paper-mlp-cvar-auc-sam"]
    assert test["tpr@fpr=0.1%"] is None and test["not_shown"]["tpr@fpr=0.1%"] == "needs ≥ 1000 reals"
    assert summary["threshold_target"]["metric"] == "fpr"
    assert cli_main.main(args) == 2 and "pass --force" in capsys.readouterr().err
    assert cli_main.main(args + ["--force"]) == 0
    text = capsys.readouterr().out
    assert "TPR at 0.1% FPR n/a (needs ≥ 1000 reals)" in text and "### compared with the baseline" in text
