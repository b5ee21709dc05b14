"""Configurations of a stage and what each costs (DESIGN §5, collapsed formulation).

A configuration k of stage s is (variant, batch b, hardware). Given the stage's
arrival rate ``λ_s`` every quantity the program needs is a constant of k:

    n_k = ceil(λ_s / (ρ_max · h_k))          cheapest replica count with headroom
    w_k = min((b − 1) · n_k / λ_s, w_max)    batch-formation wait (the timeout set)
    latency_k = l_k (p99 of a batch of b) + w_k
    cost_k   = c_k · n_k                     (reserved: c_k = records.replica_price, cores or a GPU's price)
             = λ_s · t_k · l̄_k / b           (shared: CPU-seconds per second)

Fan-out: ``profile.fanout[s]`` is the mean number of items stage s processes per
item of the stage before it (crops per image), so ``λ_s = λ_{s−1} · fanout[s]``
with ``λ_{-1}`` the pipeline's arrival rate; a stage without an entry has 1.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from varipipe.adapter.latency_model import fit_latency_model
from varipipe.errors import UnknownNameError
from varipipe.records import Profile, ProfilePoint, hardware_cores, replica_price

__all__ = [
    "COST_MODES",
    "ACCURACY_MODES",
    "OBJECTIVES",
    "DEFAULT_COST_MODE",
    "DEFAULT_CLUSTER_CORES",
    "default_max_replicas",
    "Limits",
    "Weights",
    "Configuration",
    "stage_loads",
    "stage_configurations",
    "accuracy_term",
    "combine_accuracy",
]

COST_MODES = ("shared", "reserved")
ACCURACY_MODES = ("multiply", "sum", "average")
OBJECTIVES = ("weighted", "min-cost", "max-accuracy")

# Utilisation ceiling per replica: 20 % headroom keeps queueing delay small
# (an M/D/1 queue's wait grows as ρ/(1−ρ); at 0.8 it is 2 service times).
DEFAULT_RHO_MAX = 0.8
# Largest batch-formation timeout a decision may set per stage. Ray Serve's own
# @serve.batch default is 0.01 s; we allow 0.1 s so medium batches can fill at
# moderate load, and count every second of it in the latency constraint.
DEFAULT_MAX_BATCH_WAIT_S = 0.1
# The capacity limit when none is given: the 2-core host this project is built and
# measured on (DESIGN §5: on it only shared mode makes a three-stage decision feasible).
DEFAULT_COST_MODE = "shared"
DEFAULT_CLUSTER_CORES = 2.0


def default_max_replicas(cluster_cores: float) -> int:
    """The replica cap per stage when none is given: the cluster's whole cores (at least 1).
    Reserved, a CPU replica holds at least one core, so no stage can use more; shared,
    replicas share the host's cores and more replicas than cores add no capacity."""
    return max(1, int(cluster_cores))

# Default cap on one solver call; CBC / HiGHS return their incumbent after it.
DEFAULT_TIME_LIMIT_S = 10.0
# Guard against ceil(2.0000000001) = 3 from float noise in λ/(ρ·h).
_CEIL_EPS = 1e-9


