"""The ingress's FIFO gate in front of each stage (pipelines/gate.py), and its wiring: no Ray."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_ingress_admission import FakeController, FakeStage, png, request  # noqa: F401 (fixture)
from varipipe.pipelines.gate import FifoGate
from varipipe.pipelines.ingress_logic import IngressCore, stage_capacity
from varipipe.pipelines.queues import StageSlots, slots_user_config
from varipipe.pipelines.serve_config import max_ongoing_for
from varipipe.records import Decision, StageDecision
from varipipe.spec import find_spec


async def _enter(gate: FifoGate, name: str, order: list[str], leave: asyncio.Event) -> None:
    async with gate:
        order.append(name)
        await leave.wait()


async def _until(cond, timeout_s: float = 30.0) -> None:
    """Until ``cond()`` holds: the requests are decoded on a worker thread, so loop turns alone are not enough."""
    async def poll():
        while not cond():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), timeout_s)


async def _settle() -> None:
    for _ in range(5):  # a handful of loop turns: every runnable task reaches its next await
        await asyncio.sleep(0)


def test_at_most_capacity_hold_it_and_the_rest_enter_in_arrival_order():
    async def run():
        gate, order = FifoGate(2), []
        leaves = {n: asyncio.Event() for n in "abcde"}
        tasks = [asyncio.create_task(_enter(gate, n, order, leaves[n])) for n in "abcde"]
        await _settle()
        seen = [list(order)]
        for n in "bade":  # answers come back in any order; the line still moves in arrival order
            leaves[n].set()
            await _settle()
            seen.append(list(order))
        leaves["c"].set()
        await asyncio.gather(*tasks)
        return seen, gate

    seen, gate = asyncio.run(run())
    assert seen == [["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"], ["a", "b", "c", "d", "e"],
                    ["a", "b", "c", "d", "e"]]
    assert gate.holders == 0 and gate.waiting == 0


def test_a_cancelled_waiter_leaves_the_line_and_loses_no_place():
    async def run():
        gate, order, leave = FifoGate(1), [], asyncio.Event()
        first = asyncio.create_task(_enter(gate, "a", order, leave))
        await _settle()
        quitter = asyncio.create_task(_enter(gate, "b", order, leave))
        third = asyncio.create_task(_enter(gate, "c", order, leave))
        await _settle()
        assert gate.waiting == 2
        quitter.cancel()
        await _settle()
        assert gate.waiting == 1 and gate.holders == 1
        leave.set()
        await asyncio.gather(first, third)
        return order, gate

    order, gate = asyncio.run(run())
    assert order == ["a", "c"] and gate.holders == 0


def test_a_waiter_cancelled_after_it_was_let_in_passes_its_place_on():
    async def run():
        gate, order, leave = FifoGate(1), [], asyncio.Event()
        await gate.acquire()
        late = asyncio.create_task(_enter(gate, "late", order, leave))
        nxt = asyncio.create_task(_enter(gate, "next", order, leave))
        await _settle()
        gate.release()  # lets "late" in ...
        late.cancel()  # ... and it is cancelled before it runs
        await _settle()
        leave.set()
        await nxt
        return order, gate, late

    order, gate, late = asyncio.run(run())
    assert late.cancelled() and order == ["next"] and gate.holders == 0


def test_resizing_lets_waiters_in_at_once_and_never_pushes_holders_out():
    async def run():
        gate, order, leave = FifoGate(1), [], asyncio.Event()
        tasks = [asyncio.create_task(_enter(gate, n, order, leave)) for n in "abcd"]
        await _settle()
        grown = list(order)
        gate.resize(3)
        await _settle()
        after_grow = list(order)
        gate.resize(1)
        await _settle()
        holders_after_shrink = gate.holders
        leave.set()
        await asyncio.gather(*tasks)
        return grown, after_grow, holders_after_shrink, order

    grown, after_grow, holders_after_shrink, order = asyncio.run(run())
    assert grown == ["a"] and after_grow == ["a", "b", "c"] and holders_after_shrink == 3
    assert order == ["a", "b", "c", "d"]


def test_a_gate_needs_a_place_and_a_release_needs_a_holder():
    with pytest.raises(ValueError, match="at least 1"):
        FifoGate(0)
    with pytest.raises(RuntimeError, match="more often than acquired"):
        FifoGate(1).release()


def test_the_ingress_lets_no_more_into_a_stage_than_its_replicas_take_and_counts_the_rest_as_queued(png):  # noqa: F811
    """A burst of requests without deadlines: each stage's handle sees at most
    replicas x max_ongoing_requests of them, the queue the adapter sees holds all of them,
    and every one is answered, in order, once the stage answers."""
    spec = find_spec("identity-chain")
    capacity = stage_capacity(StageSlots(batch=1, replicas=1))
    assert capacity == max_ongoing_for(1)
    n = capacity + 5

    async def run():
        stages = {s: FakeStage(s) for s in spec.stage_names}
        core = IngressCore(spec, stages, FakeController(), admission=False,
                           slots={s: StageSlots(batch=1, replicas=1) for s in spec.stage_names})
        tasks = [asyncio.create_task(core.handle(request(png, {}))) for _ in range(n)]
        # Every request decoded (on a worker thread) and either at the stage or at its gate.
        gate = core.gates["first"]
        await _until(lambda: stages["first"].waiting + gate.waiting == n)
        await _settle()
        at_stage, at_gate, queued = stages["first"].waiting, gate.waiting, core.queues.in_flight["first"]
        # A decision with two replicas of the first stage: the gate opens as far at once.
        core.configure(slots_user_config(Decision(stages=(StageDecision("first", "fast", 1, 2),
                                                          StageDecision("second", "fast", 1, 1)))))
        let_in = (gate.holders, gate.waiting)
        await _until(lambda: stages["first"].waiting == n)
        for s in stages.values():
            s.gate.set()
        answers = await asyncio.gather(*tasks)
        return at_stage, at_gate, queued, let_in, answers, core

    at_stage, at_gate, queued, let_in, answers, core = asyncio.run(run())
    assert (at_stage, at_gate, queued) == (capacity, n - capacity, n)
    assert let_in == (n, 0)  # 2 x 8 places >= 13 requests: all in at the resize itself
    assert [a.status for a in answers] == [200] * n
    assert core.queues.in_flight == {"first": 0, "second": 0}
    assert all(g.holders == 0 and g.waiting == 0 for g in core.gates.values())


def test_without_the_gate_every_request_goes_straight_to_the_stage_handle(png):  # noqa: F811
    """``stage_gate=False`` (benchmarks/router_backlog.py's baseline): Serve's router would queue them."""
    spec = find_spec("identity-chain")
    n = stage_capacity(StageSlots(batch=1, replicas=1)) + 5

    async def run():
        stages = {s: FakeStage(s) for s in spec.stage_names}
        core = IngressCore(spec, stages, FakeController(), admission=False, gate=False,
                           slots={s: StageSlots(batch=1, replicas=1) for s in spec.stage_names})
        tasks = [asyncio.create_task(core.handle(request(png, {}))) for _ in range(n)]
        await _until(lambda: stages["first"].waiting >= n)
        for s in stages.values():
            s.gate.set()
        return await asyncio.gather(*tasks), core

    answers, core = asyncio.run(run())
    assert [a.status for a in answers] == [200] * n and core.gates == {}
