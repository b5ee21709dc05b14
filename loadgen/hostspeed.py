"""The host's speed over a simulated run: a multiplier on every service time, per second.

Live, the same batch takes longer or shorter as the host moves (on this shared VM,
20–60 % over tens of seconds; more while a neighbour hogs a core). The simulator
models it as a series of multipliers, one per second from the run's start (1.0 =
the host the profile was measured on, 2.0 = every batch takes twice as long):

* from a file (:meth:`HostSpeed.from_file`: whitespace-separated numbers, ``#``
  comments; the trace format), e.g. a series measured on another run;
* generated (:meth:`HostSpeed.generate`) with a seed: a log-normal
  Ornstein–Uhlenbeck process with a given spread (``sigma``, of the log
  multiplier) and correlation time (``tau_s``) around a level, and optional
  slow spells (:class:`Spell`: every service time ``factor`` times longer from
  ``start_s`` to ``end_s``).

A neighbour that hogs cores is modelled better as what it is, :class:`Neighbour`:
busy threads that take their cores first and leave the replicas the rest (the
simulator's processor sharing, shared mode), so it slows the pipeline only
while the replicas want more cores than it leaves them, as a CPU hog does live
on a half-idle host. It comes first because, live, the stage replicas run at
nice ``STAGE_NICE`` (10): a neighbour's thread at nice 0 weighs about 9 of
theirs in Linux's scheduler (1024 against 110), so it keeps its core.

:func:`speed_statistics` measures (level, sigma, tau) of a measured series, so a
simulated run can be given a *fresh* series with a live run's statistics.
:func:`fit_host` reads a live window the finer way: one speed and one tail per
variant (the host's stages need not move together, and live batches spread wider
than the profiler's fixed inputs did), as a host profile for the simulator's
service times, plus the residual series that is left for :func:`speed_statistics`. :func:`fit_contention` reads
it as the stages slowing each other: per stage, the log of a batch's time over the
profile grows linearly with the busy threads beside it over its time
(:func:`threads_during`; :class:`Contention`, which the simulator applies in shared
mode at the previous second's busy threads beside each stage, their expected value, or,
read ``"during"``, over each batch's own time off a previous pass of the run:
:class:`BusyGrid`). A
simulated run that is compared with a live one must never replay that run's own
series (it would be told the live run's noise): :func:`check_not_replayed`
refuses it. Pure apart from reading a file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from varipipe.errors import ConfigError, VaripipeError
from varipipe.records import BatchTimes, Profile, busy_threads

__all__ = ["HostSpeed", "Spell", "Neighbour", "parse_neighbour", "speed_statistics", "check_not_replayed",
           "parse_host_speed", "speed_from_batches", "profile_ratios", "held_medians", "HostFit", "fit_host",
           "ContentionLaw", "Contention",
           "ContentionFit", "threads_during", "threads_before", "beside_from_busy",
           "add_busy", "fit_contention", "BusyGrid", "READINGS"]


@dataclass(frozen=True)
class Spell:
    """A slow spell: from ``start_s`` to ``end_s`` every service time is ``factor`` times longer."""

    start_s: float
    end_s: float
    factor: float

    def __post_init__(self) -> None:
        if not (0 <= self.start_s < self.end_s and self.factor > 0 and math.isfinite(self.factor)):
            raise ValueError(f"a slow spell needs 0 <= start < end and a factor > 0, got {self}")


@dataclass(frozen=True)
class Neighbour:
    """Another process's ``threads`` busy threads on the host from ``start_s`` to ``end_s``: they
    take ``threads`` cores before the replicas (shared mode's processor sharing; module
    docstring) and are not the run's cost."""

    start_s: float
    end_s: float
    threads: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.start_s < self.end_s and self.threads > 0 and math.isfinite(self.threads)):
            raise ValueError(f"a neighbour needs 0 <= start < end and threads > 0, got {self}")


