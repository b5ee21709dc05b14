"""Pure parts of serving: config building, the stage core, metrics aggregation."""

import gc

import pytest

from varipipe.admission import COLD_BATCHES
from varipipe.pipelines.metrics import (
    BatchRecord,
    MetricsAggregator,
    RequestRecord,
    StageEntry,
    StageExit,
    StageTiming,
    percentile,
)
from varipipe.pipelines.serve_config import (
    CONTROLLER,
    INGRESS,
    AppOptions,
    build_app_config,
    default_decision,
    max_ongoing_for,
    stage_deployment_name,
)
from varipipe.pipelines.stage import StageConfig, StageCore
from varipipe.pipelines.variant import Payload
from varipipe.records import Decision, StageDecision
from varipipe.spec import find_spec

# A bound on waiting for an event that a correct run sets at once: only a hung run reaches it.
WAIT_S = 30.0


@pytest.fixture
def spec():
    return find_spec("identity-chain")


def _decision(first="fast", batch=4, replicas=1):
    return Decision(stages=(StageDecision("first", first, batch, replicas, "cpu:1", 0.01),
                            StageDecision("second", "fast", 2, 1, "cpu:1", 0.0)))


def test_config_has_every_deployment_and_only_changes_what_changed(spec):
    opts = AppOptions(pipeline="identity-chain")
    a = build_app_config(opts, _decision(), 1, {"first": 1, "second": 1})
    names = [d["name"] for d in a["deployments"]]
    assert names == [INGRESS, CONTROLLER, stage_deployment_name("first"), stage_deployment_name("second")]
    b = build_app_config(opts, _decision(batch=8), 2, {"first": 2, "second": 1})
    da = {d["name"]: d for d in a["deployments"]}
    db = {d["name"]: d for d in b["deployments"]}
    assert da["stage-second"] == db["stage-second"]  # untouched: byte-for-byte the same
    assert db["stage-first"]["user_config"]["max_batch_size"] == 8
    assert db["stage-first"]["max_ongoing_requests"] >= 8
    assert a["args"] == b["args"]  # args never change: changing them restarts replicas


def test_max_ongoing_at_least_batch():
    for b in (1, 4, 16, 64):
        assert max_ongoing_for(b) >= b


def test_default_decision_uses_default_variants(spec):
    d = default_decision(spec)
    assert [s.variant for s in d.stages] == ["fast", "fast"]


def test_stage_core_switches_and_releases(spec):
    core = StageCore(spec.stage("first"))
    core.configure(StageConfig("fast", 4, 0.0, 1))
    core.configure(StageConfig("slow", 2, 0.0, 2))
    gc.collect()
    st = core.status(0.0)
    assert st.variant == "slow" and st.loaded_variants == ("slow",) and st.generation == 2 and not st.error
    out = core.infer([Payload(), Payload()], [0.0, 0.0])
    assert [p.trace[-1].variant for p in out] == ["slow", "slow"]
    assert out[0].trace[-1].batch_size == 2


def test_failed_load_keeps_old_variant(spec):
    core = StageCore(spec.stage("second"))
    core.configure(StageConfig("fast", 4, 0.0, 1))
    core.configure(StageConfig("broken", 8, 0.0, 2))
    st = core.status(0.0)
    assert st.variant == "fast" and "broken" in st.error and st.generation == 2
    assert st.max_batch_size == 4  # the old variant's settings stay with it
    assert core.infer([Payload()])[0].trace[-1].variant == "fast"


def test_failed_first_load_falls_back_to_default(spec):
    core = StageCore(spec.stage("second"))
    core.configure(StageConfig("broken", 2, 0.0, 1))
    st = core.status(0.0)
    assert st.variant == "fast" and "broken" in st.error


