"""The control loop with fakes: apply on change only, hysteresis, dry run, crashes, persistence."""

from __future__ import annotations

import threading

import pytest

from varipipe.adapter.loop import ControlLoop, FileDecisionStore, MemoryDecisionStore, Poller
from varipipe.adapter.policies import make_policy
from varipipe.adapter.policy import Forecast, PolicyContext
from varipipe.adapter.predictors import Reactive
from varipipe.adapter.synthetic import vision_caption_like
from varipipe.errors import ConfigError
from varipipe.records import SLA, Decision, DecisionStatus, Observation, StageDecision


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def decision(variant: str, load: float, latency: float, replicas: int = 1) -> Decision:
    return Decision(stages=(StageDecision("s", variant, 1, replicas),), status=DecisionStatus.OPTIMAL,
                    load_rps=load, predicted_latency_s=latency)


class ScriptedPolicy:
    """Answers with the next decision of a script; raises where the script says so."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)
        self.seen_current = []

    def decide(self, observation, forecast, current):
        self.seen_current.append(current)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class Harness:
    def __init__(self, script, **kw):
        self.clock = FakeClock()
        self.applied: list[Decision] = []
        self.rps = 10.0
        self.policy = ScriptedPolicy(script)
        self.fail_apply = False
        self.fail_observe = False
        self.loop = ControlLoop(self.policy, self.apply, clock=self.clock, **kw)
        self.poller = Poller(self.loop, self.observe, Reactive(), self.clock, sleep=self.clock.sleep)

    def step(self):
        return self.poller.poll()

    def apply(self, d: Decision) -> None:
        if self.fail_apply:
            raise RuntimeError("serve update refused")
        self.clock.t += 0.5
        self.applied.append(d)

    def observe(self) -> Observation:
        if self.fail_observe:
            raise ConnectionError("controller unreachable")
        return Observation(time_s=self.clock.t, interval_s=10.0, arrival_rps=self.rps, history_rps=[self.rps] * 10)


FAST = decision("fast", load=20, latency=0.1)
SLOW = decision("accurate", load=5, latency=0.5)


def test_apply_only_when_the_decision_changes():
    h = Harness([FAST, FAST, FAST])
    actions = [h.step().action for _ in range(3)]
    assert actions == ["applied", "unchanged", "unchanged"]
    assert h.applied == [FAST]
    assert h.policy.seen_current[1] is FAST  # the policy sees what is applied


def test_the_decision_in_force_holds_until_traffic_has_begun_for_real():
    # A server on its initial decision; traffic begins. On 1-2 arrivals the loop does not plan
    # (it planned for a fraction of the rate that began, and paid for the reconfiguration).
    from varipipe.adapter.loop import START_ARRIVALS, START_WINDOW_S

    loop = ControlLoop(ScriptedPolicy([FAST, FAST, FAST]), lambda d: None, initial=SLOW)

    def step(history):
        return loop.step(Observation(time_s=0.0, interval_s=5.0, arrival_rps=0.0, history_rps=history),
                         Forecast(rps=1.0))
    idle = step([0.0] * 20)  # an idle server keeps its decision: a plan for no load would be replaced at once
    assert idle.action == "held" and idle.note.startswith("no traffic yet")
    held = step([0.0] * 20 + [1.0, 0.0, 1.0])
    assert held.action == "held" and held.decision is None and "traffic began 3 s ago (2 arrivals)" in held.note
    assert loop.applied is SLOW and loop.policy.seen_current == []  # the policy was not asked
    assert step([0.0] * 20 + [2.0] * 5).action == "applied"  # START_ARRIVALS reached in 5 s
    assert step([0.0] * 20 + [1.0]).action == "unchanged"  # once the loop has decided, it holds no more
    assert START_ARRIVALS == 10 and START_WINDOW_S == 10
    sparse = ControlLoop(ScriptedPolicy([FAST]), lambda d: None, initial=SLOW)
    # a sparse start decides after START_WINDOW_S seconds of traffic whatever it holds
    assert sparse.step(Observation(0.0, 5.0, 0.0, history_rps=[0.0] * 5 + [1.0] + [0.0] * 9),
                       Forecast(rps=0.1)).action == "applied"
    warm = ControlLoop(ScriptedPolicy([FAST]), lambda d: None, initial=SLOW, hold_start=False)  # the simulator's warm start
    assert warm.step(Observation(0.0, 5.0, 0.0, history_rps=[]), Forecast(rps=1.0)).action == "applied"
    fresh = ControlLoop(ScriptedPolicy([FAST]), lambda d: None)  # nothing deployed: decides at once
    assert fresh.step(Observation(0.0, 5.0, 0.0, history_rps=[1.0]), Forecast(rps=1.0)).action == "applied"


def test_batch_wait_only_change_is_not_applied():
    import dataclasses

    other_wait = dataclasses.replace(FAST, stages=(dataclasses.replace(FAST.stages[0], batch_wait_s=0.05),))
    h = Harness([FAST, other_wait])
    assert [h.step().action for _ in range(2)] == ["applied", "unchanged"]


def test_faster_move_is_immediate_slower_move_waits_for_hold_intervals():
    h = Harness([SLOW, FAST, decision("accurate", 18, 0.5), decision("accurate", 18, 0.5),
                 decision("accurate", 18, 0.5)], hold_intervals=3, load_drop_fraction=0.9)
    actions = [h.step().action for _ in range(5)]
    assert actions == ["applied", "applied", "held", "held", "applied"]
    assert [d.stages[0].variant for d in h.applied] == ["accurate", "fast", "accurate"]
    assert h.loop.log()[2].note.startswith("slower move held 1/3")


def test_the_hold_applies_between_infeasible_decisions_but_not_on_the_way_back_to_feasible():
    import dataclasses

    def infeasible(d: Decision) -> Decision:
        return dataclasses.replace(d, status=DecisionStatus.INFEASIBLE)

    # Overload fallbacks: a slower move sized for less load waits as between feasible decisions.
    h = Harness([infeasible(FAST), infeasible(decision("accurate", 18, 0.5)), infeasible(decision("accurate", 18, 0.5))],
                hold_intervals=2, load_drop_fraction=0.9)
    assert [h.step().action for _ in range(3)] == ["applied", "held", "applied"]
    # A feasible decision after a fallback goes in at once, slower and for less load as it may be.
    h = Harness([infeasible(FAST), decision("accurate", 18, 0.5)], hold_intervals=5, load_drop_fraction=0.9)
    assert [h.step().action for _ in range(2)] == ["applied", "applied"]


def test_large_load_drop_skips_the_hold():
    h = Harness([FAST, SLOW], hold_intervals=5, load_drop_fraction=0.3)
    assert [h.step().action for _ in range(2)] == ["applied", "applied"]


def test_dry_run_decides_and_logs_but_never_applies():
    h = Harness([FAST, SLOW], dry_run=True)
    entries = [h.step() for _ in range(2)]
    assert [e.action for e in entries] == ["dry-run", "dry-run"]
    assert h.applied == [] and entries[0].decision is FAST


def test_crashes_are_isolated_and_visible():
    h = Harness([FAST, RuntimeError("solver died"), SLOW, FAST])
    h.step()
    failed = h.step()
    assert failed.action == "failed" and "solver died" in failed.note
    st = h.loop.status()
    assert st.consecutive_failures == 1 and "decide failed" in st.last_error and st.applied is FAST
    h.fail_apply = True
    assert h.step().action == "failed"  # SLOW could not be applied
    assert h.loop.status().consecutive_failures == 2 and h.loop.status().applied is FAST
    h.fail_apply = False
    h.fail_observe = True
    assert h.step().action == "failed"
    assert "observe failed" in h.loop.status().last_error
    h.fail_observe = False
    assert h.step().action == "unchanged"  # FAST again, still applied
    assert h.loop.status().consecutive_failures == 0


def test_persistence_restores_the_last_applied_decision(tmp_path):
    store = FileDecisionStore(tmp_path / "decision.json")
    h = Harness([SLOW], store=store)
    h.step()
    restored = Harness([SLOW], store=FileDecisionStore(tmp_path / "decision.json"))
    assert restored.loop.applied.same_config(SLOW)
    assert restored.step().action == "unchanged"
    assert restored.applied == []


def test_corrupt_store_is_reported_not_fatal(tmp_path):
    path = tmp_path / "decision.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="decision.json"):
        FileDecisionStore(path).load()
    h = Harness([FAST], store=FileDecisionStore(path))
    assert h.loop.applied is None and "restore failed" in h.loop.status().last_error
    assert h.step().action == "applied"


def test_log_records_time_apply_duration_and_explanation():
    h = Harness([FAST], log_size=2)
    e = h.step()
    assert e.time_s == 0.0 and e.apply_duration_s == pytest.approx(0.5) and e.forecast_rps == 10.0
    assert e.to_dict()["decision"]["stages"][0]["variant"] == "fast"


def test_run_steps_on_the_injected_clock_until_stopped():
    h = Harness([FAST] * 5)
    h.poller.run(threading.Event(), interval_s=10.0, max_steps=3)
    assert h.loop.status().steps == 3 and h.clock.t == pytest.approx(30.0)
    stop = threading.Event()
    stop.set()
    h.poller.run(stop, interval_s=10.0)
    assert h.loop.status().steps == 3


def test_pins_override_variants_of_policies_without_pin_support():
    h = Harness([FAST], pins={"s": "pinned-variant"})
    h.step()
    assert h.applied[0].stages[0].variant == "pinned-variant"


def test_loop_with_ipa_policy_moves_faster_when_load_rises_and_back_when_it_falls():
    profile = vision_caption_like()
    ctx = PolicyContext(spec=None, profile=profile, sla=SLA(3.0))
    clock = FakeClock()
    applied: list[Decision] = []
    rps = {"v": 0.3}

    def observe():
        return Observation(time_s=clock.t, interval_s=10.0, arrival_rps=rps["v"], history_rps=[rps["v"]] * 10)

    loop = ControlLoop(make_policy("ipa", ctx), applied.append, clock=clock, store=MemoryDecisionStore(),
                       hold_intervals=2)
    poller = Poller(loop, observe, Reactive(), clock, sleep=clock.sleep)
    poller.poll()
    rps["v"] = 1.5
    poller.poll()
    rps["v"] = 0.3
    poller.poll()
    poller.poll()
    accs = [d.predicted_accuracy for d in applied]
    assert len(applied) == 3 and accs[1] < accs[0] and accs[2] == pytest.approx(accs[0])
    assert loop.store.load() is applied[-1]


def test_step_takes_the_observation_and_forecast_it_is_given():
    """The simulator's way in: no observe, predictor or clock, just step(observation, forecast)."""
    applied: list[Decision] = []
    policy = ScriptedPolicy([FAST, decision("accurate", load=18, latency=0.5)])
    loop = ControlLoop(policy, applied.append)
    first = loop.step(Observation(time_s=20.0, interval_s=10.0, arrival_rps=3.0), Forecast(rps=7.0))
    assert (first.action, first.time_s, first.forecast_rps) == ("applied", 20.0, 7.0) and applied == [FAST]
    held = loop.step(Observation(time_s=30.0, interval_s=10.0, arrival_rps=3.0), Forecast(rps=18.0))
    assert held.action == "held" and loop.status().last_step_time_s == 30.0