@dataclass(frozen=True, eq=False)
class HostSpeed:
    """Per-second multipliers on service times (index = second from the run's start); past the
    end the last one holds. ``source`` says where they come from (a file and its SHA-256, or the
    generator's seed and settings)."""

    per_second: np.ndarray
    source: str

    def __post_init__(self) -> None:
        a = np.asarray(self.per_second, dtype=np.float64)
        if a.ndim != 1 or not len(a):
            raise ValueError("a host-speed series needs at least one multiplier")
        if not (np.isfinite(a).all() and (a > 0).all()):
            bad = a[~(np.isfinite(a) & (a > 0))][0]
            raise ValueError(f"host-speed multipliers must be finite and > 0, got {bad!r}")
        object.__setattr__(self, "per_second", a)

    def multipliers(self, seconds: int) -> list[float]:
        """The first ``seconds`` multipliers (the last repeated past the end), as a list for the hot loop."""
        a = self.per_second
        if len(a) >= seconds:
            return a[:seconds].tolist()
        return np.concatenate([a, np.full(seconds - len(a), a[-1])]).tolist()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(np.round(self.per_second, 9).tobytes()).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path) -> HostSpeed:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(str(p), "(host speed)", f"cannot read: {e}") from e
        values = []
        for i, line in enumerate(text.splitlines(), start=1):
            for tok in line.split("#", 1)[0].split():
                try:
                    values.append(float(tok))
                except ValueError:
                    raise ConfigError(str(p), f"line {i}", f"not a number: {tok!r}") from None
        try:
            return cls(np.asarray(values), f"file {p.name} sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}")
        except ValueError as e:
            raise ConfigError(str(p), "(host speed)", str(e)) from e

    @classmethod
    def generate(cls, seconds: int, seed: int, sigma: float = 0.0, tau_s: float = 30.0, level: float = 1.0,
                 spells: Sequence[Spell] = ()) -> HostSpeed:
        """``level · exp(x_t)`` with ``x`` an Ornstein–Uhlenbeck process of stationary standard
        deviation ``sigma`` and correlation time ``tau_s`` (x_0 drawn from its stationary law),
        times each spell's factor while it lasts."""
        if seconds < 1 or sigma < 0 or tau_s <= 0 or level <= 0:
            raise ValueError(f"generate needs seconds >= 1, sigma >= 0, tau_s > 0, level > 0; got "
                             f"{seconds}, {sigma}, {tau_s}, {level}")
        rng = np.random.default_rng(seed)
        rho = math.exp(-1.0 / tau_s)
        noise = rng.standard_normal(seconds) * sigma * math.sqrt(1 - rho * rho)
        x = np.empty(seconds)
        x[0] = rng.standard_normal() * sigma
        for i in range(1, seconds):
            x[i] = rho * x[i - 1] + noise[i]
        out = level * np.exp(x)
        t = np.arange(seconds)
        for sp in spells:
            out[(t >= sp.start_s) & (t < sp.end_s)] *= sp.factor
        spelled = "".join(f", spell {sp.start_s:g}-{sp.end_s:g} s x{sp.factor:g}" for sp in spells)
        return cls(out, f"generated seed={seed} sigma={sigma:g} tau_s={tau_s:g} level={level:g}{spelled}")


def speed_statistics(series: Sequence[float] | np.ndarray, step_s: float = 1.0) -> tuple[float, float, float]:
    """(level, sigma, tau_s) of a measured series of multipliers sampled every ``step_s``: the
    geometric mean, the standard deviation of the log, and the correlation time from the lag-1
    autocorrelation of the log (an AR(1) read: tau = -step / ln rho; inf for a flat series)."""
    x = np.log(np.asarray(series, dtype=np.float64))
    if len(x) < 3:
        raise ValueError(f"speed_statistics needs at least 3 samples, got {len(x)}")
    level, sigma = float(np.exp(x.mean())), float(x.std())
    d = x - x.mean()
    denom = float((d * d).sum())
    rho = float((d[1:] * d[:-1]).sum() / denom) if denom > 0 else 1.0
    tau = math.inf if rho >= 1 else (step_s / -math.log(rho) if rho > 0 else step_s)
    return level, sigma, tau


def speed_from_batches(profile, batches: Sequence[BatchTimes], seconds: int, step_s: int = 10) -> np.ndarray:
    """A live run's host speed as the simulator models it: per ``step_s`` seconds, the median over
    every stage's batches of observed / the profile's p50 for the same batch (the calibration's
    prediction, :func:`profile_ratios`), held over the step; steps without batches keep the
    previous figure (1 before the first). ``ended_s`` relative to the run's start. For
    :func:`speed_statistics`, not for replaying into a run compared with this one
    (:func:`check_not_replayed`)."""
    ended, ratio = [], []
    for b, r in zip(batches, profile_ratios(profile, batches), strict=True):
        keep = np.isfinite(r)
        ended.extend(np.asarray(b.ended_s, dtype=np.float64)[keep].tolist())
        ratio.extend(r[keep].tolist())
    return held_medians(ended, ratio, seconds, step_s)


