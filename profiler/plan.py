"""What to measure and when a point has measured enough. Pure: no clock, no models.

A profile run is a grid of points (stage, variant, batch, hardware). ``plan``
lists the grid in measuring order and drops the points an existing profile
already holds, which is what makes an interrupted run resumable.
``WindowPolicy`` and its ``PointSampler`` decide when one point has measured
enough: count-based windows until three agree, as NVIDIA's perf_analyzer does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from varipipe.profiler.stats import (
    WindowStats,
    coefficient_of_variation,
    relative_spread,
    window_stats,
)
from varipipe.records import PipelineSpec, ProfilePoint, VariantSpec

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_CORES",
    "SEQUENTIAL_MAX_BATCH",
    "FULL_POINT_CAP_S",
    "QUICK_POINT_CAP_S",
    "PointKey",
    "PointSampler",
    "SampledPoint",
    "WindowPolicy",
    "FULL",
    "QUICK",
    "point_seconds",
    "windows_agree",
    "variant_batches",
    "plan",
    "missing",
]

# Issue 5's default grid.
DEFAULT_BATCHES = (1, 2, 4, 8, 16)
DEFAULT_CORES = (1, 2)
# A runtime that loops over the batch (VariantSpec.native_batching=False; the
# LLMs did until issue 19) gains nothing from larger batches: its latency is
# b x one item. Profile it up to 4 (issue 5: "the LLM at the batch sizes its
# runtime supports, e.g. 1,2,4"); the latency model covers the rest.
# A variant may set params.max_batch_size to say otherwise, or
# params.cpu_max_batch_size for CPU hardware only: the LLMs set 4 (on CPU batching
# them adds 3-7 % items/s past 4, issue 19; their GPU runtime batches natively).
SEQUENTIAL_MAX_BATCH = 4


@dataclass(frozen=True, order=True)
class PointKey:
    stage: str
    variant: str
    batch: int
    hardware: str

    @classmethod
    def of(cls, p: ProfilePoint) -> PointKey:
        return cls(p.stage, p.variant, p.batch, p.hardware)


# perf_analyzer's measuring scheme (Triton's perf_analyzer, docs/cli.md, "Measurement Options";
# inference_profiler.cc ProfileHelper): in count_windows mode a window holds at least
# --measurement-request-count requests (default 50) and lasts at least 1 s; a result is stable
# when, over the last 3 windows, max / min <= 1 + --stability-percentage (default 10 %) for both
# the throughput and the latency; it gives up after --max-trials windows (default 10) and then
# reports the merged last 3 windows.
PA_WINDOW_REQUESTS = 50
PA_WINDOW_MIN_S = 1.0
PA_STABLE_WINDOWS = 3
PA_STABILITY_TOLERANCE = 0.10
PA_MAX_TRIALS = 10
# Where perf_analyzer gives up, we widen: after PA_MAX_TRIALS windows that never agreed, the next
# windows are this many times longer (count and seconds) and the trials start again.
WIDEN_FACTOR = 2.0
# The flagship's full profile must finish within 2 hours (issue 18). It has 82 points (3 detectors
# and 4 classifiers x 5 batch sizes, 2 LLMs x 3, on cpu:1 and cpu:2); at most 75 s of sampling
# each is 6,150 s, which leaves about 1,000 s for warm-ups, the reference calls, model loads and
# accuracy runs (the shipped full profile spent under 60 s outside its timed batches).
FULL_POINT_CAP_S = 75.0
# The quick profile keeps its old 3 s time box per point (issue 5: the flagship in < 10 minutes).
QUICK_POINT_CAP_S = 3.0


@dataclass(frozen=True)
class WindowPolicy:
    """How one point is measured: count-based windows until the last few agree (perf_analyzer's scheme).

    A window closes once it holds ``window_batches`` batches *and* lasts ``window_min_s``. The point is
    *stable* once its last ``stable_windows`` windows agree within ``tolerance`` (max / min - 1) on the
    ``stability_percentile`` of the batch latency and on the throughput. After ``max_windows`` windows
    that never agreed, windows grow by ``widen_factor`` and the trials start again, until the point's
    time cap ``max_seconds`` (sampling time, warm-up excluded); a capped point is stored ``stable=False``.
    The point's statistics are those of its last ``stable_windows`` windows merged (as perf_analyzer).

    Slow points: a window of ``window_batches`` batches of a multi-second LLM batch would not fit the
    cap even once, so the count is lowered until ``slow_point_windows`` windows fit in the cap
    (``window_count``), never below ``min_window_batches``; and the cap never ends a point before it
    has ``stable_windows`` windows, so every point gets its stability judged at least once.
    ``reference_calls`` batch-1 calls on one fixed input, before the first point and after each point
    of a measuring process, time the host's speed as this model feels it (0: none).
    """

    name: str
    window_batches: int
    window_min_s: float
    max_seconds: float
    stable_windows: int = PA_STABLE_WINDOWS
    tolerance: float = PA_STABILITY_TOLERANCE
    max_windows: int = PA_MAX_TRIALS
    widen_factor: float = WIDEN_FACTOR
    min_window_batches: int = 2
    slow_point_windows: int = PA_STABLE_WINDOWS + 2
    warmup_batches: int = 3
    stability_percentile: float | None = 50.0  # None: the mean latency (perf_analyzer's default)
    reference_calls: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.min_window_batches <= self.window_batches:
            raise ValueError(f"window policy {self.name!r}: need 1 <= min_window_batches <= window_batches, got "
                             f"{self.min_window_batches!r} and {self.window_batches!r}")
        if not 2 <= self.stable_windows <= self.max_windows:
            raise ValueError(f"window policy {self.name!r}: need 2 <= stable_windows <= max_windows, got "
                             f"{self.stable_windows!r} and {self.max_windows!r}")
        if self.max_seconds <= 0 or self.window_min_s < 0 or self.tolerance <= 0 or self.widen_factor <= 1:
            raise ValueError(f"window policy {self.name!r}: need max_seconds > 0, window_min_s >= 0, "
                             f"tolerance > 0 and widen_factor > 1")
        q = self.stability_percentile
        if (q is not None and not 0 <= q <= 100) or self.reference_calls < 0 or self.warmup_batches < 0:
            raise ValueError(f"window policy {self.name!r}: stability_percentile in [0, 100], reference_calls "
                             "and warmup_batches >= 0")

    def window_count(self, batch_s: float) -> int:
        """Batches per window for a point whose batches take about ``batch_s``: fewer for slow points."""
        if batch_s <= 0:
            return self.window_batches
        fits = int(self.max_seconds / (self.slow_point_windows * batch_s))
        return max(self.min_window_batches, min(self.window_batches, fits))

    def sampler(self, batch: int, batch_s: float, start_s: float) -> PointSampler:
        """A fresh ``PointSampler`` for one point, its windows sized from a warm-up batch's time."""
        return PointSampler(self, batch, self.window_count(batch_s), start_s)

    def with_max_seconds(self, seconds: float | None) -> WindowPolicy:
        return self if seconds is None else replace(self, max_seconds=seconds)


@dataclass(frozen=True)
class SampledPoint:
    """What ``PointSampler`` made of one point's batches."""

    latencies_s: tuple[float, ...]  # every batch timed, in measuring order
    windows: tuple[WindowStats, ...]  # every closed window, in order
    final_from: int  # latencies_s[final_from:final_to] are the final windows' batches: the point's figures
    final_to: int
    stable: bool
    window_batches: int  # batches per window at the end (after any widening)
    widened: int  # how many times the windows were widened
    latency_cv: float  # CV of the final windows' latency percentile
    throughput_cv: float  # CV of the final windows' throughput

    @property
    def point_latencies_s(self) -> tuple[float, ...]:
        return self.latencies_s[self.final_from:self.final_to]


class PointSampler:
    """The window state machine of one point, fed one batch latency at a time. Pure: time comes in.

    ``add(latency_s, now_s)`` after each batch (``now_s`` on any monotonic clock, the same one as
    ``start_s``); stop once ``done``; then ``result()``.
    """

    def __init__(self, policy: WindowPolicy, batch: int, window_batches: int, start_s: float) -> None:
        self.policy = policy
        self.batch = batch
        self._n = window_batches
        self._min_s = policy.window_min_s
        self._start = self._window_start = start_s
        self._latencies: list[float] = []
        self._window_from = 0  # index in _latencies where the open window starts
        self._closed: list[tuple[WindowStats, int, int]] = []  # (stats, from, to) of each closed window
        self._trial_from = 0  # index in _closed where the current window size began
        self._widened = 0
        self.stable = False
        self.capped = False

    @property
    def done(self) -> bool:
        return self.stable or self.capped

    def add(self, latency_s: float, now_s: float) -> None:
        if self.done:
            raise RuntimeError("PointSampler.add after done")
        self._latencies.append(latency_s)
        if len(self._latencies) - self._window_from >= self._n and now_s - self._window_start >= self._min_s:
            self._close(now_s)
        if (not self.stable and now_s - self._start >= self.policy.max_seconds
                and len(self._closed) >= self.policy.stable_windows):
            self.capped = True

    def _close(self, now_s: float) -> None:
        p = self.policy
        window = self._latencies[self._window_from:]
        stats = window_stats(window, self.batch, p.stability_percentile, now_s - self._window_start)
        self._closed.append((stats, self._window_from, len(self._latencies)))
        self._window_from, self._window_start = len(self._latencies), now_s
        trial = [w for w, _, _ in self._closed[self._trial_from:]]
        if len(trial) >= p.stable_windows and windows_agree(trial[-p.stable_windows:], p.tolerance):
            self.stable = True
        elif len(trial) >= p.max_windows:
            self._n = math.ceil(self._n * p.widen_factor)
            self._min_s *= p.widen_factor
            self._trial_from = len(self._closed)
            self._widened += 1

    def result(self) -> SampledPoint:
        """The point so far: its figures from the last ``stable_windows`` closed windows (all batches if none)."""
        final = self._closed[-self.policy.stable_windows:]
        lo, hi = (final[0][1], final[-1][2]) if final else (0, len(self._latencies))
        if hi <= lo:
            raise ValueError("no batch timed for this point")
        stats = [w for w, _, _ in final]
        return SampledPoint(
            latencies_s=tuple(self._latencies), windows=tuple(w for w, _, _ in self._closed), final_from=lo,
            final_to=hi, stable=self.stable, window_batches=self._n, widened=self._widened,
            latency_cv=coefficient_of_variation([w.latency_s for w in stats]) if stats else 0.0,
            throughput_cv=coefficient_of_variation([w.throughput_rps for w in stats]) if stats else 0.0,
        )


def windows_agree(windows: Sequence[WindowStats], tolerance: float) -> bool:
    """perf_analyzer's test: max / min within 1 + tolerance for the latency percentile and the throughput."""
    return (relative_spread([w.latency_s for w in windows]) <= tolerance
            and relative_spread([w.throughput_rps for w in windows]) <= tolerance)


# Full profile: perf_analyzer's defaults (50 batches and >= 1 s a window, 3 within 10 %, 10 trials),
# capped so the flagship fits in 2 hours.
FULL = WindowPolicy(name="full", window_batches=PA_WINDOW_REQUESTS, window_min_s=PA_WINDOW_MIN_S,
                    max_seconds=FULL_POINT_CAP_S)
# Quick profile: the same scheme with smaller windows (10 batches and >= 0.25 s: 3 agreeing windows of
# a fast point take under a second) and the old 3 s time box, one warm-up batch and 3 reference calls,
# so the whole flagship still takes minutes. Points that cannot settle in 3 s say so (stable=False).
QUICK = WindowPolicy(name="quick", window_batches=10, window_min_s=0.25, max_seconds=QUICK_POINT_CAP_S,
                     warmup_batches=1, reference_calls=3)


def point_seconds(policy: WindowPolicy, batch_s: float, reference_s: float) -> tuple[float, float]:
    """(fastest, slowest) seconds one point takes at ``batch_s`` a batch: warm-up, one reference probe
    (batch-1 calls of ``reference_s`` each), then sampling: stable after ``stable_windows`` windows at
    best, at worst up to the cap (or the minimum windows, for a point slower than the cap allows).
    An estimate from the plan, not a measurement: it ignores the time between batches."""
    n = policy.window_count(batch_s)
    window = max(n * batch_s, policy.window_min_s)
    fixed = policy.warmup_batches * batch_s + policy.reference_calls * reference_s
    fastest = policy.stable_windows * window
    slowest = max(policy.max_seconds, fastest)
    return fixed + fastest, fixed + slowest


def variant_batches(variant: VariantSpec, batches: Sequence[int], hardware: str = "cpu:1") -> tuple[int, ...]:
    """The batch sizes profiled for a variant: all of them, or up to its runtime's limit.

    ``native_batching`` describes the CPU runtime; on a GPU every variant runs its PyTorch
    runtime, which batches natively (the LLMs too: one ``generate`` for the batch).
    """
    on_gpu = hardware.startswith("gpu:")
    limit = variant.params.get("max_batch_size")
    if limit is None and not on_gpu:
        limit = variant.params.get("cpu_max_batch_size")
    if limit is None and not variant.native_batching and not on_gpu:
        limit = SEQUENTIAL_MAX_BATCH
    chosen = tuple(sorted({b for b in batches if limit is None or b <= int(limit)}))
    return chosen or (min(batches),)


def plan(
    spec: PipelineSpec,
    batches: Sequence[int] = DEFAULT_BATCHES,
    hardware: Sequence[str] = tuple(f"cpu:{c}" for c in DEFAULT_CORES),
    stages: Iterable[str] | None = None,
    variants: Iterable[str] | None = None,
) -> list[PointKey]:
    """Every point of the grid in measuring order: stage, variant, hardware, batch."""
    wanted_stages = set(stages) if stages is not None else None
    wanted_variants = set(variants) if variants is not None else None
    keys: list[PointKey] = []
    for stage in spec.stages:
        if wanted_stages is not None and stage.name not in wanted_stages:
            continue
        for v in stage.variants:
            if wanted_variants is not None and v.name not in wanted_variants:
                continue
            for hw in hardware:
                keys.extend(PointKey(stage.name, v.name, b, hw) for b in variant_batches(v, batches, hw))
    return keys


def missing(keys: Sequence[PointKey], existing: Iterable[ProfilePoint]) -> list[PointKey]:
    """The keys not yet measured, in their original order (resuming a run)."""
    done = {PointKey.of(p) for p in existing}
    return [k for k in keys if k not in done]
