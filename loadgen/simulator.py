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
rule and moving average of batch times as the live stages (:mod:`varipipe.admission`).

Every ``interval_s`` the simulator builds an :class:`Observation`, asks the
forecaster for the next interval's load and steps the live adapter's
:class:`~varipipe.adapter.loop.ControlLoop` with them: the same ``Policy``
objects and the same rules for when a decision is applied (a batch-wait change
alone is not; capacity is given back only after the hysteresis). Ray's own
autoscaler (policy ``ray``) runs without that loop, as it does live, and on its
own control period (``RayPolicy.control_period_s``, 1 s) rather than ``interval_s``. An
applied decision takes effect after the reconfiguration delays measured on Ray
Serve (below).

Time advances in segments in which every configuration is fixed; within a
segment stages are processed in pipeline order, which is exact because a batch
that starts inside a segment depends only on arrivals before its start. In
``shared`` cost mode all replicas share the host's cores (processor sharing):
during each ``SHARED_SLICE_S`` slice every batch runs slower by
``max(1, busy threads / cores)`` of the previous slice (a mean-field
approximation with one slice of lag). A reconfiguration adds its own CPU there
(a replica start, a model load; measured on Ray Serve) over its delay, as
replica processes starting on the same cores do live. In ``reserved`` mode each
replica owns its cores.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from varipipe.adapter.loop import ControlLoop
from varipipe.adapter.policy import Forecast, Policy
from varipipe.admission import update_expected, would_miss
from varipipe.errors import VaripipeError
from varipipe.loadgen.service import ServiceModel, service_model
from varipipe.records import (
    Decision,
    Observation,
    Profile,
    StageDecision,
    StageObservation,
    hardware_cores,
)

__all__ = [
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
    "REPLICA_START_CPU_S",
    "VARIANT_SWITCH_CPU_S",
]

# Reconfiguration delays, ../shared/RAY_SERVE_FACTS.md ("Which call changes what"),
# measured on Ray Serve 2.60 on this machine kind:
REPLICA_ADD_S = 3.0  # declarative num_replicas up: new replica RUNNING after ~3.0 s
REPLICA_REMOVE_S = 2.3  # num_replicas down: replica gone after 2.3 s (it keeps serving meanwhile)
BATCH_CHANGE_S = 0.8  # user_config with batch settings, set_max_batch_size in reconfigure(): 0.8 s
USER_CONFIG_S = 0.4  # a plain user_config change reaches live replicas in 0.4 s
MODEL_LOAD_S = 2.0  # "2.4 s with a 2 s model load": the load measured there
VARIANT_SWITCH_S = USER_CONFIG_S + MODEL_LOAD_S  # variant switch = reconfigure + model load
# CPU that a change burns on the host while it takes effect (shared mode only: the
# cores serving replicas run on), measured by benchmarks/replica_start_cpu.py on Ray
# Serve 2.60 with vision-caption-ci (results/replica_start_cpu.json, 3 repeats):
REPLICA_START_CPU_S = 3.5  # a new replica process (worker, runtime import, model load): medians 3.0 / 3.6 / 3.5 CPU-s
VARIANT_SWITCH_CPU_S = 0.6  # per replica, loading the new variant in place: medians 0.64 (detector), 0.54 (classifier)

# Processor-sharing slice in shared mode: the slowdown factor is refreshed every second.
SHARED_SLICE_S = 1.0
# Observations carry the last hour of per-second arrivals: the predictors look at
# most a few minutes back (adapter/predictors.py windows are 10-60 s; the LSTM's input is shorter).
HISTORY_WINDOW_S = 3600
# Standard normals drawn per refill of a stage's service-time noise buffer.
_NOISE_CHUNK = 1 << 16
# After the last arrival, keep simulating this many SLAs for queues to drain;
# whatever is still unfinished then is counted as dropped.
DRAIN_SLAS = 10.0

Forecaster = Callable[[float, np.ndarray], Forecast]