def profile_ratios(profile, batches: Sequence[BatchTimes]) -> list[np.ndarray]:
    """Per entry of ``batches``, each batch's time over the profile's p50 for the same stage,
    variant, hardware and size (the calibration's prediction, ``Calibrator.predicted``); NaN where
    the profile cannot predict it (no such configuration, or a p50 that is not positive)."""
    from varipipe.adapter.calibration import Calibrator

    pred = Calibrator(profile)
    out = []
    for b in batches:
        took = np.asarray(b.seconds, dtype=np.float64)
        p = pred.predicted(b.stage, b.variant, b.hardware, np.asarray(b.sizes, dtype=np.int64)) if len(b.sizes) else None
        if p is None:
            out.append(np.full(len(took), math.nan))
            continue
        p50 = np.asarray(p, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(p50 > 0, took / p50, math.nan))
    return out


def held_medians(ended_s: Sequence[float], values: Sequence[float], seconds: int, step_s: int) -> np.ndarray:
    """Per second of ``seconds``: the median of the ``values`` whose ``ended_s`` falls in its
    ``step_s`` step, held over the step; a step without any keeps the previous figure (1 before
    the first). Values ending outside ``[0, seconds)``'s steps are left out."""
    steps = max(1, math.ceil(seconds / step_s))
    per_step: list[list[float]] = [[] for _ in range(steps)]
    for t, v in zip(ended_s, values, strict=True):
        i = int(t // step_s)
        if 0 <= i < steps:
            per_step[i].append(v)
    out, last = np.empty(steps), 1.0
    for i, r in enumerate(per_step):
        last = float(np.median(r)) if r else last
        out[i] = last
    return np.repeat(out, step_s)[:seconds]


def check_not_replayed(simulated: HostSpeed | None, live_series: Sequence[float] | np.ndarray) -> None:
    """Raise when ``simulated`` is the live run's own series (or a prefix of it): a simulated run
    compared with a live one is given a series of its own (its statistics, another seed)."""
    if simulated is None:
        return
    live = np.asarray(live_series, dtype=np.float64)
    n = min(len(live), len(simulated.per_second))
    if n and np.allclose(simulated.per_second[:n], live[:n], rtol=1e-6, atol=0.0):
        raise VaripipeError(f"the simulated run replays the live run's own host-speed series ({simulated.source}); "
                            "generate one from its statistics (speed_statistics, HostSpeed.generate) instead")


def parse_host_speed(text: str, seconds: int) -> HostSpeed:
    """``--host-speed``: a file of multipliers, or ``generate:seed=N,sigma=S,tau=T[,level=L]
    [,spell=START-END*FACTOR]...`` for ``seconds`` seconds."""
    if not text.startswith("generate:"):
        return HostSpeed.from_file(text)
    args: dict[str, float] = {}
    spells = []
    for part in text[len("generate:"):].split(","):
        key, sep, value = part.partition("=")
        try:
            if key == "spell":
                span, _, factor = value.partition("*")
                start, _, end = span.partition("-")
                spells.append(Spell(float(start), float(end), float(factor)))
            elif sep and key in ("seed", "sigma", "tau", "level"):
                args[key] = float(value)
            else:
                raise ValueError(f"unknown part {part!r}")
        except ValueError as e:
            raise ConfigError("--host-speed", text, f"{e}; expected generate:seed=N,sigma=S,tau=T[,level=L]"
                                                    "[,spell=START-END*FACTOR]") from None
    try:
        return HostSpeed.generate(seconds, int(args.get("seed", 0)), args.get("sigma", 0.0), args.get("tau", 30.0),
                                  args.get("level", 1.0), spells)
    except ValueError as e:
        raise ConfigError("--host-speed", text, str(e)) from None


def parse_neighbour(text: str) -> Neighbour:
    """``--neighbour START-END[*THREADS]``: busy threads (default 1) from START to END s."""
    span, _, threads = text.partition("*")
    start, _, end = span.partition("-")
    try:
        return Neighbour(float(start), float(end), float(threads) if threads else 1.0)
    except ValueError as e:
        raise ConfigError("--neighbour", text, f"{e}; expected START-END[*THREADS], e.g. 60-180*1") from None


# A weight that never decays over a window of minutes: every batch of it counts alike (the
# calibrator's settings take a finite half-life).
_NO_DECAY_S = 1e12


@dataclass(frozen=True)
class HostFit:
    """A live window read as the simulator's host (:func:`fit_host`): per (stage, variant) its
    speed against the profile and its tail, the profile those make (``host``: the simulated
    service times; the policy still plans on the profile), and the per-second speed left after
    the per-variant speeds (``residual``, ~1 on average: for :func:`speed_statistics`)."""

    host: Profile
    factors: dict[tuple[str, str], float]
    tails: dict[tuple[str, str], float]
    residual: np.ndarray

    def to_dict(self) -> dict:
        return {"factors": {f"{s}/{v}": round(f, 6) for (s, v), f in sorted(self.factors.items())},
                "tails": {f"{s}/{v}": round(t, 6) for (s, v), t in sorted(self.tails.items())}}


def fit_host(profile: Profile, batches: Sequence[BatchTimes], seconds: int, step_s: int = 10) -> HostFit:
    """The host a live window shows, per variant, with the calibration's one implementation:

    1. each (stage, variant)'s speed: the median observed / profiled ratio over the whole window
       (no decay, no dead band or significance gate: this is a model of the host, not a plan;
       the LLM per generated token as the calibrator does; a variant with too few batches of its
       own takes its stage's);
    2. the residual speed per ``step_s``: :func:`speed_from_batches` against the profile with
       those speeds (what moves all stages together over time);
    3. each variant's tail against its profiled spread, on batch times divided by the residual
       of their step (so the drift the simulator adds from ``residual``'s statistics is not
       counted twice); a tail under 1 is left at 1 (the profile's spread).
    """
    from varipipe.adapter.calibration import CalibrationSettings, Calibrator, calibrate

    settings = CalibrationSettings(half_life_s=_NO_DECAY_S, dead_band=0.0, z=0.0)
    end = float(seconds)
    speeds = Calibrator(profile, settings)
    speeds.add(batches)
    factors = {k: f for k, f in speeds.calibration(end).factors().items() if f != 1.0}
    at_speed = calibrate(profile, factors)
    residual = speed_from_batches(at_speed, batches, seconds, step_s)
    steady = []
    for b in batches:
        div = [float(residual[min(max(int(t), 0), len(residual) - 1)]) for t in b.ended_s]
        steady.append(BatchTimes(b.stage, b.variant, b.hardware, b.sizes,
                                 tuple(x / d for x, d in zip(b.seconds, div, strict=True)), b.ended_s, b.tokens))
    spread = Calibrator(at_speed, settings)
    spread.add(steady)
    tails = {(c.stage, c.variant): c.tail for c in spread.calibration(end).corrections if c.tail > 1.0}
    return HostFit(calibrate(profile, factors, tails=tails), factors, tails, residual)


@dataclass(frozen=True)
class ContentionLaw:
    """One stage's contention law: a batch beside ``x`` busy threads over its time (the other
    batches, each counted at its hardware's cores and weighted by how much of the batch it
    overlapped: :func:`threads_during`) takes ``exp(a + gamma * x)`` times the profile's p50 for
    it. ``a``: the stage's speed on this host with nothing beside it; ``gamma``: what each busy
    thread beside it costs. ``batches``: how many it was fitted on."""

    a: float
    gamma: float
    batches: int = 0

    def factor(self, beside: float) -> float:
        return math.exp(self.a + self.gamma * beside)


# What a contention law is applied at in the simulator (Contention.reading):
# "before", the previous second's busy threads beside the stage, read as the run goes (one pass);
# "during", the busy threads beside the batch over its own time, as the law is fitted, read off the
# previous pass of the same run (the simulator runs CONTENTION_PASSES passes, a fixed point).
READINGS = ("before", "during")


def _check_reading(reading: str) -> None:
    if reading not in READINGS:
        raise VaripipeError(f"a contention law's reading must be one of {', '.join(READINGS)}, got {reading!r}")


@dataclass(frozen=True)
class Contention:
    """Per stage, its :class:`ContentionLaw` (a stage without one runs at its profile's speed),
    and what the simulator reads it at (``reading``, one of :data:`READINGS`)."""

    laws: Mapping[str, ContentionLaw]
    # Per stage, its batches' times in the fitted window over what the law and the drift predict
    # (the profile's p50 × the law's factor × the residual speed): the simulator draws each CPU
    # batch's noise from these instead of the profile's log-normal. Live batch times have a floor
    # and a long tail that a log-normal of the same spread has not: fitted on its upper tail, it
    # ran the LLM's batches 10 % faster in geometric mean, and its p10 0.18 s against 0.25 s live
    # (benchmarks/README.md, "Fidelity: batches as the host runs them"). Empty: the log-normal.
    residuals: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    reading: str = "before"

    def __post_init__(self) -> None:
        _check_reading(self.reading)

    def to_dict(self) -> dict:
        out: dict = {s: {"a": round(law.a, 6), "gamma": round(law.gamma, 6), "batches": law.batches}
                     for s, law in self.laws.items()}
        for s, r in self.residuals.items():
            if s in out:
                out[s]["residuals"] = {"n": len(r), **{f"p{q}": round(float(np.percentile(r, q)), 4)
                                                       for q in (10, 50, 90, 99)}, "mean": round(float(np.mean(r)), 4)}
        return out


def threads_during(starts: np.ndarray, ends: np.ndarray, threads: np.ndarray) -> np.ndarray:
    """Per batch, the busy threads beside it on average over its time: each other batch's threads
    weighted by the share of this batch's time it overlapped. (Read at a batch's start instead,
    a long batch misses the short ones that come and go after it starts: the LLM's slope fell
    from 0.27 to 0.09 a thread that way, benchmarks/README.md.)"""
    starts, ends, threads = (np.asarray(a, dtype=np.float64) for a in (starts, ends, threads))
    out = np.zeros(len(starts))
    for k in range(len(starts)):
        overlap = np.clip(np.minimum(ends, ends[k]) - np.maximum(starts, starts[k]), 0.0, None)
        overlap[k] = 0.0  # not itself
        out[k] = float(overlap @ threads) / max(float(ends[k] - starts[k]), 1e-9)
    return out


def add_busy(busy: np.ndarray, t0: float, t1: float, weight: float) -> None:
    """Spread ``weight`` × overlap of [t0, t1) over per-second bins (the simulator's busy accounts)."""
    i = int(t0)
    while t0 < t1 and i < len(busy):
        nxt = i + 1.0
        busy[i] += weight * ((t1 if t1 < nxt else nxt) - t0)
        t0 = nxt
        i += 1


def beside_from_busy(total: float, own: float, replicas: int) -> float:
    """The busy threads beside a stage's batch, read from a second's busy threads: all of them
    (``total``) but the stage's own (``own``), save those of its other replicas (``own`` ×
    (replicas − 1) / replicas). What the simulator applies a contention law at (the previous
    second's), and what :func:`fit_contention` anchors the law's level on."""
    return total - own + (own * (replicas - 1) / replicas if replicas > 1 else 0.0)


# The grid a pass's busy threads are kept on for the next pass to read (BusyGrid): a fifth of the
# shortest batches the fitted stages run (the CI pipeline's detector, 0.1-0.2 s at batch 1 live,
# benchmarks/README.md "Fidelity: batches as the host runs them").
BUSY_GRID_S = 0.02


class BusyGrid:
    """The busy threads over a finished pass of a simulated run, on a grid of ``step_s``, and
    each item's batch there: what a batch of the next pass reads beside it over its own time
    (:meth:`beside`), the reading a ``"during"`` contention law is fitted on. Kept as cumulative
    thread-seconds at the grid's points, linear in between."""

    def __init__(self, seconds: float, step_s: float = BUSY_GRID_S) -> None:
        self.step_s = float(step_s)
        self._per_bin = np.zeros(int(math.ceil(max(seconds, 0.0) / self.step_s)) + 2)
        self._cum: np.ndarray | None = None
        self._ran: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, starts: np.ndarray, ends: np.ndarray, threads: np.ndarray) -> None:
        """Book batches: ``threads`` each from ``starts`` to ``ends`` (beyond the grid: cut)."""
        if self._cum is not None:
            raise VaripipeError("a busy grid is read-only once read")
        for t0, t1, k in zip(np.asarray(starts, dtype=np.float64).tolist(), np.asarray(ends, dtype=np.float64).tolist(),
                             np.asarray(threads, dtype=np.float64).tolist(), strict=True):
            add_busy(self._per_bin, max(t0, 0.0) / self.step_s, t1 / self.step_s, k * self.step_s)  # in grid steps

    def ran(self, stage: str, starts: np.ndarray, ends: np.ndarray) -> None:
        """Per item of ``stage``: when the batch it ran in started and ended (NaN: it did not run)."""
        self._ran[stage] = (np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64))

    def batch_of(self, stage: str, item: int) -> tuple[float, float] | None:
        """When the batch ``item`` of ``stage`` ran in on this pass started and ended (None: it did not run)."""
        ran = self._ran.get(stage)
        if ran is None or not 0 <= item < len(ran[0]) or math.isnan(ran[0][item]):
            return None
        return float(ran[0][item]), float(ran[1][item])

    def beside(self, t0: float, t1: float, own: tuple[float, float] | None, threads: float) -> float:
        """The busy threads from ``t0`` to ``t1`` beside a batch on ``threads`` threads, on
        average: every batch's but its own, as :func:`threads_during` reads a live one; ``own``
        is when its own ran on this pass (:meth:`batch_of`; its stage's other replicas are beside
        it). (Its stage's threads × (replicas − 1) / replicas, as a second's reading takes them,
        would count half the batch itself beside it with two replicas.)"""
        if self._cum is None:
            self._cum = np.concatenate([[0.0], np.cumsum(self._per_bin)])
        if t1 <= t0:
            return 0.0
        total = (_at(self._cum, t1 / self.step_s) - _at(self._cum, t0 / self.step_s)) / (t1 - t0)
        if own is not None:
            overlap = min(own[1], t1) - max(own[0], t0)
            if overlap > 0:
                total -= threads * overlap / (t1 - t0)
        return max(total, 0.0)


