"""Configurations of a stage and what each costs (DESIGN §5, collapsed formulation).

A configuration k of stage s is (variant, batch b, hardware), hardware ``cpu:t``
(t cores) or ``gpu:<model>``. Given the stage's arrival rate ``λ_s`` every
quantity the program needs is a constant of k:

    n_k = ceil(λ_s / (ρ_max · h_k))          cheapest replica count with headroom (and the
                                             counts at ``_table.UTILISATION_LEVELS``, each a row)
    w_k = min((b − 1) · n_k / λ_s, w_max)    batch-formation wait (the timeout set)
    q_k = the batch's wait for its replica   at the SLA's percentile (``queueing``)
    latency_k = l_k (p99 of a batch of b) + w_k + q_k
    busy_k   = λ_s · l̄_k / b                 seconds of its hardware busy per second
    cost_k   = p_k · n_k                     reserved: p_k = records.replica_price
             = p_k · busy_k                  shared: the busy seconds at the same price

``records.replica_price`` is the one price of a replica, in cores: ``cpu:t`` costs
t, any ``gpu:<model>`` costs ``GPU_REPLICA_PRICE_CORES``; the simulator and the
experiment runner count cost with it too. What bounds a decision:

* ``reserved`` (a cluster): each CPU replica holds its cores, Σ t_k·n_k ≤
  ``cluster_cores`` (``cluster_capacity``); each GPU replica holds one whole GPU,
  Σ n_k ≤ ``cluster_gpus`` (``gpu_count``), and its peak memory at batch b (the
  profile's ``memory_mb`` of a GPU point: weights plus activations) must fit one
  GPU's ``gpu_memory_mb``. A replica's profiled throughput is that of a GPU it
  has alone, so reserved mode never plans two replicas on one GPU.
* ``shared`` (one host): replicas share the host's cores, Σ t_k·busy_k ≤ ρ_max ·
  ``cluster_cores`` of CPU time (``cluster_capacity``), and the host's GPUs the
  same way: a GPU is shared by the replicas placed on it (fractional GPUs, several
  replicas per GPU), so the limit is GPU busy time, Σ busy_k ≤ ρ_max ·
  ``cluster_gpus`` (``gpu_time``), and their memory together, Σ n_k·memory_k ≤
  ``cluster_gpus`` · ``gpu_memory_mb`` (``gpu_memory``; exact for one GPU, and with
  several a necessary condition: the sum does not check that each GPU's share of
  the replicas fits it). Each replica must fit one GPU as well.

A GPU replica's host-side work (decoding, tokenising) is not counted against the
cores, and the profile's GPU memory (``torch.cuda.max_memory_allocated``) leaves out
the CUDA context of each replica process.

Fan-out: ``profile.fanout[s]`` is the mean number of items stage s processes per
item of the stage before it (crops per image), so ``λ_s = λ_{s−1} · fanout[s]``
with ``λ_{-1}`` the pipeline's arrival rate; a stage without an entry has 1.

The pricing itself is vectorised in :mod:`varipipe.adapter._table`; this module
holds the records and the rules. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from varipipe.errors import UnknownNameError
from varipipe.records import Profile

__all__ = [
    "COST_MODES",
    "ACCURACY_MODES",
    "OBJECTIVES",
    "DEFAULT_COST_MODE",
    "DEFAULT_CLUSTER_CORES",
    "default_max_replicas",
    "is_gpu",
    "profile_gpu_memory_mb",
    "Limits",
    "Weights",
    "Configuration",
    "stage_loads",
    "stage_configurations",
    "accuracy_term",
    "combine_accuracy",
    "within_stage_limits",
    "NO_COST_CEILING",
]

COST_MODES = ("shared", "reserved")
ACCURACY_MODES = ("multiply", "sum", "average")
OBJECTIVES = ("weighted", "min-cost", "max-accuracy")
# The max_cost of a max-accuracy objective that no ceiling bounds: finite (the solvers need
# numbers) and above any cluster's cost, so only the capacity constraint binds.
NO_COST_CEILING = 1e9

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



def is_gpu(hardware: str) -> bool:
    """``gpu:<model>`` labels (the profiler's, ``profile --gpu``)."""
    return hardware.partition(":")[0] == "gpu"


def profile_gpu_memory_mb(profile: Profile) -> float | None:
    """One GPU's memory (MiB) as the GPU profiler recorded it (``metadata.device.gpu_memory_mib``),
    or None: the default for ``Limits.gpu_memory_mb`` when the profile was measured on a GPU."""
    device = profile.metadata.get("device")
    value = device.get("gpu_memory_mib") if isinstance(device, Mapping) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


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
    cluster_gpus: int = 0  # GPUs a decision may use (module docstring: reserved vs shared)
    gpu_memory_mb: float | None = None  # one GPU's memory, MiB; needed when cluster_gpus > 0

    def __post_init__(self) -> None:
        if self.cost_mode not in COST_MODES:
            raise ValueError(f"cost_mode must be one of {COST_MODES}, got {self.cost_mode!r}")
        if not (self.cluster_cores > 0 and math.isfinite(self.cluster_cores)):
            raise ValueError(f"cluster_cores must be a finite number > 0, got {self.cluster_cores!r}")
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
        if not isinstance(self.cluster_gpus, int) or self.cluster_gpus < 0:
            raise ValueError(f"cluster_gpus must be an integer >= 0, got {self.cluster_gpus!r}")
        if self.gpu_memory_mb is not None and not (self.gpu_memory_mb > 0 and math.isfinite(self.gpu_memory_mb)):
            raise ValueError(f"gpu_memory_mb must be a number of MiB > 0, got {self.gpu_memory_mb!r}")
        if self.cluster_gpus > 0 and self.gpu_memory_mb is None:
            raise ValueError(f"cluster_gpus={self.cluster_gpus} needs gpu_memory_mb (one GPU's memory, MiB)")

    @property
    def capacity_limit(self) -> float:
        """Bound on the CPU replicas' use: reserved cores, or ρ_max · cores of CPU time when shared."""
        if self.cost_mode == "reserved":
            return self.cluster_cores
        return self.rho_max * self.cluster_cores

    @property
    def gpu_limit(self) -> float:
        """Bound on the GPU replicas' use: GPUs reserved, or ρ_max · GPUs of GPU time when shared."""
        if self.cost_mode == "reserved":
            return float(self.cluster_gpus)
        return self.rho_max * self.cluster_gpus

    @property
    def gpu_memory_limit(self) -> float:
        """Bound on the GPU replicas' memory together (shared mode), MiB."""
        return self.cluster_gpus * (self.gpu_memory_mb or 0.0)


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
    memory_mb: float = 0.0  # a replica's peak memory at this batch (on a GPU: GPU memory)
    queue_wait_s: float = 0.0  # a formed batch's wait for its replica at the SLA's percentile (queueing)

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.stage, self.variant, self.batch, self.hardware)

    @property
    def latency_s(self) -> float:
        """What this stage adds to the end-to-end p99: batch latency, batch wait and queueing wait."""
        return self.latency_p99_s + self.batch_wait_s + self.queue_wait_s

    @property
    def capacity_rps(self) -> float:
        """Items/s this stage can take at ρ_max with its replicas (before the cap)."""
        return self.throughput_rps * self.replicas

    @property
    def on_gpu(self) -> bool:
        return is_gpu(self.hardware)

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


def stage_configurations(profile: Profile, stage: str, load_rps: float, limits: Limits) -> list[Configuration]:
    """Every configuration of ``stage`` at stage load ``load_rps``, pins and hardware applied.

    Includes configurations outside the per-stage limits (more than ``max_replicas``,
    a fixed replica count that cannot carry the load, a GPU replica larger than one
    GPU); :func:`within_stage_limits` tells them apart, so explanations can say why
    they were not chosen.
    """
    from varipipe.adapter._table import stage_rows

    if stage not in profile.stages:
        raise UnknownNameError("stage in profile " + repr(profile.pipeline), stage, profile.stages)
    return list(stage_rows(profile, limits)[stage].at(load_rps, limits))


def within_stage_limits(c: Configuration, limits: Limits) -> bool:
    """True when the configuration carries its load within the replica cap and, on a GPU,
    a replica fits one GPU's memory."""
    if c.replicas > limits.max_replicas:
        return False
    if c.on_gpu and limits.gpu_memory_mb is not None and c.memory_mb > limits.gpu_memory_mb:
        return False
    return limits.rho_max * c.throughput_rps * c.replicas >= c.load_rps * (1 - _CEIL_EPS)
