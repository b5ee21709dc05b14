"""Discrete-event simulator of a served pipeline under a policy (pure, fast).

Every request is an entity: its arrival, the batch it joined at each stage, and
its completion or drop are recorded (:class:`RequestTable`). Each stage has
replicas pulling batches from the stage's FIFO queue: a free replica starts a
batch when ``batch`` items wait or the first waiting item has waited
``batch_wait_s``, whichever comes first; the batch then takes a time drawn from
the profiled latency distribution of (variant, batch, hardware)
(:mod:`varipipe.loadgen.service`). A stage may fan out: a request becomes ``k``
items there (``k`` around ``profile.fanout[stage]``), and moves on when its last
item is done. A request whose deadline (arrival + SLA) would pass before the
batch that would take it is expected to finish is shed (dropped), by the same
rule and moving average of batch times as the live stages (:mod:`varipipe.admission`);
with ``routing="replica"`` each replica keeps its own average, as each live replica does.

Every ``interval_s`` the simulator builds an :class:`Observation`, asks the
forecaster for the next interval's load and steps the live adapter's
:class:`~varipipe.adapter.loop.ControlLoop` with them: the same ``Policy``
objects and the same rules for when a decision is applied (a batch-wait change
alone is not; capacity is given back only after the hysteresis). Ray's own
autoscaler (policy ``ray``) runs without that loop, as it does live, and on its
own control period (``RayPolicy.control_period_s``, 1 s) rather than ``interval_s``. An
applied decision takes effect after the reconfiguration delays measured on Ray
Serve (below).

Online calibration (``adapter.calibration``), as live: every batch that ended in
an interval goes into that interval's :class:`Observation` (``batches``); the
run's :class:`~varipipe.adapter.calibration.Calibrator` takes them and the
control loop hands the policy the corrected profile (``SimConfig.calibration``,
on by default as in ``serve``). The host's speed may move: ``SimConfig.host_speed``
(:mod:`varipipe.loadgen.hostspeed`) multiplies every CPU batch's service time by
the host's slowness in the second the batch starts (a GPU batch's time is the
GPU's: the series models the host's cores).

How replicas get their work (``SimConfig.routing``): by default (``"central"``) a stage
has one line, and a free replica takes its next batch from its head. Live, Serve's router
sends each request to a replica as it arrives (power of two choices: the one with fewer
requests queued or running; with two replicas, both are asked) and the replica batches
from its own line (``"replica"``). The difference shows at load: items an upstream batch
releases together go to different replicas and run as batches of one, where a central
line batches them (vision-caption-ci at 80 % of capacity: the LLM ran 10 % of its batches
at size 2 live, 34 % in a central line, 11 % routed). Routed, an arrival that finds every
replica at its ``max_ongoing_requests`` waits in the ingress's gate until a batch ends,
and a removed replica drains its line before it goes. A replica forms its batches as
``@serve.batch`` does (Ray 2.60): the next batch is formed while one runs, closing when
``batch`` items are there or ``batch_wait_s`` after the batcher took its first item,
and each of its items is judged against its deadline when the batch starts.

Time advances in segments in which every configuration is fixed; within a
segment stages are processed in pipeline order, which is exact because a batch
that starts inside a segment depends only on arrivals before its start. In
``shared`` cost mode all replicas share the host's cores (processor sharing):
during each ``SHARED_SLICE_S`` slice every batch runs slower by
``max(1, busy threads / cores)`` of the previous slice (a mean-field
approximation with one slice of lag). A neighbour's busy threads
(``SimConfig.neighbours``, a CPU hog at nice 0) take their cores ahead of the
replicas and leave them the rest; they are not the run's cost. Below saturation
the stages still slow each other live (caches, memory bandwidth, the serving path's
threads, moments when more threads are runnable than there are cores); with
``SimConfig.contention`` (:func:`~varipipe.loadgen.hostspeed.fit_contention`, fitted on a
live window) each CPU batch's time is its stage's law at the busy threads beside it in
place of that slowdown (never less than processor sharing at the law's own speed), with
its noise drawn from what the law left of the window's batches (``Contention.residuals``)
in place of the profile's log-normal. Live,
the law is fitted on the threads a batch had beside it over its whole time; a batch's
time cannot wait for what starts after it, so the simulator reads the expected value of
that, the mean-field way: the previous slice's busy threads of the other stages and of
the stage's other replicas (its own busy threads × (replicas − 1) / replicas). A law read
``"during"`` (``Contention.reading``) is read over each batch's own time instead, off the
batches of the previous of ``CONTENTION_PASSES`` passes of the whole run (a fixed point:
:class:`~varipipe.loadgen.hostspeed.BusyGrid`), every batch but the batch itself beside it.
A reconfiguration adds its own CPU there over its delay (``ChangeCpu``, measured on
Ray Serve): what runs at nice 0 (a new Ray worker, Serve's controller, the applier)
as a neighbour, and as threads beside a batch under a contention law; its model load
as busy threads; all of it is the run's cost. In ``reserved`` mode each replica owns
its cores.

GPU configurations (``gpu:<model>``) take their batch times from the profile's
GPU points like any other. In ``reserved`` mode a GPU replica owns its GPU; in
``shared`` mode the replicas on GPUs share the run's ``cluster_gpus`` as CPU
replicas share the cores (their busy GPU-seconds, not the cores, slow them down),
as the optimizer plans them (``adapter.configurations``). A GPU replica must warm
up before it serves (load, first calls, an LLM's compilation): a replica start or
a switch onto a GPU takes the replica process's start plus the profiled
``cold_start_s``, and a batch-size change the warm-up the profile timed at the new
size (``Profile.replica_start``, what the GPU profiler records); without that
record, the CPU delays.
Cost counts a GPU at ``records.replica_price``: its price per replica reserved,
and per busy second in shared mode.
"""

from __future__ import annotations

import copy
import heapq
import math
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varipipe.adapter.calibration import Calibrator, make_calibrator
from varipipe.adapter.configurations import DEFAULT_CLUSTER_CORES, DEFAULT_COST_MODE, is_gpu
from varipipe.adapter.loop import ControlLoop
from varipipe.adapter.policy import DEFAULT_INTERVAL_S, Forecast, Policy, delegates_to_ray
from varipipe.admission import (
    COLD_BATCHES,
    after_batch,
    fresh_estimate,
    in_force,
    max_ongoing_for,
    would_miss,
)
from varipipe.errors import VaripipeError
from varipipe.loadgen.hostspeed import (
    BusyGrid,
    Contention,
    ContentionLaw,
    HostSpeed,
    Neighbour,
    add_busy,
    beside_from_busy,
)
from varipipe.loadgen.service import ServiceModel, service_model
from varipipe.observation import HISTORY_S, StageCounters, StageState, observe
from varipipe.records import (
    GPU_REPLICA_PRICE_CORES,
    ROUTINGS,
    BatchTimes,
    Decision,
    Observation,
    Profile,
    StageDecision,
    replica_price,
)

__all__ = [
    "RunMetrics",
    "cost_unit",
    "SimConfig",
    "SimResult",
    "SimSeries",
    "RequestTable",
    "simulate",
    "predictor_forecaster",
    "Forecaster",
    "REPLICA_ADD_S",
    "REPLICA_REMOVE_S",
    "BATCH_CHANGE_S",
    "VARIANT_SWITCH_S",
    "REPLICA_PROCESS_S",
    "ChangeCpu",
    "REPLICA_START_CPU",
    "VARIANT_SWITCH_CPU",
]

# Reconfiguration delays, docs/ray-serve-facts.md ("Which call changes what"),
# measured on Ray Serve 2.60 on this machine kind:
REPLICA_ADD_S = 3.0  # declarative num_replicas up: new replica RUNNING after ~3.0 s
REPLICA_REMOVE_S = 2.3  # num_replicas down: replica gone after 2.3 s (it keeps serving meanwhile)
BATCH_CHANGE_S = 0.8  # user_config with batch settings, set_max_batch_size in reconfigure(): 0.8 s
USER_CONFIG_S = 0.4  # a plain user_config change reaches live replicas in 0.4 s
MODEL_LOAD_S = 2.0  # "2.4 s with a 2 s model load": the load measured there
VARIANT_SWITCH_S = USER_CONFIG_S + MODEL_LOAD_S  # variant switch = reconfigure + model load
# A replica process before its model load: a GPU replica then spends its profiled cold start.
REPLICA_PROCESS_S = REPLICA_ADD_S - MODEL_LOAD_S


@dataclass(frozen=True)
class ChangeCpu:
    """CPU-seconds one change burns on the host while it takes effect (shared mode only: the
    cores serving replicas run on), split by where it runs: ``ahead_s`` ahead of the stages'
    nice-10 threads (nice 0: a new Ray worker process before its replica lowers itself, Serve's
    controller, the applier polling it), ``level_s`` at their level (the model load)."""

    ahead_s: float
    level_s: float


