"""Simulator invariants, with hand-made profiles and stand-in policies (no solver, no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from varipipe.adapter.policy import Forecast
from varipipe.adapter.predictors import Reactive
from varipipe.errors import VaripipeError
from varipipe.loadgen import simulator
from varipipe.loadgen.hostspeed import (
    BusyGrid,
    Contention,
    ContentionLaw,
    Neighbour,
    beside_from_busy,
    fit_contention,
    threads_before,
    threads_during,
)
from varipipe.loadgen.simulator import (
    REPLICA_ADD_S,
    VARIANT_SWITCH_S,
    ChangeCpu,
    SimConfig,
    simulate,
)
from varipipe.loadgen.traces import Trace, arrival_times
from varipipe.observation import percentile
from varipipe.profiler.store import load_profile
from varipipe.records import BatchTimes, Decision, Observation, Profile, ProfilePoint, StageDecision

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "loadgen" / "vision-caption-synthetic.json"


def _point(stage: str, variant: str, batch: int, p50: float, p99: float | None = None, acc: float = 0.9,
           hw: str = "cpu:1") -> ProfilePoint:
    p99 = p50 if p99 is None else p99
    return ProfilePoint(stage, variant, batch, hw, p50, p99, p99, batch / p50, 100.0, 100, acc, "declared", "test")


def _profile(fanout: dict[str, float] | None = None) -> Profile:
    """Two stages with deterministic service times (p50 = p99): l(b) = 0.05 + 0.05·b."""
    pts = [_point(s, "v", b, 0.05 + 0.05 * b, acc=a) for s, a in (("a", 0.9), ("b", 0.8)) for b in (1, 4)]
    return Profile("test", tuple(pts), fanout=fanout or {})


class Fixed:
    """Stand-in policy: always the same decision; records what it was shown."""

    def __init__(self, replicas: int = 1, batch: int = 1, wait: float = 0.0, stages=("a", "b"),
                 later: dict[float, int] | None = None) -> None:
        self.name = "fixed"
        self.replicas, self.batch, self.wait, self.stages = replicas, batch, wait, stages
        self.later = later or {}
        self.seen: list[tuple[Observation, Forecast]] = []

    def decide(self, observation: Observation, forecast: Forecast, current: Decision) -> Decision:
        self.seen.append((observation, forecast))
        reps = self.replicas
        for t, r in self.later.items():
            if observation.time_s >= t:
                reps = r
        return Decision(tuple(StageDecision(s, "v", self.batch, reps, "cpu:1", self.wait) for s in self.stages))


def _last(t: float, h: np.ndarray) -> Forecast:
    return Forecast(float(h[-10:].max()) if len(h) else 0.0, "last")


def _arrivals(rate: float, seconds: int, seed: int = 0) -> np.ndarray:
    return arrival_times(Trace(np.full(seconds, rate)), "poisson", seed)


def _run(arr, policy, sla=2.0, mode="reserved", cores=8.0, profile=None, **kw):
    return simulate(profile or _profile(), arr, policy, _last, SimConfig(sla, 10.0, mode, cores, 0), keep_table=True,
                    **kw)


def test_enough_capacity_meets_sla_and_conserves():
    arr = _arrivals(5, 60)
    r = _run(arr, Fixed(replicas=2))
    assert r.requests == len(arr) == r.completed + r.dropped
    assert r.dropped == 0 and r.sla_attainment == 1.0
    assert r.p99_latency_s <= 2.0
    assert r.mean_accuracy == pytest.approx(0.9 * 0.8)
    assert r.mean_cost == pytest.approx(4.0)  # 2 stages × 2 replicas × 1 core


def test_overload_drops_and_conserves():
    arr = _arrivals(40, 60)  # one replica at batch 1 serves 10/s
    r = _run(arr, Fixed(replicas=1))
    assert r.completed + r.dropped == r.requests
    assert r.dropped > 0 and r.sla_attainment < 0.5
    assert np.isnan(r.table.done_s[r.table.dropped]).all()


def test_latency_at_least_service_time_and_batches_bounded():
    arr = _arrivals(30, 60)
    r = _run(arr, Fixed(replicas=2, batch=4, wait=0.05))
    t = r.table
    assert r.completed + r.dropped == r.requests
    ok = ~t.dropped
    assert (t.latency_s[ok] >= 2 * 0.1 - 1e-9).all()  # two stages, batch-1 service 0.1 s each
    for batch in t.item_batch:
        sizes = np.bincount(batch[batch >= 0])
        assert sizes.max() <= 4 and sizes[sizes > 0].min() >= 1
    for arr_s, done_s in zip(t.item_arrival_s, t.item_done_s, strict=True):
        served = ~np.isnan(done_s)
        assert (done_s[served] - arr_s[served] >= 0.1 - 1e-9).all()


def test_the_batches_a_run_reports_are_the_ones_its_items_joined():
    r = _run(_arrivals(30, 60), Fixed(replicas=2, batch=4, wait=0.05), profile=_profile({"a": 2.0}))
    t = r.table
    for name, batch, done in zip(t.stage_names, t.item_batch, t.item_done_s, strict=True):
        [ran] = [b for b in r.batches if b.stage == name]  # one model per stage
        joined = np.bincount(batch[batch >= 0])
        assert sorted(ran.sizes) == sorted(joined[joined > 0].tolist())
        assert set(np.round(done[batch >= 0], 9)) == set(np.round(ran.ended_s, 9))  # items leave when it ends
        assert (ran.hardware, ran.variant) == ("cpu:1", "v") and min(ran.seconds) >= 0.1 - 1e-9
    assert simulate(_profile(), _arrivals(5, 10), Fixed(1), _last, SimConfig(2.0, 10.0, "reserved", 8, 0)).batches == ()


def test_batches_fill_under_load():
    r = _run(_arrivals(60, 60), Fixed(replicas=3, batch=4, wait=0.2))
    sizes = np.bincount(r.table.item_batch[0][r.table.item_batch[0] >= 0])
    assert sizes.mean() > 2


def test_same_seed_same_result_other_seed_differs():
    p = Profile("test", tuple(_point(s, "v", b, 0.05 + 0.05 * b, 0.3 + 0.1 * b) for s in ("a", "b") for b in (1, 4)))
    arr = _arrivals(8, 60)
    a = simulate(p, arr, Fixed(1), _last, SimConfig(2.0, 10.0, "reserved", 8, seed=1))
    b = simulate(p, arr, Fixed(1), _last, SimConfig(2.0, 10.0, "reserved", 8, seed=1))
    c = simulate(p, arr, Fixed(1), _last, SimConfig(2.0, 10.0, "reserved", 8, seed=2))
    assert a.summary() | {"wall_s": 0} == b.summary() | {"wall_s": 0}
    assert a.mean_latency_s != c.mean_latency_s


def test_fanout_multiplies_items_and_joins():
    arr = _arrivals(5, 60)
    r = _run(arr, Fixed(replicas=4), profile=_profile({"a": 2.0}))
    t = r.table
    assert len(t.item_parent[0]) == 2 * len(arr) and len(t.item_parent[1]) == 2 * len(arr)  # cumulative
    done_a = np.full(len(arr), -np.inf)
    np.maximum.at(done_a, t.item_parent[0], t.item_done_s[0])
    enter_b = np.full(len(arr), np.inf)
    np.minimum.at(enter_b, t.item_parent[1], t.item_arrival_s[1])
    ok = ~t.dropped
    assert np.allclose(done_a[ok], enter_b[ok])  # downstream starts when the last item is done


def test_replica_add_takes_effect_after_delay():
    # 1 replica until the decision at t=10 asks for 3; 25/s overloads one replica (10/s).
    arr = _arrivals(25, 30)
    r = _run(arr, Fixed(replicas=1, later={10.0: 3}), sla=30.0)
    done = np.sort(r.table.item_done_s[0][~np.isnan(r.table.item_done_s[0])])
    before = done[done < 10 + REPLICA_ADD_S]
    after = done[(done > 10 + REPLICA_ADD_S + 0.2) & (done < 20)]
    assert np.diff(before).min() >= 0.1 - 1e-9  # one replica: completions at least a service time apart
    assert np.diff(after).min() < 0.1  # three replicas overlap
    assert r.decisions == 1


def test_a_live_start_serves_the_initial_decision_until_the_loop_first_decides():
    # Stage a (0.1 s), the policy always 2 replicas, the initial decision 1. Warm start: 2 replicas
    # from t = 0. Live start (first decision at 5 s): the initial replica alone serves until the
    # second, decided at 5 s, comes REPLICA_ADD_S later. Ten arrivals back to back in the first
    # second, so that the loop may decide at 5 s (adapter.loop.START_ARRIVALS).
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    initial = Decision((StageDecision("a", "v", 1, 1, "cpu:1", 0.0),))
    arr = np.concatenate([np.arange(10) / 10, [6.0, 6.0, 5.0 + REPLICA_ADD_S + 1.0, 5.0 + REPLICA_ADD_S + 1.0]])
    warm = simulate(profile, arr, Fixed(replicas=2, stages=("a",)), _last, SimConfig(100.0, 5.0, "reserved", 8.0, 0),
                    initial=initial, keep_table=True)
    assert warm.table.latency_s == pytest.approx([0.1] * 14)
    policy = Fixed(replicas=2, stages=("a",))
    live = simulate(profile, arr, policy, _last, SimConfig(100.0, 5.0, "reserved", 8.0, 0, first_decision_s=5.0),
                    initial=initial, keep_table=True)
    assert live.table.latency_s == pytest.approx([0.1] * 10 + [0.1, 0.2, 0.1, 0.1])
    assert policy.seen[0][0].time_s == 5.0 and policy.seen[0][1].predictor == "last"  # its forecaster, no warm start
    with pytest.raises(VaripipeError, match="needs the initial decision"):
        simulate(profile, arr, Fixed(stages=("a",)), _last, SimConfig(100.0, first_decision_s=5.0))
    with pytest.raises(VaripipeError, match="first_decision_s must be a number >= 0"):
        SimConfig(1.0, first_decision_s=-1.0)


def test_a_live_start_holds_the_initial_decision_until_traffic_has_begun_for_real():
    # As fidelity_loads.py starts a run: 10 idle seconds, then 3 req/s; the loop first decides at
    # 11 s, interval 5 s, on the reactive predictor. At 11 s the history holds 3 arrivals: the
    # initial decision holds (adapter.loop.START_ARRIVALS); at 16 s it holds 18 and the policy
    # plans for the 3 req/s that began, the idle seconds before them read as no load.
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    initial = Decision((StageDecision("a", "v", 1, 1, "cpu:1", 0.0),))
    arr = 10.0 + np.arange(0.0, 20.0, 1 / 3)
    policy = Fixed(stages=("a",))
    simulate(profile, arr, policy, simulator.predictor_forecaster(Reactive()),
             SimConfig(40.0, 5.0, "reserved", 8.0, 0, first_decision_s=11.0), initial=initial)
    first_obs, first_forecast = policy.seen[0]
    assert first_obs.time_s == 16.0 and list(first_obs.history_rps)[:10] == [0.0] * 10
    assert first_forecast.rps == 3.0


def test_shared_mode_processor_sharing_slows_batches():
    arr = _arrivals(15, 60)
    reserved = _run(arr, Fixed(replicas=2), mode="reserved", cores=1.0, sla=60.0)
    shared = _run(arr, Fixed(replicas=2), mode="shared", cores=1.0, sla=60.0)
    assert shared.mean_latency_s > 1.5 * reserved.mean_latency_s
    assert shared.mean_cost <= 1.0 + 1e-9  # CPU-seconds per second, at most the host's cores
    assert shared.cost_unit != reserved.cost_unit


def test_a_neighbour_keeps_its_cores_and_slows_the_replicas_only_when_they_run_short():
    # Two stages of 0.1 s at 3 req/s keep 0.6 threads busy on a 2-core host.
    arr = np.arange(0.0, 60.0, 1 / 3)

    def run(*neighbours):
        cfg = SimConfig(60.0, 10.0, "shared", 2.0, 0, neighbours=neighbours)
        return simulate(_profile(), arr, Fixed(), _last, cfg, keep_table=True)

    alone = run()
    # One busy thread beside them leaves one core for 0.6 threads: nothing slows (a hog on a half-idle host).
    assert run(Neighbour(20.0, 40.0, 1.0)).table.latency_s == pytest.approx(alone.table.latency_s)
    # 1.5 leave half a core for 0.6 cores of work: the stages fall behind while it lasts, and
    # catch up once it has gone.
    hogged = run(Neighbour(20.0, 40.0, 1.5))
    during, outside = (arr >= 21.0) & (arr < 40.0), (arr < 20.0) | (arr >= 50.0)
    assert hogged.table.latency_s[outside] == pytest.approx(alone.table.latency_s[outside])
    late = hogged.table.latency_s[during]
    assert late.mean() > 2 * alone.table.latency_s[during].mean() and late[-1] > 5 * late[0]
    # The neighbour's CPU is not the run's cost.
    assert hogged.series.cost[21:40].max() < 1.0
    # Neighbours on every core leave the replicas their nice-10 weight's share of them.
    starved = run(Neighbour(20.0, 40.0, 2.0))
    assert starved.table.latency_s[during].mean() > 1.5 * late.mean()
    with pytest.raises(VaripipeError, match="share the host's cores: they need cost mode 'shared'"):
        SimConfig(1.0, cost_mode="reserved", neighbours=(Neighbour(0.0, 1.0),))


def test_shared_mode_charges_a_replica_start_its_cpu(monkeypatch):
    # Both stages go from 1 to 2 replicas at t=10; the starts burn CPU for REPLICA_ADD_S.
    arr = _arrivals(3, 30)

    def run(start: ChangeCpu, cores: float):
        monkeypatch.setattr(simulator, "REPLICA_START_CPU", start)
        return _run(arr, Fixed(replicas=1, later={10.0: 2}), mode="shared", cores=cores, sla=60.0)

    free = run(ChangeCpu(0.0, 0.0), 8.0)
    for charge in (ChangeCpu(0.0, 6.0), ChangeCpu(4.0, 2.0)):  # all at the stages' level; most ahead
        extra = run(charge, 8.0).series.cost - free.series.cost  # CPU-seconds per second (below the 8-core cap)
        assert extra.sum() == pytest.approx(2 * 6.0)  # two new replicas, 6 CPU-s each, wherever they run
        assert np.flatnonzero(extra > 1e-9).tolist() == list(range(10, 10 + int(np.ceil(REPLICA_ADD_S))))
    # On one core the batches running meanwhile slow down; before the change nothing differs.
    free = run(ChangeCpu(0.0, 0.0), 1.0)
    level, ahead = run(ChangeCpu(0.0, 3.0), 1.0), run(ChangeCpu(3.0, 0.0), 1.0)
    before = arr < 10.0
    during = (arr >= 11.0) & (arr < 10.0 + REPLICA_ADD_S)
    for charged in (level, ahead):
        assert charged.table.latency_s[before] == pytest.approx(free.table.latency_s[before])
        assert charged.table.latency_s[during].mean() > 1.5 * free.table.latency_s[during].mean()
    # The same CPU ahead of the stages (nice 0) takes the core from them: later than at their level.
    assert ahead.table.latency_s[during].mean() > level.table.latency_s[during].mean()


def test_shared_mode_charges_a_variant_switch_per_replica(monkeypatch):
    class Switch(Fixed):
        def decide(self, observation, forecast, current):
            variant = "w" if observation.time_s >= 10.0 else "v"
            return Decision(tuple(StageDecision(s, variant, 1, 3, "cpu:1") for s in ("a", "b")))

    profile = Profile("test", tuple(_point(s, v, 1, 0.1) for s in ("a", "b") for v in ("v", "w")))
    arr = _arrivals(2, 30)
    runs = []
    for cpu in (ChangeCpu(0.0, 0.0), ChangeCpu(1.0, 0.5)):
        monkeypatch.setattr(simulator, "VARIANT_SWITCH_CPU", cpu)
        runs.append(simulate(profile, arr, Switch(), _last, SimConfig(60.0, 10.0, "shared", 8.0, 0)))
    extra = runs[1].series.cost - runs[0].series.cost
    assert extra.sum() == pytest.approx(2 * 3 * 1.5)  # two stages, three replicas each load the new model
    assert extra[:10].sum() == 0 and extra[10 + int(np.ceil(VARIANT_SWITCH_S)):].sum() == pytest.approx(0)


class Scripted:
    """Stand-in policy: (replicas, batch wait, load) per decision step, then the last one again."""

    name = "scripted"

    def __init__(self, steps: list[tuple[int, float, float]]) -> None:
        self.steps, self.i = steps, 0

    def decide(self, observation, forecast, current) -> Decision:
        reps, wait, load = self.steps[min(self.i, len(self.steps) - 1)]
        self.i += 1
        return Decision(tuple(StageDecision(s, "v", 4, reps, "cpu:1", wait) for s in ("a", "b")),
                        load_rps=load, predicted_latency_s=1.0, time_s=observation.time_s)


def test_a_batch_wait_change_alone_is_not_applied_as_live():
    # The wait follows the load every interval (as the solver's does); the shape never changes.
    r = _run(_arrivals(5, 60), Scripted([(2, 0.05 + 0.01 * i, 5.0) for i in range(6)]))
    assert r.decisions == 0
    assert {d.stages[0].batch_wait_s for d in r.timeline} == {0.05}  # the first one stays in force


def test_capacity_is_given_back_after_the_live_hysteresis():
    from varipipe.adapter.loop import HOLD_INTERVALS

    # 3 replicas for load 5, then a proposal of 2 for load 4.5 (a 10 % fall: held) from t=10.
    r = _run(_arrivals(5, 80), Scripted([(3, 0.0, 5.0), (2, 0.0, 4.5)]))
    replicas = [d.stages[0].replicas for d in r.timeline]
    assert replicas[:HOLD_INTERVALS] == [3] * HOLD_INTERVALS  # t=0 and the held proposals
    assert replicas[HOLD_INTERVALS] == 2 and r.decisions == 1


def test_policy_sees_observations_and_history():
    pol = Fixed(replicas=2)
    _run(_arrivals(5, 60), pol)
    times = [o.time_s for o, _ in pol.seen]
    assert times[:3] == [0.0, 10.0, 20.0]
    obs, fc = pol.seen[3]
    assert obs.arrival_rps == pytest.approx(5, rel=0.5)
    assert len(obs.history_rps) == 30 and [s.stage for s in obs.stages] == ["a", "b"]
    assert obs.stages[0].replicas == 2 and fc.predictor == "last"
    assert pol.seen[0][1].predictor == "warm-start"


def test_a_policy_with_its_own_control_period_is_asked_that_often():
    # Ray's autoscaler runs on its own loop, not on the adapter's interval (RayPolicy.control_period_s).
    pol = Fixed(replicas=2)
    pol.control_period_s = 1.0
    _run(_arrivals(5, 30), pol)  # interval 10 s
    times = [o.time_s for o, _ in pol.seen]
    assert times[:4] == [0.0, 1.0, 2.0, 3.0]
    assert pol.seen[5][0].interval_s == 1.0


def test_series_adds_up():
    arr = _arrivals(5, 60)
    r = _run(arr, Fixed(replicas=2))
    s = r.series
    assert s.arrivals.sum() == r.requests and s.within_sla.sum() == pytest.approx(r.requests * r.sla_attainment)
    d = s.to_dict(step_s=10)
    assert len(d["arrivals"]) == 6 and sum(d["arrivals"]) == r.requests


def test_synthetic_fixture_runs_with_fanout():
    prof = load_profile(FIXTURE)
    pol = Fixed(replicas=6, stages=prof.stages)
    pol.decide = lambda o, f, c: Decision(tuple(  # noqa: E731
        StageDecision(s, prof.for_stage(s)[0].variant, 1, 6, "cpu:1") for s in prof.stages))
    r = simulate(prof, _arrivals(3, 60), pol, _last, SimConfig(5.0, 10.0, "reserved", 20.0, 0))
    assert r.completed + r.dropped == r.requests and r.completed > 0


def test_overhead_shifts_every_latency_by_the_constant():
    arr = _arrivals(5, 60)
    base = simulate(_profile(), arr, Fixed(replicas=2), _last, SimConfig(2.0, 10.0, "reserved", 8.0, 0),
                    keep_table=True)
    shifted = simulate(_profile(), arr, Fixed(replicas=2), _last,
                       SimConfig(2.0, 10.0, "reserved", 8.0, 0, overhead_s=0.25), keep_table=True)
    assert shifted.completed == base.completed
    assert shifted.table.done_s - base.table.done_s == pytest.approx(np.full(len(arr), 0.25))
    assert shifted.mean_latency_s == pytest.approx(base.mean_latency_s + 0.25)
    with pytest.raises(Exception, match="overhead_s"):
        SimConfig(2.0, overhead_s=-1.0)


def test_sheds_a_request_whose_batch_is_expected_to_end_after_its_deadline():
    # 0.1 s per request and stage, one replica each, SLA 0.25 s. A request at t=0 runs each
    # model's first batch, which sets no estimate (admission.COLD_BATCHES, as live). Three at t=1:
    # 1st: a 1.0-1.1, b 1.1-1.2, done. 2nd: a 1.1-1.2; at b it would end at 1.3 > 1.25:
    # shed there, as the live stage does (it used to run and finish late). 3rd: shed at a.
    profile = Profile("test", tuple(_point(s, "v", 1, 0.1) for s in ("a", "b")))
    arr = np.array([0.0, 1.0, 1.0, 1.0])
    r = simulate(profile, arr, Fixed(), _last, SimConfig(0.25, 10.0, "reserved", 8.0, 0), keep_table=True)
    assert (r.completed, r.dropped) == (2, 2)
    assert r.table.done_s[:2] == pytest.approx([0.2, 1.2])
    assert r.sla_attainment == pytest.approx(2 / 4)
    t = r.table
    assert not np.isnan(t.item_done_s[0][2]) and np.isnan(t.item_done_s[1][2])  # 2nd ran at a, shed at b
    assert np.isnan(t.item_done_s[0][3])  # 3rd shed at a
    # Without the first request, the first batch at a and at b is each model's first: nothing is
    # expected of it, so the t=1 requests are not judged until each stage has run a warm batch.
    cold = simulate(profile, arr[1:], Fixed(), _last, SimConfig(0.25, 10.0, "reserved", 8.0, 0))
    assert (cold.completed, cold.dropped) == (2, 1)  # 2nd runs at b (no estimate yet) and ends late


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001])
@pytest.mark.parametrize("q", [50, 99])
def test_percentile_equals_numpys_linear_percentile(n, q):
    values = np.random.default_rng(n).exponential(size=n)
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-12)
    assert percentile(list(values), q) == percentile(values, q) and percentile([], q) == 0.0


def test_observed_queue_length_is_the_items_in_the_stage_now():
    # Stage a serves one request per 0.1 s: at 20 req/s its queue grows by about 10 a second.
    # What the policy is shown must be what a Serve handle counts: arrived and not yet finished.
    pol = Fixed(replicas=1)
    arr = _arrivals(20, 30)
    res = simulate(_profile(), arr, pol, _last, SimConfig(1000.0, 10.0, "reserved", 8.0, 0, shed_late=False),
                   keep_table=True)
    a_in, a_done = res.table.item_arrival_s[0], res.table.item_done_s[0]
    for obs, _ in pol.seen[1:3]:
        t = obs.time_s
        expected = int(np.sum(a_in <= t) - np.sum(a_done <= t))
        assert obs.stages[0].queue_length == expected > 50


# --------------------------------------------------------------------------- routing="replica"


def _routed(arr, policy, sla=2.0, profile=None, mode="reserved", **cfg):
    return simulate(profile or _profile(), arr, policy, _last, SimConfig(sla, 10.0, mode, 8.0, 0, routing="replica", **cfg),
                    keep_table=True)


def test_routed_replicas_conserve_requests_through_adds_removals_and_shedding():
    arr = _arrivals(25, 60)
    for policy, sla in ((Fixed(replicas=1, later={10.0: 3, 30.0: 1}), 30.0), (Fixed(replicas=1, batch=4, wait=0.05), 0.5)):
        r = _routed(arr, policy, sla=sla)
        t = r.table
        assert r.completed + r.dropped == r.requests == len(arr)
        assert np.isnan(t.done_s[t.dropped]).all() and not np.isnan(t.done_s[~t.dropped]).any()
        for batch in t.item_batch:
            sizes = np.bincount(batch[batch >= 0])
            assert sizes.max() <= policy.batch
    # Removed replicas drain their lines: with room in the SLA nothing is lost on the way down.
    assert _routed(arr, Fixed(replicas=3, later={10.0: 1}), sla=1000.0).dropped == 0


def test_routed_simultaneous_arrivals_go_to_different_replicas_where_a_central_line_batches_them():
    # Pairs of requests at once (an upstream batch of two returning), two idle replicas, batch 2:
    # the central line hands both to the first free replica; Serve's router sends one to each.
    arr = np.repeat(np.arange(0.0, 20.0, 1.0), 2)
    policy = Fixed(replicas=2, batch=2, wait=0.05)
    central = _run(arr, policy)
    routed = _routed(arr, Fixed(replicas=2, batch=2, wait=0.05))
    for res, size in ((central, 2), (routed, 1)):
        sizes = np.bincount(res.table.item_batch[0][res.table.item_batch[0] >= 0])
        assert set(sizes[sizes > 0]) == {size}
    # batch 1 takes 0.1 s, batch 2 0.15 s (l(b) = 0.05 + 0.05 b), after the 0.05 s wait for a second item
    assert routed.table.latency_s == pytest.approx(2 * 0.15)
    assert central.table.latency_s == pytest.approx(2 * 0.15)


def test_routed_arrivals_join_the_least_loaded_replica_and_wait_at_the_gate_when_all_are_full():
    # One replica, batch 1, 0.1 s each: 30 requests at once. It holds max_ongoing_for(1) (8) of
    # them; the rest wait in the gate and still run in arrival order, one every 0.1 s.
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    r = _routed(np.zeros(30), Fixed(replicas=1, stages=("a",)), sla=100.0, profile=profile)
    assert np.sort(r.table.latency_s) == pytest.approx(0.1 * np.arange(1, 31))
    # Two replicas: the queue splits evenly, so the last one is done after 15 service times.
    r = _routed(np.zeros(30), Fixed(replicas=2, stages=("a",)), sla=100.0, profile=profile)
    assert r.table.latency_s.max() == pytest.approx(1.5)


def test_routed_arrivals_spread_over_more_replicas_by_two_choices():
    # Four replicas, 40 requests at once, 0.1 s each: two choices spread them about evenly (all
    # four would serve ten each, 1.0 s), and none is lost.
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    r = _routed(np.zeros(40), Fixed(replicas=4, stages=("a",)), sla=100.0, profile=profile)
    assert r.completed == 40
    assert 1.0 - 1e-9 <= r.table.latency_s.max() <= 1.3


def _two_sizes(b1: float = 0.5, b2: float = 0.6) -> Profile:
    return Profile("test", (_point("a", "v", 1, b1), _point("a", "v", 2, b2)))


def test_routed_batches_form_while_the_replica_runs_as_serve_batch_forms_them():
    # One replica, batch 2, 0.1 s wait; a batch of 1 takes 0.5 s, of 2 0.6 s. Ray 2.60's @serve.batch
    # forms the next batch while one runs: the item at 0.2 waits 0.1 s for a partner and goes alone
    # (formed at 0.3), the one at 0.4 forms its own batch (0.4-0.5); both run after the first batch
    # (0.05-0.65), one after the other. (A replica that gathered until it was free would have run
    # them together at 0.65.)
    r = _routed(np.array([0.0, 0.05, 0.2, 0.4]), Fixed(batch=2, wait=0.1, stages=("a",)), sla=100.0,
                profile=_two_sizes())
    assert r.table.done_s == pytest.approx([0.65, 0.65, 1.15, 1.65])
    assert np.bincount(r.table.item_batch[0]).tolist() == [2, 1, 1]
    # Items already waiting when the batch before was formed fill the next one at once.
    r = _routed(np.array([0.0, 0.05, 0.2, 0.25]), Fixed(batch=2, wait=0.1, stages=("a",)), sla=100.0,
                profile=_two_sizes())
    assert r.table.done_s == pytest.approx([0.65, 0.65, 1.25, 1.25])


def test_routed_sheds_each_item_of_a_batch_when_it_starts_and_runs_the_rest():
    # SLA 0.55 s. The batch at 0 is the model's first (cold: sets no estimate); the one at 1.0 sets
    # 0.5 s. The items at 3.0 and 3.09 form one batch at 3.09, expected to end at 3.59: past the
    # first one's deadline (3.55), not the second's (3.64). As the live stage, the first is shed and
    # the second runs alone, done at 3.59 (gathered and run together both would end late, at 3.69).
    r = _routed(np.array([0.0, 1.0, 3.0, 3.09]), Fixed(batch=2, wait=0.1, stages=("a",)), sla=0.55,
                profile=_two_sizes())
    assert (r.completed, r.dropped) == (3, 1)
    assert r.table.dropped.tolist() == [False, False, True, False]
    assert r.table.done_s[[0, 1, 3]] == pytest.approx([0.6, 1.6, 3.59])


def test_routed_replicas_each_keep_their_own_admission_estimate():
    # Two replicas, 0.5 s a request, SLA 0.45 s. Live each replica has its own estimate
    # (pipelines/stage.py: one StageCore a replica), and each one's first batch sets none
    # (admission.COLD_BATCHES). The pair at 0 runs one cold batch on each. The request at 1.0
    # finds its replica with no estimate and runs (late). Of the pair at 3.0, the one routed to
    # that replica (0.5 s expected: it would end at 3.5, past 3.45) is shed, the other's replica
    # has still measured nothing and runs it. (One estimate for the stage had shed all three.)
    profile = Profile("test", (_point("a", "v", 1, 0.5),))
    r = _routed(np.array([0.0, 0.0, 1.0, 3.0, 3.0]), Fixed(replicas=2, stages=("a",)), sla=0.45, profile=profile)
    assert r.table.dropped.tolist().count(True) == 1 and r.table.dropped[3:].any()
    assert r.table.done_s[:3] == pytest.approx([0.5, 0.5, 1.5])
    assert np.nanmax(r.table.done_s[3:]) == pytest.approx(3.5)


def test_routing_must_be_known():
    with pytest.raises(VaripipeError, match="routing must be one of central, replica"):
        SimConfig(1.0, routing="random")


# --------------------------------------------------------------------------- contention


def test_contention_slows_a_stage_by_its_law_at_the_previous_seconds_threads_beside_it():
    # Stages a (0.1 s) then b (0.5 s), one replica each; a's law: a = 0, gamma = ln 2 per busy
    # thread, b has none (processor sharing on 8 cores: no slowdown). Request 0 (t = 0): nothing
    # ran before, a takes 0.1 s, b 0.1-0.6 s. Request 1 (t = 1.2): in second 0, b was busy 0.5 s
    # beside a (a's own 0.1 s is not beside it), so a takes 0.1 * 2 ** 0.5.
    profile = Profile("test", (_point("a", "v", 1, 0.1), _point("b", "v", 1, 0.5)))
    law = Contention({"a": ContentionLaw(0.0, math.log(2.0))})
    cfg = SimConfig(100.0, 10.0, "shared", 8.0, 0, contention=law)
    r = simulate(profile, np.array([0.0, 1.2]), Fixed(), _last, cfg, keep_table=True)
    assert r.table.latency_s == pytest.approx([0.6, 0.1 * 2 ** 0.5 + 0.5])
    with pytest.raises(VaripipeError, match="contention law .* needs cost mode 'shared'"):
        SimConfig(1.0, cost_mode="reserved", contention=law)


def test_contention_counts_a_stages_other_replicas_beside_it_but_not_itself():
    # Stage a alone, 0.1 s, law a = ln 1.5, gamma = ln 2. Two requests at t = 0 run side by side
    # (nothing before them: 0.15 s each); a third at t = 1.0 sees second 0's 0.3 busy thread-seconds
    # of the stage, half of them its other replica's with two replicas, none with one.
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    cfg = SimConfig(100.0, 10.0, "shared", 8.0, 0, contention=Contention({"a": ContentionLaw(math.log(1.5), math.log(2.0))}))
    two = simulate(profile, np.array([0.0, 0.0, 1.0]), Fixed(replicas=2, stages=("a",)), _last, cfg, keep_table=True)
    assert two.table.latency_s == pytest.approx([0.15, 0.15, 0.15 * 2 ** 0.15])
    one = simulate(profile, np.array([0.0, 1.0]), Fixed(replicas=1, stages=("a",)), _last, cfg, keep_table=True)
    assert one.table.latency_s == pytest.approx([0.15, 0.15])


def test_contention_counts_a_reconfigurations_threads_ahead_of_the_stages_beside_them(monkeypatch):
    # Stage a alone, 0.1 s, law a = 0, gamma = ln 2; one request a second. At t = 10 it goes to a
    # second replica, whose start runs 3 CPU-s ahead of the stages over REPLICA_ADD_S: 1 thread
    # beside each batch of the seconds after, which the law doubles; before, nothing differs.
    monkeypatch.setattr(simulator, "REPLICA_START_CPU", ChangeCpu(ahead_s=REPLICA_ADD_S, level_s=0.0))
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    cfg = SimConfig(100.0, 10.0, "shared", 8.0, 0, contention=Contention({"a": ContentionLaw(0.0, math.log(2.0))}))
    arr = np.arange(20) + 0.5
    r = simulate(profile, arr, Fixed(replicas=1, stages=("a",), later={10.0: 2}), _last, cfg, keep_table=True)
    lat = r.table.latency_s
    assert lat[:10] == pytest.approx(0.1)
    assert lat[11:10 + int(REPLICA_ADD_S)] == pytest.approx(0.2)  # 1 thread ahead beside: x2
    # once it has started, only the stage's other replica is beside a batch (half its 0.1 busy s)
    assert lat[10 + int(REPLICA_ADD_S) + 2:] == pytest.approx(0.1 * 2 ** 0.05, rel=0.01)


def test_a_stage_with_residuals_draws_its_cpu_batches_noise_from_them():
    # Flat law (factor 1), 8 cores: a batch takes the profile's 0.1 s times one of the residuals.
    profile = Profile("test", (_point("a", "v", 1, 0.1, p99=0.3),))
    law = Contention({"a": ContentionLaw(0.0, 0.0)}, residuals={"a": (1.0, 2.0)})
    arr = np.arange(0.0, 200.0, 1.0)
    r = simulate(profile, arr, Fixed(stages=("a",)), _last, SimConfig(100.0, 10.0, "shared", 8.0, 0, contention=law),
                 keep_table=True)
    lat = np.round(r.table.latency_s, 9)
    assert set(lat.tolist()) == {0.1, 0.2} and 60 < (lat == 0.2).sum() < 140
    # Without residuals, the profile's log-normal (p99 3x the p50): times spread continuously.
    r = simulate(profile, arr, Fixed(stages=("a",)), _last,
                 SimConfig(100.0, 10.0, "shared", 8.0, 0, contention=Contention({"a": ContentionLaw(0.0, 0.0)})),
                 keep_table=True)
    assert len(set(np.round(r.table.latency_s, 9).tolist())) > 150


def test_fit_contention_keeps_what_the_law_and_drift_leave_of_each_batch():
    # Batches with a floor and a long tail (1 + an exponential, as live LLM batches): the residuals
    # keep that shape, divided by the drift (the median of each 10 s step), where a log-normal of
    # the same upper spread would put batches below the floor.
    rng = np.random.default_rng(3)
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    e = 1.0 + rng.exponential(0.3, 1200)  # 40 batches in each of the drift's 10 s steps
    batches = [BatchTimes("a", "v", "cpu:1", (1,), (0.1 * x,), (0.25 * k + 0.1 * x,), (0,)) for k, x in enumerate(e)]
    fit = fit_contention(profile, batches, 300)
    left = np.asarray(fit.contention.residuals["a"])
    assert len(left) == len(e)
    assert np.percentile(left, [10, 50, 90]) == pytest.approx(np.percentile(e, [10, 50, 90]) / np.median(e), rel=0.05)
    assert left.min() > 0.7  # the floor: 1 / median(e) = 0.83, less the drift's step-to-step wobble
    summary = fit.contention.to_dict()["a"]["residuals"]
    assert summary["n"] == len(e) and summary["p50"] == pytest.approx(1.0, abs=0.05)


def test_threads_during_weights_each_other_batch_by_its_overlap():
    # Batch 0 (0-1 s) has batch 1 (2 threads) beside it for half its time and batch 2 (1 thread) for
    # 0.2 of it; batch 3 is alone.
    starts, ends, threads = np.array([0.0, 0.5, 0.5, 3.0]), np.array([1.0, 2.0, 0.7, 4.0]), np.array([1.0, 2.0, 1.0, 1.0])
    assert threads_during(starts, ends, threads) == pytest.approx([0.5 * 2 + 0.2 * 1, 0.5 / 1.5 + 0.2 / 1.5,
                                                                    1.0 + 2.0, 0.0])


def _contention_window(b_from: float, seed: int = 0):
    """Stage a (profile p50 0.1 s) runs at exp(-0.2 + 0.4 x) of it beside x busy threads of stage b,
    whose batches (1 or 3 threads, or none) come and go, each over the whole of a's batch (a's starts
    0.5 s into a 5 s step, b's ``b_from`` s into it and lasts 3 s); b takes 1.2 times its profile
    whatever runs beside it: a flat law."""
    rng = np.random.default_rng(seed)
    profile = Profile("test", (_point("a", "v", 1, 0.1), _point("b", "v", 1, 2.5, hw="cpu:1"),
                               _point("b", "v", 1, 2.5, hw="cpu:3")))
    a_b, b_b, ys = [], [], []
    for k in range(1, 200):
        t0 = 5.0 * k
        hw = ("cpu:1", "cpu:3", None)[k % 3]
        if hw:
            b_b.append(BatchTimes("b", "v", hw, (1,), (3.0,), (t0 + b_from + 3.0,), (0,)))
        x = 0.0 if hw is None else float(hw[-1])
        y = -0.2 + 0.4 * x + 0.01 * rng.standard_normal()
        ys.append(y)
        took = 0.1 * math.exp(y)
        a_b.append(BatchTimes("a", "v", "cpu:1", (1,), (took,), (t0 + 0.5 + took,), (0,)))
    return profile, a_b + b_b, np.array(ys)


def test_fit_contention_recovers_a_law_from_batches_that_follow_it():
    # b's batches start a second before a's: the second before a batch of a shows what runs beside it.
    profile, batches, _ = _contention_window(b_from=-1.0)
    fit = fit_contention(profile, batches, 1000)
    a, b = fit.contention.laws["a"], fit.contention.laws["b"]
    assert (a.a, a.gamma) == (pytest.approx(-0.2, abs=0.01), pytest.approx(0.4, abs=0.01))
    assert (b.gamma, math.exp(b.a)) == (pytest.approx(0.0, abs=1e-9), pytest.approx(1.2))  # b takes 1.2 times beside anything
    assert fit.residual == pytest.approx(1.0, abs=0.02)


def test_fit_contention_anchors_the_laws_level_on_the_second_before_a_batch():
    # b's batches start with a's (0.2 s before): over its time a batch of a has them beside it (the
    # slope), but the second before it, which the simulator reads, shows nothing. The law keeps the
    # slope and takes the level that gives the window's geometric mean at what the simulator reads.
    profile, batches, ys = _contention_window(b_from=0.3)
    law = fit_contention(profile, batches, 1000).contention.laws["a"]
    assert law.gamma == pytest.approx(0.4, abs=0.01)
    assert law.a == pytest.approx(float(ys.mean()), abs=1e-6)  # x read before = 0 for every batch of a


def test_fit_contention_read_during_a_batch_keeps_the_least_squares_level():
    # The same window as above: read over a batch's own time (what the simulator reads with
    # reading="during"), the level is the fit's own, -0.2, not the anchored geometric mean.
    profile, batches, ys = _contention_window(b_from=0.3)
    fit = fit_contention(profile, batches, 1000, reading="during")
    law = fit.contention.laws["a"]
    assert fit.contention.reading == "during" and fit.to_dict()["reading"] == "during"
    assert (law.a, law.gamma) == (pytest.approx(-0.2, abs=0.01), pytest.approx(0.4, abs=0.01))
    with pytest.raises(VaripipeError, match="reading must be one of before, during"):
        fit_contention(profile, batches, 1000, reading="after")
    with pytest.raises(VaripipeError, match="reading must be one of before, during"):
        Contention({}, reading="after")


def test_busy_grid_reads_the_threads_beside_a_batch_as_the_batches_overlap_it():
    # Random batches: the mean busy threads beside a batch over a window is every batch's
    # thread-seconds overlapping it over its length but the batch's own (the one its item ran
    # in), exactly for a window on the grid's points, within a bin's worth of the window
    # otherwise (the grid is linear within a bin).
    rng = np.random.default_rng(1)
    starts = rng.uniform(0.0, 50.0, 300)
    ends = starts + rng.uniform(0.001, 2.0, 300)
    threads = rng.choice([1.0, 2.0], 300)
    grid = BusyGrid(60.0)
    grid.add(starts, ends, threads)
    grid.ran("a", starts, ends)  # item k of stage a ran in batch k
    grid.ran("b", np.full(300, np.nan), np.full(300, np.nan))  # nothing of b ran
    for t0, t1, within in [(3.0, 4.5, 1e-9), (20.5, 27.3, 1e-9), (49.98, 52.0, 1e-9), (3.013, 4.5, 0.02)]:
        overlap = np.clip(np.minimum(ends, t1) - np.maximum(starts, t0), 0.0, None) * threads / (t1 - t0)
        k = int(np.argmax(overlap))  # a batch that overlaps the window
        assert grid.batch_of("a", k) == (starts[k], ends[k])
        assert grid.batch_of("b", k) is None and grid.batch_of("c", k) is None
        assert grid.beside(t0, t1, grid.batch_of("a", k), threads[k]) == pytest.approx(overlap.sum() - overlap[k],
                                                                                       abs=within)
        assert grid.beside(t0, t1, None, threads[k]) == pytest.approx(overlap.sum(), abs=within)
    with pytest.raises(VaripipeError, match="read-only"):
        grid.add(starts[:1], ends[:1], threads[:1])


def test_contention_read_during_a_batch_sees_what_starts_after_it_in_the_same_second():
    # Stages a (0.1 s, law a = 0, gamma = ln 2) then b (0.5 s, none), one replica each, 8 cores.
    # Request 1 (t = 0.2) runs a beside request 0's batch of b (0.1-0.6 s): read the previous
    # second's way nothing ran before it (0.1 s); read over its own time, off the previous pass,
    # one thread is beside it all along (0.2 s). Request 0's batch of a has nothing beside it.
    profile = Profile("test", (_point("a", "v", 1, 0.1), _point("b", "v", 1, 0.5)))
    laws = {"a": ContentionLaw(0.0, math.log(2.0))}

    def a_times(reading: str) -> np.ndarray:
        cfg = SimConfig(100.0, 10.0, "shared", 8.0, 0, contention=Contention(laws, reading=reading))
        t = simulate(profile, np.array([0.0, 0.2]), Fixed(), _last, cfg, keep_table=True).table
        return t.item_done_s[0] - t.item_arrival_s[0]

    assert a_times("before") == pytest.approx([0.1, 0.1])
    assert a_times("during") == pytest.approx([0.1, 0.2])


def test_contention_read_during_a_batch_counts_its_other_replicas_but_not_itself():
    # Stage a alone, 0.1 s, law a = 0, gamma = ln 2, two replicas. A request alone (t = 0) has
    # nothing beside it; two at once (t = 3) run side by side, each the other's one thread beside
    # it all along: 0.2 s each at the fixed point, which the passes reach.
    profile = Profile("test", (_point("a", "v", 1, 0.1),))
    cfg = SimConfig(100.0, 10.0, "shared", 8.0, 0,
                    contention=Contention({"a": ContentionLaw(0.0, math.log(2.0))}, reading="during"))
    r = simulate(profile, np.array([0.0, 3.0, 3.0]), Fixed(replicas=2, stages=("a",)), _last, cfg, keep_table=True)
    assert r.table.latency_s == pytest.approx([0.1, 0.2, 0.2])


def test_threads_before_reads_the_previous_seconds_busy_threads_beside_a_batch():
    # Stage a: 2 replicas, its batches 0.0-0.5 s and 1.2-1.4 s; stage b (2 threads) 0.5-1.0 s. The
    # second batch of a reads second 0: b's 2 x 0.5 thread-seconds and half of a's own 0.5 (its other
    # replica's share with 2 replicas); b's batch starts in second 0: nothing before it.
    starts, ends, threads = np.array([0.0, 1.2, 0.5]), np.array([0.5, 1.4, 1.0]), np.array([1.0, 1.0, 2.0])
    stages = np.array(["a", "a", "b"])
    got = threads_before(starts, ends, threads, stages, lambda s, t: 2 if s == "a" else 1)
    assert got == pytest.approx([0.0, 1.0 + 0.5 * 0.5, 0.0])
    assert beside_from_busy(3.0, 1.0, 1) == 2.0 and beside_from_busy(3.0, 1.0, 4) == 2.75
