"""Progress of long runs: a bar on a terminal, a log line every so often anywhere else.

A run started under ``nohup``, in a container or with ``--no-progress`` has no bar (tqdm draws
one only when stderr is a terminal), and an extraction or a distillation epoch can then go
silent for most of an hour. :func:`progress_bar` returns tqdm's bar when one is drawn, else a
:class:`LoggedProgress` with the same small interface (``update``, ``set_postfix``, ``close``,
a context manager) that logs ``desc: done/total unit (share), rate, time left`` at INFO level at
most every :data:`LOG_EVERY` seconds.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)

#: seconds between two progress log lines when no bar is drawn
LOG_EVERY = 60.0


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LoggedProgress:
    """A progress counter that logs instead of drawing (see the module docstring)."""

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", initial: int = 0,
                 every: float = LOG_EVERY, clock=time.monotonic):
        self.total, self.desc, self.unit, self.every, self.clock = total, desc, unit, every, clock
        self.n = self.start = initial
        self.t0 = self.last = clock()
        self.postfix: Dict[str, Any] = {}

    def __enter__(self) -> "LoggedProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            logger.info("%s", self.line(now))

    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        pass

    def line(self, now: Optional[float] = None) -> str:
        """``desc: n/total unit (p %), r unit/s, t left`` (what is known of it)."""
        elapsed = max((self.clock() if now is None else now) - self.t0, 1e-9)
        rate = (self.n - self.start) / elapsed
        done = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        parts = [f"{self.desc}: {done} {self.unit}" + (f" ({100.0 * self.n / self.total:.1f} %)"
                                                         if self.total else ""), f"{rate:.3g} {self.unit}/s"]
        if self.total is not None and rate > 0:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)


def progress_bar(*, total: Optional[int], desc: str, unit: str, enabled: bool = True, initial: int = 0,
                 every: float = LOG_EVERY, **tqdm_options):
    """tqdm's bar when ``enabled`` and stderr is a terminal, else a :class:`LoggedProgress`."""
    if enabled and getattr(sys.stderr, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, **tqdm_options)
    return LoggedProgress(total=total, desc=desc, unit=unit, initial=initial, every=every)
