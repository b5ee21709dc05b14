"""The ingress's admission control, without Ray: fake stage handles, a fake controller, a fake clock.

The stages here hold every request until the test opens their gate, so the queues
the ingress sees are exactly the requests the test sent; the clock only moves
when the test moves it.
"""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from starlette.requests import Request

from varipipe.errors import ConfigError
from varipipe.pipelines.ingress_logic import REPLY_MARGIN_S, IngressCore
from varipipe.pipelines.metrics import MetricsAggregator
from varipipe.pipelines.queues import StageQueues, StageSlots, slots_user_config
from varipipe.pipelines.variant import StageTrace
from varipipe.pipelines.variants.identity import Echo
from varipipe.records import Decision, StageDecision
from varipipe.spec import find_spec

# What the fake stages report as the batch time of every request: 10 s, so that
# deadlines in tens of seconds leave the real time the test takes out of play.
COMPUTE_S = 10.0


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeStage:
    """A stage handle whose requests wait at a gate; it reports ``COMPUTE_S`` per request, batch 1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.waiting = 0
        self.calls = 0
        self.arrived = asyncio.Event()

    def remote(self, payload):
        return self._run(payload)

    async def _run(self, payload):
        self.calls += 1
        self.waiting += 1
        self.arrived.set()
        await self.gate.wait()
        self.waiting -= 1
        payload.outputs[self.name] = Echo(self.name, "fast", 1)
        payload.trace.append(StageTrace(self.name, "fast", 1, 0.0, COMPUTE_S))
        return payload


class FakeMethod:
    def __init__(self, sink: list) -> None:
        self.sink = sink

    def remote(self, batch):
        self.sink.extend(batch)

        async def done():
            return None

        return done()


class FakeController:
    def __init__(self) -> None:
        self.requests: list = []
        self.arrivals: list = []
        self.stage_events: list = []
        self.record_requests = FakeMethod(self.requests)
        self.record_arrivals = FakeMethod(self.arrivals)
        self.record_stage_events = FakeMethod(self.stage_events)


def request(body: bytes, headers: dict[str, str]) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/identity-chain", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in {"content-type": "image/png", **headers}.items()]}
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


@pytest.fixture(scope="module")
def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(buf, "PNG")
    return buf.getvalue()


def make_core(admission=True, deadline_s=0.0):
    clock = Clock()
    stages = {n: FakeStage(n) for n in ("first", "second")}
    core = IngressCore(find_spec("identity-chain"), stages, FakeController(), deadline_s=deadline_s,
                       admission=admission, slots={n: StageSlots(batch=1, replicas=1) for n in stages}, clock=clock)
    return core, stages, clock


async def _measured(core, stages, png) -> None:
    """One request through open gates: the ingress learns COMPUTE_S per item at each stage."""
    for s in stages.values():
        s.gate.set()
    assert (await core.handle(request(png, {}))).status == 200
    for s in stages.values():
        s.gate.clear()


async def _settled(task: asyncio.Task, stage: FakeStage, before: int) -> None:
    """Until the request is answered or waits at ``stage`` (one more than ``before`` wait there)."""
    while not task.done() and stage.waiting == before:
        stage.arrived.clear()
        waiter = asyncio.ensure_future(stage.arrived.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()


async def _burst(core, stages, png, n: int, headers: dict[str, str]):
    """``n`` requests one after another, each left waiting at its stage; then every gate opens."""
    tasks = []
    for _ in range(n):
        before = stages["first"].waiting
        task = asyncio.create_task(core.handle(request(png, headers)))
        tasks.append(task)
        await _settled(task, stages["first"], before)
    admitted = stages["first"].waiting
    for s in stages.values():
        s.gate.set()
    return await asyncio.gather(*tasks), admitted


def test_a_burst_beyond_capacity_is_rejected_at_once_with_retry_after_and_a_reason(png):
    async def run():
        core, stages, _ = make_core()
        await _measured(core, stages, png)
        # Deadline 50 s; each stage runs one item per 10 s: a request behind q others in the
        # first stage is expected to take (q + 1) * 10 s there and 10 s in the second.
        answers, admitted = await _burst(core, stages, png, 8, {"x-deadline-ms": "50000"})
        return core, answers, admitted

    core, answers, admitted = asyncio.run(run())
    statuses = [a.status for a in answers]
    assert statuses == [200] * 3 + [503] * 5, statuses  # 20, 30, 40 s fit; 50 s + the reply margin does not
    assert admitted == 3
    for a in answers[3:]:
        assert int(a.headers["retry-after"]) >= 1
        assert a.body["rejected_at"] == "first" and a.body["deadline_ms"] == 50000.0
        assert a.body["predicted_ms"] > 50000.0 - REPLY_MARGIN_S * 1000
        assert "overloaded" in a.body["error"] and "'first'" in a.body["error"]
        assert a.body["in_flight"]["first"] == 3
        assert a.body["latency_s"] >= 0  # the ingress's own part of the rejection's time
    assert core.queues.in_flight == {"first": 0, "second": 0}


def test_a_burst_arriving_at_once_sees_itself_while_it_is_still_being_read(png):
    """All requests pass admission before the first has been decoded and sent to a stage."""
    async def run():
        core, stages, _ = make_core()
        await _measured(core, stages, png)
        tasks = [asyncio.create_task(core.handle(request(png, {"x-deadline-ms": "50000"}))) for _ in range(8)]
        first = stages["first"]
        while sum(t.done() for t in tasks) + first.waiting < len(tasks):
            first.arrived.clear()
            waiter = asyncio.ensure_future(first.arrived.wait())
            await asyncio.wait([waiter, *[t for t in tasks if not t.done()]], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        admitted = first.waiting
        for s in stages.values():
            s.gate.set()
        return await asyncio.gather(*tasks), admitted

    answers, admitted = asyncio.run(run())
    assert admitted == 3 and sorted(a.status for a in answers) == [200] * 3 + [503] * 5


def test_without_a_deadline_every_request_is_admitted(png):
    async def run():
        core, stages, _ = make_core()
        await _measured(core, stages, png)
        return await _burst(core, stages, png, 8, {})

    answers, admitted = asyncio.run(run())
    assert [a.status for a in answers] == [200] * 8 and admitted == 8


def test_the_servers_default_deadline_applies_to_requests_without_one(png):
    async def run():
        core, stages, _ = make_core(deadline_s=50.0)
        await _measured(core, stages, png)
        return await _burst(core, stages, png, 8, {})

    answers, admitted = asyncio.run(run())
    assert [a.status for a in answers] == [200] * 3 + [503] * 5 and admitted == 3


def test_admission_off_lets_every_request_queue(png):
    async def run():
        core, stages, _ = make_core(admission=False)
        await _measured(core, stages, png)
        return await _burst(core, stages, png, 8, {"x-deadline-ms": "50000"})

    answers, admitted = asyncio.run(run())
    assert [a.status for a in answers] == [200] * 8 and admitted == 8


def test_a_deadline_no_empty_pipeline_could_meet_is_504_before_any_work(png):
    async def run():
        core, stages, _ = make_core()
        await _measured(core, stages, png)
        for s in stages.values():
            s.gate.set()
        return await core.handle(request(png, {"x-deadline-ms": "15000"})), stages

    answer, stages = asyncio.run(run())
    assert answer.status == 504 and "retry-after" not in answer.headers
    assert answer.body["dropped_at"] == "second" and "deadline exceeded" in answer.body["error"]
    assert stages["first"].calls == 1  # only the measuring request


def test_a_request_finishing_past_its_deadline_gets_504_not_a_late_200(png):
    async def run():
        core, stages, clock = make_core()
        await _measured(core, stages, png)
        task = asyncio.create_task(core.handle(request(png, {"x-deadline-ms": "50000"})))
        await _settled(task, stages["first"], 0)
        clock.t += 50.0  # the stages took longer than they said
        for s in stages.values():
            s.gate.set()
        return await task, core

    answer, core = asyncio.run(run())
    assert answer.status == 504 and answer.body["dropped_at"] == "second"
    assert "not a late 200" in answer.body["error"]
    # Where its time went, as a 200 would show it.
    assert [(s["stage"], s["compute_s"]) for s in answer.body["stages"]] == [("first", COMPUTE_S), ("second", COMPUTE_S)]


def test_rejections_are_counted_in_the_metrics_never_as_errors(png):
    async def run():
        core, stages, _ = make_core()
        await _measured(core, stages, png)
        await _burst(core, stages, png, 6, {"x-deadline-ms": "50000"})
        await core.handle(request(png, {"x-deadline-ms": "15000"}))
        await core.handle(request(b"not an image", {}))
        return core

    core = asyncio.run(run())
    recs = core._records._buf + core.controller.requests
    agg = MetricsAggregator("identity-chain", ("first", "second"), 0.5, 0.0)
    agg.add_requests(recs)
    agg.observe(1.0)
    w = agg.last_window
    assert (w.rejected, w.errors, w.drops) == (3 + 1, 1, 0)
    text = agg.prometheus_text().decode()
    assert 'varipipe_rejected_total{pipeline="identity-chain",stage="first"} 3.0' in text
    assert 'varipipe_rejected_total{pipeline="identity-chain",stage="second"} 1.0' in text
    assert 'varipipe_requests_total{pipeline="identity-chain",status="503"} 3.0' in text


def test_a_stage_that_fails_leaves_the_in_flight_count_right(png):
    class Broken:
        def remote(self, payload):
            async def fail():
                raise RuntimeError("stage fault")

            return fail()

    async def run():
        core, stages, _ = make_core()
        core.stages["first"] = Broken()
        with pytest.raises(RuntimeError):
            await core.handle(request(png, {}))
        return core

    assert asyncio.run(run()).queues.in_flight == {"first": 0, "second": 0}


def test_queues_take_batch_and_replicas_from_the_decision():
    d = Decision(stages=(StageDecision("first", "fast", 8, 3, "cpu:1", 0.0),
                         StageDecision("second", "fast", 2, 1, "cpu:1", 0.0)))
    q = StageQueues(("first", "second"), {"first": StageSlots(1, 1), "second": StageSlots(1, 1)})
    q.configure(slots_user_config(d, {"second": 4}))  # an autoscaled second stage: at most 4
    assert q.slots == {"first": StageSlots(8, 3), "second": StageSlots(2, 4)}
    assert [(x.batch, x.replicas) for x in q.loads()] == [(8, 3), (2, 4)]
    for bad in ({}, {"stages": {"first": {"batch": 1, "replicas": 1}}},
                {"stages": {"first": {"batch": 0, "replicas": 1}, "second": {"batch": 1, "replicas": 1}}},
                {"stages": {"first": {"batch": "x", "replicas": 1}, "second": {"batch": 1, "replicas": 1}}}):
        with pytest.raises(ConfigError):
            q.configure(bad)


def test_the_ingress_forgets_a_per_item_estimate_no_answer_refreshed():
    """An ingress rejecting everything gets no answers to correct a stale estimate: after
    STALE_ESTIMATE_S without one it is forgotten, so requests reach the stages again."""
    from varipipe.admission import STALE_ESTIMATE_S

    q = StageQueues(("first", "second"), {"first": StageSlots(1, 1), "second": StageSlots(1, 1)})
    q.sent("first")
    q.back("first", compute_s=5.0, batch_size=1, now=100.0)
    assert [x.item_s for x in q.loads(100.0 + STALE_ESTIMATE_S)] == [5.0, 0.0]
    assert [x.item_s for x in q.loads(100.0 + STALE_ESTIMATE_S + 1)] == [0.0, 0.0]
    assert [x.item_s for x in q.loads()] == [5.0, 0.0]  # no clock: every estimate in force


def test_the_reserve_is_the_recent_time_outside_the_stages_less_a_few_outliers():
    from varipipe.admission import STALE_ESTIMATE_S
    from varipipe.pipelines.queues import RESERVE_OUTLIERS, RESERVE_SAMPLES

    q = StageQueues(("first", "second"), {"first": StageSlots(1, 1), "second": StageSlots(1, 1)})
    assert q.reserve_s(100.0) == 0.0  # nothing measured yet
    q.outside(-0.5, now=100.0)  # the model over-predicted: nothing to keep, and it keeps nothing
    for _ in range(RESERVE_OUTLIERS):
        q.outside(5.0, now=100.0)  # a stage handle's first call, a pause of the host
    assert q.reserve_s(100.0) == 0.0  # outliers alone never set it
    q.outside(0.02, now=100.0)
    assert q.reserve_s(100.0) == 0.02
    for i in range(1, RESERVE_SAMPLES + 1):  # a full window: the older ones leave it
        q.outside(i / 1000, now=100.0)
    # The 90th percentile of a full window: the largest but RESERVE_OUTLIERS.
    assert q.reserve_s(100.0) == pytest.approx((RESERVE_SAMPLES - RESERVE_OUTLIERS) / 1000)
    # Stale measurements are forgotten, as the per-item estimates are: an ingress whose reserve
    # made it reject everything would measure nothing new.
    assert q.reserve_s(100.0 + STALE_ESTIMATE_S) > 0
    assert q.reserve_s(100.0 + STALE_ESTIMATE_S + 1) == 0.0
    assert q.reserve_s() > 0  # no clock: every measurement in force


class SlowOutside(FakeStage):
    """A stage whose replica reports no queue and no compute time, while the request takes
    ``OUTSIDE_S`` of real time to come back: all of it outside the replica, as Ray's hops are."""

    OUTSIDE_S = 0.1

    async def _run(self, payload):
        self.calls += 1
        await asyncio.sleep(self.OUTSIDE_S)
        payload.outputs[self.name] = Echo(self.name, "fast", 1)
        payload.trace.append(StageTrace(self.name, "fast", 1, 0.0, 0.0))
        return payload


