"""One world: live and simulated runs observe, price, default and delegate the same way (issue 18)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from varipipe.adapter.configurations import Limits, default_max_replicas, stage_configurations
from varipipe.adapter.policies import SolverPolicy, make_policy, policy_options
from varipipe.adapter.policy import Forecast, PolicyContext, delegates_to_ray, policy_context
from varipipe.loadgen.runs import SimSettings, run_policy
from varipipe.loadgen.runs import policy_context as sim_policy_context
from varipipe.loadgen.simulator import SimConfig, simulate
from varipipe.pipelines.metrics import (
    BatchRecord,
    MetricsAggregator,
    RequestRecord,
    StageEntry,
    StageExit,
)
from varipipe.pipelines.serve_config import AppOptions
from varipipe.profiler.store import load_profile
from varipipe.records import (
    SLA,
    BatchTimes,
    Decision,
    Observation,
    Profile,
    ProfilePoint,
    StageDecision,
    StageObservation,
    decision_cost,
    replica_price,
)
from varipipe.spec import find_spec

ROOT = Path(__file__).resolve().parents[2]
IDENTITY_PROFILE = ROOT / "profiler" / "profiles" / "identity-chain.json"


def _point(stage: str, variant: str, latency: float, hardware: str = "cpu:1", accuracy: float = 0.9) -> ProfilePoint:
    return ProfilePoint(stage=stage, variant=variant, batch=1, hardware=hardware, latency_p50_s=latency,
                        latency_p95_s=latency, latency_p99_s=latency, throughput_rps=1 / latency, memory_mb=10.0,
                        samples=200, accuracy=accuracy, accuracy_kind="declared", accuracy_source="test figure",
                        latency_mean_s=latency)


class _Recorder:
    """One stage on one replica at batch 1, whatever the load; keeps what it was shown."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Observation] = []

    def decide(self, observation: Observation, forecast: Forecast, current: Decision) -> Decision:
        self.seen.append(observation)
        return Decision(stages=(StageDecision("s", "v", 1, 1),), policy=self.name, time_s=observation.time_s)


# ------------------------------------------------------------------ observations

# The script: six requests into one stage that takes 0.5 s a request on one replica, SLA 1.2 s.
# r0 runs 1.0-1.5, r1 waits and runs 1.5-2.0; r2 and r3 would end at 2.5, past their deadlines
# (2.3, 2.35): shed at 2.0. r4 runs 9.8-10.3 and r5 waits behind it: both in the stage at 10 s.
ARRIVALS = [1.0, 1.05, 1.1, 1.15, 9.8, 9.9]
SERVICE_S, SLA_S, OBSERVED_AT = 0.5, 1.2, 10.0
DONE = {0: 1.5, 1: 2.0}  # request -> when it left the stage, done
SHED = {2: 2.0, 3: 2.0}  # request -> when the stage shed it


def _simulated() -> Observation:
    profile = Profile("script", (_point("s", "v", SERVICE_S),))
    policy = _Recorder()
    res = simulate(profile, ARRIVALS, policy, lambda t, h: Forecast(0.0),
                   SimConfig(SLA_S, OBSERVED_AT, "reserved", 8.0, 0), keep_table=True)
    # The simulator did what the script says.
    assert res.table.done_s[:2].tolist() == [DONE[0], DONE[1]] and res.table.dropped[2:4].all()
    return next(o for o in policy.seen if o.time_s == OBSERVED_AT)


def _live() -> Observation:
    m = MetricsAggregator("script", ["s"], sla_s=SLA_S, start_time=0.0)
    m.add_arrivals(ARRIVALS)
    events: list[tuple[float, object]] = [(t, StageEntry("s", t)) for t in ARRIVALS]
    events += [(t, StageExit("s", t, t - ARRIVALS[r])) for r, t in DONE.items()]
    events += [(t, StageExit("s", t, t - ARRIVALS[r], dropped=True)) for r, t in SHED.items()]
    m.add_stage_events(e for _, e in sorted(events, key=lambda x: x[0]))
    m.add_requests([RequestRecord(ARRIVALS[r], t - ARRIVALS[r], 200) for r, t in DONE.items()]
                   + [RequestRecord(ARRIVALS[r], t - ARRIVALS[r], 504, dropped_at="s") for r, t in SHED.items()])
    # The replica reports each batch it ran when its call returns: r0's, r1's; r4's ends after 10 s.
    m.add_batches([BatchRecord("s", "v", 1, SERVICE_S, t, "cpu:1") for t in DONE.values()])
    m.observe(5.0)  # the dashboard's windows close as they do, every second or so: no matter
    return m.observe_interval(OBSERVED_AT, replicas={"s": 1})  # what the live loop is handed


def _fields(obs: Observation) -> dict:
    d = dataclasses.asdict(obs)
    d["history_rps"] = [float(x) for x in obs.history_rps]
    return d


