"""Grey-box batch latency model ``l(b) = alpha + beta * b`` per (stage, variant, hardware). Pure.

``alpha`` is the per-call cost (dispatch, pre/post-processing that does not
scale), ``beta`` the per-item cost. Fitted by ordinary least squares over the
measured batch sizes, so the optimizer can price a batch size that was not
profiled. The fit error is reported honestly as a leave-one-out error: each
measured batch size in turn is held back, the line is fitted to the others
and the held-back point predicted (``varipipe profile show`` prints it).

The profile stores the fits under ``metadata["latency_model"]`` (see
``fits_to_metadata``); ``predict_latency`` reads them back.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from varipipe.adapter.latency_model import fit_latency_model
from varipipe.records import Profile, ProfilePoint

__all__ = [
    "METRICS",
    "LatencyFit",
    "fit_line",
    "fit_points",
    "fit_profile",
    "fits_to_metadata",
    "fits_from_metadata",
    "predict_latency",
]

# Which latency of a point each fit describes: the p99 the optimizer's SLA uses,
# and the mean its CPU-time cost and throughput use.
METRICS = {"p99": "latency_p99_s", "mean": "mean_latency_s", "p50": "latency_p50_s"}


@dataclass(frozen=True)
class LatencyFit:
    """One fitted line and its held-back error (relative, 0.1 = 10 %)."""

    stage: str
    variant: str
    hardware: str
    metric: str
    alpha_s: float
    beta_s: float
    batches: tuple[int, ...]
    loo_mean_rel_error: float | None  # None with fewer than 3 batch sizes (nothing to hold back)
    loo_max_rel_error: float | None
    fit_max_rel_error: float  # in-sample, for comparison

    def latency(self, batch: float) -> float:
        return self.alpha_s + self.beta_s * batch


def fit_line(batches: Sequence[float], latencies_s: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(alpha, beta)``, both >= 0: the optimizer's one fit
    (:func:`varipipe.adapter.latency_model.fit_latency_model`), as a pair."""
    model = fit_latency_model(batches, latencies_s)
    return model.alpha, model.beta


def _rel(pred: float, actual: float) -> float:
    return abs(pred - actual) / actual


def fit_points(points: Sequence[ProfilePoint], metric: str = "p99") -> LatencyFit:
    """Fit one (stage, variant, hardware)'s points; leave-one-out error where >= 3 batches."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    pts = sorted(points, key=lambda p: p.batch)
    keys = {(p.stage, p.variant, p.hardware) for p in pts}
    if len(keys) != 1:
        raise ValueError(f"fit_points needs the points of one (stage, variant, hardware), got {sorted(keys)}")
    xs = [float(p.batch) for p in pts]
    ys = [float(getattr(p, METRICS[metric])) for p in pts]
    alpha, beta = fit_line(xs, ys)
    in_sample = max(_rel(alpha + beta * x, y) for x, y in zip(xs, ys, strict=True))
    loo: list[float] = []
    if len(set(xs)) >= 3:
        for i in range(len(xs)):
            a, b = fit_line(xs[:i] + xs[i + 1 :], ys[:i] + ys[i + 1 :])
            loo.append(_rel(a + b * xs[i], ys[i]))
    stage, variant, hardware = next(iter(keys))
    return LatencyFit(
        stage=stage, variant=variant, hardware=hardware, metric=metric, alpha_s=alpha, beta_s=beta,
        batches=tuple(int(x) for x in xs),
        loo_mean_rel_error=math.fsum(loo) / len(loo) if loo else None,
        loo_max_rel_error=max(loo) if loo else None,
        fit_max_rel_error=in_sample,
    )


def fit_profile(profile: Profile | Iterable[ProfilePoint], metric: str = "p99") -> list[LatencyFit]:
    """A fit for every (stage, variant, hardware) with at least two measured batch sizes."""
    points = profile.points if isinstance(profile, Profile) else tuple(profile)
    groups: dict[tuple[str, str, str], list[ProfilePoint]] = defaultdict(list)
    for p in points:
        groups[(p.stage, p.variant, p.hardware)].append(p)
    return [fit_points(g, metric) for g in groups.values() if len({p.batch for p in g}) >= 2]


def fits_to_metadata(fits: Iterable[LatencyFit]) -> dict[str, Any]:
    """JSON-ready form kept in ``Profile.metadata["latency_model"]``."""
    out: dict[str, Any] = {"form": "latency_s = alpha_s + beta_s * batch", "fits": []}
    for f in fits:
        d = asdict(f)
        d["batches"] = list(f.batches)
        out["fits"].append(d)
    return out


def fits_from_metadata(metadata: Mapping[str, Any]) -> list[LatencyFit]:
    """The fits stored in a profile's metadata (empty when it has none)."""
    raw = metadata.get("latency_model", {}) if isinstance(metadata, Mapping) else {}
    fits = []
    for d in raw.get("fits", []) if isinstance(raw, Mapping) else []:
        fits.append(LatencyFit(**{**d, "batches": tuple(d.get("batches", ()))}))
    return fits


def predict_latency(profile: Profile, stage: str, variant: str, hardware: str, batch: int,
                    metric: str = "p99") -> float:
    """Latency of a batch size, measured if profiled, otherwise from the fitted line."""
    column = METRICS[metric]
    group = [p for p in profile.points if (p.stage, p.variant, p.hardware) == (stage, variant, hardware)]
    for p in group:
        if p.batch == batch:
            return float(getattr(p, column))
    if not group:
        raise KeyError(f"no profile points for stage {stage!r} variant {variant!r} on {hardware!r}")
    if len({p.batch for p in group}) < 2:
        only = group[0]
        return float(getattr(only, column)) * batch / only.batch  # sequential scaling from one point
    return fit_points(group, metric).latency(batch)