@dataclass(frozen=True)
class SimConfig:
    """Run settings: SLA, control interval, cost mode and cluster size, seed."""

    sla_s: float
    interval_s: float = 10.0
    cost_mode: str = "shared"
    cluster_cores: float = 2.0
    seed: int = 0
    shed_late: bool = True  # deadline admission control, as live (varipipe.admission)
    # Fixed per-request serving overhead (HTTP, ingress decoding, stage hops) that the
    # profile's stage latencies do not contain, added to every completed request's
    # latency (and taken off the stages' shedding deadline). 0 = none;
    # benchmarks/fidelity.py fits it live on a calibration window.
    overhead_s: float = 0.0

    def __post_init__(self) -> None:
        if self.cost_mode not in ("shared", "reserved"):
            raise VaripipeError(f"cost mode must be 'shared' or 'reserved', got {self.cost_mode!r}")
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


@dataclass(frozen=True, eq=False)
class SimResult:
    """Summary metrics, the per-second series, the decision timeline and the request table."""

    policy: str
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
    duration_s: float
    sla_s: float
    cost_mode: str
    series: SimSeries
    timeline: tuple[Decision, ...] = ()
    table: RequestTable | None = None
    wall_s: float = 0.0

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


@dataclass
class _Stage:
    """Mutable state of one stage during a run."""

    name: str
    index: int
    parent: np.ndarray  # request of each item
    deadline: np.ndarray  # per item
    arr: np.ndarray
    done: np.ndarray
    batch_of: np.ndarray
    rng: np.random.Generator
    identity: bool = True  # one item per request (item id == request id)
    model: ServiceModel | None = None
    batch: int = 1
    wait: float = 0.0
    free: list[float] = field(default_factory=list)  # heap of replica free times
    q_t: list[float] = field(default_factory=list)
    q_dl: list[float] = field(default_factory=list)
    q_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    head: int = 0
    noise: list[float] = field(default_factory=list)
    noise_i: int = 0
    b_end: list[float] = field(default_factory=list)
    b_model: list[int] = field(default_factory=list)
    models: list[ServiceModel] = field(default_factory=list)  # append-only; b_model indexes it
    model_id: int = -1
    expected: float = 0.0  # moving average of batch times: admission control's estimate
    pending: tuple[np.ndarray, np.ndarray] | None = None  # done here, not yet due at the next stage
    left: np.ndarray | None = None  # fan-out: items still to finish, per request
    last: np.ndarray | None = None  # fan-out: latest item completion, per request
    # Items in the stage (queued or in a running batch) = entered - finished: what a Serve
    # handle counts as ongoing requests. Batches are formed ahead of their end, so their
    # ends wait in a heap of (end time, items) until the clock passes them.
    entered: int = 0
    finished: int = 0
    ending: list[tuple[float, int]] = field(default_factory=list)

    def in_system(self, t: float) -> int:
        while self.ending and self.ending[0][0] <= t:
            self.finished += heapq.heappop(self.ending)[1]
        return self.entered - self.finished

    def z(self) -> float:
        if self.noise_i >= len(self.noise):
            self.noise = self.rng.standard_normal(_NOISE_CHUNK).tolist()
            self.noise_i = 0
        self.noise_i += 1
        return self.noise[self.noise_i - 1]

    def enqueue(self, times: np.ndarray, items: np.ndarray) -> None:
        if self.head:
            del self.q_t[: self.head]
            del self.q_dl[: self.head]
            self.q_ids = self.q_ids[self.head:]
            self.head = 0
        self.entered += len(items)
        if len(items):
            self.arr[items] = times
            self.q_t.extend(times.tolist())
            self.q_dl.extend(self.deadline[items].tolist())
            self.q_ids = np.concatenate([self.q_ids, items])

    @property
    def queued(self) -> int:
        return len(self.q_t) - self.head