def test_live_and_simulated_observations_of_one_script_are_equal_in_every_field():
    sim, live = _fields(_simulated()), _fields(_live())
    assert live == sim
    # Every field is filled: none is left at its default.
    for f in dataclasses.fields(Observation):
        if f.name not in ("stages", "history_rps"):
            assert sim[f.name] != f.default, f.name
    for f in dataclasses.fields(StageObservation):
        assert sim["stages"][0][f.name] != f.default, f"stages[0].{f.name}"
    assert sim["history_rps"] == [0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    assert sim["stages"][0]["queue_length"] == 2.0 and sim["stages"][0]["drops"] == 2
    (batches,) = sim["batches"]  # the two batches that ended, each with its service time
    assert (batches["sizes"], batches["seconds"], batches["ended_s"]) == ((1, 1), (SERVICE_S,) * 2, (1.5, 2.0))
    for f in dataclasses.fields(BatchTimes):
        assert batches[f.name] not in ((), ""), f"batches[0].{f.name}"


# ---------------------------------------------------------------------- contexts


def test_serve_simulate_and_experiment_build_the_same_context_by_default():
    spec = find_spec("identity-chain")
    profile = load_profile(IDENTITY_PROFILE)
    live = policy_context(spec, profile, AppOptions(pipeline="identity-chain", sla_s=2.0))
    sim = sim_policy_context(profile, SimSettings(sla_s=2.0))
    keys = ("sla", "cost_mode", "cluster_cores", "max_replicas", "interval_s")
    assert {k: getattr(live, k) for k in keys} == {k: getattr(sim, k) for k in keys}
    assert live.max_replicas == default_max_replicas(live.cluster_cores) == PolicyContext(None, profile, SLA(2.0)).max_replicas
    assert policy_context(spec, profile, AppOptions(pipeline="identity-chain")).sla == spec.sla  # the spec's


def test_default_variant_is_one_rule_live_and_simulated():
    spec = find_spec("identity-chain")
    profile = load_profile(IDENTITY_PROFILE)
    live = make_policy("static", policy_context(spec, profile, AppOptions(pipeline="identity-chain")))
    sim = make_policy("static", sim_policy_context(profile, SimSettings(sla_s=spec.sla.latency_s)))
    assert live.stages == sim.stages
    for s in live.stages:
        best = max(profile.variant_accuracy(s.stage, p.variant) for p in profile.for_stage(s.stage))
        assert profile.variant_accuracy(s.stage, s.variant) == best


def test_solver_options_reach_only_solver_policies():
    opts = {"solver": "dp", "min_replicas": 1}
    assert policy_options("ipa", opts) == opts
    assert policy_options("ray", opts) == policy_options("pkg.mod:Mine", opts) == {"min_replicas": 1}


# ------------------------------------------------------------------ replica price

GPU_PROFILE = Profile("gpu", (_point("s", "v", 0.5, hardware="gpu:T4"),))


def test_one_replica_price_in_optimizer_simulator_and_experiment_runner():
    limits = Limits(cost_mode="reserved", cluster_cores=64.0)
    # One profile point, offered at its cheapest replica count and at the larger counts the
    # optimizer may buy a shorter queue with (_table.UTILISATION_LEVELS): each priced alike.
    configs = stage_configurations(GPU_PROFILE, "s", 3.0, limits)
    assert len({c.replicas for c in configs}) == len(configs) > 1
    assert all(c.cost == replica_price("gpu:T4") * c.replicas for c in configs)
    d = Decision(stages=(StageDecision("s", "v", 1, 3, "gpu:T4"),))
    assert decision_cost(d, "reserved") == 3 * replica_price("gpu:T4")
    res = run_policy(GPU_PROFILE, np.arange(0.0, 30.0, 0.5), "static",
                     SimSettings(sla_s=5.0, cost_mode="reserved", cluster_cores=64.0,
                                 policy_options={"replicas": 3}))
    assert res.mean_cost == pytest.approx(3 * replica_price("gpu:T4"))
    assert replica_price("cpu:2") == 2.0


# ------------------------------------------------------------ Ray's autoscaler


class UserAutoscaled:
    """A user's policy that hands scaling to Ray Serve, as ``ray`` does."""

    def __init__(self, ctx: PolicyContext) -> None:
        self.name = "mine"
        self.inner = SolverPolicy(ctx, name="mine")

    def autoscaling_config(self) -> dict:
        return {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1}

    def decide(self, observation: Observation, forecast: Forecast, current: Decision) -> Decision:
        return self.inner.decide(observation, forecast, current)


def test_one_predicate_says_who_delegates_to_ray():
    ctx = PolicyContext(None, load_profile(IDENTITY_PROFILE), SLA(2.0))
    assert delegates_to_ray(make_policy("ray", ctx)) and delegates_to_ray(UserAutoscaled(ctx))
    assert not delegates_to_ray(make_policy("ipa", ctx)) and not delegates_to_ray(make_policy("static", ctx))


def test_a_user_policy_with_autoscaling_config_is_scaled_by_ray_live():
    from varipipe.pipelines.controller_logic import build_loop
    from varipipe.pipelines.server import delegated_scaling

    spec = find_spec("identity-chain")
    opts = AppOptions(pipeline="identity-chain", policy=f"{__name__}:UserAutoscaled", profile=str(IDENTITY_PROFILE))
    delegated = delegated_scaling(opts, spec)
    assert delegated is not None
    assert set(delegated.autoscaling) == set(spec.stage_names)
    assert delegated.autoscaling["first"]["max_replicas"] == 3
    assert [s.stage for s in delegated.start.stages] == list(spec.stage_names)
    assert build_loop(opts, spec, delegated.start, lambda d: None, lambda: None, lambda: 0.0) is None
    plain = AppOptions(pipeline="identity-chain", policy="ipa", profile=str(IDENTITY_PROFILE))
    assert delegated_scaling(plain, spec) is None


def test_ray_starts_live_where_it_starts_simulated():
    from varipipe.pipelines.server import delegated_scaling

    spec = find_spec("identity-chain")
    profile = load_profile(IDENTITY_PROFILE)
    opts = AppOptions(pipeline="identity-chain", policy="ray", profile=str(IDENTITY_PROFILE))
    live = delegated_scaling(opts, spec).start
    sim = run_policy(profile, np.arange(0.0, 5.0, 1.0), "ray", SimSettings(sla_s=spec.sla.latency_s)).timeline[0]
    assert [(s.variant, s.batch, s.replicas, s.hardware) for s in live.stages] == \
           [(s.variant, s.batch, s.replicas, s.hardware) for s in sim.stages]