def _at(cum: np.ndarray, x: float) -> float:
    """``cum`` (cumulative, one value per grid point) at fractional grid position ``x``, linear between points."""
    last = len(cum) - 1
    if x >= last:
        return float(cum[last])
    i = int(x)
    return float(cum[i] + (cum[i + 1] - cum[i]) * (x - i))


def threads_before(starts: np.ndarray, ends: np.ndarray, threads: np.ndarray, stages: np.ndarray,
                   replicas: Callable[[str, float], int] | None = None) -> np.ndarray:
    """Per batch, :func:`beside_from_busy` of the second before the one it starts in (0 in the
    first), from every batch's threads spread over the seconds it ran, as the simulator reads it;
    ``replicas(stage, t)``: the stage's replicas then (None: one each)."""
    starts, ends, threads = (np.asarray(a, dtype=np.float64) for a in (starts, ends, threads))
    n = int(max(float(ends.max(initial=0.0)), 0.0)) + 2
    busy = {s: np.zeros(n) for s in set(stages.tolist())}
    for s, t0, t1, k in zip(stages.tolist(), starts, ends, threads, strict=True):
        add_busy(busy[s], max(float(t0), 0.0), float(t1), float(k))
    total = sum(busy.values())
    out = np.zeros(len(starts))
    for j, (s, t0) in enumerate(zip(stages.tolist(), starts, strict=True)):
        i = int(max(t0, 0.0)) - 1
        if i >= 0:
            out[j] = beside_from_busy(float(total[i]), float(busy[s][i]), replicas(s, t0) if replicas else 1)
    return out


