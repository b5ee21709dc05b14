"""Live reconfiguration of a real Ray Serve application (issue 4, part 3).

Every test records the actor id of every replica before and after a change,
from Ray's own state API (not from our code), to show which were restarted.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from varipipe.errors import ReconfigurationError
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

from .identity_chain import decision
from .openloop import closed_loop_capacity, open_loop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "reconf-test"


def replica_ids(stage: str) -> set[str]:
    # Straight from the GCS actor table: ray.util.state needs the dashboard, which is off.
    from ray._private.state import state

    return {aid for aid, a in state.actor_table(None).items()
            if a["State"] == "ALIVE" and a["ActorClassName"] == f"ServeReplica:{APP}:stage-{stage}"}


def ids() -> dict[str, set[str]]:
    return {s: replica_ids(s) for s in ("first", "second")}


def reports(server) -> list[dict]:
    return httpx.get(server.url + "/api/replicas").json()


@pytest.fixture(scope="module")
def server(serve_port):
    with LocalServer(AppOptions(pipeline="identity-chain", app_name=APP), port=serve_port,
                     decision=decision()) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset(server):
    server.apply(decision())
    yield


def test_batch_and_timeout_change_restart_nothing(server):
    before = ids()
    res = server.apply(decision(b1=16, wait=0.02))
    assert res.changed_stages == ("first", "second")
    assert ids() == before
    first = [r for r in reports(server) if r["stage"] == "first" and r["generation"] == server.applier.stage_generation["first"]]
    assert first and all(r["max_batch_size"] == 16 and r["batch_wait_timeout_s"] == 0.02 for r in first)


def test_variant_switch_restarts_nothing_and_releases_the_old_model(server, png_bytes):
    before = ids()
    res = server.apply(decision(first="slow"))
    assert res.changed_stages == ("first",)
    assert ids() == before
    # identity "slow" takes 0.5 s to load: the switch time includes the load
    assert res.seconds >= 0.5
    gen = server.applier.stage_generation["first"]
    mine = [r for r in reports(server) if r["stage"] == "first" and r["generation"] == gen]
    assert mine and all(r["variant"] == "slow" and r["loaded_variants"] == ["slow"] for r in mine)
    assert all(r["last_switch_s"] >= 0.5 for r in mine)
    body = httpx.post(server.endpoint, content=png_bytes).json()
    assert body["stages"][0]["variant"] == "slow"


def test_replica_count_change_keeps_the_others(server):
    before = ids()
    server.apply(decision(r1=2))
    grown = ids()
    assert before["first"] < grown["first"] and len(grown["first"]) == 2
    assert grown["second"] == before["second"]
    server.apply(decision(r1=1))
    shrunk = ids()
    assert len(shrunk["first"]) == 1 and shrunk["first"] < grown["first"]
    assert shrunk["second"] == before["second"]


def test_variant_that_fails_to_load_leaves_the_old_one_serving(server, png_bytes):
    before = ids()
    with pytest.raises(ReconfigurationError, match="broken.*failed to load"):
        server.apply(decision(second="broken"))
    assert ids() == before
    body = httpx.post(server.endpoint, content=png_bytes).json()
    assert body["stages"][1]["variant"] == "fast"
    cfg = httpx.get(server.url + "/config").json()
    assert [s["variant"] for s in cfg["decision"]["stages"]] == ["fast", "fast"]
    # and the application still accepts a good change afterwards
    server.apply(decision(b2=8))


def test_no_request_lost_during_changes_under_load(server, png_bytes):
    capacity = asyncio.run(closed_loop_capacity(server.endpoint, png_bytes, clients=16, duration_s=4))
    rate = max(5.0, 0.6 * capacity)
    changes = [decision(b1=8), decision(first="slow", b1=8), decision(first="slow", b1=8, r1=2),
               decision(first="fast", b1=2, r1=2), decision()]

    async def run():
        load = asyncio.create_task(open_loop(server.endpoint, png_bytes, rate, duration_s=len(changes) * 6 + 4))
        for d in changes:
            await asyncio.sleep(2)
            await asyncio.to_thread(server.apply, d)
        return await load

    results = asyncio.run(run())
    failed = [r for r in results if r.status != 200]
    assert len(results) >= int(rate * 20)
    assert not failed, f"{len(failed)} of {len(results)} failed at {rate:.0f} req/s: {failed[:3]}"
    batches = [s["batch_size"] for r in results for s in r.body["stages"]]
    assert max(batches) > 1, "batches never formed under load"


def test_stage_replicas_run_every_thread_below_the_ingress(server):
    """Issue 16: a replica's threads, the model's own included, run at STAGE_NICE or lower, so
    Serve's proxy and the ingress (as started) answer rejections while batches run."""
    import os
    from pathlib import Path

    from ray._private.state import state

    from varipipe.pipelines.serve_config import STAGE_NICE

    # The live replicas, from the GCS (the controller keeps the reports of replicas long gone).
    pids = {a["Pid"] for a in state.actor_table(None).values()
            if a["State"] == "ALIVE" and a["ActorClassName"].startswith(f"ServeReplica:{APP}:stage-")}
    assert len(pids) >= 2  # both stages
    for pid in pids:
        nices = [os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()]
        assert len(nices) > 1 and min(nices) >= STAGE_NICE, (pid, nices)