# Measured by benchmarks/replica_start_cpu.py on Ray Serve 2.60 with the flagship (vision-caption,
# results/replica_start_cpu_flagship.json, the applier's growing polls, medians of 2 per stage):
# a new replica 1.7-1.9 CPU-s, 1.45-1.46 of it ahead of the stages idle and 1.44-1.59 under load,
# 0.20-0.45 at their level (its model load); a switch 0.43-0.50 per replica, 0.32-0.39 ahead.
REPLICA_START_CPU = ChangeCpu(ahead_s=1.5, level_s=0.3)
VARIANT_SWITCH_CPU = ChangeCpu(ahead_s=0.35, level_s=0.1)

# Processor-sharing slice in shared mode: the slowdown factor is refreshed every second.
SHARED_SLICE_S = 1.0
# A contention law read "during" a batch (Contention.reading) is read off the previous pass of the
# run: the run is simulated this many times, the first with the previous second's reading, each
# later one reading the batches of the one before (a fixed point; benchmarks/README.md, "Fidelity:
# the law read where it was fitted", has how the figures settle with passes).
CONTENTION_PASSES = 3
# A batch whose item did not run on the previous pass reads the law over its time at the law's
# floor, then at the factor read over that (two rounds); one whose item ran there reads it over
# as long as that batch took.
DURING_ROUNDS = 2
# A stage replica's share of a core contested by threads at nice 0 (a neighbour): its threads
# run at nice STAGE_NICE (10), weight 110 against 1024 for nice 0
# (kernel/sched/core.c sched_prio_to_weight): 110 / (110 + 1024).
STAGE_SHARE_CONTESTED = 110 / (110 + 1024)
# Draws per refill of a stage's service-time noise buffer.
_NOISE_CHUNK = 1 << 16
# After the last arrival, keep simulating this many SLAs for queues to drain;
# whatever is still unfinished then is counted as dropped.
DRAIN_SLAS = 10.0

Forecaster = Callable[[float, np.ndarray], Forecast]


