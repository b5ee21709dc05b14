"""Online calibration: plan with the service times the host gives now (issue 18, part 2).

A profile says how long a batch of ``b`` items of a variant takes on some hardware,
measured once, on a host that has moved since: on this shared VM a stage's service
time drifts 20–60 % over tens of seconds, and the shipped profile stood 1.4–1.6×
slower than the host for the LLMs on the same inputs (benchmarks/README.md). The
live controller and the simulator hand every batch that ended (``Observation.batches``:
its variant, hardware, size, service time and tokens generated) to one
:class:`Calibrator`, which compares it with the profile's p50 for the same variant,
batch size and hardware and keeps one correction per (stage, variant):

* **estimator** — the exponentially-decayed **weighted median** of observed / predicted
  (``estimator="median"``, the default); ``"trimmed"`` (the decayed mean of the middle
  80 %) and ``"mean"`` (a decayed mean, an EWMA over batches) are there to compare
  (``benchmarks/calibration.py`` replays recorded batches through each). A median is
  not moved by the long tail a batch of a shared host has (a scheduler stall, a
  garbage collection): the profile's own figure is a p50 too, and the planner scales
  every latency figure of the variant (p50, p99, mean) by the one factor.
* **decaying** — a sample of age ``a`` weighs ``2^(−a / half_life_s)``, so the estimate
  follows the host within a few half-lives; weights are relative, so a variant that
  stopped running keeps its last estimate (the newest samples weigh most) rather
  than falling back to the profile.
* **minimum samples** — a correction is in force once its (stage, variant) has
  ``min_samples`` batches; until then the variant takes its **stage's** pooled
  correction (all its variants' samples: the host's speed is shared, so a variant
  the planner has not run yet is not mistaken for a faster one), else none. Batches
  the profile puts under ``POOL_MIN_PREDICTED_S`` stay out of the pool: their time is
  mostly the clock and the call around them, not the host's speed.
* **bounded** — a factor is clipped to ``[min_factor, max_factor]``; a factor within
  ``dead_band`` of 1, or within ``z`` standard errors of 1 (the median's standard
  error, ``1.25 · σ / √n_eff`` of the log ratios, σ from their weighted MAD and
  ``n_eff`` the decayed samples' effective count), is 1: noise does not re-plan,
  and where the host agrees with the profile the profile is used as it is.
* **the LLM per generated token** — a batch that reports tokens (the LLM's) is
  compared with its prediction scaled by the work it did: the profile's p50 is for
  the profiler's inputs (``metadata.output_tokens_mean``), and an item's time is
  a fixed part (the prompt) plus a part that grows with the tokens it generates.
  The generated-token share ``g`` of the time is fitted online by weighted least
  squares of the ratio on the batch's tokens relative to the profile's; where
  tokens hardly vary it is not identified and the batch is the unit (``g = 0``),
  which is then exact. The planner's factor is the speed (per work) times the
  live traffic's median work relative to the profile's.
* **the tail, of its own** — the planner's SLA check reads a batch's p99, and a
  median factor scales the profile's p99 by how the host does *in the middle*.
  The profile's spread comes from the profiler's fixed inputs; live, inputs vary
  (the LLM's tokens) and the host stalls, so live batches spread wider: on a
  recorded live run (``benchmarks/results/calibration_forward.json.gz``) 25.7 % of
  the LLM's batches took longer than the median-scaled p99 (1 % is what a p99
  promises). So each variant with ``TAIL_MIN_SAMPLES`` batches of its own also
  keeps its **tail**: how many times the profile's spread its batches spread (a
  variant with fewer takes its stage's, pooled as the factor is). Each
  batch's log ratio, less their decayed median, is divided by the profile's own
  lognormal σ at that batch size (σ_b = ln(p99 / p50) / z99, the simulator's law,
  ``loadgen/service.py``); the tail ``k`` is (q95 − q50) / z95 of those, 1 where the
  host spreads as profiled. It is in force when it is wider than that beyond the
  dead band even at ``z`` standard errors below its estimate (a steady host does not
  re-plan on a noisy 95th percentile), and the planner's p95 and p99 of a point then
  become ``max(profile's × factor, p50 × factor × e^{z·k·σ_b})``: never below what
  the median factor gives. On that run the LLM's batches over the planned p99 fell
  to 2.2 %; ``tail=False`` turns it off.

:func:`calibrate` turns a profile and a :class:`Calibration` into the corrected view
the policies plan with: every latency figure of a corrected variant times its
factor, its throughput divided by it. The control loop hands it to the policy
before each decision (``ControlLoop(calibrator=...)``), live and simulated alike.
Pure: no clock (time comes in), no I/O beyond :class:`FileCalibrationStore`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from varipipe.adapter.latency_model import Z95, Z99, batch_curve
from varipipe.errors import ConfigError
from varipipe.jsonfile import write_json_atomic
from varipipe.records import BatchTimes, Observation, Profile

__all__ = ["CalibrationSettings", "Correction", "Calibration", "Calibrator", "calibrate", "profiled_sigma", "make_calibrator",
           "FileCalibrationStore", "CalibrationOptions", "ESTIMATORS", "DEFAULT_HALF_LIFE_S",
           "DEFAULT_MIN_SAMPLES", "DEFAULT_MIN_FACTOR", "DEFAULT_MAX_FACTOR", "DEFAULT_DEAD_BAND",
           "POOL_MIN_PREDICTED_S", "TAIL_MIN_SAMPLES", "Z95", "Z99"]

ESTIMATORS = ("median", "trimmed", "mean")
# Decay: the weight of a batch halves every half-life. 30 s: the host's speed moves over tens of
# seconds here (issue 18), and three 10 s adapter intervals are one half-life; tuned on a run of its
# own (benchmarks/README.md, issue 18 part 2: 15 / 30 / 60 / 120 s compared on recorded batches).
DEFAULT_HALF_LIFE_S = 30.0
# Batches a (stage, variant) needs before its own correction is in force: with 10, the median's
# standard error is about 0.4 sigma of the batch times (1.25 sigma / sqrt(n)), ~6 % for the
# per-batch spread seen live (sigma ~0.15 of the log service time). The LLM at 1-2 batches/s
# reaches it within one adapter interval.
DEFAULT_MIN_SAMPLES = 10
# Bounds of a factor: a profile 4x off is a wrong profile, not a slow host; beyond them the
# correction stops (and says it is clipped) rather than plan on a broken sample stream.
DEFAULT_MIN_FACTOR = 0.25
DEFAULT_MAX_FACTOR = 4.0
# A factor within 5 % of 1 is 1: about the median's standard error with the minimum samples, so
# the profile stays in force where the host agrees with it, and noise does not re-plan.
DEFAULT_DEAD_BAND = 0.05
# The significance gate: a correction is in force only when its estimate lies more than this many
# standard errors from 1 (one-sided false alarm ~1e-3 per check on a steady host at 3).
DEFAULT_Z = 3.0
# Standard error of a sample median over that of the mean, for a normal law: sqrt(pi / 2).
_MEDIAN_SE = math.sqrt(math.pi / 2)
# MAD to standard deviation, for a normal law.
_MAD_SIGMA = 1.4826
# Batches shorter than this in the profile (p50) are not pooled into their stage's correction. The
# flagship LLM's template rung takes 19.5 us a batch (profile p50); live, its ratio read x5.4 (timer
# and call overhead on a string format), and pooled into the LLM stage's correction it put Qwen,
# which had 8 batches of its own, at x4 (clipped): the demo never planned Qwen again. 1 ms is 50x
# the template's time and under a tenth of the fastest model batch in the profiles (12 ms).
POOL_MIN_PREDICTED_S = 1e-3
# Batches a variant needs before its own tail is in force: the 95th percentile of 20 rests on the
# top one (of 10, the minimum for a factor, it would be the single slowest batch).
TAIL_MIN_SAMPLES = 20
# Standard error of the tail estimate (q95 - q50) / z95 of n standard-normal samples, in units of
# the tail over sqrt(n): the asymptotic variances of the two sample quantiles, p(1-p)/phi(z_p)^2
# (4.47 and 1.57), less twice their covariance, p50 (1 - p95) / (phi(z50) phi(z95)) = 0.61:
# sqrt(4.82) / z95 = 1.33.
_TAIL_SE = 1.33
# The smallest profiled spread a batch is standardised by: a point profiled with p99 = p50 (a
# string template's microseconds) would otherwise make any live spread infinitely wider.
SIGMA_FLOOR = 0.01
# Batches kept per (stage, variant): 500 give the median a standard error of ~6 % of the batch
# times' spread, and cover 3 half-lives of the default at ~5 batches/s; past that the newest 500
# decide. Memory and the time of an estimate stay bounded at any rate (a simulated day at 40 req/s
# runs ~10^6 batches a stage).
MAX_SAMPLES = 500
# The profile-vs-observed figures shown beside a correction: the p50s of the newest batches.
DISPLAY_SAMPLES = 50
# "trimmed": the decayed mean of the ratios between these weighted quantiles.
TRIM_FRACTION = 0.1
# The token share is fitted only where tokens per item spread (coefficient of variation of the
# batches' work relative to the profile's) by at least this much; below it the batch is the unit.
TOKEN_SPREAD_MIN = 0.1
# The profile metadata that states a variant's mean generated tokens per item, keyed "stage/variant"
# (profiler/run.py writes it from the accuracy runs on the profiler's inputs).
TOKENS_METADATA_KEY = "output_tokens_mean"


@dataclass(frozen=True)
class CalibrationSettings:
    """How corrections are estimated (see the module docstring)."""

    estimator: str = "median"
    half_life_s: float = DEFAULT_HALF_LIFE_S
    min_samples: int = DEFAULT_MIN_SAMPLES
    min_factor: float = DEFAULT_MIN_FACTOR
    max_factor: float = DEFAULT_MAX_FACTOR
    dead_band: float = DEFAULT_DEAD_BAND
    z: float = DEFAULT_Z  # standard errors from 1 an estimate must lie to be in force (0: no gate)
    per_token: bool = True  # fit the LLM's generated-token share where batches report tokens
    tail: bool = True  # plan p95 / p99 on the variant's measured tail where wider than the profile's

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"calibration estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not (self.half_life_s > 0 and math.isfinite(self.half_life_s)):
            raise ValueError(f"calibration half_life_s must be a positive number of seconds, got {self.half_life_s!r}")
        if not (isinstance(self.min_samples, int) and self.min_samples >= 1):
            raise ValueError(f"calibration min_samples must be an integer >= 1, got {self.min_samples!r}")
        if not 0 < self.min_factor <= 1 <= self.max_factor < math.inf:
            raise ValueError(f"calibration bounds must satisfy 0 < min_factor <= 1 <= max_factor, "
                             f"got {self.min_factor!r}, {self.max_factor!r}")
        if not 0 <= self.dead_band < 1:
            raise ValueError(f"calibration dead_band must be in [0, 1), got {self.dead_band!r}")
        if not (self.z >= 0 and math.isfinite(self.z)):
            raise ValueError(f"calibration z must be a number >= 0, got {self.z!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Correction:
    """The correction of one (stage, variant) at one time, and what it rests on.

    ``factor`` is what the planner multiplies the variant's latencies by (1.0: the
    profile as it is); ``source`` says where it comes from: "variant" (its own
    batches), "stage" (its stage's, pooled: the variant has too few of its own),
    "none" (no batches: the profile). ``estimate`` is the estimator's figure before
    the dead band and the bounds. ``observed_p50_s`` / ``predicted_p50_s``: the
    decayed medians of the variant's batch times and of the profile's predictions
    for the same batches (0 when it ran none). ``token_share``: the fitted share of
    time that grows with generated tokens (None: not fitted), ``work``: the live mean
    work per item relative to the profile's (its decayed median; 1.0 without tokens).
    ``tail``: how many times the profile's spread the variant's batches spread (lognormal
    σ over σ; 1.0: not measured, or not significantly wider: the profile's stands); the
    planner's p95 / p99 of a point are at least its p50 × factor × e^{z·tail·σ_b}.
    """

    stage: str
    variant: str
    factor: float
    source: str
    estimate: float
    samples: int
    observed_p50_s: float = 0.0
    predicted_p50_s: float = 0.0
    last_sample_s: float | None = None
    token_share: float | None = None
    work: float = 1.0
    clipped: bool = False
    tail: float = 1.0

    @property
    def in_force(self) -> bool:
        return self.factor != 1.0 or self.tail != 1.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["in_force"] = self.in_force
        return d


@dataclass(frozen=True)
class Calibration:
    """Every (stage, variant) of a profile's correction at ``time_s``."""

    time_s: float
    corrections: tuple[Correction, ...] = ()
    settings: CalibrationSettings = field(default_factory=CalibrationSettings)
    unmatched: int = 0  # batches whose variant or hardware the profile does not have

    def factor(self, stage: str, variant: str) -> float:
        for c in self.corrections:
            if (c.stage, c.variant) == (stage, variant):
                return c.factor
        return 1.0

    def factors(self) -> dict[tuple[str, str], float]:
        return {(c.stage, c.variant): c.factor for c in self.corrections}

    def tails(self) -> dict[tuple[str, str], float]:
        """The measured tails in force (≠ 1), by (stage, variant)."""
        return {(c.stage, c.variant): c.tail for c in self.corrections if c.tail != 1.0}

    def to_dict(self) -> dict[str, Any]:
        return {"time_s": self.time_s, "settings": self.settings.to_dict(), "unmatched": self.unmatched,
                "corrections": [c.to_dict() for c in self.corrections]}


def profiled_sigma(p50_s: float, p99_s: float) -> float:
    """The lognormal σ a profile point's p50 and p99 imply (the simulator's law), at least SIGMA_FLOOR."""
    return max(math.log(p99_s / p50_s) / Z99, SIGMA_FLOOR) if p50_s > 0 and p99_s > p50_s else SIGMA_FLOOR


def calibrate(profile: Profile, calibration: Calibration | Mapping[tuple[str, str], float],
              tails: Mapping[tuple[str, str], float] | None = None) -> Profile:
    """The profile the planner uses: each point of a corrected (stage, variant) with its latency
    figures times the factor and its throughput divided by it, and, where a tail ``k`` is in force,
    its p95 / p99 at least its corrected p50 × e^{z·k·σ} (σ: the point's own, ``profiled_sigma``).
    A :class:`Calibration` brings its tails; with a plain mapping of factors, ``tails``. The same
    object when nothing differs from the profile."""
    if isinstance(calibration, Calibration):
        factors, tails = calibration.factors(), calibration.tails()
    else:
        factors, tails = dict(calibration), dict(tails or {})
    factors = {k: f for k, f in factors.items() if f != 1.0}
    tails = {k: t for k, t in tails.items() if t != 1.0}
    if not factors and not tails:
        return profile
    points = []
    for p in profile.points:
        key = (p.stage, p.variant)
        f, k = factors.get(key, 1.0), tails.get(key, 1.0)
        if f == 1.0 and k == 1.0:
            points.append(p)
            continue
        p50 = p.latency_p50_s * f
        sigma = k * profiled_sigma(p.latency_p50_s, p.latency_p99_s)
        p95, p99 = p.latency_p95_s * f, p.latency_p99_s * f
        if k != 1.0:
            p95, p99 = max(p95, p50 * math.exp(Z95 * sigma)), max(p99, p50 * math.exp(Z99 * sigma))
        points.append(dataclasses.replace(
            p, latency_p50_s=p50, latency_p95_s=p95, latency_p99_s=p99, throughput_rps=p.throughput_rps / f,
            latency_mean_s=p.latency_mean_s * f if p.latency_mean_s is not None else None))
    meta = dict(profile.metadata)
    meta["calibration"] = {f"{s}/{v}": round(f, 6) for (s, v), f in sorted(factors.items())}
    if tails:
        meta["calibration_tail"] = {f"{s}/{v}": round(t, 6) for (s, v), t in sorted(tails.items())}
    return dataclasses.replace(profile, points=tuple(points), metadata=meta)


# ------------------------------------------------------------------------- estimators


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values, kind="stable")
    cw = np.cumsum(weights[order])
    i = int(np.searchsorted(cw, q * cw[-1], side="left"))
    return float(values[order][min(i, len(values) - 1)])


def _estimate(ratios: np.ndarray, weights: np.ndarray, estimator: str) -> float:
    if estimator == "mean":
        return float(np.average(ratios, weights=weights))
    if estimator == "trimmed":
        order = np.argsort(ratios, kind="stable")
        r, w = ratios[order], weights[order]
        cw = np.cumsum(w)
        total = cw[-1]
        keep = (cw >= TRIM_FRACTION * total) & (cw - w <= (1 - TRIM_FRACTION) * total)
        return float(np.average(r[keep], weights=w[keep])) if keep.any() else _weighted_quantile(r, w, 0.5)
    return _weighted_quantile(ratios, weights, 0.5)


def _log_se(ratios: np.ndarray, weights: np.ndarray) -> float:
    """Standard error of the decayed median of the log ratios (robust spread, effective count)."""
    logs = np.log(ratios)
    med = _weighted_quantile(logs, weights, 0.5)
    sigma = _MAD_SIGMA * _weighted_quantile(np.abs(logs - med), weights, 0.5)
    n_eff = weights.sum() ** 2 / (weights * weights).sum()
    return _MEDIAN_SE * sigma / math.sqrt(n_eff)


def _standardised(ratios: np.ndarray, sigmas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each batch's log ratio less their (decayed) median, in units of its profiled σ."""
    logs = np.log(ratios)
    return (logs - _weighted_quantile(logs, weights, 0.5)) / sigmas


def _tail(u: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """How many times their profiled σ standardised deviations ``u`` spread, from the upper part
    ((q95 − q50) / z95, decayed), and its standard error."""
    k = max(0.0, (_weighted_quantile(u, weights, 0.95) - _weighted_quantile(u, weights, 0.5)) / Z95)
    n_eff = weights.sum() ** 2 / (weights * weights).sum()
    return k, _TAIL_SE * k / math.sqrt(n_eff)


def _token_share(ratios: np.ndarray, work: np.ndarray, weights: np.ndarray) -> float | None:
    """g in r = s * ((1 - g) + g * w), by weighted least squares of r on w; None where the work
    per item does not spread enough to tell."""
    total = weights.sum()
    mean_w = float((weights * work).sum() / total)
    var_w = float((weights * (work - mean_w) ** 2).sum() / total)
    if mean_w <= 0 or math.sqrt(var_w) / mean_w < TOKEN_SPREAD_MIN:
        return None
    mean_r = float((weights * ratios).sum() / total)
    slope = float((weights * (work - mean_w) * (ratios - mean_r)).sum() / total) / var_w
    intercept = mean_r - slope * mean_w
    at_profile = intercept + slope  # the ratio at the profile's own work (w = 1)
    if at_profile <= 0:
        return None
    return min(1.0, max(0.0, slope / at_profile))


# --------------------------------------------------------------------------- buffers


# Columns of a ring's rows.
_T, _SEC, _PRED, _WORK, _SIZE, _TOKENS, _HW, _SIG = range(8)


class _Ring:
    """The last ``capacity`` batches of one (stage, variant), one row each: end time, seconds,
    the profile's p50 for it, its work relative to the profile's (NaN: no tokens reported or no
    profile figure), size, tokens, its hardware (an index into ``hardware``) and the profile's
    lognormal σ for it."""

    __slots__ = ("data", "n", "head", "hardware")

    def __init__(self, capacity: int) -> None:
        self.data = np.empty((capacity, 8), dtype=np.float64)
        self.n = self.head = 0
        self.hardware: list[str] = []

    def add(self, rows: np.ndarray) -> None:
        cap = len(self.data)
        rows = rows[-cap:]
        k = len(rows)
        end = self.head + k
        if end <= cap:
            self.data[self.head:end] = rows
        else:
            cut = cap - self.head
            self.data[self.head:] = rows[:cut]
            self.data[: k - cut] = rows[cut:]
        self.head = end % cap
        self.n = min(cap, self.n + k)

    def rows(self) -> np.ndarray:
        if self.n < len(self.data):
            return self.data[: self.n]
        return np.concatenate([self.data[self.head:], self.data[: self.head]])


def _locked(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class Calibrator:
    """Corrections per (stage, variant) of ``profile`` from the batches observed (module docstring).
    Thread-safe: live, the controller feeds it while the control loop reads it."""

    def __init__(self, profile: Profile, settings: CalibrationSettings | None = None,
                 max_samples: int = MAX_SAMPLES) -> None:
        self.profile = profile
        self.settings = settings or CalibrationSettings()
        self.max_samples = max_samples
        self._rings: dict[tuple[str, str], _Ring] = {}
        self._curves: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}  # p50, σ by batch size
        self._unmatched = 0
        self._version = 0
        self._cached: tuple[float, int, Calibration] | None = None
        self._corrected: tuple[tuple, Profile] | None = None
        self._variants = {(p.stage, p.variant) for p in profile.points}
        self._lock = threading.RLock()  # live, the controller feeds it while the loop reads it
        tokens = profile.metadata.get(TOKENS_METADATA_KEY, {}) if isinstance(profile.metadata, Mapping) else {}
        self._tokens_per_item = {tuple(k.split("/", 1)): float(v) for k, v in dict(tokens).items()
                                 if "/" in k and isinstance(v, int | float) and v > 0}

    # ---- ingestion

    def observe(self, observation: Observation) -> None:
        """Take the batches that ended in ``observation``'s interval."""
        self.add(observation.batches)

    @_locked
    def add(self, batches: Iterable[BatchTimes]) -> None:
        for b in batches:
            if not b.sizes:
                continue
            key = (b.stage, b.variant)
            sizes_i = np.asarray(b.sizes, dtype=np.int64)
            curves = self._curves_for(b.stage, b.variant, b.hardware, int(sizes_i.max()))
            if curves is None or (sizes_i < 1).any():
                self._unmatched += len(b.sizes)
                continue
            sizes = np.asarray(b.sizes, dtype=np.float64)
            tokens = np.asarray(b.tokens, dtype=np.float64)
            per_item = self._tokens_per_item.get(key)
            work = np.where(tokens > 0, tokens / (sizes * per_item), np.nan) if per_item else np.full(len(sizes), np.nan)
            ring = self._rings.setdefault(key, _Ring(self.max_samples))
            if b.hardware not in ring.hardware:
                ring.hardware.append(b.hardware)
            rows = np.column_stack([np.asarray(b.ended_s, dtype=np.float64), np.asarray(b.seconds, dtype=np.float64),
                                    curves[0][sizes_i], work, sizes, tokens,
                                    np.full(len(sizes), float(ring.hardware.index(b.hardware))),
                                    curves[1][sizes_i]])
            ok = np.isfinite(rows[:, :3]).all(axis=1) & (rows[:, _SEC] > 0)
            if not ok.all():
                self._unmatched += int((~ok).sum())
            ring.add(rows[ok])
            self._version += 1

    def _curves_for(self, stage: str, variant: str, hardware: str, top: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The profile's p50 and lognormal σ by batch size 0..≥ ``top`` for one configuration
        (interpolated as the simulator's service times), cached; None where the profile lacks it."""
        key = (stage, variant, hardware)
        curves = self._curves.get(key)
        if curves is None or len(curves[0]) <= top:
            pts = sorted((p for p in self.profile.points if p.key[:2] == (stage, variant) and p.hardware == hardware),
                         key=lambda p: p.batch)
            if not pts or top < 1:
                return None
            grid = np.arange(max(top, pts[-1].batch, 16) + 1, dtype=np.float64)
            grid[0] = 1.0
            batches = [p.batch for p in pts]
            p50 = batch_curve(batches, [p.latency_p50_s for p in pts], grid)
            p99 = batch_curve(batches, [p.latency_p99_s for p in pts], grid)
            sigma = np.array([profiled_sigma(a, b) for a, b in zip(p50, p99, strict=True)])
            curves = self._curves[key] = (p50, sigma)
        return curves

    def predicted(self, stage: str, variant: str, hardware: str, sizes: np.ndarray) -> np.ndarray | None:
        """The profile's p50 for batches of ``sizes`` (interpolated as the simulator's service times)."""
        curves = self._curves_for(stage, variant, hardware, int(sizes.max()) if len(sizes) else 1)
        if curves is None or (sizes < 1).any():
            return None
        return curves[0][sizes]

    def p99_lift(self, stage: str, variant: str, hardware: str, batch: int, tail: float) -> float:
        """How many times the profile's (factor-scaled) p99 a tail puts the planned p99 of a batch of
        ``batch`` (1: not at all; a configuration the profile lacks: 1)."""
        b = max(batch, 1)
        curves = self._curves_for(stage, variant, hardware, b) if tail != 1.0 else None
        if curves is None:
            return 1.0
        return max(1.0, math.exp(Z99 * float(curves[1][b]) * (tail - 1.0)))

    # ---- estimates

    @_locked
    def calibration(self, now: float) -> Calibration:
        """Every (stage, variant) of the profile's correction at ``now``."""
        if self._cached is not None and self._cached[:2] == (now, self._version):
            return self._cached[2]
        s = self.settings
        stages: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
        spreads: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}  # standardised deviations
        own: dict[tuple[str, str], Correction] = {}
        for key in sorted(self._variants, key=self._order):
            ring = self._rings.get(key)
            if ring is None or not ring.n:
                continue
            rows = ring.rows()
            # Decay relative to the variant's newest batch, not to ``now``: every estimate here is
            # a weighted quantile or mean, unchanged when all its weights scale alike, and a variant
            # idle for hours (2^-1000 at 30 s half-life) would otherwise weigh all zero, its median
            # its smallest ratio. ``newest`` ties the variants of a stage back together for the pool.
            newest = float(rows[:, _T].max())
            weights = np.exp2((rows[:, _T] - newest) / s.half_life_s)  # newest >= every row's time
            ratios, share, work = self._ratios(key, rows, weights)
            timed = rows[:, _PRED] >= POOL_MIN_PREDICTED_S  # the host's speed, not timer overhead
            stages.setdefault(key[0], []).append((ratios[timed], weights[timed], newest))
            tail = 1.0
            if s.tail:  # tail=False: no tails at all, and none of their work
                u = _standardised(rows[:, _SEC] / rows[:, _PRED], rows[:, _SIG], weights)
                spreads.setdefault(key[0], []).append((u[timed], weights[timed], newest))
                tail = self._wider_tail(u, weights)
            estimate = _estimate(ratios, weights, s.estimator) * work
            own[key] = self._correction(key, estimate, lambda r=ratios, w=weights: _log_se(r, w), rows, weights,
                                        share, work, tail)
        pooled = {}
        for st, parts in stages.items():
            r, w = self._pool(parts)
            if len(r) and w.sum() > 0:  # a stage whose batches are all untimed (the template's) has no pooled figure
                pooled[st] = (_estimate(r, w, s.estimator), lambda r=r, w=w: _log_se(r, w))
        # A variant without a tail of its own takes its stage's: the host's stalls that widen one
        # variant's batches will widen the next one's, and a variant not yet run must not look
        # narrower for it (the planner would move to it, see its tail and move back: on
        # 2026-12-06 the detector switched variants every 10-20 s on yolov10n-320's tail of 25).
        pooled_tail = {st: self._wider_tail(*self._pool(parts)) for st, parts in spreads.items()}
        out = []
        for key in sorted(self._variants, key=self._order):
            c = own.get(key) or Correction(key[0], key[1], 1.0, "none", 1.0, 0)  # no batches of its own
            if c.samples < TAIL_MIN_SAMPLES:
                c = dataclasses.replace(c, tail=pooled_tail.get(key[0], 1.0))
            if c.samples >= s.min_samples:
                out.append(c)
                continue
            n_stage = sum(len(r) for r, _, _ in stages.get(key[0], ()))
            if n_stage >= s.min_samples and key[0] in pooled:
                estimate, se = pooled[key[0]]
                factor, clipped = self._bounded(estimate, se)
                out.append(dataclasses.replace(c, factor=factor, source="stage", estimate=estimate, clipped=clipped))
            else:
                out.append(dataclasses.replace(c, factor=1.0, source="none", clipped=False, tail=1.0))
        result = Calibration(now, tuple(out), s, self._unmatched)
        self._cached = (now, self._version, result)
        return result

    def _order(self, key: tuple[str, str]) -> tuple[int, str]:
        stages = self.profile.stages
        return (stages.index(key[0]) if key[0] in stages else len(stages), key[1])

    def _ratios(self, key: tuple[str, str], rows: np.ndarray,
                weights: np.ndarray) -> tuple[np.ndarray, float | None, float]:
        """Observed / predicted per batch (per unit of work where the token share is known), the
        share, and the live median work per item relative to the profile's."""
        ratios = rows[:, _SEC] / rows[:, _PRED]
        work = rows[:, _WORK]
        has = np.isfinite(work)
        if not (self.settings.per_token and has.sum() >= self.settings.min_samples):
            return ratios, None, 1.0
        share = _token_share(ratios[has], work[has], weights[has])
        if share is None:
            return ratios, None, 1.0
        scale = np.where(has, (1 - share) + share * np.nan_to_num(work, nan=1.0), 1.0)
        median_work = _weighted_quantile(work[has], weights[has], 0.5)
        return ratios / scale, share, (1 - share) + share * median_work

    def _pool(self, parts: list[tuple[np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
        """A stage's variants' figures and weights together, each variant's weights as of the
        stage's newest batch (``parts``: figures, weights, the variant's newest batch time)."""
        latest = max(t for _, _, t in parts)
        return (np.concatenate([x for x, _, _ in parts]),
                np.concatenate([w * 2.0 ** (-(latest - t) / self.settings.half_life_s) for _, w, t in parts]))

    def _wider_tail(self, u: np.ndarray, weights: np.ndarray) -> float:
        """The tail (module docstring) of standardised deviations ``u`` of batch times as they come
        (tokens and all: what the next ones will be), where there are enough of them and it is
        wider than the profile's beyond the dead band even ``z`` standard errors below the
        estimate; else 1. Asked only with ``settings.tail`` on."""
        s = self.settings
        if len(u) < TAIL_MIN_SAMPLES:
            return 1.0
        k, se = _tail(u, weights)
        return k if k - s.z * se > 1 + s.dead_band else 1.0

    def _bounded(self, estimate: float, log_se: Callable[[], float]) -> tuple[float, bool]:
        """The factor in force for ``estimate`` (``log_se()``: its standard error, asked only when
        the dead band does not already decide), and whether the bounds clipped it."""
        s = self.settings
        if abs(estimate - 1.0) <= s.dead_band or (s.z > 0 and abs(math.log(estimate)) <= s.z * log_se()):
            return 1.0, False
        bounded = min(s.max_factor, max(s.min_factor, estimate))
        return bounded, bounded != estimate

    def _correction(self, key: tuple[str, str], estimate: float, log_se: Callable[[], float], rows: np.ndarray,
                    weights: np.ndarray, share: float | None, work: float, tail: float) -> Correction:
        factor, clipped = self._bounded(estimate, log_se)
        recent = rows[-DISPLAY_SAMPLES:]
        return Correction(key[0], key[1], factor, "variant", estimate, len(rows),
                          observed_p50_s=float(np.median(recent[:, _SEC])),
                          predicted_p50_s=float(np.median(recent[:, _PRED])),
                          last_sample_s=float(rows[:, _T].max()), token_share=share, work=work, clipped=clipped,
                          tail=tail)

    @_locked
    def corrected(self, now: float) -> Profile:
        """The profile with the corrections in force at ``now`` (:func:`calibrate`); the same
        object while the factors do not change."""
        cal = self.calibration(now)
        key = (tuple(sorted(cal.factors().items())), tuple(sorted(cal.tails().items())))
        if self._corrected is None or self._corrected[0] != key:
            self._corrected = (key, calibrate(self.profile, cal))
        return self._corrected[1]

    # ---- state

    @_locked
    def state(self) -> dict[str, Any]:
        """The batches kept, for a state file (predictions are recomputed from the profile on restore)."""
        batches = []
        for (stage, variant), ring in self._rings.items():
            for row in ring.rows().tolist():
                batches.append({"stage": stage, "variant": variant, "hardware": ring.hardware[int(row[_HW])],
                                "size": int(row[_SIZE]), "seconds": row[_SEC], "ended_s": row[_T],
                                "tokens": int(row[_TOKENS])})
        return {"version": 1, "batches": batches}

    @_locked
    def restore(self, state: Mapping[str, Any]) -> int:
        """Take back the batches of :meth:`state` (against this calibrator's profile); how many."""
        groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
        for b in state.get("batches", ()):
            groups.setdefault((str(b["stage"]), str(b["variant"]), str(b["hardware"])), []).append(b)
        n = 0
        for (stage, variant, hardware), rows in groups.items():
            rows = sorted(rows, key=lambda b: float(b["ended_s"]))
            self.add([BatchTimes(stage, variant, hardware, tuple(int(b["size"]) for b in rows),
                                 tuple(float(b["seconds"]) for b in rows), tuple(float(b["ended_s"]) for b in rows),
                                 tuple(int(b.get("tokens", 0)) for b in rows))])
            n += len(rows)
        return n


@dataclass(frozen=True)
class FileCalibrationStore:
    """A calibrator's batches in one JSON file, written atomically (temp file + rename)."""

    path: Path

    def load(self, calibrator: Calibrator) -> int:
        path = Path(self.path)
        if not path.exists():
            return 0
        try:
            return calibrator.restore(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ConfigError(str(path), "(calibration)", f"cannot read the saved calibration: {e}") from e

    def save(self, calibrator: Calibrator) -> None:
        write_json_atomic(self.path, calibrator.state())

    @staticmethod
    def beside(decision_state_file: str | Path) -> FileCalibrationStore:
        """The calibration store kept beside a decision state file: ``x.json`` -> ``x.calibration.json``."""
        p = Path(decision_state_file)
        return FileCalibrationStore(p.with_name(p.stem + ".calibration" + (p.suffix or ".json")))


class CalibrationOptions(Protocol):
    """The settings ``serve`` (``AppOptions``), ``simulate`` and ``experiment`` (``SimSettings``) give."""

    @property
    def calibration(self) -> bool: ...  # False: --no-calibration

    @property
    def calibration_settings(self) -> Mapping[str, Any]: ...  # CalibrationSettings fields to override


def make_calibrator(profile: Profile, options: CalibrationOptions) -> Calibrator | None:
    """The one way a run's calibrator is made, live and simulated; None with calibration off."""
    if not options.calibration:
        return None
    try:
        settings = CalibrationSettings(**dict(options.calibration_settings))
    except TypeError as e:
        known = ", ".join(f.name for f in dataclasses.fields(CalibrationSettings))
        raise ConfigError("calibration settings", str(dict(options.calibration_settings)),
                          f"unknown setting ({e}); known: {known}") from e
    except ValueError as e:
        raise ConfigError("calibration settings", str(dict(options.calibration_settings)), str(e)) from e
    return Calibrator(profile, settings)