def test_metrics_observation_and_prometheus():
    m = MetricsAggregator("p", ["a", "b"], sla_s=0.1, start_time=100.0)
    recs = [RequestRecord(100.0 + i * 0.1, 0.05, 200, (StageTiming("a", "x", 0.02, 2), StageTiming("b", "y", 0.03, 2)))
            for i in range(20)]
    recs.append(RequestRecord(101.0, 0.5, 200, ()))
    recs.append(RequestRecord(101.5, 0.0, 400, ()))
    m.add_arrivals(r.time for r in recs)
    m.add_requests(recs)
    events = []
    for i in range(20):
        t = 100.0 + i * 0.1
        events += [StageEntry("a", t), StageExit("a", t + 0.02, 0.02), StageEntry("b", t + 0.02)]
        events += [StageExit("b", t + 0.05, 0.03)] if i < 18 else []  # two still in b at 102
    m.add_stage_events(events)
    m.add_batches([BatchRecord("a", "x", 2, 0.01, 101.0)])
    obs = m.observe(102.0, replicas={"a": 1, "b": 2})
    assert obs.arrival_rps == pytest.approx(22 / 2.0)
    assert obs.stages[0].arrival_rps == pytest.approx(10.0) and obs.stages[1].arrival_rps == pytest.approx(10.0)
    assert (obs.stages[0].queue_length, obs.stages[1].queue_length) == (0.0, 2.0)
    assert (obs.stages[0].replicas, obs.stages[1].replicas) == (1, 2)
    assert obs.stages[1].p99_latency_s == pytest.approx(0.03)
    assert obs.e2e_p99_s == pytest.approx(0.05 + 0.8 * 0.45)  # linear between the 20th and 21st of 21
    text = m.prometheus_text().decode()
    assert 'varipipe_sla_violations_total{pipeline="p"} 2.0' in text
    assert 'varipipe_requests_total{pipeline="p",status="400"} 1.0' in text
    assert 'varipipe_stage_requests_total{pipeline="p",stage="b"} 18.0' in text
    nxt = m.observe(103.0)
    assert nxt.arrival_rps == 0.0 and nxt.stages[1].queue_length == 2.0  # a new window; b still holds 2
    assert m.history_rps(103.0)[-3:] == [10.0, 12.0, 0.0]


def test_percentile():
    assert percentile([], 99) == 0.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_requests_past_their_deadline_are_dropped_not_run(spec):
    import time

    core = StageCore(spec.stage("first"))
    core.configure(StageConfig("fast", 4, 0.0, 1))
    now = time.time()
    late, ok, free = Payload(deadline=now - 1), Payload(deadline=now + 60), Payload()
    out = core.infer([late, ok, free], [now, now, now])
    assert late.dropped_at == "first" and "first" not in late.outputs and not late.trace
    assert ok.dropped_at == "" and "first" in ok.outputs and ok.trace[-1].batch_size == 2
    assert free.dropped_at == "" and "first" in free.outputs
    assert len(out) == 3


def test_a_stage_that_sheds_everything_measures_again_once_its_estimate_is_stale(spec):
    """One slow batch must not shed a stage for good: shedding every item runs no batch, so
    nothing corrects the estimate; after STALE_ESTIMATE_S it is forgotten and re-measured."""
    from varipipe.admission import STALE_ESTIMATE_S

    now = [1000.0]
    core = StageCore(spec.stage("first"), clock=lambda: now[0])
    core.configure(StageConfig("fast", 4, 0.0, 1))
    core.infer([Payload()], [now[0]])  # the model's first batch (its set-up: admission.COLD_BATCHES)
    core.expected_batch_s, core.last_batch_at = 5.0, now[0]  # one batch took 5 s (a host hiccup)
    sla = 1.0
    shed = Payload(deadline=now[0] + sla)
    core.infer([shed], [now[0]])
    assert shed.dropped_at == "first"  # 5 s expected against a 1 s budget
    now[0] += STALE_ESTIMATE_S / 2
    still = Payload(deadline=now[0] + sla)
    core.infer([still], [now[0]])
    assert still.dropped_at == "first"  # the estimate is still in force
    now[0] += STALE_ESTIMATE_S  # no batch ran for longer than STALE_ESTIMATE_S since the last one
    again = Payload(deadline=now[0] + sla)
    core.infer([again], [now[0]])
    assert again.dropped_at == "" and "first" in again.outputs
    assert core.expected_batch_s < sla and core.last_batch_at == now[0]  # measured afresh


def test_a_models_first_batch_does_not_set_the_estimate(spec):
    """A model's first batch runs its set-up (OpenCV DNN builds its network on the first forward):
    read as the model's time, one cold batch over the SLA shed every request for STALE_ESTIMATE_S."""
    import time

    now = [1000.0]
    core = StageCore(spec.stage("first"), clock=lambda: now[0])
    core.configure(StageConfig("fast", 1, 0.0, 1))
    model_infer = core.variant.infer

    def cold_first(batch, calls=[]):  # noqa: B006 - counts the calls
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.3)  # the set-up
        return model_infer(batch)
    core.variant.infer = cold_first
    for _ in range(3):
        core.infer([Payload(deadline=now[0] + 0.2)], [now[0]])
    assert 0.0 < core.expected_batch_s < 0.1  # the warm batches' time, not the 0.3 s of the first
    core.configure(StageConfig("slow", 1, 0.0, 2))
    assert (core.expected_batch_s, core.cold_batches) == (0.0, COLD_BATCHES)  # a new model: cold again


