"""Batch latency model ``l(b) = alpha + beta * b`` (DESIGN §5).

Fitted per (stage, variant, hardware) from the profile's measured batch sizes
by ordinary least squares, so the optimizer can price a batch size the
profiler did not measure. The profiler fits the same form; this copy keeps the
adapter free of profiler imports. Pure: numbers in, numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LatencyModel", "fit_latency_model"]


@dataclass(frozen=True)
class LatencyModel:
    """``latency(b) = alpha + beta * b`` seconds, both coefficients >= 0."""

    alpha: float
    beta: float

    def latency(self, batch: int) -> float:
        return self.alpha + self.beta * batch


def fit_latency_model(batches: Sequence[int], latencies_s: Sequence[float]) -> LatencyModel:
    """Least-squares fit over at least two distinct batch sizes.

    A negative slope or intercept (noise on a flat curve) is clamped to zero and
    the other coefficient refitted, so predictions never fall below zero or shrink
    as batches grow.
    """
    if len(batches) != len(latencies_s):
        raise ValueError(f"{len(batches)} batch sizes but {len(latencies_s)} latencies")
    if len(set(batches)) < 2:
        raise ValueError(f"need at least two distinct batch sizes to fit l(b)=a+b*batch, got {list(batches)}")
    n = len(batches)
    mean_b = sum(batches) / n
    mean_l = sum(latencies_s) / n
    var_b = sum((b - mean_b) ** 2 for b in batches)
    cov = sum((b - mean_b) * (lat - mean_l) for b, lat in zip(batches, latencies_s, strict=True))
    beta = cov / var_b
    alpha = mean_l - beta * mean_b
    if beta < 0:
        return LatencyModel(alpha=max(mean_l, 0.0), beta=0.0)
    if alpha < 0:
        # Regression through the origin: l = beta * b.
        beta = sum(b * lat for b, lat in zip(batches, latencies_s, strict=True)) / sum(b * b for b in batches)
        return LatencyModel(alpha=0.0, beta=max(beta, 0.0))
    return LatencyModel(alpha=alpha, beta=beta)