def _run_stage(st: _Stage, t_end: float, slow: float, shed: bool, busy: np.ndarray | None,
               dropped_pos: list[int]) -> tuple[int, list[int], list[int], list[int]]:
    """Form and run batches that start before ``t_end``. Returns (first queue position,
    batch first positions, batch sizes, batch ids) for the caller to vectorise."""
    q_t, q_dl, free = st.q_t, st.q_dl, st.free
    n_q, h, h0 = len(q_t), st.head, st.head
    b, wait, m = st.batch, st.wait, st.model
    med, sig = m.median_s, m.sigma
    threads = m.threads
    model_id = st.model_id
    firsts: list[int] = []
    sizes: list[int] = []
    ids: list[int] = []
    b_end = st.b_end
    exp = math.exp
    expected = st.expected
    while h < n_q and free:
        f = free[0]
        first = q_t[h]
        start = first if first > f else f
        if shed and would_miss(start, expected, q_dl[h]):
            dropped_pos.append(h)
            h += 1
            continue
        last = h + b - 1
        limit = first + wait
        if last < n_q and q_t[last] <= (start if start > limit else limit):
            close = q_t[last] if q_t[last] > start else start
            n = b
        else:
            close = limit if limit > f else f
            if close >= t_end:
                break
            n = bisect_right(q_t, close, h, min(h + b, n_q)) - h
        if close >= t_end:
            break
        s = med[n] * exp(sig[n] * st.z()) * slow
        expected = update_expected(expected, s)
        end = close + s
        heapq.heapreplace(free, end)
        heapq.heappush(st.ending, (end, n))
        firsts.append(h)
        sizes.append(n)
        ids.append(len(b_end))
        b_end.append(end)
        st.b_model.append(model_id)
        if busy is not None:
            _add_busy(busy, close, end, threads)
        h += n
    st.head = h
    st.expected = expected
    return h0, firsts, sizes, ids