def test_a_model_switched_in_warms_up_on_a_served_request_before_it_serves(spec):
    from varipipe.pipelines.variant import build_variant

    calls: list[tuple[str, str]] = []
    own_output: list[bool] = []  # a call's input held the stage's own output (it must not: the warm-up
    # runs what came to the stage)

    def builder(vspec, threads):
        v = build_variant(vspec, threads)
        model_infer = v.infer

        def infer(batch):
            calls.extend((v.name, p.request_id) for p in batch)
            own_output.extend("first" in p.outputs for p in batch)
            return model_infer(batch)
        v.infer = infer
        return v

    core = StageCore(spec.stage("first"), builder=builder)
    core.configure(StageConfig("fast", 4, 0.0, 1))
    assert calls == []  # nothing served yet: nothing to warm up on
    core.infer([Payload(request_id="r1"), Payload(request_id="r2")])
    core.configure(StageConfig("slow", 4, 0.0, 2))
    # the new model ran once, on a copy of a request the stage served, before taking any
    assert calls[2:] == [("slow", "warm-up")] and not any(own_output)
    out = core.infer([Payload(request_id="r3")])
    assert calls[3:] == [("slow", "r3")] and out[0].trace[-1].variant == "slow"


def test_a_variant_switch_forgets_the_old_models_batch_time(spec):
    now = [1000.0]
    core = StageCore(spec.stage("first"), clock=lambda: now[0])
    core.configure(StageConfig("slow", 1, 0.0, 1))
    core.expected_batch_s, core.last_batch_at = 5.0, now[0]
    core.configure(StageConfig("fast", 1, 0.0, 2))
    assert core.expected_batch_s == 0.0
    p = Payload(deadline=now[0] + 1.0)
    core.infer([p], [now[0]])
    assert p.dropped_at == ""


def test_controller_history_and_config_views():
    from varipipe.pipelines.controller_logic import ControllerState

    clock = iter([100.0, 101.0, 102.0, 103.0, 104.0, 105.0]).__next__
    st = ControllerState(AppOptions(pipeline="identity-chain"), clock=clock, start_thread=False)
    st.set_decision_config({"decision": _decision().to_dict(), "generation": 1, "stage_generation": {"first": 1}})
    recs = [RequestRecord(100.5, 0.1, 200, ()), RequestRecord(100.6, 0.9, 200, ()),
            RequestRecord(100.7, 0.0, 504, (), dropped_at="first")]
    st.metrics.add_arrivals(r.time for r in recs)
    st.metrics.add_requests(recs)
    st.tick()
    view = st.history_view()
    (point,) = view["points"]
    assert point["completed"] == 2 and point["within_sla"] == 1 and point["drops"] == 1
    assert point["stages"][0] == {"stage": "first", "variant": "fast", "batch": 4, "replicas": 1}
    assert st.history_view(since=point["t"])["points"] == []
    cfg = st.config_view()
    assert cfg["generation"] == 1 and cfg["adapter"]["enabled"] is False
    assert cfg["decision_log"][-1]["to"].startswith("first=fast b4 x1")


def test_switch_releases_the_old_model_only_after_its_running_batch(spec):
    # A runtime that breaks when its model is released mid-batch, as llama.cpp does
    # (close() under a running generation crashed the replica with SIGSEGV).
    import threading

    from varipipe.pipelines.variants.identity import IdentityVariant

    started, release = threading.Event(), threading.Event()

    class Fragile(IdentityVariant):
        def infer(self, batch):
            started.set()
            assert release.wait(WAIT_S), "the test never released the batch"  # held until the switch landed
            if not self.loaded:
                raise RuntimeError(f"{self.name}: model released under a running batch")
            return super().infer(batch)

    built: list[Fragile] = []

    def builder(variant_spec, threads):
        built.append(Fragile(variant_spec, threads))
        return built[-1]

    core = StageCore(spec.stage("first"), builder=builder)
    core.configure(StageConfig("fast", 1, 0.0, 1))
    result: dict = {}

    def run_batch():
        try:
            result["out"] = core.infer([Payload()], [0.0])
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            result["error"] = e

    batch = threading.Thread(target=run_batch)
    batch.start()
    assert started.wait(WAIT_S)  # the batch is now running on "fast"
    core.configure(StageConfig("slow", 1, 0.0, 2))  # does not wait for the batch
    assert built[0].loaded  # still in use by the running batch
    release.set()
    batch.join()
    assert "error" not in result, result.get("error")
    assert result["out"][0].trace[-1].variant == "fast"  # finished on the model it started on
    assert [v.name for v in built] == ["fast", "slow"] and not built[0].loaded and built[1].loaded
    assert core.infer([Payload()], [0.0])[0].trace[-1].variant == "slow"