@dataclass(frozen=True)
class Limits:
    """The capacity limit and the operator's constraints on a decision."""

    cost_mode: str = DEFAULT_COST_MODE
    cluster_cores: float = DEFAULT_CLUSTER_CORES
    max_replicas: int | None = None  # None: default_max_replicas(cluster_cores)
    rho_max: float = DEFAULT_RHO_MAX
    max_batch_wait_s: float = DEFAULT_MAX_BATCH_WAIT_S
    batch_sizes: tuple[int, ...] | None = None  # None: the batch sizes the profile measured
    hardware: tuple[str, ...] | None = None  # None: every hardware label in the profile
    pinned: Mapping[str, str] = field(default_factory=dict)  # stage -> variant
    fixed_replicas: Mapping[str, int] = field(default_factory=dict)  # stage -> replicas (rim)
    time_limit_s: float = DEFAULT_TIME_LIMIT_S

    def __post_init__(self) -> None:
        if self.cost_mode not in COST_MODES:
            raise ValueError(f"cost_mode must be one of {COST_MODES}, got {self.cost_mode!r}")
        if not self.cluster_cores > 0:
            raise ValueError(f"cluster_cores must be > 0, got {self.cluster_cores!r}")
        if self.max_replicas is None:
            object.__setattr__(self, "max_replicas", default_max_replicas(self.cluster_cores))
        if not isinstance(self.max_replicas, int) or self.max_replicas < 1:
            raise ValueError(f"max_replicas must be an integer >= 1, got {self.max_replicas!r}")
        if not 0 < self.rho_max <= 1:
            raise ValueError(f"rho_max must be in (0, 1], got {self.rho_max!r}")
        if self.max_batch_wait_s < 0:
            raise ValueError(f"max_batch_wait_s must be >= 0, got {self.max_batch_wait_s!r}")
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise ValueError(f"batch_sizes must be non-empty positive integers, got {self.batch_sizes!r}")
        for stage, n in self.fixed_replicas.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"fixed_replicas[{stage!r}] must be an integer >= 1, got {n!r}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s!r}")

    @property
    def capacity_limit(self) -> float:
        """Bound on Σ cost: reserved cores, or ρ_max · cores of CPU time when shared."""
        if self.cost_mode == "reserved":
            return self.cluster_cores
        return self.rho_max * self.cluster_cores


# Objective weights: one percentage point of end-to-end accuracy (≈ 0.01 in log
# space) is worth one reserved core (or one CPU-second per second); the batch term
# only breaks ties towards smaller batches (shorter tails at equal cost).
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 0.01
DEFAULT_GAMMA = 1e-4


@dataclass(frozen=True)
class Weights:
    """``max α·Σ acc_term − β·Σ cost − γ·Σ batch`` (DESIGN §5)."""

    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    gamma: float = DEFAULT_GAMMA


@dataclass(frozen=True)
class Configuration:
    """One (variant, batch, hardware) of a stage, priced at the stage's load."""

    stage: str
    variant: str
    batch: int
    hardware: str
    latency_p99_s: float  # p99 latency of one batch of ``batch`` items
    latency_mean_s: float
    throughput_rps: float  # items/s per replica at saturation
    accuracy: float
    load_rps: float  # λ_s
    replicas: int
    batch_wait_s: float
    cost: float
    interpolated: bool = False  # batch size priced by the fitted latency model

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.stage, self.variant, self.batch, self.hardware)

    @property
    def latency_s(self) -> float:
        """What this stage adds to the end-to-end p99: batch latency plus batch wait."""
        return self.latency_p99_s + self.batch_wait_s

    @property
    def capacity_rps(self) -> float:
        """Items/s this stage can take at ρ_max with its replicas (before the cap)."""
        return self.throughput_rps * self.replicas

    def label(self) -> str:
        return f"{self.variant} b={self.batch} x{self.replicas} {self.hardware}"


def stage_loads(profile: Profile, load_rps: float) -> dict[str, float]:
    """λ_s for every stage: the upstream rate times the stage's fan-out."""
    loads: dict[str, float] = {}
    rate = load_rps
    for stage in profile.stages:
        rate *= profile.fanout.get(stage, 1.0)
        loads[stage] = rate
    return loads


def accuracy_term(accuracy: float, mode: str, n_stages: int) -> float:
    """A configuration's additive contribution to the end-to-end accuracy metric."""
    if mode == "multiply":
        return math.log(accuracy)
    if mode == "sum":
        return accuracy
    if mode == "average":
        return accuracy / n_stages
    raise ValueError(f"accuracy mode must be one of {ACCURACY_MODES}, got {mode!r}")


def combine_accuracy(accuracies: list[float], mode: str) -> float:
    """End-to-end accuracy of a whole decision under ``mode``."""
    if mode == "multiply":
        return math.prod(accuracies)
    if mode == "sum":
        return sum(accuracies)
    if mode == "average":
        return sum(accuracies) / len(accuracies)
    raise ValueError(f"accuracy mode must be one of {ACCURACY_MODES}, got {mode!r}")