def _p99(values: np.ndarray) -> float:
    """``np.percentile(values, 99)`` (linear interpolation) by partial sort: the control
    loop takes it per stage every period, where np.percentile's overhead dominated."""
    n = len(values)
    pos = (n - 1) * 0.99
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    part = np.partition(values, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


def _add_busy(busy: np.ndarray, t0: float, t1: float, weight: float) -> None:
    """Spread ``weight`` × overlap of [t0, t1) over per-second bins."""
    i = int(t0)
    while t0 < t1 and i < len(busy):
        nxt = i + 1.0
        busy[i] += weight * ((t1 if t1 < nxt else nxt) - t0)
        t0 = nxt
        i += 1


def _expand(h0: int, firsts: list[int], sizes: list[int]) -> np.ndarray:
    """Queue positions (relative to h0) covered by the batches."""
    f = np.asarray(firsts, dtype=np.int64) - h0
    n = np.asarray(sizes, dtype=np.int64)
    starts = np.repeat(f - (np.cumsum(n) - n), n)
    return starts + np.arange(int(n.sum()), dtype=np.int64)


# --------------------------------------------------------------------------- the run


class _Run:
    """One simulation: arrivals, stages, the control loop and the bookkeeping."""

    def __init__(self, profile: Profile, arrivals: np.ndarray, policy: Policy, forecaster: Forecaster,
                 config: SimConfig, initial: Decision | None) -> None:
        self.profile, self.policy, self.forecaster, self.cfg = profile, policy, forecaster, config
        self.arrivals = np.sort(np.asarray(arrivals, dtype=np.float64))
        self.n = len(self.arrivals)
        self.horizon = float(math.ceil(self.arrivals[-1] + 1e-9)) if self.n else 0.0
        self.seconds = int(self.horizon + config.sla_s * DRAIN_SLAS) + 2
        self.counts = np.bincount(self.arrivals.astype(np.int64), minlength=self.seconds)[: self.seconds]
        self.rng = np.random.default_rng(config.seed)
        self.req_dropped = np.zeros(self.n, dtype=bool)
        self.req_done = np.full(self.n, np.nan)
        self.stages = self._make_stages()
        self.busy = np.zeros(self.seconds + 1) if config.cost_mode == "shared" else None
        self.cost = np.zeros(self.seconds + 1)
        self.replica_s = np.zeros(self.seconds + 1)
        self.pred = np.zeros(self.seconds + 1)
        self.events: list[tuple[float, int, int, str, object]] = []  # (time, seq, stage, kind, value)
        self.seq = 0
        self.current: Decision | None = None
        self.timeline: list[Decision] = []
        self.changes = 0
        self.interval_obs: list[list] = [[[], [], 0, 0] for _ in self.stages]  # sojourns, counts, drops, arrivals
        self.e2e_window: list[np.ndarray] = []
        self.initial = initial
        # The live adapter's control loop, with the same gating (a batch-wait change alone is
        # not applied; hysteresis before giving capacity back). Not for Ray's autoscaler,
        # which live runs inside Serve without varipipe's loop (controller_logic.build_loop).
        self._now, self._step_in = 0.0, None
        # A policy may run on a control period of its own (Ray's autoscaler: RayPolicy.control_period_s).
        self.period_s = float(getattr(policy, "control_period_s", None) or config.interval_s)
        self.loop = None if hasattr(policy, "autoscaling_config") else ControlLoop(
            policy, None, self._apply, observe=lambda: self._step_in[0], clock=lambda: self._now,
            initial=initial, forecast=lambda _obs: self._step_in[1], verbose=False, log_size=1)

    def _make_stages(self) -> list[_Stage]:
        """Items per request multiply along the chain (the adapter's ``stage_loads``): a stage
        with fan-out ``f`` turns each upstream item into floor(f) items, plus one with
        probability frac(f), so the mean is ``f`` per upstream item."""
        k = np.ones(self.n, dtype=np.int64)
        stages = []
        for i, name in enumerate(self.profile.stages):
            fan = float(self.profile.fanout.get(name, 1.0))
            if fan != 1.0:
                per_item = math.floor(fan) + (self.rng.random(int(k.sum())) < fan - math.floor(fan))
                k = np.bincount(np.repeat(np.arange(self.n), k), weights=per_item, minlength=self.n).astype(np.int64)
            parent = np.arange(self.n, dtype=np.int64) if (k == 1).all() else np.repeat(np.arange(self.n), k)
            m = len(parent)
            # The serving overhead is added after the stages, so they must be done that much earlier.
            deadline = self.arrivals[parent] + self.cfg.sla_s - self.cfg.overhead_s
            stages.append(_Stage(name=name, index=i, parent=parent, deadline=deadline,
                                 arr=np.full(m, np.nan), done=np.full(m, np.nan),
                                 batch_of=np.full(m, -1, dtype=np.int64),
                                 rng=np.random.default_rng([self.cfg.seed, i]), identity=bool((k == 1).all())))
        return stages

    # ---- configuration

    def _set_model(self, st: _Stage, sd: StageDecision) -> None:
        for i, mdl in enumerate(st.models):
            if (mdl.variant, mdl.hardware) == (sd.variant, sd.hardware) and mdl.max_batch >= sd.batch:
                st.model, st.model_id = mdl, i
                return
        st.models.append(service_model(self.profile, st.name, sd.variant, sd.hardware, max(sd.batch, 1)))
        st.model, st.model_id = st.models[-1], len(st.models) - 1

    def _apply_now(self, decision: Decision, t: float) -> None:
        for st, sd in zip(self.stages, decision.stages, strict=True):
            self._set_model(st, sd)
            st.batch, st.wait = max(sd.batch, 1), max(sd.batch_wait_s, 0.0)
            st.free = [t] * sd.replicas
        self.current = decision

    def _schedule(self, new: Decision, t: float) -> None:
        """Queue the changes from the current decision to ``new`` with their delays; in shared
        mode the CPU they burn meanwhile (model loads, replica starts) slows the running batches."""
        for st, old, sd in zip(self.stages, self.current.stages, new.stages, strict=True):
            if (old.variant, old.hardware) != (sd.variant, sd.hardware):
                self._push(t + VARIANT_SWITCH_S, st.index, "model", sd)
                self._charge(t, VARIANT_SWITCH_S, min(old.replicas, sd.replicas) * VARIANT_SWITCH_CPU_S)
            elif (old.batch, old.batch_wait_s) != (sd.batch, sd.batch_wait_s):
                self._push(t + BATCH_CHANGE_S, st.index, "batch", sd)
            if sd.replicas > old.replicas:
                self._push(t + REPLICA_ADD_S, st.index, "add", sd.replicas - old.replicas)
                self._charge(t, REPLICA_ADD_S, (sd.replicas - old.replicas) * REPLICA_START_CPU_S)
            elif sd.replicas < old.replicas:
                self._push(t + REPLICA_REMOVE_S, st.index, "remove", old.replicas - sd.replicas)
        self.current = new

    def _charge(self, t: float, seconds: float, cpu_s: float) -> None:
        """Spread ``cpu_s`` of reconfiguration work evenly over [t, t + seconds) (shared mode)."""
        if self.busy is not None and cpu_s > 0:
            _add_busy(self.busy, t, t + seconds, cpu_s / seconds)

    def _push(self, t: float, stage: int, kind: str, value: object) -> None:
        heapq.heappush(self.events, (t, self.seq, stage, kind, value))
        self.seq += 1

    def _fire_events(self, t: float) -> None:
        while self.events and self.events[0][0] <= t + 1e-12:
            at, _, i, kind, value = heapq.heappop(self.events)
            st = self.stages[i]
            if kind in ("model", "batch"):
                self._set_model(st, value)  # type: ignore[arg-type]
                st.batch, st.wait = max(value.batch, 1), max(value.batch_wait_s, 0.0)  # type: ignore[attr-defined]
            elif kind == "add":
                for _ in range(int(value)):  # type: ignore[call-overload]
                    heapq.heappush(st.free, at)
            else:  # remove the replicas that free up first; in-flight batches finish
                for _ in range(min(int(value), len(st.free))):  # type: ignore[call-overload]
                    heapq.heappop(st.free)

    def _provisioned(self) -> tuple[float, int]:
        """Reserved cores and replicas, counting replicas that are starting or draining."""
        cores, reps = 0.0, 0
        pending = {}
        for _, _, i, kind, value in self.events:
            if kind in ("add", "remove"):
                pending[i] = pending.get(i, 0) + (int(value) if kind == "add" else 0)
        for st in self.stages:
            r = len(st.free) + pending.get(st.index, 0)
            cores += r * max(hardware_cores(st.model.hardware), 1.0)
            reps += r
        return cores, reps

    # ---- segments

    def _slowdown(self, t: float) -> float:
        if self.busy is None:
            return 1.0
        i = int(t) - 1
        return max(1.0, self.busy[i] / self.cfg.cluster_cores) if i >= 0 else 1.0

    def _segment(self, t0: float, t1: float) -> None:
        slow = self._slowdown(t0)
        lo, hi = np.searchsorted(self.arrivals, [t0, t1], side="left")
        ids = np.arange(lo, hi, dtype=np.int64)
        times, reqs = self.arrivals[lo:hi], ids
        for k, st in enumerate(self.stages):
            times, reqs = self._feed(st, times, reqs, t1)
            times, reqs = self._process(st, t1, slow, k)
        if len(reqs):
            self.req_done[reqs] = times
            self.e2e_window.append(times - self.arrivals[reqs])
        cores, reps = self._provisioned()
        if self.cfg.cost_mode == "reserved":
            _add_busy(self.cost, t0, t1, cores)
        _add_busy(self.replica_s, t0, t1, reps)

    def _feed(self, st: _Stage, times: np.ndarray, reqs: np.ndarray, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Requests entering a stage become its items; requests with no items there pass through."""
        if st.identity:
            items = reqs
            st.enqueue(times, items)
            self.interval_obs[st.index][3] += len(items)
            return np.empty(0), np.empty(0, np.int64)
        lo = np.searchsorted(st.parent, reqs, side="left")
        hi = np.searchsorted(st.parent, reqs, side="right")
        k = hi - lo
        items = np.repeat(lo, k) + (np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k))
        st.enqueue(np.repeat(times, k), items.astype(np.int64))
        self.interval_obs[st.index][3] += len(items)
        skip = k == 0
        return times[skip], reqs[skip]

    def _process(self, st: _Stage, t1: float, slow: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        if st.model is None:
            return np.empty(0), np.empty(0, np.int64)
        dropped_pos: list[int] = []
        h0, firsts, sizes, bids = _run_stage(st, t1, slow, self.cfg.shed_late, self.busy, dropped_pos)
        obs = self.interval_obs[st.index]
        if dropped_pos:
            d_items = st.q_ids[np.asarray(dropped_pos, dtype=np.int64)]
            self.req_dropped[st.parent[d_items]] = True
            obs[2] += len(d_items)
            st.finished += len(d_items)  # shed when its batch would have formed: gone now
        if not firsts:
            return self._release(st, np.empty(0), np.empty(0, np.int64), t1)
        pos = _expand(h0, firsts, sizes)
        items = st.q_ids[h0:][pos]
        ends = np.repeat(np.asarray(st.b_end[bids[0]: bids[-1] + 1], dtype=np.float64), sizes)
        st.done[items] = ends
        st.batch_of[items] = np.repeat(np.asarray(bids, dtype=np.int64), sizes)
        obs[0].append(ends - st.arr[items])
        return self._release(st, ends, items, t1)

    def _release(self, st: _Stage, ends: np.ndarray, items: np.ndarray, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Requests whose items at this stage are all done, that were not dropped, by done time."""
        pend = st.pending
        if len(items):
            reqs = st.parent[items]
            if not st.identity:  # fan-out: a request is done when its last item is
                new_r, new_t = self._joined(st, reqs, ends)
            else:
                new_r, new_t = reqs, ends
            keep = ~self.req_dropped[new_r]
            new_r, new_t = new_r[keep], new_t[keep]
            if pend is not None:
                new_t = np.concatenate([pend[0], new_t])
                new_r = np.concatenate([pend[1], new_r])
        elif pend is not None:
            new_t, new_r = pend
        else:
            return np.empty(0), np.empty(0, np.int64)
        order = np.argsort(new_t, kind="stable")
        new_t, new_r = new_t[order], new_r[order]
        cut = int(np.searchsorted(new_t, t1, side="left"))
        st.pending = (new_t[cut:], new_r[cut:]) if cut < len(new_t) else None
        return new_t[:cut], new_r[:cut]

    def _joined(self, st: _Stage, reqs: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if st.left is None or st.last is None:
            st.left = np.bincount(st.parent, minlength=self.n)
            st.last = np.zeros(self.n)
        np.maximum.at(st.last, reqs, ends)
        np.subtract.at(st.left, reqs, 1)
        u = np.unique(reqs)
        done = u[st.left[u] == 0]
        return done, st.last[done]

    # ---- control loop

    def _observe(self, t: float) -> Observation:
        iv = self.period_s
        stages = []
        drops = 0
        for st, (soj, _, nd, na) in zip(self.stages, self.interval_obs, strict=True):
            s = np.concatenate(soj) if soj else np.empty(0)
            stages.append(StageObservation(
                stage=st.name, arrival_rps=na / iv,
                queue_length=float(st.in_system(t)),  # queued + in a running batch, now (as live reports it)
                p99_latency_s=_p99(s) if len(s) else 0.0, drops=nd, replicas=len(st.free)))
            drops += nd
        e2e = np.concatenate(self.e2e_window) if self.e2e_window else np.empty(0)
        self.interval_obs = [[[], [], 0, 0] for _ in self.stages]
        self.e2e_window = []
        lo = max(0, int(t) - HISTORY_WINDOW_S)
        hist = self.counts[lo:int(t)].astype(np.float64)
        arrived = float(self.counts[max(0, int(t - iv)):int(t)].sum()) / iv
        return Observation(time_s=t, interval_s=iv, arrival_rps=arrived, stages=tuple(stages),
                           e2e_p99_s=_p99(e2e) if len(e2e) else 0.0, drops=drops,
                           history_rps=hist)

    def _decide(self, t: float, first: bool) -> None:
        obs = self._observe(t)
        if first:  # warm start, the same for every policy: the first interval's mean load
            iv = int(self.cfg.interval_s)
            fc = Forecast(rps=float(self.counts[:max(iv, 1)].mean()), predictor="warm-start")
        else:
            fc = self.forecaster(t, obs.history_rps)
        lo, hi = int(t), min(int(math.ceil(t + self.period_s)), len(self.pred))
        self.pred[lo:hi] = fc.rps
        self._now, self._step_in = t, (obs, fc)
        if self.loop is None:  # Ray's own autoscaler: every decision applies, as Serve scales itself
            new = self.policy.decide(obs, fc, self.current or self.initial or Decision(stages=()))
            if self.current is None or not new.same_config(self.current):
                self._apply(new)
        else:
            entry = self.loop.step()
            if entry.action == "failed":
                raise VaripipeError(f"policy {self.policy.name!r} at t={t:.0f} s: {entry.note}")
            if self.current is None:  # the initial decision was kept: it goes in force now
                assert self.loop.applied is not None
                self._apply(self.loop.applied)
        self.timeline.append(self.current)

    def _apply(self, new: Decision) -> None:
        """The control loop's ``apply``: the first decision at once, later ones with their delays."""
        if [s.stage for s in new.stages] != list(self.profile.stages):
            raise VaripipeError(f"policy {self.policy.name!r} returned stages {[s.stage for s in new.stages]}, "
                                f"expected {list(self.profile.stages)}")
        if self.current is None:
            self._apply_now(new, self._now)
        else:
            self.changes += 1
            self._schedule(new, self._now)

    def run(self) -> None:
        t, iv = 0.0, self.period_s
        end = float(self.seconds - 1)
        next_decision = 0.0
        slice_s = SHARED_SLICE_S if self.busy is not None else iv
        while t < end:
            if t >= next_decision - 1e-9:
                self._decide(t, first=next_decision == 0.0)
                next_decision += iv
            self._fire_events(t)
            nxt = min(next_decision, math.floor(t / slice_s + 1e-9) * slice_s + slice_s, end)
            if self.events:
                nxt = min(nxt, self.events[0][0])
            self._segment(t, nxt)
            t = nxt
            if t >= self.horizon and not self._busy_left():
                break
        self.end_s = t

    def _busy_left(self) -> bool:
        return any(st.queued or st.pending is not None for st in self.stages)


# --------------------------------------------------------------------------- results


def _accuracy(run: _Run) -> np.ndarray:
    acc = np.ones(run.n)
    for st in run.stages:
        ok = st.batch_of >= 0
        item_acc = np.full(len(st.parent), np.nan)
        model_acc = np.array([m.accuracy for m in st.models] or [np.nan])
        if ok.any():
            item_acc[ok] = model_acc[np.asarray(st.b_model, dtype=np.int64)[st.batch_of[ok]]]
        if st.identity:
            acc *= np.nan_to_num(item_acc, nan=1.0)
        else:
            worst = np.ones(run.n)
            np.minimum.at(worst, st.parent, np.nan_to_num(item_acc, nan=1.0))
            acc *= worst
    acc[np.isnan(run.req_done)] = np.nan
    return acc


def _series(run: _Run, latency: np.ndarray, within: np.ndarray, acc: np.ndarray) -> SimSeries:
    n_sec = max(int(run.horizon), 1)
    sec = np.minimum(run.arrivals.astype(np.int64), n_sec - 1)
    done = ~np.isnan(latency)
    cost = run.cost if run.busy is None else np.minimum(run.busy, run.cfg.cluster_cores)
    iv = max(int(run.cfg.interval_s), 1)
    p99 = np.full(n_sec, np.nan)
    for lo in range(0, n_sec, iv):
        a, b = np.searchsorted(run.arrivals, [lo, lo + iv])
        lat = latency[a:b][done[a:b]]
        if len(lat):
            p99[lo:lo + iv] = np.percentile(lat, 99)
    return SimSeries(
        arrivals=np.bincount(sec, minlength=n_sec), within_sla=np.bincount(sec, weights=within, minlength=n_sec),
        dropped=np.bincount(sec, weights=~done, minlength=n_sec),
        accuracy_sum=np.bincount(sec[done], weights=acc[done], minlength=n_sec),
        completed=np.bincount(sec, weights=done, minlength=n_sec), cost=cost[:n_sec],
        predicted_rps=run.pred[:n_sec], replicas=run.replica_s[:n_sec], p99_latency_s=p99)


def _result(run: _Run, wall_s: float, keep_table: bool) -> SimResult:
    run.req_dropped |= np.isnan(run.req_done)
    run.req_done[run.req_dropped] = np.nan
    run.req_done += run.cfg.overhead_s
    latency = run.req_done - run.arrivals
    done = ~np.isnan(latency)
    within = done & (latency <= run.cfg.sla_s)
    acc = _accuracy(run)
    series = _series(run, latency, within, acc)
    span = max(run.horizon, 1e-9)
    cost = run.cost if run.busy is None else np.minimum(run.busy, run.cfg.cluster_cores)
    table = None
    if keep_table:
        table = RequestTable(run.arrivals, run.req_done, run.req_dropped, acc, tuple(s.name for s in run.stages),
                             tuple(s.parent for s in run.stages), tuple(s.arr for s in run.stages),
                             tuple(s.done for s in run.stages), tuple(s.batch_of for s in run.stages))
    return SimResult(
        policy=run.policy.name, requests=run.n, completed=int(done.sum()), dropped=int((~done).sum()),
        sla_attainment=float(within.sum() / run.n) if run.n else 1.0,
        p99_latency_s=float(np.percentile(latency[done], 99)) if done.any() else float("nan"),
        mean_latency_s=float(latency[done].mean()) if done.any() else float("nan"),
        mean_accuracy=float(np.nanmean(acc)) if done.any() else float("nan"),
        mean_cost=float(cost[: int(span) or 1].mean()),
        cost_unit="reserved cores" if run.cfg.cost_mode == "reserved" else "CPU-seconds per second",
        decisions=run.changes, duration_s=run.horizon, sla_s=run.cfg.sla_s, cost_mode=run.cfg.cost_mode,
        series=series, timeline=tuple(run.timeline), table=table, wall_s=wall_s)


def simulate(profile: Profile, arrivals: Sequence[float] | np.ndarray, policy: Policy, forecaster: Forecaster,
             config: SimConfig, *, initial: Decision | None = None, keep_table: bool = False) -> SimResult:
    """Run ``arrivals`` (send times, s) through the pipeline under ``policy``.

    ``forecaster(time_s, history_rps) -> Forecast`` feeds the policy's forecast;
    the first decision is taken at t=0 on the first interval's mean load and
    applied at once (every policy starts from a warm configuration).
    """
    import time

    started = time.perf_counter()
    run = _Run(profile, np.asarray(arrivals, dtype=np.float64), policy, forecaster, config, initial)
    if run.n:
        run.run()
    return _result(run, time.perf_counter() - started, keep_table)
