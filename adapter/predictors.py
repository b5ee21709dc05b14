"""Load predictors: per-second arrival history in, next interval's peak rate out.

One interface, ``predict(history_rps) -> float`` (requests/s, newest sample
last), pure and stateless between calls so the live loop and the simulator can
share an instance. ``make_predictor(name)`` builds one by name; the LSTM lives in
``lstm.py`` and imports torch only when it is built.
"""

from __future__ import annotations

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


@runtime_checkable
class Predictor(Protocol):
    """``predict(history_rps) -> float``: the predicted peak rate of the next interval."""

    name: str

    def predict(self, history_rps: Sequence[float]) -> float: ...


def _tail(history: Sequence[float], n: int) -> Sequence[float]:
    return history[-n:] if len(history) > n else history


@dataclass(frozen=True)
class MovingMax:
    """The peak of the last ``window_s`` seconds: slow to scale down, quick up."""

    window_s: int = MOVING_MAX_WINDOW_S
    name: str = "moving-max"

    def predict(self, history_rps: Sequence[float]) -> float:
        tail = _tail(history_rps, self.window_s)
        return float(max(tail)) if len(tail) else 0.0


@dataclass(frozen=True)
class Reactive(MovingMax):
    """Assume the next interval looks like the last one: the moving max over one interval."""

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
