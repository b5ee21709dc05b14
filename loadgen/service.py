"""Service-time model for the simulator: batch latency distributions from a profile.

For each (stage, variant, hardware) the profile gives p50 and p99 batch latency
at a few batch sizes. A batch of ``n`` items takes a lognormal time whose median
is p50(n) and whose 99th percentile is p99(n); batch sizes the profiler did not
measure are interpolated linearly between measured neighbours and extrapolated
past the largest with the fitted ``l(b) = α + β·b`` (DESIGN §5). Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from varipipe.adapter.configurations import is_gpu
from varipipe.adapter.latency_model import Z99, batch_curve
from varipipe.errors import ProfileError
from varipipe.records import Profile, ProfilePoint, busy_threads

__all__ = ["ServiceModel", "service_model", "Z99"]  # Z99: a lognormal with median m and σ has p99 = m·e^{Z99·σ}


@dataclass(frozen=True)
class ServiceModel:
    """Median and lognormal σ of batch latency for batch sizes 0..max_batch (index = size)."""

    stage: str
    variant: str
    hardware: str
    median_s: tuple[float, ...]
    sigma: tuple[float, ...]
    accuracy: float
    threads: float
    # Read for every batch the simulator runs: set once (is_gpu parses the hardware string).
    on_gpu: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_gpu", is_gpu(self.hardware))

    @property
    def max_batch(self) -> int:
        return len(self.median_s) - 1

    def p99_s(self, batch: int) -> float:
        return self.median_s[batch] * math.exp(self.sigma[batch] * Z99)


def _curve(points: list[ProfilePoint], attr: str, sizes: np.ndarray) -> np.ndarray:
    return batch_curve([p.batch for p in points], [getattr(p, attr) for p in points], sizes)


def service_model(profile: Profile, stage: str, variant: str, hardware: str, max_batch: int) -> ServiceModel:
    """The latency model of one configuration, for batch sizes up to ``max_batch``."""
    pts = sorted((p for p in profile.points if (p.stage, p.variant, p.hardware) == (stage, variant, hardware)),
                 key=lambda p: p.batch)
    if not pts:
        have = sorted({f"{p.variant}@{p.hardware}" for p in profile.points if p.stage == stage})
        raise ProfileError(str(profile.metadata.get("file", profile.pipeline)), f"points[{stage}]",
                           f"no profile point for variant {variant!r} on {hardware!r}; profiled: {have}")
    sizes = np.arange(max(max_batch, 1) + 1, dtype=np.float64)
    sizes[0] = 1.0  # index 0 is never used; keep it finite
    p50 = _curve(pts, "latency_p50_s", sizes)
    p99 = np.maximum(_curve(pts, "latency_p99_s", sizes), p50)
    sigma = np.log(p99 / p50) / Z99
    return ServiceModel(stage, variant, hardware, tuple(p50.tolist()), tuple(sigma.tolist()),
                        accuracy=profile.variant_accuracy(stage, variant), threads=busy_threads(hardware))