@dataclass(frozen=True)
class SimConfig:
    """Run settings: SLA, control interval, cost mode and cluster size, seed."""

    sla_s: float
    interval_s: float = DEFAULT_INTERVAL_S
    cost_mode: str = DEFAULT_COST_MODE
    cluster_cores: float = DEFAULT_CLUSTER_CORES
    seed: int = 0
    shed_late: bool = True  # deadline admission control, as live (varipipe.admission)
    # Fixed per-request serving overhead (HTTP, ingress decoding, stage hops) that the
    # profile's stage latencies do not contain, added to every completed request's
    # latency (and taken off the stages' shedding deadline). 0 = none;
    # benchmarks/fidelity.py fits it live on a calibration window.
    overhead_s: float = 0.0
    cluster_gpus: int = 0  # GPUs the host shares among GPU replicas (shared mode)
    # Online calibration of the profile from the batches run, as live (adapter.calibration);
    # False: --no-calibration. ``calibration_settings``: CalibrationSettings fields to override.
    calibration: bool = True
    calibration_settings: Mapping[str, Any] = field(default_factory=dict)
    # The host's slowness over the run (a multiplier on service times per second); None: steady.
    host_speed: HostSpeed | None = None
    # Other processes' busy threads on the host (a CPU hog), before the replicas: shared mode only.
    neighbours: tuple[Neighbour, ...] = ()
    # The stages slowing each other below saturation (hostspeed.fit_contention): each CPU batch's
    # time times its stage's law at the previous slice's busy threads beside it; shared mode only.
    contention: Contention | None = None
    # How a stage's replicas get their work: "central", one FIFO line per stage that any free
    # replica takes its next batch from; "replica", as Serve routes live (module docstring).
    routing: str = "central"
    # When the policy first decides. 0: at the start, on a warm-start forecast (the first
    # interval's mean load), in force at once, the same for every policy. > 0: as a live
    # ``serve`` starts: the run's ``initial`` decision (the spec's default) serves from the
    # start, and the loop first decides this many seconds in, on its forecaster, its changes
    # taking their delays as any later ones (the live loop ticks at a phase of its own).
    first_decision_s: float = 0.0

    def __post_init__(self) -> None:
        if self.cost_mode not in ("shared", "reserved"):
            raise VaripipeError(f"cost mode must be 'shared' or 'reserved', got {self.cost_mode!r}")
        if self.neighbours and self.cost_mode != "shared":
            raise VaripipeError("neighbours share the host's cores: they need cost mode 'shared' (in 'reserved' "
                                "mode each replica owns its cores)")
        if self.routing not in ROUTINGS:
            raise VaripipeError(f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        if self.contention is not None and self.cost_mode != "shared":
            raise VaripipeError("a contention law models replicas sharing the host's cores: it needs cost mode "
                                "'shared' (in 'reserved' mode each replica owns its cores)")
        if not isinstance(self.cluster_gpus, int) or self.cluster_gpus < 0:
            raise VaripipeError(f"cluster_gpus must be an integer >= 0, got {self.cluster_gpus!r}")
        if not (self.first_decision_s >= 0 and math.isfinite(self.first_decision_s)):
            raise VaripipeError(f"first_decision_s must be a number >= 0, got {self.first_decision_s!r}")
        if not (self.overhead_s >= 0 and math.isfinite(self.overhead_s)):
            raise VaripipeError(f"overhead_s must be a number >= 0, got {self.overhead_s!r}")
        for name in ("sla_s", "interval_s", "cluster_cores"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise VaripipeError(f"{name} must be a positive number, got {v!r}")


@dataclass(frozen=True, eq=False)
class RequestTable:
    """Per-request and per-stage entity records (numpy arrays, one row per request / item)."""

    arrival_s: np.ndarray
    done_s: np.ndarray  # NaN when dropped
    dropped: np.ndarray  # bool
    accuracy: np.ndarray  # end-to-end (product over stages); NaN when dropped
    stage_names: tuple[str, ...]
    item_parent: tuple[np.ndarray, ...]  # per stage: the request of each item
    item_arrival_s: tuple[np.ndarray, ...]  # per stage: when each item entered the stage (NaN: never)
    item_done_s: tuple[np.ndarray, ...]
    item_batch: tuple[np.ndarray, ...]  # per stage: the batch each item joined (-1: none)

    @property
    def latency_s(self) -> np.ndarray:
        return self.done_s - self.arrival_s


@dataclass(frozen=True, eq=False)
class SimSeries:
    """Per-second series (index = second from the start; by arrival second where per request)."""

    arrivals: np.ndarray
    within_sla: np.ndarray
    dropped: np.ndarray
    accuracy_sum: np.ndarray  # sum of end-to-end accuracy of completed requests
    completed: np.ndarray
    cost: np.ndarray  # cost mode's unit, averaged over the second
    predicted_rps: np.ndarray
    replicas: np.ndarray  # total replicas provisioned
    p99_latency_s: np.ndarray  # p99 over requests arriving in the second's control interval

    @property
    def sla_attainment(self) -> np.ndarray:
        return np.divide(self.within_sla, self.arrivals, out=np.ones(len(self.arrivals)), where=self.arrivals > 0)

    @property
    def mean_accuracy(self) -> np.ndarray:
        return np.divide(self.accuracy_sum, self.completed, out=np.full(len(self.completed), np.nan),
                         where=self.completed > 0)

    def to_dict(self, step_s: int = 1) -> dict[str, list[float]]:
        """Lists for JSON, aggregated to ``step_s``-second buckets (sums, or means for rates)."""
        def agg(a: np.ndarray, how: str) -> np.ndarray:
            n = len(a) // step_s * step_s
            if step_s == 1:
                return a
            r = a[:n].reshape(-1, step_s)
            return r.sum(1) if how == "sum" else (r.max(1) if how == "max" else np.nanmean(r, 1))

        sums = {k: agg(getattr(self, k).astype(float), "sum")
                for k in ("arrivals", "within_sla", "dropped", "accuracy_sum", "completed")}
        out = {k: v.tolist() for k, v in sums.items()}
        out["sla_attainment"] = np.divide(sums["within_sla"], sums["arrivals"], out=np.ones(len(sums["arrivals"])),
                                          where=sums["arrivals"] > 0).tolist()
        out["mean_accuracy"] = [None if math.isnan(x) else x for x in np.divide(
            sums["accuracy_sum"], sums["completed"], out=np.full(len(sums["completed"]), np.nan),
            where=sums["completed"] > 0).tolist()]
        for k in ("cost", "predicted_rps", "replicas"):
            out[k] = agg(getattr(self, k).astype(float), "mean").tolist()
        out["p99_latency_s"] = [None if math.isnan(x) else x for x in agg(self.p99_latency_s, "max").tolist()]
        out["step_s"] = [float(step_s)]
        return out


def cost_unit(cost_mode: str) -> str:
    """What a run's cost is counted in (a GPU at ``records.replica_price`` cores)."""
    return "reserved cores" if cost_mode == "reserved" else "CPU-seconds per second"


@dataclass(frozen=True, eq=False)
class RunMetrics:
    """What one run of a policy measured, simulated (:class:`SimResult`) or live
    (``experiment.RunOutcome``): made by :meth:`measure` on both sides."""

    requests: int
    completed: int
    dropped: int
    sla_attainment: float
    p99_latency_s: float
    mean_latency_s: float
    mean_accuracy: float
    mean_cost: float
    cost_unit: str
    decisions: int

    @staticmethod
    def measure(latency_s: np.ndarray, sla_s: float, accuracy: np.ndarray, cost: np.ndarray, cost_mode: str,
                decisions: int) -> dict[str, Any]:
        """The fields, from per-request latencies (NaN: not answered: dropped or failed) and
        end-to-end accuracies (NaN: unknown) and the per-second cost (NaN: unknown). Attainment
        counts every request; latencies, accuracy and cost only what is known."""
        n = len(latency_s)
        done = ~np.isnan(latency_s)
        within = done & (latency_s <= sla_s)
        known_acc = ~np.isnan(accuracy)
        known_cost = cost[~np.isnan(cost)]
        nan = float("nan")
        return dict(
            requests=n, completed=int(done.sum()), dropped=int((~done).sum()),
            sla_attainment=float(within.sum() / n) if n else 1.0,
            p99_latency_s=float(np.percentile(latency_s[done], 99)) if done.any() else nan,
            mean_latency_s=float(latency_s[done].mean()) if done.any() else nan,
            mean_accuracy=float(np.nanmean(accuracy)) if known_acc.any() else nan,
            mean_cost=float(known_cost.mean()) if len(known_cost) else nan,
            cost_unit=cost_unit(cost_mode), decisions=decisions)


@dataclass(frozen=True, eq=False)
class SimResult(RunMetrics):
    """Summary metrics, the per-second series, the decision timeline and the request table."""

    policy: str
    duration_s: float
    sla_s: float
    cost_mode: str
    series: SimSeries
    timeline: tuple[Decision, ...] = ()
    table: RequestTable | None = None
    wall_s: float = 0.0
    # With the table: every batch each stage ran, one BatchTimes per (stage, model), in the order
    # the batches started; tokens 0 (the simulator does not count them).
    batches: tuple[BatchTimes, ...] = ()

    def summary(self) -> dict[str, float | int | str]:
        keys = ("policy", "requests", "completed", "dropped", "sla_attainment", "p99_latency_s", "mean_latency_s",
                "mean_accuracy", "mean_cost", "cost_unit", "decisions", "duration_s", "sla_s", "cost_mode", "wall_s")
        return {k: getattr(self, k) for k in keys}


def predictor_forecaster(predictor: object, horizon_s: float = 0.0) -> Forecaster:
    """Wrap an adapter predictor (``predict(history_rps) -> float``) as a forecaster."""
    name = str(getattr(predictor, "name", type(predictor).__name__))

    def forecast(time_s: float, history: np.ndarray) -> Forecast:
        rps = float(predictor.predict(history)) if len(history) else 0.0  # type: ignore[attr-defined]
        return Forecast(rps=max(rps, 0.0), predictor=name, horizon_s=horizon_s)

    return forecast


# --------------------------------------------------------------------------- stages


class _Noise:
    """One stage's service-time noise, a multiplier on the median, drawn from its own generator
    in chunks: log-normal with the profile's spread, or, for a CPU batch of a stage with
    ``residuals`` (a contention fit's, ``Contention.residuals``), one of those drawn at random."""

    __slots__ = ("rng", "normal", "next_normal", "residuals", "pooled", "next_pooled")

    def __init__(self, rng: np.random.Generator, residuals: Sequence[float] = ()) -> None:
        self.rng, self.normal, self.next_normal = rng, [], 0
        self.residuals = np.asarray(residuals, dtype=np.float64) if len(residuals) else None
        self.pooled, self.next_pooled = [], 0

    def factor(self, sigma: float, on_gpu: bool) -> float:
        if self.residuals is not None and not on_gpu:
            if self.next_pooled >= len(self.pooled):
                self.pooled = self.rng.choice(self.residuals, _NOISE_CHUNK).tolist()
                self.next_pooled = 0
            self.next_pooled += 1
            return self.pooled[self.next_pooled - 1]
        if self.next_normal >= len(self.normal):
            self.normal = self.rng.standard_normal(_NOISE_CHUNK).tolist()
            self.next_normal = 0
        self.next_normal += 1
        return math.exp(sigma * self.normal[self.next_normal - 1])


@dataclass
class _Queue:
    """A stage's FIFO of waiting items: entry times, deadlines and item ids from ``head`` on."""

    times: list[float] = field(default_factory=list)
    deadlines: list[float] = field(default_factory=list)
    items: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    head: int = 0  # first item still waiting; those before it are gone (in a batch or shed)

    def __len__(self) -> int:
        return len(self.times) - self.head

    def push(self, times: np.ndarray, deadlines: np.ndarray, items: np.ndarray) -> None:
        if self.head:  # drop what left before appending
            del self.times[: self.head]
            del self.deadlines[: self.head]
            self.items = self.items[self.head:]
            self.head = 0
        if len(items):
            self.times.extend(times.tolist())
            self.deadlines.extend(deadlines.tolist())
            self.items = np.concatenate([self.items, items])


@dataclass
class _Occupancy:
    """Items in a stage (queued or in a running batch), what a Serve handle counts as ongoing
    requests: entered - finished. Batches are formed ahead of their end, so their ends wait in
    a heap of (end time, items) until the clock passes them."""

    entered: int = 0
    finished: int = 0
    ending: list[tuple[float, int]] = field(default_factory=list)

    def now(self, t: float) -> int:
        while self.ending and self.ending[0][0] <= t:
            self.finished += heapq.heappop(self.ending)[1]
        return self.entered - self.finished


@dataclass
class _Departures:
    """Items of batches formed but maybe not ended: each leaves the stage, and is counted with
    its time there, once its batch ends (live, the ingress counts it when the call returns)."""

    chunks: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (ends, times in the stage)

    def until(self, t: float, counters: StageCounters) -> None:
        """Count the items whose batch has ended by ``t``."""
        waiting = []
        for ends, spent in self.chunks:
            gone = ends <= t
            if gone.all():
                counters.left(spent)
            else:
                if gone.any():
                    counters.left(spent[gone])
                waiting.append((ends[~gone], spent[~gone]))
        self.chunks = waiting


@dataclass
class _Ran:
    """Batches formed but maybe not ended, for the observation's ``batches``: each is counted
    once it ends (live, the replica reports a batch when its call returns)."""

    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = field(default_factory=list)  # ends, sizes, s, model

    def until(self, t: float, counters: StageCounters, models: Sequence[ServiceModel]) -> None:
        waiting = []
        for ends, sizes, seconds, model in self.chunks:
            gone = ends <= t
            m = models[model]
            if gone.all():
                counters.ran_many(m.variant, m.hardware, sizes, seconds, ends)
            else:
                if gone.any():
                    counters.ran_many(m.variant, m.hardware, sizes[gone], seconds[gone], ends[gone])
                waiting.append((ends[~gone], sizes[~gone], seconds[~gone], model))
        self.chunks = waiting


@dataclass
class _Estimate:
    """Admission control's estimate of one batcher, as a live replica keeps it (pipelines/stage.py,
    one StageCore a replica): its moving average of batch times, when a batch last ended
    (admission.in_force), and the cold batches left (a new model's first, which leave it)."""

    expected_s: float = 0.0
    measured_s: float = 0.0
    cold: int = COLD_BATCHES

    def forget(self) -> None:
        """A new model: a fresh estimate, as live (admission.fresh_estimate)."""
        self.expected_s, self.cold = fresh_estimate()


@dataclass
class _Line:
    """One replica with its own line (``routing="replica"``): the items routed to it and not yet
    in a batch (entry time, deadline, item), when its batch in progress ends and how many items
    it holds; a removed replica drains its line and takes nothing new."""

    free_s: float
    waiting: deque[tuple[float, float, int]] = field(default_factory=deque)
    running: int = 0
    draining: bool = False
    formed_s: float = -math.inf  # when its last batch was formed (closed): the next one's wait starts no earlier
    estimate: _Estimate = field(default_factory=_Estimate)  # each replica its own, as live

    def ongoing(self, t: float) -> int:
        """What Serve's router counts for this replica at ``t``: items queued at it or running."""
        return len(self.waiting) + (self.running if self.free_s > t else 0)

    def formed(self, batch: int, wait_s: float) -> float:
        """When its next batch is formed, as ``@serve.batch`` forms it (Ray 2.60
        ``_BatchQueue``): the wait starts when the batcher takes the first item, which is
        when it arrives or, with items queued, when the batch before was formed; the batch
        closes with ``batch`` items there or when the wait is over, whether the replica is
        free or not (the batcher forms batches while one runs; they run one at a time)."""
        w = self.waiting
        t0 = w[0][0] if w[0][0] > self.formed_s else self.formed_s
        limit = t0 + wait_s
        if len(w) >= batch and w[batch - 1][0] <= limit:
            return w[batch - 1][0] if w[batch - 1][0] > t0 else t0
        return limit

    def take(self, batch: int, formed_s: float) -> list[tuple[float, float, int]]:
        """The items of the batch formed at ``formed_s``: those there by then, at most ``batch``."""
        w, out = self.waiting, []
        while w and len(out) < batch and w[0][0] <= formed_s:
            out.append(w.popleft())
        self.formed_s = formed_s
        return out


@dataclass
class _FanIn:
    """A fan-out stage's join: a request moves on when its last item is done."""

    items_left: np.ndarray  # per request
    last_done_s: np.ndarray  # per request: latest item completion so far

    def done(self, reqs: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Requests whose last item is among ``reqs`` / ``ends``, and when that item ended."""
        np.maximum.at(self.last_done_s, reqs, ends)
        np.subtract.at(self.items_left, reqs, 1)
        u = np.unique(reqs)
        complete = u[self.items_left[u] == 0]
        return complete, self.last_done_s[complete]


@dataclass
class _Stage:
    """One stage during a run: its items, queue, replicas, configuration and batches."""

    name: str
    index: int
    parent: np.ndarray  # per item: its request
    deadline_s: np.ndarray  # per item
    entered_s: np.ndarray  # per item: when it entered the stage (NaN: never)
    done_s: np.ndarray  # per item: when its batch ended (NaN: never)
    batch_of: np.ndarray  # per item: the batch it joined (-1: none)
    noise: _Noise
    one_per_request: bool = True  # item id == request id
    fan_in: _FanIn | None = None  # set on first use when items are not one per request
    # Configuration in force.
    model: ServiceModel | None = None
    model_id: int = -1  # index in ``models``
    batch: int = 1
    batch_wait_s: float = 0.0
    replica_free_s: list[float] = field(default_factory=list)  # heap: when each replica is next free
    lines: list[_Line] | None = None  # routing="replica": each replica's own line (None: one central line)
    route_rng: random.Random | None = None  # routing="replica": ties between equally loaded replicas
    busy: np.ndarray | None = None  # contention: this stage's busy threads per second (the run's ``busy`` in part)
    # A contention law read over each batch's own time (Contention.reading "during"), off the
    # previous pass's busy threads (``prior``), set for each segment; None: read per segment.
    during: _During | None = None
    # State.
    queue: _Queue = field(default_factory=_Queue)
    occupancy: _Occupancy = field(default_factory=_Occupancy)
    departures: _Departures = field(default_factory=_Departures)
    estimate: _Estimate = field(default_factory=_Estimate)  # the central line's (routed: each replica's)
    outbox: tuple[np.ndarray, np.ndarray] | None = None  # (times, requests) done here, not yet due downstream
    # Every batch run: its end and the model that ran it (an index in the append-only ``models``).
    batch_end_s: list[float] = field(default_factory=list)
    batch_model: list[int] = field(default_factory=list)
    batch_service_s: list[float] = field(default_factory=list)  # each batch's service time
    models: list[ServiceModel] = field(default_factory=list)
    ran: _Ran = field(default_factory=lambda: _Ran())

    def enter(self, times: np.ndarray, items: np.ndarray) -> None:
        self.occupancy.entered += len(items)
        if len(items):
            self.entered_s[items] = times
        self.queue.push(times, self.deadline_s[items], items)

    def replicas(self) -> int:
        """Replicas serving now (a draining one no longer counts: Serve sends it nothing)."""
        if self.lines is None:
            return len(self.replica_free_s)
        return sum(not r.draining for r in self.lines)

    def waiting(self) -> bool:
        """Items not yet in a batch, in the stage's line or a replica's."""
        return bool(len(self.queue)) or (self.lines is not None and any(r.waiting for r in self.lines))


def _run_batches(st: _Stage, t_end: float, slow: float, shed: bool, busy: np.ndarray | None,
                 shed_pos: list[int], speed: list[float] | None) -> tuple[int, list[int], list[int], list[int]]:
    """Form and run the batches that start before ``t_end`` (the hot loop). Appends the queue
    positions of shed items to ``shed_pos``; returns (first queue position, batch first
    positions, batch sizes, batch ids) for the caller to vectorise. ``speed``: the host's
    slowness per second (None: steady), applied in the second a batch starts."""
    q = st.queue
    times, deadlines, free = q.times, q.deadlines, st.replica_free_s
    n_q, h, h0 = len(times), q.head, q.head
    b, wait, batch_end = st.batch, st.batch_wait_s, st.batch_end_s
    firsts: list[int] = []
    sizes: list[int] = []
    ids: list[int] = []
    est = st.estimate
    during = st.during is not None  # a law read over the batch's own time needs its first item
    while h < n_q and free:
        f = free[0]
        first = times[h]
        start = first if first > f else f
        if shed and would_miss(start, in_force(est.expected_s, est.measured_s, start), deadlines[h]):
            shed_pos.append(h)
            h += 1
            continue
        last = h + b - 1
        limit = first + wait
        if last < n_q and times[last] <= (start if start > limit else limit):
            close = times[last] if times[last] > start else start
            n = b
        else:
            close = limit if limit > f else f
            if close >= t_end:
                break
            n = bisect_right(times, close, h, min(h + b, n_q)) - h
        if close >= t_end:
            break
        ids.append(len(batch_end))
        end = _start_batch(st, n, close, slow, speed, busy, est, int(q.items[h]) if during else -1)
        heapq.heapreplace(free, end)
        firsts.append(h)
        sizes.append(n)
        h += n
    q.head = h
    return h0, firsts, sizes, ids


@dataclass(frozen=True)
class _During:
    """A stage's contention law read over a batch's own time, in one segment: the law, the
    previous pass's busy threads, the threads of the stage's model, the threads ahead of the
    stages, and the floor the segment's ``slow`` already holds (processor sharing at the law's
    own speed)."""

    law: ContentionLaw
    prior: BusyGrid
    threads: float  # the stage's model's: the batch's own busy threads
    ahead: float
    floor: float

    def factor(self, stage: str, item: int, close: float, s: float) -> float:
        """What a batch holding ``item``, of ``s`` seconds at the floor from ``close``, takes beyond
        the floor: the law read over as long as ``item``'s batch took on the previous pass (a
        fixed point: where the passes agree, over the batch's own time); an item that did not
        run there, over its time at the floor, then at the factor read over that."""
        own = self.prior.batch_of(stage, item)
        span = own[1] - own[0] if own is not None else s
        g = 1.0
        for _ in range(1 if own is not None else DURING_ROUNDS):
            beside = self.prior.beside(close, close + span * g, own, self.threads) + self.ahead
            g = max(1.0, self.law.factor(beside) / self.floor)
            span = s
        return g


def _start_batch(st: _Stage, n: int, close: float, slow: float, speed: list[float] | None, busy: np.ndarray | None,
                 est: _Estimate, item: int) -> float:
    """Run a batch of ``n`` of the stage's model from ``close``, ``item`` its first (-1: no
    ``st.during`` law to read, none needed): its time drawn from the profile,
    times ``slow`` (the segment's processor sharing, or its contention law) and the host's
    slowness in its first second, and a law read over the batch's own time (``st.during``);
    booked in the stage's batches, its occupancy and the busy accounts; ``est``, admission
    control's estimate of the batcher that formed it (the replica's, or the stage's in one
    line), measures it. Returns its end."""
    m = st.model
    s = m.median_s[n] * st.noise.factor(m.sigma[n], m.on_gpu) * slow
    if speed is not None:
        i = int(close)
        s *= speed[i if i < len(speed) else len(speed) - 1]
    if item >= 0:  # a law read over the batch's own time (the callers pass -1 without one)
        s *= st.during.factor(st.name, item, close, s)
    est.expected_s, est.cold = after_batch(in_force(est.expected_s, est.measured_s, close), s, est.cold)
    end = close + s
    if end > est.measured_s:
        est.measured_s = end
    heapq.heappush(st.occupancy.ending, (end, n))
    st.batch_end_s.append(end)
    st.batch_model.append(st.model_id)
    st.batch_service_s.append(s)
    if busy is not None:
        add_busy(busy, close, end, m.threads)
    if st.busy is not None and not m.on_gpu:
        add_busy(st.busy, close, end, m.threads)
    return end


def _pick_line(lines: list[_Line], t: float, cap: int, pick: Callable[[], float]) -> _Line | None:
    """Where Serve's router sends a request arriving at ``t``: of two replicas drawn at random
    (both, with two), the one with fewer requests queued or running there (a tie: either). When
    that one holds ``cap`` (its ``max_ongoing_requests``) the router tries again, so the least
    loaded replica of all. None: no replica serving, or every one full (the gate holds it)."""
    serving = [r for r in lines if not r.draining]
    if not serving:
        return None
    pair = serving
    if len(serving) > 2:
        i = int(pick() * len(serving))
        j = int(pick() * (len(serving) - 1))
        pair = [serving[i], serving[j + (j >= i)]]
    best = _least_loaded(pair, t, pick)
    if best.ongoing(t) >= cap:
        best = _least_loaded(serving, t, pick)
    return best if best.ongoing(t) < cap else None


def _least_loaded(lines: list[_Line], t: float, pick: Callable[[], float]) -> _Line:
    """The line with the fewest requests at ``t``; equals drawn alike (reservoir sampling)."""
    best, fewest, ties = lines[0], lines[0].ongoing(t), 1
    for r in lines[1:]:
        k = r.ongoing(t)
        if k < fewest:
            best, fewest, ties = r, k, 1
        elif k == fewest:
            ties += 1
            if pick() * ties < 1.0:
                best = r
    return best


def _run_routed(st: _Stage, t_end: float, slow: float, shed: bool, busy: np.ndarray | None,
                shed_items: list[int], speed: list[float] | None) -> tuple[list[int], list[int], list[int]]:
    """``routing="replica"``: route the stage's arrivals before ``t_end`` to its replicas' own
    lines (:func:`_pick_line`) and run the batches that start before it, in time order. When
    every replica holds its ``max_ongoing_requests``, arrivals wait in the ingress's gate
    (pipelines/gate.py) until a batch ends. A replica's batch forms from its own line as
    ``@serve.batch`` forms it (:meth:`_Line.formed`: while the batch before still runs), and
    each of its items is shed when the batch starts if it would miss its deadline, as the live
    stage does. Appends shed items to ``shed_items``; returns (items in batch order, batch sizes, batch ids)."""
    q = st.queue
    times, deadlines, qitems = q.times, q.deadlines, q.items
    n_q, h = len(times), q.head
    b, wait, batch_end = st.batch, st.batch_wait_s, st.batch_end_s
    cap = max_ongoing_for(b)
    lines, pick = st.lines, st.route_rng.random
    during = st.during is not None  # a law read over the batch's own time needs its first item
    items: list[int] = []
    sizes: list[int] = []
    ids: list[int] = []
    gate_s = 0.0  # the gate holds arrivals until then (every replica full)
    while True:
        route_s = (times[h] if times[h] > gate_s else gate_s) if h < n_q else math.inf
        line, close, formed = None, math.inf, 0.0
        for r in lines:
            if r.waiting:
                f = r.formed(b, wait)
                c = f if f > r.free_s else r.free_s  # its next batch starts once formed and the replica free
                if c < close:
                    line, close, formed = r, c, f
        if line is not None and close < t_end and close <= route_s:  # in time order: batches, then the arrival
            batch = line.take(b, formed)
            if shed:  # as the live stage: each item of the batch judged when it starts, on its replica's estimate
                now, kept = in_force(line.estimate.expected_s, line.estimate.measured_s, close), []
                for x in batch:
                    if would_miss(close, now, x[1]):
                        shed_items.append(x[2])
                    else:
                        kept.append(x)
                batch = kept
            if not batch:
                continue
            n = len(batch)
            ids.append(len(batch_end))
            end = _start_batch(st, n, close, slow, speed, busy, line.estimate, batch[0][2] if during else -1)
            line.free_s, line.running = end, n
            items.extend(it for _, _, it in batch)
            sizes.append(n)
            continue
        if route_s >= t_end:
            break
        best = _pick_line(lines, route_s, cap, pick)
        if best is None:
            gate_s = min((r.free_s for r in lines if not r.draining and r.free_s > route_s), default=math.inf)
            if gate_s == math.inf:
                break  # no replica serving (every one removed): arrivals wait for a new one
            continue
        best.waiting.append((route_s, deadlines[h], int(qitems[h])))
        h += 1
    q.head = h
    return items, sizes, ids


def _neighbour_load(neighbours: Sequence[Neighbour], seconds: int) -> np.ndarray:
    """Per second, the cores the neighbours take ahead of the replicas (a part-second pro rata)."""
    load = np.zeros(seconds)
    for n in neighbours:
        add_busy(load, n.start_s, n.end_s, n.threads)
    return load


def _left_to_replicas(cores: float, neighbours: float | np.ndarray) -> float | np.ndarray:
    """The cores the replicas have beside neighbours: what they leave, and at least the
    replicas' weight's share of contested cores."""
    return np.maximum(cores - neighbours, cores * STAGE_SHARE_CONTESTED)


def _expand(h0: int, firsts: list[int], sizes: list[int]) -> np.ndarray:
    """Queue positions (relative to h0) covered by the batches."""
    f = np.asarray(firsts, dtype=np.int64) - h0
    n = np.asarray(sizes, dtype=np.int64)
    starts = np.repeat(f - (np.cumsum(n) - n), n)
    return starts + np.arange(int(n.sum()), dtype=np.int64)


# ----------------------------------------------------------------- reconfigurations


@dataclass(frozen=True)
class _Delays:
    """How long each kind of change to one configuration takes to take effect (s)."""

    switch_s: float  # variant or hardware
    batch_s: float
    add_s: float  # a new replica serving


@dataclass(frozen=True, order=True)
class _Change:
    """One part of an applied decision, due at ``at_s`` (the delays measured on Ray Serve)."""

    at_s: float
    seq: int  # keeps changes due at the same time in the order they were made
    stage: int = field(compare=False)
    kind: str = field(compare=False)  # "model" | "batch" (decision), "add" | "remove" (replicas)
    decision: StageDecision | None = field(default=None, compare=False)
    replicas: int = field(default=0, compare=False)


@dataclass
class _Reconfigurations:
    """The changes applied decisions have scheduled and that have not taken effect yet."""

    pending: list[_Change] = field(default_factory=list)  # heap by (at_s, seq)
    made: int = 0

    def __bool__(self) -> bool:
        return bool(self.pending)

    def next_at(self) -> float:
        return self.pending[0].at_s

    def schedule(self, at_s: float, stage: int, kind: str, decision: StageDecision | None = None,
                 replicas: int = 0) -> None:
        heapq.heappush(self.pending, _Change(at_s, self.made, stage, kind, decision, replicas))
        self.made += 1

    def due(self, t: float) -> list[_Change]:
        out = []
        while self.pending and self.pending[0].at_s <= t + 1e-12:
            out.append(heapq.heappop(self.pending))
        return out

    def starting(self) -> dict[int, int]:
        """Per stage, replicas added but not running yet (they are provisioned already)."""
        out: dict[int, int] = {}
        for c in self.pending:
            if c.kind == "add":
                out[c.stage] = out.get(c.stage, 0) + c.replicas
        return out


# --------------------------------------------------------------------------- the run


@dataclass
class _Accounts:
    """Per-second series the run accumulates (index = second from the start)."""

    busy: np.ndarray | None  # shared mode: CPU-seconds in use per second (None in reserved mode)
    neighbours: np.ndarray | None  # shared mode: cores neighbours take ahead of the replicas per second
    # shared mode: CPU-seconds per second of the run's own reconfigurations that run ahead of the
    # replicas (nice 0: a new worker process, Serve's controller, the applier); the run's cost
    ahead: np.ndarray | None
    gpu_busy: np.ndarray | None  # shared mode: GPU-seconds in use per second
    reserved: np.ndarray  # reserved mode: cores (or their price) provisioned
    replicas: np.ndarray  # replicas provisioned
    predicted_rps: np.ndarray  # the forecast in force


@dataclass(frozen=True, eq=False)
class _Arrivals:
    """The requests' send times, sorted, and the run's span in whole seconds."""

    times: np.ndarray
    n: int
    horizon_s: float  # the last arrival's second, rounded up
    seconds: int  # simulated: the horizon and DRAIN_SLAS SLAs for queues to drain
    per_second: np.ndarray  # arrivals in each second of ``seconds``

    @classmethod
    def of(cls, arrivals: np.ndarray, sla_s: float) -> _Arrivals:
        times = np.sort(np.asarray(arrivals, dtype=np.float64))
        horizon = float(math.ceil(times[-1] + 1e-9)) if len(times) else 0.0
        seconds = int(horizon + sla_s * DRAIN_SLAS) + 2
        return cls(times, len(times), horizon, seconds,
                   np.bincount(times.astype(np.int64), minlength=seconds)[:seconds])


@dataclass(eq=False)
class _Outcome:
    """Per request: when it left the last stage (NaN: not yet, or never) and whether it was shed."""

    done_s: np.ndarray
    dropped: np.ndarray


@dataclass
class _Interval:
    """What the stages counted since the last observation, and the end-to-end latencies."""

    stages: dict[str, StageCounters]
    e2e: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def fresh(cls, names: Sequence[str]) -> _Interval:
        return cls({name: StageCounters() for name in names})


class _Run:
    """One simulation: the arrivals, the stages, the policy's control and the bookkeeping."""

    def __init__(self, profile: Profile, arrivals: np.ndarray, policy: Policy, forecaster: Forecaster,
                 config: SimConfig, initial: Decision | None, planned: Profile | None = None,
                 prior: BusyGrid | None = None) -> None:
        self.profile, self.policy, self.forecaster, self.cfg = profile, policy, forecaster, config
        self.prior = prior  # the previous pass's busy threads (a contention law read "during")
        self.arrivals = _Arrivals.of(arrivals, config.sla_s)
        self.rng = np.random.default_rng(config.seed)
        n = self.arrivals.n
        self.outcome = _Outcome(done_s=np.full(n, np.nan), dropped=np.zeros(n, dtype=bool))
        self.stages = self._make_stages()
        shared = config.cost_mode == "shared"
        self.accounts = _Accounts(busy=np.zeros(self.arrivals.seconds + 1) if shared else None,
                                  neighbours=_neighbour_load(config.neighbours, self.arrivals.seconds + 1)
                                  if shared else None,
                                  ahead=np.zeros(self.arrivals.seconds + 1) if shared else None,
                                  gpu_busy=np.zeros(self.arrivals.seconds + 1) if shared else None,
                                  reserved=np.zeros(self.arrivals.seconds + 1), replicas=np.zeros(self.arrivals.seconds + 1),
                                  predicted_rps=np.zeros(self.arrivals.seconds + 1))
        self.changes = _Reconfigurations()
        self.interval = _Interval.fresh(profile.stages)
        self.now = 0.0  # the simulated clock: where the run stands
        self.current: Decision | None = None
        self.initial = initial
        self.timeline: list[Decision] = []
        self.applied = 0  # decisions applied after the first
        # A policy may run on a control period of its own (Ray's autoscaler: RayPolicy.control_period_s).
        self.period_s = float(getattr(policy, "control_period_s", None) or config.interval_s)
        # The live adapter's control loop, with the same gating (a batch-wait change alone is not
        # applied; hysteresis before giving capacity back); not for a policy that hands scaling to
        # Ray's autoscaler, which live runs inside Serve without varipipe's loop.
        # Online calibration, as live: fed the batches of every interval, read by the loop.
        self.calibrator: Calibrator | None = make_calibrator(planned or profile, config)
        self.speed = config.host_speed.multipliers(self.arrivals.seconds + 1) if config.host_speed else None
        if config.contention is not None:  # the contention law reads what runs beside each stage
            for st in self.stages:
                st.busy = np.zeros(self.arrivals.seconds + 1)
        self.loop = None if delegates_to_ray(policy) else ControlLoop(
            policy, self._apply, initial=initial, verbose=False, log_size=1, calibrator=self.calibrator,
            hold_start=config.first_decision_s > 0)  # a live start holds as live does; a warm start decides at once

    def _make_stages(self) -> list[_Stage]:
        """Items per request multiply along the chain (the adapter's ``stage_loads``): a stage
        with fan-out ``f`` turns each upstream item into floor(f) items, plus one with
        probability frac(f), so the mean is ``f`` per upstream item."""
        n = self.arrivals.n
        k = np.ones(n, dtype=np.int64)
        stages = []
        residuals = self.cfg.contention.residuals if self.cfg.contention is not None else {}
        for i, name in enumerate(self.profile.stages):
            fan = float(self.profile.fanout.get(name, 1.0))
            if fan != 1.0:
                per_item = math.floor(fan) + (self.rng.random(int(k.sum())) < fan - math.floor(fan))
                k = np.bincount(np.repeat(np.arange(n), k), weights=per_item, minlength=n).astype(np.int64)
            one_each = bool((k == 1).all())
            parent = np.arange(n, dtype=np.int64) if one_each else np.repeat(np.arange(n), k)
            m = len(parent)
            # The serving overhead is added after the stages, so they must be done that much earlier.
            deadline = self.arrivals.times[parent] + self.cfg.sla_s - self.cfg.overhead_s
            stages.append(_Stage(name=name, index=i, parent=parent, deadline_s=deadline,
                                 entered_s=np.full(m, np.nan), done_s=np.full(m, np.nan),
                                 batch_of=np.full(m, -1, dtype=np.int64),
                                 noise=_Noise(np.random.default_rng([self.cfg.seed, i]), residuals.get(name, ())), one_per_request=one_each,
                                 lines=[] if self.cfg.routing == "replica" else None,
                                 route_rng=random.Random(f"{self.cfg.seed}/{i}") if self.cfg.routing == "replica" else None))
        return stages

    # ---- configuration

    def _set_model(self, st: _Stage, sd: StageDecision) -> None:
        for i, mdl in enumerate(st.models):
            if (mdl.variant, mdl.hardware) == (sd.variant, sd.hardware) and mdl.max_batch >= sd.batch:
                st.model, st.model_id = mdl, i
                return
        st.models.append(service_model(self.profile, st.name, sd.variant, sd.hardware, max(sd.batch, 1)))
        st.model, st.model_id = st.models[-1], len(st.models) - 1

    def _configure(self, st: _Stage, sd: StageDecision) -> None:
        before = st.model
        self._set_model(st, sd)
        if before is not None and (before.variant, before.hardware) != (st.model.variant, st.model.hardware):
            for est in (st.estimate, *(line.estimate for line in st.lines or ())):
                est.forget()  # as live
        st.batch, st.batch_wait_s = max(sd.batch, 1), max(sd.batch_wait_s, 0.0)

    def _apply(self, new: Decision) -> None:
        """The control loop's ``apply``: the first decision at once, later ones with their delays."""
        if [s.stage for s in new.stages] != list(self.profile.stages):
            raise VaripipeError(f"policy {self.policy.name!r} returned stages {[s.stage for s in new.stages]}, "
                                f"expected {list(self.profile.stages)}")
        on_gpu = [s.stage for s in new.stages if is_gpu(s.hardware)]
        if on_gpu and self.cfg.cost_mode == "shared" and self.cfg.cluster_gpus == 0:
            raise VaripipeError(f"policy {self.policy.name!r} put {on_gpu} on a GPU, but this shared-mode run "
                                "has no GPUs to share (cluster_gpus=0)")
        if self.current is None:
            for st, sd in zip(self.stages, new.stages, strict=True):
                self._configure(st, sd)
                if st.lines is not None:
                    st.lines = [_Line(self.now) for _ in range(sd.replicas)]
                else:
                    st.replica_free_s = [self.now] * sd.replicas
        else:
            self.applied += 1
            self._schedule(new, self.now)
        self.current = new

    def _schedule(self, new: Decision, t: float) -> None:
        """Queue the changes from the current decision to ``new`` with their delays; in shared
        mode the CPU they burn meanwhile (model loads, replica starts) slows the running batches."""
        for st, old, sd in zip(self.stages, self.current.stages, new.stages, strict=True):
            delays = self._delays(st, sd)
            if (old.variant, old.hardware) != (sd.variant, sd.hardware):
                self.changes.schedule(t + delays.switch_s, st.index, "model", decision=sd)
                self._charge(t, VARIANT_SWITCH_S, min(old.replicas, sd.replicas), VARIANT_SWITCH_CPU)
            elif (old.batch, old.batch_wait_s) != (sd.batch, sd.batch_wait_s):
                self.changes.schedule(t + delays.batch_s, st.index, "batch", decision=sd)
            if sd.replicas > old.replicas:
                self.changes.schedule(t + delays.add_s, st.index, "add", replicas=sd.replicas - old.replicas)
                self._charge(t, REPLICA_ADD_S, sd.replicas - old.replicas, REPLICA_START_CPU)
            elif sd.replicas < old.replicas:
                self.changes.schedule(t + REPLICA_REMOVE_S, st.index, "remove", replicas=old.replicas - sd.replicas)

    def _delays(self, st: _Stage, sd: StageDecision) -> _Delays:
        """How long a change to ``sd`` takes: Ray Serve's measured delays, and on a GPU the
        profiled warm-up a replica needs before it serves (module docstring)."""
        start = self.profile.replica_start(st.name, sd.variant, sd.hardware) if is_gpu(sd.hardware) else None
        if start is None:
            return _Delays(VARIANT_SWITCH_S, BATCH_CHANGE_S, REPLICA_ADD_S)
        started = REPLICA_PROCESS_S + start.cold_start_s
        return _Delays(started, BATCH_CHANGE_S + (start.batch_change_s(sd.batch) or 0.0), started)

    def _charge(self, t: float, seconds: float, times: int, cpu: ChangeCpu) -> None:
        """Spread ``times`` changes' CPU evenly over [t, t + seconds) (shared mode): what runs at
        the stages' level as busy threads beside them, what runs ahead of them as a neighbour."""
        if self.accounts.busy is None or times <= 0:
            return
        if cpu.level_s > 0:
            add_busy(self.accounts.busy, t, t + seconds, times * cpu.level_s / seconds)
        if cpu.ahead_s > 0:
            add_busy(self.accounts.ahead, t, t + seconds, times * cpu.ahead_s / seconds)

    def _take_effect(self, t: float) -> None:
        for c in self.changes.due(t):
            st = self.stages[c.stage]
            if c.decision is not None:  # model or batch
                self._configure(st, c.decision)
            elif c.kind == "add":
                for _ in range(c.replicas):
                    if st.lines is not None:
                        st.lines.append(_Line(c.at_s))
                    else:
                        heapq.heappush(st.replica_free_s, c.at_s)
            elif st.lines is not None:  # remove the least loaded: each drains its line, then goes
                serving = sorted((r for r in st.lines if not r.draining), key=lambda r: r.ongoing(t))
                for r in serving[:c.replicas]:
                    r.draining = True
            else:  # remove the replicas that free up first; in-flight batches finish
                for _ in range(min(c.replicas, len(st.replica_free_s))):
                    heapq.heappop(st.replica_free_s)
        for st in self.stages:
            if st.lines is not None:
                st.lines = [r for r in st.lines if not (r.draining and not r.waiting and r.free_s <= t)]

    def _provisioned(self) -> tuple[float, int]:
        """Reserved cores (GPUs at their price) and replicas, counting replicas that are starting
        (a removed replica is gone from the count at once: it only finishes its batch)."""
        cores, reps = 0.0, 0
        starting = self.changes.starting()
        for st in self.stages:
            r = st.replicas() + starting.get(st.index, 0)
            cores += r * replica_price(st.model.hardware)
            reps += r
        return cores, reps

    # ---- segments

    def _slowdown(self, t: float, gpu: bool) -> float:
        """Processor sharing (shared mode): the previous second's busy threads over the cores the
        neighbours leave, or busy GPU-seconds over the GPUs for a stage on a GPU."""
        busy = self.accounts.gpu_busy if gpu else self.accounts.busy
        if busy is None:
            return 1.0
        i = int(t) - 1
        capacity = self.cfg.cluster_gpus if gpu else self.cfg.cluster_cores
        if i < 0 or capacity <= 0:
            return 1.0
        if not gpu and self.accounts.neighbours is not None:
            capacity = _left_to_replicas(capacity, self.accounts.neighbours[i] + self.accounts.ahead[i])
        return max(1.0, busy[i] / capacity)

    def _contended(self, st: _Stage, t0: float, shared: float) -> float:
        """A CPU stage's slowdown in the segment from ``t0``: processor sharing (``shared``), or
        with a contention law its factor at the busy threads beside the stage in the previous
        slice (the other stages', and the stage's own × (replicas − 1) / replicas: its other
        replicas, and a reconfiguration's threads ahead of the stages: the law was fitted on threads
        at the stages' level, and one at nice 0 slows a batch at least as much), never below
        processor sharing at the law's own speed."""
        law = self.cfg.contention.laws.get(st.name) if st.busy is not None else None  # busy: kept with a law
        st.during = None
        if law is None:
            return shared
        floor = math.exp(law.a) * shared
        if self.prior is not None:  # read over each batch's time, off the previous pass
            st.during = _During(law, self.prior, float(st.model.threads), float(self.accounts.ahead[int(t0)]), floor)
            return floor
        i = int(t0) - 1
        beside = (beside_from_busy(float(self.accounts.busy[i]), float(st.busy[i]), st.replicas())
                  + float(self.accounts.ahead[i])) if i >= 0 else 0.0
        return max(law.factor(beside), floor)

    def _segment(self, t0: float, t1: float) -> None:
        """Run every stage from ``t0`` to ``t1``, a span in which no configuration changes."""
        slow = {False: self._slowdown(t0, False), True: self._slowdown(t0, True)}
        lo, hi = np.searchsorted(self.arrivals.times, [t0, t1], side="left")
        times, reqs = self.arrivals.times[lo:hi], np.arange(lo, hi, dtype=np.int64)
        for st in self.stages:
            times, reqs = self._feed(st, times, reqs)
            gpu = st.model is not None and st.model.on_gpu
            times, reqs = self._process(st, t1, slow[gpu] if gpu else self._contended(st, t0, slow[False]))
            if st.departures.chunks:
                st.departures.until(t1, self.interval.stages[st.name])
            if st.ran.chunks:
                st.ran.until(t1, self.interval.stages[st.name], st.models)
        if len(reqs):
            self.outcome.done_s[reqs] = times
            self.interval.e2e.append(times - self.arrivals.times[reqs])
        cores, reps = self._provisioned()
        if self.cfg.cost_mode == "reserved":
            add_busy(self.accounts.reserved, t0, t1, cores)
        add_busy(self.accounts.replicas, t0, t1, reps)

    def _feed(self, st: _Stage, times: np.ndarray, reqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Requests entering a stage become its items; requests with no items there pass through.
        Items are counted once, as they enter."""
        counters = self.interval.stages[st.name]
        if st.one_per_request:
            st.enter(times, reqs)
            counters.entered += len(reqs)
            return np.empty(0), np.empty(0, np.int64)
        lo = np.searchsorted(st.parent, reqs, side="left")
        hi = np.searchsorted(st.parent, reqs, side="right")
        k = hi - lo
        items = np.repeat(lo, k) + (np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k))
        st.enter(np.repeat(times, k), items.astype(np.int64))
        counters.entered += len(items)
        skip = k == 0
        return times[skip], reqs[skip]

    def _process(self, st: _Stage, t1: float, slow: float) -> tuple[np.ndarray, np.ndarray]:
        """Run the stage's batches up to ``t1``; the requests done here that are due downstream."""
        if st.model is None:
            return np.empty(0), np.empty(0, np.int64)
        shed_pos: list[int] = []
        busy = self.accounts.gpu_busy if st.model.on_gpu else self.accounts.busy
        speed = None if st.model.on_gpu else self.speed  # the host's cores, not the GPU
        if st.lines is None:
            h0, firsts, sizes, bids = _run_batches(st, t1, slow, self.cfg.shed_late, busy, shed_pos, speed)
            shed = st.queue.items[np.asarray(shed_pos, dtype=np.int64)] if shed_pos else None
            items = st.queue.items[h0:][_expand(h0, firsts, sizes)] if firsts else None
        else:
            routed, sizes, bids = _run_routed(st, t1, slow, self.cfg.shed_late, busy, shed_pos, speed)
            shed = np.asarray(shed_pos, dtype=np.int64) if shed_pos else None
            items = np.asarray(routed, dtype=np.int64) if sizes else None
        counters = self.interval.stages[st.name]
        if shed is not None:
            self.outcome.dropped[st.parent[shed]] = True
            counters.drops += len(shed)
            st.occupancy.finished += len(shed)  # shed when its batch would have formed: gone now
        if items is None:
            return self._release(st, np.empty(0), np.empty(0, np.int64), t1)
        ends = np.repeat(np.asarray(st.batch_end_s[bids[0]: bids[-1] + 1], dtype=np.float64), sizes)
        st.done_s[items] = ends
        st.batch_of[items] = np.repeat(np.asarray(bids, dtype=np.int64), sizes)
        st.departures.chunks.append((ends, ends - st.entered_s[items]))
        lo, hi = bids[0], bids[-1] + 1
        st.ran.chunks.append((np.asarray(st.batch_end_s[lo:hi], dtype=np.float64), np.asarray(sizes, dtype=np.int64),
                              np.asarray(st.batch_service_s[lo:hi], dtype=np.float64), st.model_id))
        return self._release(st, ends, items, t1)

    def _release(self, st: _Stage, ends: np.ndarray, items: np.ndarray, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Requests whose items at this stage are all done, that were not dropped, by done time;
        those due after ``t1`` wait in the stage's outbox."""
        waiting = st.outbox
        if len(items):
            reqs = st.parent[items]
            if st.one_per_request:
                new_r, new_t = reqs, ends
            else:
                if st.fan_in is None:
                    st.fan_in = _FanIn(np.bincount(st.parent, minlength=self.arrivals.n), np.zeros(self.arrivals.n))
                new_r, new_t = st.fan_in.done(reqs, ends)
            keep = ~self.outcome.dropped[new_r]
            new_r, new_t = new_r[keep], new_t[keep]
            if waiting is not None:
                new_t = np.concatenate([waiting[0], new_t])
                new_r = np.concatenate([waiting[1], new_r])
        elif waiting is not None:
            new_t, new_r = waiting
        else:
            return np.empty(0), np.empty(0, np.int64)
        order = np.argsort(new_t, kind="stable")
        new_t, new_r = new_t[order], new_r[order]
        cut = int(np.searchsorted(new_t, t1, side="left"))
        st.outbox = (new_t[cut:], new_r[cut:]) if cut < len(new_t) else None
        return new_t[:cut], new_r[:cut]

    # ---- control

    def _observe(self, t: float) -> Observation:
        iv = self.period_s
        state = {st.name: StageState(st.occupancy.now(t), st.replicas()) for st in self.stages}
        interval, self.interval = self.interval, _Interval.fresh(self.profile.stages)
        e2e = np.concatenate(interval.e2e) if interval.e2e else np.empty(0)
        lo = max(0, int(t) - HISTORY_S)
        return observe(t, iv, int(self.arrivals.per_second[max(0, int(t - iv)):int(t)].sum()), interval.stages, state, e2e,
                       history_rps=self.arrivals.per_second[lo:int(t)].astype(np.float64))

    def _decide(self, t: float, first: bool) -> None:
        obs = self._observe(t)
        if self.calibrator is not None:
            self.calibrator.observe(obs)
        if first:  # warm start, the same for every policy: the first interval's mean load
            iv = int(self.cfg.interval_s)
            fc = Forecast(rps=float(self.arrivals.per_second[:max(iv, 1)].mean()), predictor="warm-start")
        else:
            fc = self.forecaster(t, obs.history_rps)
        lo, hi = int(t), min(int(math.ceil(t + self.period_s)), len(self.accounts.predicted_rps))
        self.accounts.predicted_rps[lo:hi] = fc.rps
        if self.loop is None:  # Ray's own autoscaler: every decision applies, as Serve scales itself
            new = self.policy.decide(obs, fc, self.current or self.initial or Decision(stages=()))
            if self.current is None or not new.same_config(self.current):
                self._apply(new)
        else:
            entry = self.loop.step(obs, fc)
            if entry.action == "failed":
                raise VaripipeError(f"policy {self.policy.name!r} at t={t:.0f} s: {entry.note}")
            if self.current is None:  # the initial decision was kept: it goes in force now
                assert self.loop.applied is not None
                self._apply(self.loop.applied)
        self.timeline.append(self.current)

    def run(self) -> None:
        iv = self.period_s
        end = float(self.arrivals.seconds - 1)
        next_decision = self.cfg.first_decision_s
        if next_decision > 0:  # a live start: the initial decision serves until the loop first decides
            self._apply(self.initial)
        slice_s = SHARED_SLICE_S if self.accounts.busy is not None else iv
        while self.now < end:
            t = self.now
            if t >= next_decision - 1e-9:
                self._decide(t, first=next_decision == 0.0)
                next_decision += iv
            self._take_effect(t)
            nxt = min(next_decision, math.floor(t / slice_s + 1e-9) * slice_s + slice_s, end)
            if self.changes:
                nxt = min(nxt, self.changes.next_at())
            self._segment(t, nxt)
            self.now = nxt
            if nxt >= self.arrivals.horizon_s and not self._busy_left():
                break

    def _busy_left(self) -> bool:
        return any(st.waiting() or st.outbox is not None for st in self.stages)


# --------------------------------------------------------------------------- results


def _accuracy(run: _Run) -> np.ndarray:
    acc = np.ones(run.arrivals.n)
    for st in run.stages:
        ok = st.batch_of >= 0
        item_acc = np.full(len(st.parent), np.nan)
        model_acc = np.array([m.accuracy for m in st.models] or [np.nan])
        if ok.any():
            item_acc[ok] = model_acc[np.asarray(st.batch_model, dtype=np.int64)[st.batch_of[ok]]]
        if st.one_per_request:
            acc *= np.nan_to_num(item_acc, nan=1.0)
        else:
            worst = np.ones(run.arrivals.n)
            np.minimum.at(worst, st.parent, np.nan_to_num(item_acc, nan=1.0))
            acc *= worst
    acc[np.isnan(run.outcome.done_s)] = np.nan
    return acc


def _cost_series(run: _Run) -> np.ndarray:
    """Cores reserved, GPUs at their price (reserved mode); or CPU-seconds per second used, at
    most the host's, plus GPU-seconds per second at a GPU's price (shared)."""
    busy, gpu = run.accounts.busy, run.accounts.gpu_busy
    if busy is None:
        return run.accounts.reserved
    cores = _left_to_replicas(run.cfg.cluster_cores, run.accounts.neighbours)
    return np.minimum(busy + run.accounts.ahead, cores) + GPU_REPLICA_PRICE_CORES * np.minimum(gpu, run.cfg.cluster_gpus)


def _series(run: _Run, latency: np.ndarray, within: np.ndarray, acc: np.ndarray) -> SimSeries:
    n_sec = max(int(run.arrivals.horizon_s), 1)
    sec = np.minimum(run.arrivals.times.astype(np.int64), n_sec - 1)
    done = ~np.isnan(latency)
    cost = _cost_series(run)
    iv = max(int(run.cfg.interval_s), 1)
    p99 = np.full(n_sec, np.nan)
    for lo in range(0, n_sec, iv):
        a, b = np.searchsorted(run.arrivals.times, [lo, lo + iv])
        lat = latency[a:b][done[a:b]]
        if len(lat):
            p99[lo:lo + iv] = np.percentile(lat, 99)
    return SimSeries(
        arrivals=np.bincount(sec, minlength=n_sec), within_sla=np.bincount(sec, weights=within, minlength=n_sec),
        dropped=np.bincount(sec, weights=~done, minlength=n_sec),
        accuracy_sum=np.bincount(sec[done], weights=acc[done], minlength=n_sec),
        completed=np.bincount(sec, weights=done, minlength=n_sec), cost=cost[:n_sec],
        predicted_rps=run.accounts.predicted_rps[:n_sec], replicas=run.accounts.replicas[:n_sec],
        p99_latency_s=p99)


def _result(run: _Run, wall_s: float, keep_table: bool) -> SimResult:
    run.outcome.dropped |= np.isnan(run.outcome.done_s)
    run.outcome.done_s[run.outcome.dropped] = np.nan
    run.outcome.done_s += run.cfg.overhead_s
    latency = run.outcome.done_s - run.arrivals.times
    within = ~np.isnan(latency) & (latency <= run.cfg.sla_s)
    acc = _accuracy(run)
    series = _series(run, latency, within, acc)
    span = max(run.arrivals.horizon_s, 1e-9)
    cost = _cost_series(run)
    table = None
    if keep_table:
        table = RequestTable(run.arrivals.times, run.outcome.done_s, run.outcome.dropped, acc, tuple(s.name for s in run.stages),
                             tuple(s.parent for s in run.stages), tuple(s.entered_s for s in run.stages),
                             tuple(s.done_s for s in run.stages), tuple(s.batch_of for s in run.stages))
    metrics = RunMetrics.measure(latency, run.cfg.sla_s, acc, cost[: int(span) or 1], run.cfg.cost_mode, run.applied)
    return SimResult(**metrics, policy=run.policy.name, duration_s=run.arrivals.horizon_s, sla_s=run.cfg.sla_s,
                     cost_mode=run.cfg.cost_mode, series=series, timeline=tuple(run.timeline), table=table,
                     wall_s=wall_s, batches=_ran_batches(run) if keep_table else ())


def _ran_batches(run: _Run) -> tuple[BatchTimes, ...]:
    """Every batch each stage ran (its items: those whose batch it was; a batch every item of
    which was shed has none and is left out), per (stage, model)."""
    out = []
    for st in run.stages:
        if not st.batch_end_s:
            continue
        joined = st.batch_of[st.batch_of >= 0]
        sizes = np.bincount(joined, minlength=len(st.batch_end_s))
        ends, seconds = np.asarray(st.batch_end_s), np.asarray(st.batch_service_s)
        model = np.asarray(st.batch_model)
        for k, m in enumerate(st.models):
            ran = (model == k) & (sizes > 0)
            if ran.any():
                out.append(BatchTimes(st.name, m.variant, m.hardware, tuple(sizes[ran].tolist()),
                                      tuple(seconds[ran].tolist()), tuple(ends[ran].tolist()), (0,) * int(ran.sum())))
    return tuple(out)


def simulate(profile: Profile, arrivals: Sequence[float] | np.ndarray, policy: Policy, forecaster: Forecaster,
             config: SimConfig, *, initial: Decision | None = None, keep_table: bool = False,
             planned: Profile | None = None) -> SimResult:
    """Run ``arrivals`` (send times, s) through the pipeline under ``policy``.

    ``profile`` gives the service times; ``planned``, when given, is the profile the policy
    was built on and the calibration corrects (a host that is not the profile's: service
    times from a profile corrected by a live run's factors, planned on the shipped one).

    ``forecaster(time_s, history_rps) -> Forecast`` feeds the policy's forecast;
    the first decision is taken at t=0 on the first interval's mean load and
    applied at once (every policy starts from a warm configuration), or with
    ``config.first_decision_s`` > 0 at that time, ``initial`` serving until then.
    """
    import time

    if config.first_decision_s > 0 and initial is None:
        raise VaripipeError("a run whose first decision comes later (first_decision_s > 0) needs the initial "
                            "decision that serves until then")
    started = time.perf_counter()
    times = np.asarray(arrivals, dtype=np.float64)
    passes = CONTENTION_PASSES if config.contention is not None and config.contention.reading == "during" else 1
    prior = None
    for k in range(passes):
        # A policy may keep state (a calibrated profile): each pass but the last runs a copy.
        run = _Run(profile, times, policy if k == passes - 1 else copy.deepcopy(policy), forecaster, config, initial,
                   planned, prior)
        if not run.arrivals.n:
            break
        run.run()
        if k < passes - 1:
            prior = _busy_grid(run)
    return _result(run, time.perf_counter() - started, keep_table)


def _busy_grid(run: _Run) -> BusyGrid:
    """The busy threads of every CPU batch a finished pass ran, and the batch each item ran in,
    for the next pass to read."""
    grid = BusyGrid(run.arrivals.seconds + 1)
    for st in run.stages:
        if not st.batch_end_s:
            continue
        threads = np.array([0.0 if m.on_gpu else m.threads for m in st.models] or [0.0])
        end = np.asarray(st.batch_end_s, dtype=np.float64)
        start = end - np.asarray(st.batch_service_s, dtype=np.float64)
        grid.add(start, end, threads[np.asarray(st.batch_model, dtype=np.int64)])
        ok = st.batch_of >= 0
        grid.ran(st.name, np.where(ok, start[np.where(ok, st.batch_of, 0)], np.nan),
                 np.where(ok, end[np.where(ok, st.batch_of, 0)], np.nan))
    return grid
