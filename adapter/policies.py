"""Adaptation policies behind the one :class:`Policy` interface (DESIGN §4).

``make_policy(name, ctx, **options)`` builds one:

    ipa         the ILP (``optimizer.solve``) on the forecast
    fa2-low     smallest variant per stage fixed; the ILP scales batch and replicas
    fa2-high    largest variant per stage fixed; the ILP scales batch and replicas
    rim         replicas fixed; the ILP switches variants and batch
    static      one fixed decision, whatever the load
    ray         Ray Serve's default autoscaling rule, re-implemented for the simulator
    oracle      the ILP on the true peak of the next interval (knows the future trace)
    module:Class  a user's policy, constructed as ``Class(ctx, **options)``

Policies are pure: everything they know comes in through the constructor and
``decide``; time is ``observation.time_s``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from varipipe.adapter.configurations import (
    Configuration,
    Limits,
    Weights,
    stage_configurations,
    stage_loads,
)
from varipipe.adapter.optimizer import DEFAULT_SOLVER, solve
from varipipe.adapter.policy import Forecast, Policy, PolicyContext
from varipipe.errors import ConfigError, UnknownNameError
from varipipe.records import Decision, DecisionStatus, Observation, Profile, StageDecision

__all__ = ["POLICIES", "SOLVER_POLICIES", "SOLVER_OPTIONS", "policy_options", "make_policy", "price_decision",
           "default_variant", "StaticPolicy", "SolverPolicy", "RayPolicy", "OraclePolicy", "RAY_DEFAULTS",
           "ranked_variants"]


def default_variant(ctx: PolicyContext, stage: str) -> str:
    """The variant a policy that does not choose variants runs (``static``, ``ray``): the
    profile's most accurate one, the fastest (p99) of them on a tie. One rule, live and
    simulated; it needs only the profile every policy has (a spec's ``default_variant`` is
    what ``serve`` starts on before any policy decides)."""
    profile = ctx.profile
    return max(profile.for_stage(stage),
               key=lambda p: (profile.variant_accuracy(stage, p.variant), -p.latency_p99_s)).variant


def ranked_variants(profile: Profile, stage: str) -> list[str]:
    """Variants of a stage from lightest to heaviest: by memory, then batch-1 latency, then accuracy.

    FA2-low / FA2-high run the lightest / heaviest variants (IPA's baselines). Size is
    the variant's smallest measured footprint (``memory_mb``: weights, runtime and the
    activations of its input size), with its best batch-1 latency to break ties (a
    profile without memory figures). Accuracy figures are no measure of size: an
    agreement score ranks a variant by how much it agrees with the reference (the
    608 detector scores below 320 against 416), and latency alone can rank a larger
    LLM first when it writes shorter captions.
    """
    best: dict[str, tuple[float, float, float]] = {}
    for p in profile.for_stage(stage):
        mem, lat, acc = best.get(p.variant, (math.inf, math.inf, profile.variant_accuracy(stage, p.variant)))
        best[p.variant] = (min(mem, p.memory_mb), min(lat, p.latency_p99_s) if p.batch == 1 else lat, acc)
    return sorted(best, key=lambda v: best[v])


def _limits(ctx: PolicyContext, **overrides: Any) -> Limits:
    base = dict(cost_mode=ctx.cost_mode, cluster_cores=ctx.cluster_cores, max_replicas=ctx.max_replicas,
                cluster_gpus=ctx.cluster_gpus, gpu_memory_mb=ctx.gpu_memory_mb)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Limits(**base)


def price_decision(ctx: PolicyContext, stages: Sequence[StageDecision], load_rps: float,
                   limits: Limits | None = None, policy: str = "", time_s: float = 0.0) -> Decision:
    """A rule-made decision with its predicted latency, accuracy and cost at ``load_rps``."""
    fixed = {s.stage: s.replicas for s in stages}
    limits = dataclasses.replace(limits or _limits(ctx), fixed_replicas=fixed, batch_sizes=None,
                                 max_replicas=max([ctx.max_replicas, *fixed.values()]))
    loads = stage_loads(ctx.profile, load_rps)
    priced: list[StageDecision] = []
    overloaded: list[str] = []
    for sd in stages:
        c = _match(stage_configurations(ctx.profile, sd.stage, loads.get(sd.stage, load_rps), limits), sd)
        if c is None:
            priced.append(sd)
            continue
        if limits.rho_max * c.capacity_rps < c.load_rps:
            overloaded.append(f"{sd.stage} carries {c.capacity_rps:.1f}/s of {c.load_rps:.1f}/s")
        priced.append(dataclasses.replace(sd, batch_wait_s=c.batch_wait_s if sd.batch_wait_s == 0 else sd.batch_wait_s,
                                          latency_s=c.latency_s, accuracy=c.accuracy, cost=c.cost))
    return Decision(stages=tuple(priced), status=DecisionStatus.FIXED, policy=policy, time_s=time_s,
                    reason="; ".join(overloaded), load_rps=load_rps,
                    predicted_latency_s=sum(s.latency_s for s in priced),
                    predicted_accuracy=math.prod(s.accuracy for s in priced if s.accuracy > 0),
                    predicted_cost=sum(s.cost for s in priced),
                    explanation=f"{policy}: fixed rule" + (f"; overloaded: {'; '.join(overloaded)}" if overloaded else ""))


def _match(configs: list[Configuration], sd: StageDecision) -> Configuration | None:
    for c in configs:
        if (c.variant, c.batch, c.hardware) == (sd.variant, sd.batch, sd.hardware):
            return c
    return None


class _Replans:
    """A policy that plans on ``self.ctx.profile`` and takes a corrected one from the control
    loop before each decision (online calibration, ``adapter.calibration``)."""

    ctx: PolicyContext

    def set_profile(self, profile: Profile) -> None:
        """Plan on ``profile`` from the next decision on (the loop's calibrated view)."""
        if profile is not self.ctx.profile:
            self.ctx = dataclasses.replace(self.ctx, profile=profile)


def _hardware_of(ctx: PolicyContext, stage: str, variant: str) -> str:
    hws = sorted({p.hardware for p in ctx.profile.for_stage(stage) if p.variant == variant})
    return hws[0] if hws else "cpu:1"


# ------------------------------------------------------------------ static


class StaticPolicy(_Replans):
    """One fixed decision: ``decision=`` given, else each stage's :func:`default_variant` (the
    profile's most accurate), batch 1, 1 replica."""

    def __init__(self, ctx: PolicyContext, decision: Decision | None = None, batch: int = 1,
                 replicas: int = 1, name: str = "static") -> None:
        self.name = name
        self.ctx = ctx
        self.stages = decision.stages if decision is not None else tuple(
            StageDecision(stage=s, variant=(v := default_variant(ctx, s)), batch=batch, replicas=replicas,
                          hardware=_hardware_of(ctx, s, v))
            for s in ctx.profile.stages
        )

    def decide(self, observation: Observation, forecast: Forecast, current: Decision) -> Decision:
        return price_decision(self.ctx, self.stages, forecast.rps, policy=self.name, time_s=observation.time_s)


# ------------------------------------------------------------ ILP policies


class SolverPolicy(_Replans):
    """The ILP on a load estimate, with optional fixed variants / replicas (ipa, fa2-*, rim)."""

    def __init__(self, ctx: PolicyContext, name: str = "ipa", pinned: Mapping[str, str] | None = None,
                 fixed_replicas: Mapping[str, int] | None = None, objective: str = "weighted",
                 accuracy: str = "multiply", solver: str = DEFAULT_SOLVER, weights: Weights | None = None,
                 min_accuracy: float | None = None, max_cost: float | None = None, **limit_options: Any) -> None:
        self.name = name
        self.ctx = ctx
        self.base_pins = dict(pinned or {})
        self.operator_pins: dict[str, str] = {}
        self.limits = _limits(ctx, fixed_replicas=dict(fixed_replicas or {}), **limit_options)
        self.solve_options = dict(objective=objective, accuracy=accuracy, solver=solver, weights=weights,
                                  min_accuracy=min_accuracy, max_cost=max_cost)

    def set_pinned(self, pins: Mapping[str, str]) -> None:
        """Operator pins (stage -> variant), applied on top of the policy's own."""
        self.operator_pins = dict(pins)

    def load_estimate(self, observation: Observation, forecast: Forecast) -> float:
        return forecast.rps

    def decide(self, observation: Observation, forecast: Forecast, current: Decision) -> Decision:
        load = self.load_estimate(observation, forecast)
        limits = dataclasses.replace(self.limits, pinned={**self.base_pins, **self.operator_pins})
        d = solve(self.ctx.profile, load, self.ctx.sla, limits, **self.solve_options,
                  incumbent=current if current.stages else None)
        return dataclasses.replace(d, policy=self.name, time_s=observation.time_s)


def _fa2(which: str) -> Callable[..., Policy]:
    def build(ctx: PolicyContext, **options: Any) -> Policy:
        pick = 0 if which == "low" else -1
        pins = {s: ranked_variants(ctx.profile, s)[pick] for s in ctx.profile.stages}
        return SolverPolicy(ctx, name=f"fa2-{which}", pinned=pins, **options)

    return build


def _rim(ctx: PolicyContext, replicas: int | Mapping[str, int] = 1, **options: Any) -> Policy:
    fixed = dict(replicas) if isinstance(replicas, Mapping) else {s: int(replicas) for s in ctx.profile.stages}
    return SolverPolicy(ctx, name="rim", fixed_replicas=fixed, **options)


class OraclePolicy(SolverPolicy):
    """The ILP on the true peak of the next interval, read from the future trace.

    ``trace`` holds per-second rates; ``trace_start_s`` is the observation time
    of its first sample. Past the end of the trace the last sample is used.
    """

    def __init__(self, ctx: PolicyContext, trace: Sequence[float], trace_start_s: float = 0.0,
                 horizon_s: float | None = None, **options: Any) -> None:
        if not len(trace):
            raise ValueError("oracle needs a non-empty future trace (per-second rates)")
        super().__init__(ctx, name="oracle", **options)
        self.trace = trace
        self.trace_start_s = trace_start_s
        self.horizon_s = horizon_s if horizon_s is not None else ctx.interval_s

    def load_estimate(self, observation: Observation, forecast: Forecast) -> float:
        i = max(0, int(observation.time_s - self.trace_start_s))
        window = self.trace[i:i + max(1, math.ceil(self.horizon_s))]
        return float(max(window)) if len(window) else float(self.trace[-1])


# --------------------------------------------------------------------- ray

# Ray Serve 2.60 AutoscalingConfig defaults (ray/serve/config.py, checked with
# ray.serve.config.AutoscalingConfig() on this machine).
RAY_DEFAULTS: dict[str, Any] = {
    "min_replicas": 1,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 30.0,
    "downscale_delay_s": 600.0,
    "look_back_period_s": 30.0,
    "upscaling_factor": 1.0,  # None in Ray means the smoothing factor, 1.0
    "downscaling_factor": 1.0,
}


# How Ray 2.60 feeds its autoscaler (python/ray/serve/_private/router.py, constants.py,
# autoscaling_state.py): each handle records its ongoing requests (queued + sent to
# replicas) every min(look_back_period_s x RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR,
# metrics_interval_s) seconds and pushes the points of the last look_back_period_s to the
# controller every RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S; the controller's
# figure is the time-weighted mean of the pushed series, the last point held until now
# (_merge_and_aggregate_timeseries). The controller first merges the handle's series (its
# queued requests and one running series per replica: always two or more) into their
# change points from a baseline of 0 (autoscaling_metrics_merge.py,
# merge_instantaneous_total_arrays), so leading zeros vanish: the mean runs from the
# first non-zero point to now, and after an idle spell the first busy sample alone is the
# figure until the next push.
RAY_RECORD_INTERVAL_FACTOR = 0.2  # RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR default
RAY_METRICS_INTERVAL_S = 10.0  # AutoscalingConfig.metrics_interval_s default (deprecated field)
RAY_METRICS_PUSH_INTERVAL_S = 10.0  # RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S default
# Ray's controller loop runs every 0.1 s (CONTROL_LOOP_INTERVAL_S); the simulator asks the
# simulated rule every second, which places Ray's 6 s / 10 s timers and its 30 s delays
# to within a second while keeping day-long simulations fast.
RAY_SIM_CONTROL_PERIOD_S = 1.0
# Ray's _DELAY_ELAPSED_EPS_S (autoscaling_policy.py): a delay counts as elapsed this close to it.
_DELAY_EPS_S = 1e-6
# Options of the simulated rule beyond Ray's autoscaling_config: the replicas cap, the
# batch size it keeps, and where the handles' metric timers stand at t = 0 (seconds
# since they started; live this phase is arbitrary, so the fidelity check sweeps it).
_RAY_SIM_OPTIONS = ("max_replicas", "batch", "metrics_phase_s")


def _next_tick(tick: float, period: float, time_s: float) -> float:
    """The first tick of a timer firing every ``period`` from ``tick`` that lies after ``time_s``."""
    return tick + period * (1 + math.floor((time_s - tick) / period))


class _RayMetrics:
    """One deployment's ongoing-request figure as Ray's controller sees it (see above)."""

    def __init__(self, look_back_s: float, phase_s: float = 0.0) -> None:
        """``phase_s``: how long before t = 0 the handle started its timers (0: at t = 0).
        Live, a handle starts them when it is made, some arbitrary time before the load."""
        self.look_back_s = look_back_s
        self.record_s = min(look_back_s * RAY_RECORD_INTERVAL_FACTOR, RAY_METRICS_INTERVAL_S)
        self.recorded: deque[tuple[float, float]] = deque()
        self.pushed: tuple[tuple[float, float], ...] = ()
        # The timers' first ticks at or after t = 0 (record) and after t = 0 (push): with
        # phase 0, a record at 0 and the first push at 10 s.
        self.next_record = -phase_s + self.record_s * math.ceil(phase_s / self.record_s)
        self.next_push = _next_tick(-phase_s, RAY_METRICS_PUSH_INTERVAL_S, 0.0)

    def update(self, time_s: float, ongoing: float) -> float:
        """Record and push as the timers say, then return the controller's figure at ``time_s``."""
        if time_s >= self.next_record:
            self.recorded.append((time_s, ongoing))
            self.next_record = _next_tick(self.next_record, self.record_s, time_s)
        while self.recorded and self.recorded[0][0] < time_s - self.look_back_s:
            self.recorded.popleft()
        if time_s >= self.next_push:
            self.pushed = tuple(self.recorded)
            self.next_push = _next_tick(self.next_push, RAY_METRICS_PUSH_INTERVAL_S, time_s)
        return self.mean(time_s)

    def mean(self, time_s: float) -> float:
        # Leading zeros are not change points in Ray's merge: the window opens at the first non-zero.
        points = self.pushed
        first = next((i for i, (_, v) in enumerate(points) if v != 0), None)
        if first is None:
            return 0.0
        points = points[first:]
        span = time_s - points[0][0]
        if span <= 0:
            return points[-1][1]
        total = sum(v * (t1 - t0) for (t0, v), (t1, _) in zip(points, points[1:], strict=False))
        return (total + points[-1][1] * (time_s - points[-1][0])) / span


class RayPolicy(_Replans):
    """Ray Serve's default autoscaling rule, for the simulator (live, Ray runs it itself).

    Ray 2.60, python/ray/serve/autoscaling_policy.py: ``_core_replica_queue_length_policy``
    wants ``current · total_ongoing / (target_ongoing_requests · current)`` replicas;
    ``_apply_scaling_factors`` moves ``ceil(current + factor · (desired − current))``;
    ``_apply_bounds`` clips to [min, max]; ``_apply_delay_logic`` applies a scale-up once
    it has been wanted without a break for ``upscale_delay_s`` of wall-clock time (a
    scale-down after ``downscale_delay_s``), a change of direction restarting the clock.
    ``total_ongoing`` is what the controller has been sent: handle samples every 6 s,
    pushed every 10 s, averaged over ``look_back_period_s`` (``_RayMetrics``). The
    simulator calls ``decide`` every ``control_period_s``.
    Variants and batch sizes never change: they stay as in ``current`` (or each stage's
    :func:`default_variant` at batch 1 when ``current`` is empty; live, Serve starts from that
    same decision: ``pipelines.server.delegated_scaling``).
    """

    control_period_s = RAY_SIM_CONTROL_PERIOD_S

    def __init__(self, ctx: PolicyContext, **config: Any) -> None:
        unknown = set(config) - set(RAY_DEFAULTS) - set(_RAY_SIM_OPTIONS)
        if unknown:
            raise ConfigError("ray policy options", ", ".join(sorted(unknown)),
                              f"unknown; known: {', '.join(sorted(RAY_DEFAULTS) + list(_RAY_SIM_OPTIONS))}")
        self.name = "ray"
        self.ctx = ctx
        self.config = {**RAY_DEFAULTS, "max_replicas": ctx.max_replicas, **config}
        self.batch = int(config.get("batch", 1))
        self.wanted_since: dict[str, tuple[int, float]] = {}  # stage -> (direction, first time wanted)
        self.metrics: dict[str, _RayMetrics] = {}
        self.priced_at_s = -math.inf

    def autoscaling_config(self) -> dict[str, Any]:
        """The ``autoscaling_config`` dict the live app passes to each Serve deployment."""
        keys = ("min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
                "downscale_delay_s", "look_back_period_s", "upscaling_factor", "downscaling_factor")
        return {k: self.config[k] for k in keys}

    def _base(self, current: Decision) -> tuple[StageDecision, ...]:
        if current.stages:
            return current.stages
        return StaticPolicy(self.ctx, batch=self.batch, replicas=int(self.config["min_replicas"])).stages

    def _ongoing(self, observation: Observation, sd: StageDecision) -> float:
        # The stage's requests queued or in a batch now, as a Serve handle counts them
        # (the simulator and the live metrics both report it). A true 0 stays 0: Ray's
        # controller drops leading zeros from its mean (_RayMetrics.mean).
        return next((so.queue_length for so in observation.stages if so.stage == sd.stage), 0.0)

    def desired(self, ongoing: float, current: int) -> int:
        """Scaling factors and bounds applied to ongoing / target (Ray's rule, no delay)."""
        want = ongoing / float(self.config["target_ongoing_requests"])
        factor = self.config["upscaling_factor"] if want > current else self.config["downscaling_factor"]
        scaled = math.ceil(current + factor * (want - current))
        if math.ceil(want) < current and scaled == current:
            scaled -= 1
        return max(int(self.config["min_replicas"]), min(int(self.config["max_replicas"]), scaled))

    def _delayed(self, stage: str, want: int, current: int, time_s: float) -> int:
        direction = (want > current) - (want < current)
        if direction == 0:
            self.wanted_since.pop(stage, None)
            return current
        since = self.wanted_since.get(stage)
        if since is None or since[0] != direction:
            since = (direction, time_s)
            self.wanted_since[stage] = since
        delay = self.config["upscale_delay_s"] if direction > 0 else self.config["downscale_delay_s"]
        if time_s - since[1] + _DELAY_EPS_S >= delay:
            self.wanted_since.pop(stage, None)
            return want
        return current

    def decide(self, observation: Observation, forecast: Forecast, current: Decision) -> Decision:
        t = observation.time_s
        base = self._base(current)
        replicas = []
        for sd in base:
            metrics = self.metrics.get(sd.stage)
            if metrics is None:
                metrics = self.metrics[sd.stage] = _RayMetrics(float(self.config["look_back_period_s"]),
                                                               float(self.config.get("metrics_phase_s", 0.0)))
            ongoing = metrics.update(t, self._ongoing(observation, sd))
            replicas.append(self._delayed(sd.stage, self.desired(ongoing, sd.replicas), sd.replicas, t))
        unchanged = current.stages and [sd.replicas for sd in current.stages] == replicas
        if unchanged and current.policy == "ray" and t - self.priced_at_s < self.ctx.interval_s:
            # Asked every second; pricing (the predicted latency, accuracy and cost at the
            # load) is redone on a change or once per adapter interval, as for other policies.
            return dataclasses.replace(current, time_s=t)
        stages = [dataclasses.replace(sd, replicas=n) for sd, n in zip(base, replicas, strict=True)]
        self.priced_at_s = t
        return price_decision(self.ctx, stages, observation.arrival_rps, policy="ray", time_s=t)


# ------------------------------------------------------------------ factory

POLICIES: dict[str, Callable[..., Policy]] = {
    "ipa": lambda ctx, **o: SolverPolicy(ctx, name="ipa", **o),
    "fa2-low": _fa2("low"),
    "fa2-high": _fa2("high"),
    "rim": _rim,
    "static": StaticPolicy,
    "ray": RayPolicy,
    "oracle": OraclePolicy,
}


# The policies built on the ILP, and the options only they take (SolverPolicy's own).
SOLVER_POLICIES = frozenset({"ipa", "fa2-low", "fa2-high", "rim", "oracle"})
SOLVER_OPTIONS = frozenset({"solver", "objective", "accuracy", "weights", "min_accuracy", "max_cost"})


def policy_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a run (a scenario's, the command line's) that policy ``name`` takes: the
    solver's only for the policies built on it. One rule for serve, simulate and experiment."""
    if name in SOLVER_POLICIES:
        return dict(options)
    return {k: v for k, v in options.items() if k not in SOLVER_OPTIONS}


def _user_policy(spec: str, ctx: PolicyContext, **options: Any) -> Policy:
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError("policy", spec, f"cannot import module {module_name!r}: {e}") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError("policy", spec, f"module {module_name!r} has no attribute {class_name!r}")
    policy = cls(ctx, **options)
    if not isinstance(policy, Policy):
        raise ConfigError("policy", spec, f"{class_name} does not implement the Policy protocol"
                          " (needs a `name` attribute and `decide(observation, forecast, current) -> Decision`)")
    return policy


def make_policy(name: str, ctx: PolicyContext, **options: Any) -> Policy:
    """Build a policy by name, or ``module:Class`` for a user's own."""
    if ":" in name:
        return _user_policy(name, ctx, **options)
    try:
        factory = POLICIES[name]
    except KeyError:
        raise UnknownNameError("policy", name, (*POLICIES, "module:Class")) from None
    return factory(ctx, **options)
