"""Batch latency model ``l(b) = alpha + beta * b`` (DESIGN §5).

Fitted per (stage, variant, hardware) from the profile's measured batch sizes
by ordinary least squares, so the optimizer can price a batch size the
profiler did not measure. The one fit of this form in varipipe: the profiler
(``profiler/latency_model.py``, its held-back errors and stored fits) and the
simulator's service times (``loadgen/service.py``) call this one; it lives
with the optimizer, whose model it is (DESIGN §5), and imports nothing of
theirs. Pure: numbers in, numbers out. Around its median a batch's latency is read as a
lognormal (the simulator's service times, the calibration's tail, the queueing model's
variability): ``Z95`` / ``Z99`` place its percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LatencyModel", "fit_latency_model", "batch_curve", "Z95", "Z99"]

# Standard-normal quantiles at 0.95 and 0.99: a lognormal with median m and σ has its q-quantile at m·e^{z_q·σ}.
Z95 = 1.6448536269514722
Z99 = 2.3263478740408408


@dataclass(frozen=True)
class LatencyModel:
    """``latency(b) = alpha + beta * b`` seconds, both coefficients >= 0."""

    alpha: float
    beta: float

    def latency(self, batch: int) -> float:
        return self.alpha + self.beta * batch


def fit_latency_model(batches: Sequence[float], latencies_s: Sequence[float]) -> LatencyModel:
    """Least-squares fit over at least two distinct batch sizes (sums by ``math.fsum``).

    A negative slope (noise on a flat curve) becomes a flat line at the mean; a
    negative intercept becomes a line through the origin, so predictions never
    fall below zero or shrink as batches grow.
    """
    if len(batches) != len(latencies_s):
        raise ValueError(f"{len(batches)} batch sizes but {len(latencies_s)} latencies")
    if len(set(batches)) < 2:
        raise ValueError(f"need at least two distinct batch sizes to fit l(b)=alpha+beta*b, got {list(batches)}")
    n = len(batches)
    mean_b = math.fsum(batches) / n
    mean_l = math.fsum(latencies_s) / n
    var_b = math.fsum((b - mean_b) ** 2 for b in batches)
    cov = math.fsum((b - mean_b) * (v - mean_l) for b, v in zip(batches, latencies_s, strict=True))
    beta = cov / var_b
    alpha = mean_l - beta * mean_b
    if beta < 0:
        return LatencyModel(alpha=max(mean_l, 0.0), beta=0.0)
    if alpha < 0:  # regression through the origin: l = beta * b
        through_origin = math.fsum(b * v for b, v in zip(batches, latencies_s, strict=True)) / math.fsum(
            b * b for b in batches)
        return LatencyModel(alpha=0.0, beta=max(through_origin, 0.0))
    return LatencyModel(alpha=alpha, beta=beta)


def batch_curve(batches: Sequence[int], values: Sequence[float], sizes: np.ndarray) -> np.ndarray:
    """A latency figure of one (stage, variant, hardware) at every batch size in ``sizes``, from
    the figures measured at ``batches`` (ascending): linear between measured neighbours, past the
    largest the fitted ``l(b)`` (never below the largest measured), and with one measured size,
    proportional to the batch beyond it (no batching gain). The one curve the simulator's service
    times and the calibration's predictions read."""
    b = np.asarray(batches, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    out = np.interp(sizes, b, v)
    if len(b) >= 2:
        model = fit_latency_model(list(batches), list(values))
        beyond = sizes > b.max()
        out[beyond] = np.maximum(v[-1], model.alpha + model.beta * sizes[beyond])
    else:
        out = np.where(sizes > b[0], v[0] * sizes / b[0], out)
    return out
