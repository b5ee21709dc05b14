"""Load predictors: per-second arrival history in, next interval's peak rate out.

One interface, ``predict(history_rps) -> float`` (requests/s, newest sample
last), pure and stateless between calls so the live loop and the simulator can
share an instance. ``make_predictor(name)`` builds one by name; the LSTM lives in
``lstm.py`` and imports torch only when it is built.

Traffic that starts: the seconds before the first arrival in the history (a server
started, or idle for all of it) are not a load and are not read as one
(``since_first_arrival``). Read as load, they made the first decision of a live
run plan for a fraction of the rate that had begun (a 10 s window of 8 idle
seconds and 2 arrivals reads 0.4 req/s): a plan for 0.67 req/s at 3 req/s, and a
second reconfiguration 5 s later (benchmarks/README.md, "Traffic that starts").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from varipipe.errors import UnknownNameError

__all__ = [
    "DEFAULT_PREDICTOR",
    "Predictor",
    "Reactive",
    "MovingMax",
    "EWMA",
    "PREDICTORS",
    "MIN_EXPECTED_ARRIVALS",
    "peak_rate",
    "since_first_arrival",
    "make_predictor",
]

# The predictor when none is named (serve, simulate, experiment): Reactive.
DEFAULT_PREDICTOR = "reactive"
# Reactive: the peak of the last control interval (DESIGN §4 default interval, 10 s).
REACTIVE_WINDOW_S = 10
# Moving max: the peak of the last minute, a cautious over-provisioning baseline.
MOVING_MAX_WINDOW_S = 60
# EWMA over per-bucket peaks: 10 s buckets (one interval); alpha 0.5 weighs the
# last bucket as much as all older ones together.
EWMA_BUCKET_S = 10
EWMA_ALPHA = 0.5
# Moving max / reactive below 1 req/s: the peak is read over buckets long enough to expect this many
# arrivals (see ``peak_rate``). One is the least that keeps a reading from being all quantisation
# (one arrival in a 1 s bucket reads 1 req/s whatever the rate), and it makes the bucket 1 s, the
# per-second max unchanged, whenever the window's mean is >= 1 req/s.
MIN_EXPECTED_ARRIVALS = 1.0


@runtime_checkable
class Predictor(Protocol):
    """``predict(history_rps) -> float``: the predicted peak rate of the next interval."""

    name: str

    def predict(self, history_rps: Sequence[float]) -> float: ...


def _tail(history: Sequence[float], n: int) -> Sequence[float]:
    return history[-n:] if len(history) > n else history


def since_first_arrival(history: Sequence[float]) -> Sequence[float]:
    """``history`` from its first second with an arrival on (all of it when that is the first
    second; empty when there is none): the idle seconds before traffic began are no load."""
    for i, count in enumerate(history):
        if count > 0:
            return history[i:] if i else history
    return history[:0]


def peak_rate(counts: Sequence[float], min_expected: float = MIN_EXPECTED_ARRIVALS) -> float:
    """The peak arrival rate in per-second ``counts``, read over buckets long enough to expect
    ``min_expected`` arrivals at the window's mean rate.

    The per-second max quantises rates below 1 req/s: at 0.3 req/s every second holds 0 or 1
    arrivals, so the peak reads 1 req/s. Here the bucket is ``ceil(min_expected / mean)``
    seconds (mean: the counts' own mean rate; at most the whole window) and the estimate is the
    largest count over sliding buckets of that length, divided by it: a rate resolved in steps of
    ``1 / bucket`` <= ``mean / min_expected`` rather than 1 req/s. At a mean of ``min_expected``
    req/s or more the bucket is 1 s and this is the per-second max itself, so traces at >= 1
    req/s read exactly as before. No arrivals (or no history) read 0.

    The price: in a window whose mean is under ``min_expected`` req/s, a burst shorter than the
    bucket is spread over it (nine quiet seconds then 5 arrivals read 2.5 req/s, not 5; a second
    more at that load and the mean is 1 req/s: the per-second max again). Reading a lone busy
    second as the rate instead is what quantises 0.3 req/s to 1, and under Poisson arrivals at
    0.3 req/s a second with two arrivals comes in about a third of 10 s windows.
    """
    n = len(counts)
    total = float(sum(counts))
    if n == 0 or total <= 0.0:
        return float(max(counts)) if n else 0.0
    bucket = min(n, max(1, math.ceil(min_expected * n / total)))
    if bucket == 1:
        return float(max(counts))
    values = [float(c) for c in counts]
    window = sum(values[:bucket])
    best = window
    for i in range(bucket, n):  # slide one second: add the newest, drop the oldest
        window += values[i] - values[i - bucket]
        best = max(best, window)
    # Never under the window's mean: where the bucket does not divide the window, every bucket can
    # hold less than its share ([1, 0, 1] in 2 s buckets reads 0.5 req/s against a mean of 0.67).
    return max(best / bucket, total / n)


@dataclass(frozen=True)
class MovingMax:
    """The peak rate of the last ``window_s`` seconds: slow to scale down, quick up.

    Per-second max at >= 1 req/s; below, the peak over buckets long enough to expect one arrival
    (``peak_rate``), so that 0.3 req/s reads about 0.3, not 1 req/s.
    """

    window_s: int = MOVING_MAX_WINDOW_S
    name: str = "moving-max"
    min_expected: float = MIN_EXPECTED_ARRIVALS  # the buckets' expected arrivals (``peak_rate``)

    def predict(self, history_rps: Sequence[float]) -> float:
        return peak_rate(_tail(since_first_arrival(history_rps), self.window_s), self.min_expected)


@dataclass(frozen=True)
class Reactive(MovingMax):
    """Assume the next interval looks like the last one: the moving max (the peak rate) over one interval."""

    window_s: int = REACTIVE_WINDOW_S
    name: str = "reactive"


@dataclass(frozen=True)
class EWMA:
    """Exponentially weighted mean of bucket peaks, oldest to newest."""

    alpha: float = EWMA_ALPHA
    bucket_s: int = EWMA_BUCKET_S
    # Buckets folded in: enough that the oldest weighs (1 - alpha)^30 ≈ 1e-9.
    max_buckets: int = 30
    name: str = "ewma"

    def predict(self, history_rps: Sequence[float]) -> float:
        history_rps = since_first_arrival(history_rps)
        if not len(history_rps):
            return 0.0
        tail = list(_tail(history_rps, self.bucket_s * self.max_buckets))
        start = len(tail) % self.bucket_s
        peaks = ([max(tail[:start])] if start else []) + [
            max(tail[i:i + self.bucket_s]) for i in range(start, len(tail), self.bucket_s)
        ]
        level = float(peaks[0])
        for p in peaks[1:]:
            level = self.alpha * p + (1 - self.alpha) * level
        return level


def _lstm(**options) -> Predictor:
    from varipipe.adapter.lstm import LSTMPredictor

    return LSTMPredictor.load(**options)


PREDICTORS: dict[str, Callable[..., Predictor]] = {
    "reactive": Reactive,
    "moving-max": MovingMax,
    "ewma": EWMA,
    "lstm": _lstm,
}


def make_predictor(name: str, **options) -> Predictor:
    """Build a predictor by name (``reactive``, ``moving-max``, ``ewma``, ``lstm``)."""
    try:
        factory = PREDICTORS[name]
    except KeyError:
        raise UnknownNameError("predictor", name, tuple(PREDICTORS)) from None
    return factory(**options)