@dataclass(frozen=True)
class ContentionFit:
    """A live window read as stages that slow each other (:func:`fit_contention`): the laws, each
    variant's tail against its profiled spread once the laws and the drift are taken out, the
    profile with those tails (``host``: the simulated service times' spread; the policy still
    plans on the profile), and the per-second speed left after the laws (``residual``, ~1 on
    average: for :func:`speed_statistics`)."""

    contention: Contention
    host: Profile
    tails: dict[tuple[str, str], float]
    residual: np.ndarray

    def to_dict(self) -> dict:
        return {"laws": self.contention.to_dict(), "reading": self.contention.reading,
                "tails": {f"{s}/{v}": round(t, 6) for (s, v), t in sorted(self.tails.items())}}


# A stage needs at least this many batches, and some spread in what ran beside them, for its law;
# below that it keeps a flat law at its median speed (gamma 0).
MIN_CONTENTION_BATCHES = 20
MIN_BESIDE_SPREAD = 0.05  # busy threads: the standard deviation of x under which a slope means nothing


def fit_contention(profile: Profile, batches: Sequence[BatchTimes], seconds: int, step_s: int = 10,
                   replicas: Callable[[str, float], int] | None = None, reading: str = "before") -> ContentionFit:
    """Per stage, least squares of log(batch time / the profile's p50 for it) on the busy threads
    beside it over its time (:func:`threads_during`, over every batch of the window, any stage):
    the slope. The level is then anchored on what the simulator reads (``reading``): with
    ``"before"``, the previous second's busy threads beside the stage (:func:`threads_before`,
    ``replicas(stage, t)`` its replicas then): the law at their mean is the batches' geometric mean
    ratio (read over the batch's time, the threads beside run higher than the second before shows:
    batches cluster); with ``"during"`` the simulator reads what the law is fitted on, so the level is
    the least-squares one. Then the residual speed per ``step_s`` (the median over the step's batches of time / what the
    law predicts, held over the step; 1 before the first). ``ended_s`` relative to the window's
    start; batches the profile cannot predict are left out of the fit but still run beside others."""
    _check_reading(reading)
    rows = [(b.stage, t - s, t, busy_threads(b.hardware), s, r)
            for b, ratios in zip(batches, profile_ratios(profile, batches), strict=True)
            for t, s, r in zip(b.ended_s, b.seconds, ratios.tolist(), strict=True)]
    if not rows:
        return ContentionFit(Contention({}, reading=reading), profile, {}, np.ones(max(seconds, 1)))
    stage = np.array([r[0] for r in rows])
    start, end, threads, took, ratio = (np.array([r[i] for r in rows], dtype=np.float64) for i in range(1, 6))
    source = [(b, j) for b in batches for j in range(len(b.sizes))]  # each row's batch
    during = threads_during(start, end, threads)
    beside = during if reading == "during" else threads_before(start, end, threads, stage, replicas)
    ok = np.isfinite(ratio) & (took > 0)
    laws: dict[str, ContentionLaw] = {}
    for s in profile.stages:
        m = ok & (stage == s)
        if not m.any():
            continue
        x, y = during[m], np.log(ratio[m])
        if m.sum() >= MIN_CONTENTION_BATCHES and x.std() >= MIN_BESIDE_SPREAD:
            (_, gamma), *_ = np.linalg.lstsq(np.vstack([np.ones_like(x), x]).T, y, rcond=None)
            a = float(y.mean() - gamma * beside[m].mean())
        else:
            a, gamma = float(np.median(y)), 0.0
        laws[s] = ContentionLaw(float(a), float(gamma), int(m.sum()))
    fitted = [k for k in np.flatnonzero(ok) if str(stage[k]) in laws]
    residual = held_medians(end[fitted].tolist(),
                            [float(ratio[k]) / laws[str(stage[k])].factor(float(beside[k])) for k in fitted],
                            seconds, step_s)
    # The tails as fit_host reads them: on batch times with the law's factor and the drift taken out.
    steady = []
    left: dict[str, list[float]] = {}  # per stage: what the law and the drift leave of each batch
    for k in np.flatnonzero(ok):
        law = laws.get(str(stage[k]))
        if law is None:
            continue
        b, j = source[k]
        div = law.factor(float(beside[k])) * float(residual[min(max(int(end[k]), 0), len(residual) - 1)])
        steady.append(BatchTimes(b.stage, b.variant, b.hardware, (b.sizes[j],), (b.seconds[j] / div,),
                                 (b.ended_s[j],), (b.tokens[j],)))
        left.setdefault(b.stage, []).append(float(ratio[k] / div))
    residuals = {s: tuple(v) for s, v in left.items() if len(v) >= MIN_CONTENTION_BATCHES}
    from varipipe.adapter.calibration import CalibrationSettings, Calibrator, calibrate

    spread = Calibrator(profile, CalibrationSettings(half_life_s=_NO_DECAY_S, dead_band=0.0, z=0.0))
    spread.add(steady)
    tails = {(c.stage, c.variant): c.tail for c in spread.calibration(float(seconds)).corrections if c.tail > 1.0}
    return ContentionFit(Contention(laws, residuals, reading), calibrate(profile, {}, tails=tails), tails, residual)


