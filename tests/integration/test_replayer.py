"""The open-loop replayer against a real HTTP server on 127.0.0.1:0 (no Ray)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from aiohttp import web

from varipipe.loadgen.replayer import read_records, replay

# A bound on waiting for an event that a correct run sets within about a second: only a
# failing run (a sender that waits for replies) reaches it.
WAIT_S = 30.0


class _Server:
    """A local aiohttp app counting the requests it receives.

    ``hold_until``: answer nothing until that many requests have arrived.
    """

    def __init__(self, status: int = 200, hold_until: int = 0) -> None:
        self.status = status
        self.hold_until = hold_until
        self.all_arrived = asyncio.Event()
        self.received: list[float] = []
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        self.received.append(loop.time())
        self.bodies.append(await request.read())
        if len(self.received) >= self.hold_until:
            self.all_arrived.set()
        try:
            await asyncio.wait_for(self.all_arrived.wait(), WAIT_S)
        except TimeoutError:
            return web.Response(status=500, text=f"only {len(self.received)} of {self.hold_until} requests "
                                                 "arrived while every reply was held")
        if self.status != 200:
            return web.Response(status=self.status, text="shed")
        reply = {"stages": [{"stage": "a", "variant": "small", "seconds": 0.01, "output": 1},
                            {"stage": "b", "variant": "big"}], "latency_s": 0.02}
        return web.json_response(reply)

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/p", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/p"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


def _run(server: _Server, times: np.ndarray, out=None):
    async def go():
        async with server as url:
            return await replay(url, times, b"\xff\xd8img", "image/jpeg", out)

    return asyncio.run(go())


def test_records_every_request_and_parses_variants(tmp_path):
    times = np.linspace(0, 0.5, 40)
    server = _Server()
    log = tmp_path / "log.jsonl"
    with open(log, "w") as f:
        summary, records = _run(server, times, f)
    assert len(server.received) == 40 == summary.sent == summary.ok
    assert all(b == b"\xff\xd8img" for b in server.bodies)
    assert [r.index for r in records] == list(range(40))
    assert records[0].variants == {"a": "small", "b": "big"}
    assert records[0].stage_seconds == {"a": 0.01} and records[0].server_latency_s == 0.02
    back = read_records(log)
    assert len(back) == 40 and {r.index for r in back} == set(range(40))
    json.dumps(summary.to_dict())


def test_errors_are_recorded_not_retried():
    server = _Server(status=503)
    summary, records = _run(server, np.linspace(0, 0.2, 10))
    assert len(server.received) == 10  # one attempt per request, no retries
    assert summary.errors == 10 and summary.status_counts == {"503": 10}
    assert all(r.status == 503 and r.error == "shed" for r in records)


def test_connection_refused_is_recorded():
    async def go():
        return await replay("http://127.0.0.1:9/p", [0.0, 0.01], b"x")

    summary, records = asyncio.run(go())
    assert summary.sent == 2 and summary.errors == 2
    assert all(r.status == 0 and r.error for r in records)


def test_unanswered_requests_do_not_hold_back_the_sender():
    # 100 req/s for 1 s against a server that answers nothing until all 100 have arrived:
    # an open-loop sender sends them all anyway; one that waited for replies would stall.
    times = np.arange(100) / 100.0
    server = _Server(hold_until=100)
    summary, records = _run(server, times)
    assert summary.sent == 100 and summary.ok == 100, summary.status_counts
    assert len(server.received) == 100
