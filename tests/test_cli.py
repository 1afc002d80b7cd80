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
    from _synthetic import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "c", n=40)
    with pytest.raises(ValueError, match="no metadata column"):
        cache.columns("nope")
