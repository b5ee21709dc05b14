"""Latency statistics of one profile point and of its measurement windows. Pure.

Percentiles use linear interpolation between order statistics (numpy's
default "linear" method), so p99 of 200 samples lies between the 198th and
199th smallest, and a point's p50 <= p95 <= p99 always holds.

A point is measured in windows (``plan.PointSampler``); ``WindowStats`` is one
window's figures, ``relative_spread`` the agreement test perf_analyzer applies
to its last three windows, ``coefficient_of_variation`` the steadiness the
profile stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LOW_SAMPLE_P99", "LatencyStats", "WindowStats", "coefficient_of_variation", "percentile",
           "relative_spread", "summarize", "window_stats"]

# A p99 from fewer than 100 samples rests on its single largest sample or an
# interpolation beyond it; issue 5 asks for such points to be flagged.
LOW_SAMPLE_P99 = 100


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-batch latencies (seconds) measured at one batch size."""

    p50_s: float
    p95_s: float
    p99_s: float
    mean_s: float
    samples: int
    batch: int

    @property
    def p99_low_samples(self) -> bool:
        return self.samples < LOW_SAMPLE_P99

    @property
    def throughput_rps(self) -> float:
        """Items per second of one replica kept busy back to back: batch / mean batch latency.

        The samples are timed back to back with no idle gap, so this is the
        saturation throughput of a single replica running this batch size.
        """
        return self.batch / self.mean_s


def summarize(latencies_s: Sequence[float], batch: int) -> LatencyStats:
    """Percentiles and mean of per-batch latencies; rejects empty or non-positive input."""
    if not latencies_s:
        raise ValueError("no latency samples to summarize")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch!r}")
    values = sorted(float(v) for v in latencies_s)
    if values[0] <= 0 or not math.isfinite(values[-1]):
        raise ValueError(f"latencies must be positive and finite, got min {values[0]!r} max {values[-1]!r}")
    return LatencyStats(
        p50_s=percentile(values, 50),
        p95_s=percentile(values, 95),
        p99_s=percentile(values, 99),
        mean_s=math.fsum(values) / len(values),
        samples=len(values),
        batch=batch,
    )


@dataclass(frozen=True)
class WindowStats:
    """One measurement window of a point: what its stability is judged on."""

    latency_s: float  # the window's latency percentile (the policy's ``stability_percentile``; None: mean)
    throughput_rps: float  # batch / mean batch latency over the window, as the profile's throughput
    batches: int
    seconds: float  # wall time the window spanned


def window_stats(latencies_s: Sequence[float], batch: int, q: float | None, seconds: float) -> WindowStats:
    """The q-th percentile (None: the mean, perf_analyzer's default) and the throughput of one window."""
    s = summarize(latencies_s, batch)
    latency = s.mean_s if q is None else percentile(sorted(latencies_s), q)
    return WindowStats(latency, s.throughput_rps, s.samples, seconds)


def relative_spread(values: Sequence[float]) -> float:
    """max / min - 1 of positive values: perf_analyzer's stability measure over its last windows."""
    if not values or min(values) <= 0:
        raise ValueError(f"spread needs positive values, got {list(values)!r}")
    return max(values) / min(values) - 1.0


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1) over the mean; 0 for a single value."""
    if not values:
        raise ValueError("coefficient of variation of no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var) / mean
