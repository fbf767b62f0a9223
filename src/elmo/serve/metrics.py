"""Counters, gauges and histograms for ``GET /metrics``, in the Prometheus text format.

Written by hand (no client library): a handful of thread-safe series that the batcher's
inference thread and the event loop both update, rendered as text exposition format
version 0.0.4.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["LATENCY_BUCKETS", "Counter", "Gauge", "Histogram", "Registry", "ThroughputWindow"]

# Seconds; from a fast cached request to a request that waited behind a full queue.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))
    return "{" + pairs + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class Counter:
    """A monotonically increasing count, optionally split by label values."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge:
    """A value read when the metrics are scraped (``read`` is called then)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self._read = name, help, read

    def samples(self) -> list[str]:
        return [f"{self.name} {_number(float(self._read()))}"]


class Histogram:
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    @property
    def sum(self) -> float:
        with self._lock:
            return self._sum

    def samples(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, cumulative = [], 0
        for bound, n in zip([*self.buckets, math.inf], counts):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        out.append(f"{self.name}_sum {_number(total)}")
        out.append(f"{self.name}_count {cumulative}")
        return out


class ThroughputWindow:
    """Tokens per second over the last ``seconds`` (a gauge Prometheus need not derive)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, amount: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._events.append((now, amount))
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._events) / self.seconds

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.seconds:
            self._events.popleft()


class Registry:
    """The series of one process, rendered in registration order."""

    def __init__(self) -> None:
        self._series: list[Counter | Gauge | Histogram] = []

    def add(self, series: Counter | Gauge | Histogram) -> None:
        self._series.append(series)

    def render(self) -> str:
        lines = []
        for s in self._series:
            lines.append(f"# HELP {s.name} {s.help}")
            lines.append(f"# TYPE {s.name} {s.kind}")
            lines.extend(s.samples())
        return "\n".join(lines) + "\n"