@dataclass(frozen=True)
class _Priced:
    """A profile point or a latency-model estimate, before load is applied."""

    variant: str
    batch: int
    hardware: str
    p99: float
    mean: float
    throughput: float
    accuracy: float
    interpolated: bool


def _group_points(points: tuple[ProfilePoint, ...]) -> dict[tuple[str, str], dict[int, ProfilePoint]]:
    groups: dict[tuple[str, str], dict[int, ProfilePoint]] = {}
    for p in points:
        groups.setdefault((p.variant, p.hardware), {})[p.batch] = p
    return groups


def _priced_group(variant: str, hardware: str, by_batch: dict[int, ProfilePoint], accuracy: float,
                  batch_sizes: tuple[int, ...] | None) -> list[_Priced]:
    measured = sorted(by_batch)
    wanted = sorted(set(batch_sizes)) if batch_sizes is not None else measured
    out: list[_Priced] = []
    missing = [b for b in wanted if b not in by_batch and measured[0] <= b <= measured[-1]]
    for b in wanted:
        if b in by_batch:
            p = by_batch[b]
            out.append(_Priced(variant, b, hardware, p.latency_p99_s, p.mean_latency_s,
                               p.throughput_rps, accuracy, False))
    if missing and len(measured) >= 2:
        pts = [by_batch[b] for b in measured]
        p99 = fit_latency_model(measured, [p.latency_p99_s for p in pts])
        mean = fit_latency_model(measured, [p.mean_latency_s for p in pts])
        for b in missing:
            m = mean.latency(b)
            out.append(_Priced(variant, b, hardware, max(p99.latency(b), m), m, b / m, accuracy, True))
    return sorted(out, key=lambda q: q.batch)


def _price(stage: str, q: _Priced, load: float, limits: Limits) -> Configuration:
    fixed = limits.fixed_replicas.get(stage)
    if fixed is not None:
        n = fixed
    else:
        n = max(1, math.ceil(load / (limits.rho_max * q.throughput) - _CEIL_EPS))
    if q.batch <= 1:
        wait = 0.0
    elif load <= 0:
        wait = limits.max_batch_wait_s
    else:
        wait = min((q.batch - 1) * n / load, limits.max_batch_wait_s)
    if limits.cost_mode == "reserved":
        cost = replica_price(q.hardware) * n
    else:
        cost = load * hardware_cores(q.hardware) * q.mean / q.batch
    return Configuration(stage, q.variant, q.batch, q.hardware, q.p99, q.mean, q.throughput,
                         q.accuracy, load, n, wait, cost, q.interpolated)


def stage_configurations(profile: Profile, stage: str, load_rps: float, limits: Limits) -> list[Configuration]:
    """Every configuration of ``stage`` at stage load ``load_rps``, pins and hardware applied.

    Includes configurations that need more than ``max_replicas`` (or whose fixed
    replica count cannot carry the load); :func:`within_replica_limit` tells them
    apart, so explanations can say why they were not chosen.
    """
    points = profile.for_stage(stage)
    if not points:
        raise UnknownNameError("stage in profile " + repr(profile.pipeline), stage, profile.stages)
    pinned = limits.pinned.get(stage)
    if pinned is not None and pinned not in {p.variant for p in points}:
        raise UnknownNameError(f"variant of stage {stage!r} (pinned)", pinned, sorted({p.variant for p in points}))
    configs = []
    for (variant, hardware), by_batch in _group_points(points).items():
        if pinned is not None and variant != pinned:
            continue
        if limits.hardware is not None and hardware not in limits.hardware:
            continue
        for q in _priced_group(variant, hardware, by_batch, profile.variant_accuracy(stage, variant),
                               limits.batch_sizes):
            configs.append(_price(stage, q, load_rps, limits))
    return configs


def within_replica_limit(c: Configuration, limits: Limits) -> bool:
    """True when the configuration carries its load within the replica cap."""
    if c.replicas > limits.max_replicas:
        return False
    return limits.rho_max * c.throughput_rps * c.replicas >= c.load_rps * (1 - _CEIL_EPS)


__all__ += ["within_replica_limit"]
