"""Aggregated serving metrics: one instance lives in the controller replica.

Ingress and stage replicas buffer small typed records and push them here about
once a second; this class turns them into Prometheus metrics (its own
registry: metrics inside separate replica processes are scraped by nobody,
DESIGN §4) and into the per-interval ``Observation`` the control loop reads,
built by the simulator's function (``varipipe.observation.observe``) from the
same counts: the ingress reports each request entering and leaving each stage
(:class:`StageEntry`, :class:`StageExit`), so a stage's arrivals are counted
once, when they enter, and its queue is what the ingress's Serve handle counts
(requests sent to the stage and not yet back). A stage deployment takes one
call per request: a request is one item at every stage, the unit in which the
profiler states every shipped stage's throughput (``Profile.fanout`` = 1,
``profiler/run.py``). Pure apart from prometheus-client; time comes in as an argument.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from varipipe.observation import HISTORY_S, StageCounters, StageState, observe, percentile
from varipipe.records import Decision, Observation

__all__ = ["RequestRecord", "BatchRecord", "StageTiming", "StageEntry", "StageExit", "WindowStats",
           "MetricsAggregator", "percentile"]

# Latency buckets (s): 5 ms .. 60 s, roughly x2 apart, covering an identity stage
# (~1 ms) to a full LLM caption on two cores (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class StageTiming:
    stage: str
    variant: str
    seconds: float  # as seen by the ingress: queueing + batch + transfer
    batch_size: int


@dataclass(frozen=True)
class RequestRecord:
    """One request as the ingress saw it."""

    time: float  # arrival at the ingress (time.time())
    latency_s: float
    status: int  # HTTP status answered
    stages: tuple[StageTiming, ...] = ()
    dropped_at: str = ""  # stage that dropped it after work began (deadline), "" if none
    rejected_at: str = ""  # the ingress rejected it before any work, blaming this stage (admission), "" if not


@dataclass(frozen=True)
class BatchRecord:
    """One batch a stage replica ran: ``size`` items served (shed ones not counted) in
    ``compute_s`` of runtime call (what the profiler times), ending at ``time``, on
    ``hardware``; ``tokens`` generated (the LLM's; 0 for a stage that counts none)."""

    stage: str
    variant: str
    size: int
    compute_s: float
    time: float
    hardware: str = ""
    tokens: int = 0


@dataclass(frozen=True)
class StageEntry:
    """A request sent to a stage by the ingress (``items`` of it: 1, one call per request)."""

    stage: str
    time: float
    items: int = 1


@dataclass(frozen=True)
class StageExit:
    """A request back from a stage: done after ``latency_s`` there (queue + batch + transfer),
    shed by it (``dropped``), or lost with a replica that died (``lost``)."""

    stage: str
    time: float
    latency_s: float
    items: int = 1
    dropped: bool = False
    lost: bool = False


@dataclass(frozen=True)
class WindowStats:
    """What the dashboard plots for one closed window (beside the Observation)."""

    time: float
    interval_s: float
    arrivals: int
    completed: int
    within_sla: int
    errors: int  # non-200 answers other than deadline drops and rejections
    drops: int
    e2e_p50_s: float
    e2e_p99_s: float
    rejected: int = 0  # answered at once by the ingress's admission control (503 / 504), before any work


@dataclass
class _Window:
    stages: dict[str, StageCounters]
    arrivals: int = 0
    drops: int = 0  # requests answered as dropped (a stage shed them)
    rejected: int = 0  # requests the ingress rejected before any work (admission control)
    errors: int = 0
    e2e: list[float] = field(default_factory=list)


class MetricsAggregator:
    """Counts, histograms and the current configuration, for one application."""

    def __init__(self, pipeline: str, stages: Sequence[str], sla_s: float, start_time: float) -> None:
        self.pipeline = pipeline
        self.stages = tuple(stages)
        self.sla_s = sla_s
        self.registry = CollectorRegistry()
        self._window = self._new_window()  # the dashboard's window, closed every second or so
        self._interval = self._new_window()  # the control loop's, closed at each of its steps
        self._window_start = self._interval_start = start_time
        self._first_second = int(start_time)  # history starts here: no arrival is an observation too
        self._in_stage = dict.fromkeys(self.stages, 0)  # items sent to each stage and not back yet
        self._per_second: dict[int, int] = {}  # whole second -> arrivals, the last HISTORY_S
        self.total_requests = 0
        self.batch_sizes: dict[str, deque[int]] = {s: deque(maxlen=1000) for s in self.stages}
        self.last_window: WindowStats | None = None
        self._make_metrics()

    def _make_metrics(self) -> None:
        r, lbl = self.registry, ["pipeline"]
        self.m_requests = Counter("varipipe_requests", "Requests answered, by HTTP status", [*lbl, "status"], registry=r)
        self.m_e2e = Histogram("varipipe_e2e_latency_seconds", "End-to-end latency", lbl,
                               buckets=LATENCY_BUCKETS, registry=r)
        self.m_stage_requests = Counter("varipipe_stage_requests", "Requests served per stage",
                                        [*lbl, "stage"], registry=r)
        self.m_stage_latency = Histogram("varipipe_stage_latency_seconds", "Per-stage latency seen by the ingress",
                                         [*lbl, "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.m_batch = Histogram("varipipe_batch_size", "Batch sizes run", [*lbl, "stage"],
                                 buckets=BATCH_BUCKETS, registry=r)
        self.m_drops = Counter("varipipe_drops", "Requests dropped after work began (past their deadline, "
                               "or lost with a replica)", [*lbl, "stage"], registry=r)
        self.m_rejected = Counter("varipipe_rejected", "Requests the ingress answered at once (admission control: "
                                  "they could not finish in time), by the stage whose queue or service time "
                                  "was the reason", [*lbl, "stage"], registry=r)
        self.m_sla = Counter("varipipe_sla_violations", "Requests answered later than the SLA, or not at all",
                             lbl, registry=r)
        self.m_variant = Gauge("varipipe_variant", "1 for the variant each stage runs", [*lbl, "stage", "variant"],
                               registry=r)
        self.m_max_batch = Gauge("varipipe_max_batch_size", "Configured max batch size", [*lbl, "stage"], registry=r)
        self.m_replicas = Gauge("varipipe_replicas", "Configured replicas", [*lbl, "stage"], registry=r)
        self.m_cost = Gauge("varipipe_cost", "Predicted cost of the current decision", lbl, registry=r)
        self.m_accuracy = Gauge("varipipe_accuracy", "Predicted end-to-end accuracy", lbl, registry=r)
        self.m_pred_load = Gauge("varipipe_predicted_load_rps", "Load the current decision was made for", lbl,
                                 registry=r)
        self.m_decisions = Counter("varipipe_decisions", "Decisions applied", lbl, registry=r)
        cal = [*lbl, "stage", "variant"]
        self.m_cal_factor = Gauge("varipipe_calibration_factor", "Correction in force: the planner's latencies of "
                                  "the variant are the profile's times this (1 = the profile as is)", cal, registry=r)
        self.m_cal_tail = Gauge("varipipe_calibration_tail", "Tail in force: the variant's batch times spread this "
                                "many times the profile's (lognormal sigma ratio; 1 = the profile's), which "
                                "widens the planner's p95 and p99", cal, registry=r)
        self.m_cal_estimate = Gauge("varipipe_calibration_estimate", "Observed / profile service time, as estimated "
                                    "(before the dead band, significance gate and bounds)", cal, registry=r)
        self.m_cal_observed = Gauge("varipipe_service_observed_p50_seconds", "p50 batch service time observed "
                                    "(the newest batches of the variant)", cal, registry=r)
        self.m_cal_profile = Gauge("varipipe_service_profile_p50_seconds", "The profile's p50 for the same batches",
                                   cal, registry=r)
        self.m_cal_samples = Gauge("varipipe_calibration_samples", "Batches the variant's correction rests on",
                                   cal, registry=r)
        self.m_loop_errors = Counter("varipipe_adapter_errors", "Control loop failures", lbl, registry=r)

    # --- ingestion -------------------------------------------------------------
    def add_requests(self, records: Iterable[RequestRecord]) -> None:
        p = self.pipeline
        for rec in records:
            self.total_requests += 1
            self.m_requests.labels(p, str(rec.status)).inc()
            ok = rec.status == 200
            if ok:
                self.m_e2e.labels(p).observe(rec.latency_s)
            if not ok or rec.latency_s > self.sla_s:
                self.m_sla.labels(p).inc()
            if rec.rejected_at:
                self.m_rejected.labels(p, rec.rejected_at).inc()
            for w in (self._window, self._interval):
                if ok:
                    w.e2e.append(rec.latency_s)
                if not ok and not rec.dropped_at and not rec.rejected_at:
                    w.errors += 1
                if rec.rejected_at:
                    w.rejected += 1
                if rec.dropped_at:
                    w.drops += 1

    def add_stage_events(self, events: Iterable[StageEntry | StageExit]) -> None:
        """Requests entering and leaving stages, in the order the ingress saw them."""
        p = self.pipeline
        for e in events:
            if e.stage not in self._in_stage:
                continue  # not a stage of this pipeline
            both = (self._window.stages[e.stage], self._interval.stages[e.stage])
            if isinstance(e, StageEntry):
                self._in_stage[e.stage] += e.items
                for counters in both:
                    counters.entered += e.items
                continue
            self._in_stage[e.stage] -= e.items
            if e.dropped or e.lost:
                self.m_drops.labels(p, e.stage).inc(e.items)
                for counters in both:
                    counters.drops += e.items
            else:
                self.m_stage_requests.labels(p, e.stage).inc(e.items)
                self.m_stage_latency.labels(p, e.stage).observe(e.latency_s)
                for counters in both:
                    counters.left_one(e.latency_s)

    def add_arrivals(self, times: Iterable[float]) -> None:
        """Requests as they *arrive* at the ingress (answers come later, or never)."""
        for t in times:
            sec = int(t)
            self._window.arrivals += 1
            self._interval.arrivals += 1
            self._per_second[sec] = self._per_second.get(sec, 0) + 1
        if len(self._per_second) > 2 * HISTORY_S:
            newest = max(self._per_second)
            self._per_second = {k: v for k, v in self._per_second.items() if k > newest - HISTORY_S}

    def add_batches(self, records: Iterable[BatchRecord]) -> None:
        """Batches the stage replicas ran: the batch-size histogram, and each batch's service time
        in the observations (``Observation.batches``, what calibration compares with the profile)."""
        for rec in records:
            if rec.size < 1:
                continue  # a batch whose items were all shed: nothing ran
            self.m_batch.labels(self.pipeline, rec.stage).observe(rec.size)
            self.batch_sizes.setdefault(rec.stage, deque(maxlen=1000)).append(rec.size)
            if rec.stage not in self._in_stage or not rec.hardware:
                continue  # not a stage of this pipeline, or a record that does not say its hardware
            for w in (self._window, self._interval):
                w.stages[rec.stage].ran(rec.variant, rec.hardware, rec.size, rec.compute_s, rec.time, rec.tokens)

    def set_decision(self, decision: Decision, previous: Decision | None = None) -> None:
        p = self.pipeline
        if previous is not None:
            for s in previous.stages:
                self.m_variant.labels(p, s.stage, s.variant).set(0)
        for s in decision.stages:
            self.m_variant.labels(p, s.stage, s.variant).set(1)
            self.m_max_batch.labels(p, s.stage).set(s.batch)
            self.m_replicas.labels(p, s.stage).set(s.replicas)
        self.m_cost.labels(p).set(decision.predicted_cost)
        self.m_accuracy.labels(p).set(decision.predicted_accuracy)
        self.m_pred_load.labels(p).set(decision.load_rps)
        if previous is not None:
            self.m_decisions.labels(p).inc()

    def set_calibration(self, calibration) -> None:
        """The corrections in force (an ``adapter.calibration.Calibration``) as gauges per stage and variant."""
        p = self.pipeline
        for c in calibration.corrections:
            self.m_cal_factor.labels(p, c.stage, c.variant).set(c.factor)
            self.m_cal_tail.labels(p, c.stage, c.variant).set(c.tail)
            self.m_cal_estimate.labels(p, c.stage, c.variant).set(c.estimate)
            self.m_cal_samples.labels(p, c.stage, c.variant).set(c.samples)
            if c.samples:
                self.m_cal_observed.labels(p, c.stage, c.variant).set(c.observed_p50_s)
                self.m_cal_profile.labels(p, c.stage, c.variant).set(c.predicted_p50_s)

    def loop_error(self) -> None:
        self.m_loop_errors.labels(self.pipeline).inc()

    # --- reading ---------------------------------------------------------------
    def history_rps(self, now: float) -> list[float]:
        """Arrivals per whole second since this aggregator started, the last ``HISTORY_S`` at
        most, up to (not including) the current second: as the simulator's observations carry."""
        current = int(now)
        counts = self._per_second
        start = max(current - HISTORY_S, self._first_second)
        return [float(counts.get(s, 0)) for s in range(start, current)]

    def observe(self, now: float, replicas: Mapping[str, int] | None = None) -> Observation:
        """Close the dashboard's window (since the last call) and start a new one; ``replicas``:
        each stage's running replicas now (Serve's status). No per-second history: windows are
        kept by the thousand for ``/api/history``."""
        w = self._window
        obs = self._observation(w, self._window_start, now, replicas, ())
        self.last_window = WindowStats(
            time=now, interval_s=obs.interval_s, arrivals=w.arrivals, completed=len(w.e2e),
            within_sla=sum(1 for x in w.e2e if x <= self.sla_s), errors=w.errors, drops=w.drops,
            rejected=w.rejected, e2e_p50_s=percentile(w.e2e, 50), e2e_p99_s=obs.e2e_p99_s,
        )
        self._window, self._window_start = self._new_window(), now
        return obs

    def observe_interval(self, now: float, replicas: Mapping[str, int] | None = None) -> Observation:
        """The control loop's observation of the interval since its last call, with the
        per-second history: counted over the whole interval, as the simulator observes."""
        obs = self._observation(self._interval, self._interval_start, now, replicas, self.history_rps(now))
        self._interval, self._interval_start = self._new_window(), now
        return obs

    def _observation(self, w: _Window, start: float, now: float, replicas: Mapping[str, int] | None,
                     history: Sequence[float]) -> Observation:
        running = replicas or {}
        state = {s: StageState(self._in_stage[s], int(running.get(s, 0))) for s in self.stages}
        return observe(now, max(1e-9, now - start), w.arrivals, w.stages, state, w.e2e, history)

    def _new_window(self) -> _Window:
        return _Window({s: StageCounters() for s in self.stages})

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

