"""Progress of long runs: a log line every so often when no bar is drawn."""
import logging

import pytest

from clipdetect.core.progress import LoggedProgress, progress_bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_run_without_a_terminal_logs_its_progress_at_most_every_interval(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="clipdetect.core.progress")
    with LoggedProgress(total=1000, desc="extract", unit="img", every=60, clock=clock) as bar:
        clock.t = 30
        bar.update(100)
        assert caplog.messages == []  # not yet a minute
        clock.t = 61
        bar.update(100)
        bar.set_postfix({"val_auc": "0.9"})
        clock.t = 90
        bar.update(100)
    assert caplog.messages == ["extract: 200/1000 img (20.0 %), 3.28 img/s, 4m04s left"]
    clock.t = 200
    bar.update(0)
    assert caplog.messages[-1] == "extract: 300/1000 img (30.0 %), 1.5 img/s, 7m47s left, val_auc=0.9"


def test_a_resumed_or_open_ended_run_counts_its_own_rate():
    clock = Clock()
    bar = LoggedProgress(total=None, desc="fetch", unit="url", initial=500, clock=clock)
    clock.t = 10
    bar.update(50)
    assert bar.line() == "fetch: 550 url, 5 url/s"  # the 500 done before are not part of the rate


@pytest.mark.parametrize("enabled", [True, False])
def test_no_bar_is_drawn_off_a_terminal(enabled, capsys):
    bar = progress_bar(total=3, desc="x", unit="it", enabled=enabled)  # pytest's stderr is not a terminal
    assert isinstance(bar, LoggedProgress)
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""
