"""Service metrics in the Prometheus text exposition format (``GET /metrics``).

Counters and histograms are updated from the event loop and from the batcher thread, so
every update takes one lock; rendering copies under the same lock.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Callable, Dict, List, Sequence, Tuple

Labels = Tuple[Tuple[str, str], ...]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

HELP = {
    "clipdetect_requests_total": ("counter", "HTTP requests by path and status code"),
    "clipdetect_request_seconds": ("histogram", "request latency (seconds) by path"),
    "clipdetect_images_total": ("counter", "images received, by outcome (scored or the error reason)"),
    "clipdetect_batch_size": ("histogram", "images per encoder batch (dynamic batching)"),
    "clipdetect_batch_seconds": ("histogram", "seconds per encoder batch (decode + encode + head)"),
}


def _fmt_labels(labels: Labels, extra: Sequence[Tuple[str, str]] = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""
    esc = (lambda v: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"'))
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in items) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metrics:
    """Counters, histograms and gauges of one service process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counters: Dict[str, Dict[Labels, float]] = {}
        self.hists: Dict[str, Dict[Labels, List[float]]] = {}  # bucket counts..., sum, count
        self.buckets: Dict[str, Tuple[float, ...]] = {}
        self.gauges: Dict[str, Tuple[str, Callable[[], float]]] = {}
        self.started = time.time()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self.lock:
            series = self.counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, buckets: Sequence[float] = LATENCY_BUCKETS, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self.lock:
            bounds = self.buckets.setdefault(name, tuple(buckets))
            h = self.hists.setdefault(name, {}).setdefault(key, [0.0] * (len(bounds) + 2))
            i = bisect.bisect_left(bounds, value)
            for j in range(i, len(bounds)):  # cumulative buckets
                h[j] += 1
            h[-2] += value
            h[-1] += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge read when the metrics are rendered."""
        self.gauges[name] = (help_text, read)

    def value(self, name: str, **labels: str) -> float:
        """A counter's value (tests, logs)."""
        with self.lock:
            return self.counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """The text exposition format, version 0.0.4."""
        with self.lock:
            counters = {n: dict(s) for n, s in self.counters.items()}
            hists = {n: {k: list(v) for k, v in s.items()} for n, s in self.hists.items()}
        lines: List[str] = []
        for name, series in sorted(counters.items()):
            lines += [f"# HELP {name} {HELP.get(name, ('', name))[1]}", f"# TYPE {name} counter"]
            lines += [f"{name}{_fmt_labels(k)} {_num(v)}" for k, v in sorted(series.items())]
        for name, series in sorted(hists.items()):
            bounds = self.buckets[name]
            lines += [f"# HELP {name} {HELP.get(name, ('', name))[1]}", f"# TYPE {name} histogram"]
            for k, h in sorted(series.items()):
                lines += [f"{name}_bucket{_fmt_labels(k, [('le', _num(b))])} {_num(c)}" for b, c in zip(bounds, h)]
                lines += [f"{name}_bucket{_fmt_labels(k, [('le', '+Inf')])} {_num(h[-1])}",
                          f"{name}_sum{_fmt_labels(k)} {_num(h[-2])}", f"{name}_count{_fmt_labels(k)} {_num(h[-1])}"]
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(read())}"]
        return "\n".join(lines) + "\n"


def process_gauges(metrics: Metrics) -> None:
    """The conventional process gauges: resident memory and start time."""
    import psutil

    proc = psutil.Process(os.getpid())
    metrics.gauge("process_resident_memory_bytes", "resident memory of the service process",
                  lambda: proc.memory_info().rss)
    metrics.gauge("process_start_time_seconds", "start time of the service (Unix time)", lambda: metrics.started)