@pytest.mark.parametrize("reserve", [True, False])
def test_admission_keeps_the_measured_time_outside_the_stages_for_it(png, reserve):
    """The stages say 0 s; the ingress measured at least ``OUTSIDE_S`` more: a deadline that
    leaves less than that beyond the reply's margin is not worth starting (reserve=False,
    a benchmark's baseline: it is admitted, and would finish late)."""
    from varipipe.admission import STALE_ESTIMATE_S
    from varipipe.pipelines.queues import RESERVE_OUTLIERS

    async def run():
        clock = Clock()
        stages = {n: SlowOutside(n) for n in ("first", "second")}
        core = IngressCore(find_spec("identity-chain"), stages, FakeController(), clock=clock, reserve=reserve,
                           slots={n: StageSlots(batch=1, replicas=1) for n in stages})
        for _ in range(RESERVE_OUTLIERS + 1):  # measure: each >= 2 x OUTSIDE_S outside, more than outliers
            assert (await core.handle(request(png, {}))).status == 200
        tight = {"x-deadline-ms": str(1000 * (REPLY_MARGIN_S + SlowOutside.OUTSIDE_S))}
        answer = await core.handle(request(png, tight))
        clock.t += STALE_ESTIMATE_S + 1  # no request served since: the measurement is forgotten
        later = await core.handle(request(png, tight))
        return answer, later, stages["first"].calls - RESERVE_OUTLIERS - 1

    answer, later, calls = asyncio.run(run())
    if reserve:
        assert answer.status == 504 and calls == 1  # rejected before any work
        assert answer.body["outside_ms"] >= 1000 * (REPLY_MARGIN_S + 2 * SlowOutside.OUTSIDE_S)
        assert "kept for its way outside the stages" in answer.body["error"]
    else:
        assert answer.status == 200 and calls == 2
    assert later.status == 200
