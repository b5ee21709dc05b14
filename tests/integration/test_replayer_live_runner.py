"""The live experiment path against a real local HTTP app standing in for the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from varipipe.errors import LiveMeasurementError
from varipipe.loadgen.experiment import run_live
from varipipe.loadgen.replayer import read_records
from varipipe.profiler.store import load_profile
from varipipe.records import Decision, StageDecision

PROFILE = Path(__file__).resolve().parents[1] / "fixtures" / "loadgen" / "vision-caption-synthetic.json"
VARIANTS = {"detector": "yolov3-tiny-320", "classifier": "mobilenetv2", "llm": "smollm2-135m"}


@contextlib.contextmanager
def _app(policy: str, sla_s: float, config_status: int = 200, posts: list | None = None):
    """A real HTTP server on 127.0.0.1:0 answering like the pipeline app, in a thread; its
    /config answers ``config_status``; ``posts`` collects one entry per inference request."""
    ready, stop, port = threading.Event(), threading.Event(), []
    decision = Decision(tuple(StageDecision(s, v, 1, 2, "cpu:1") for s, v in VARIANTS.items()), load_rps=5.0)

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if posts is not None:
            posts.append(1)
        return web.json_response({"stages": [{"stage": s, "variant": v, "seconds": 0.001} for s, v in
                                             VARIANTS.items()], "latency_s": 0.003})

    async def config(request: web.Request) -> web.Response:
        if config_status != 200:
            return web.Response(status=config_status, text="token needed")
        return web.json_response(decision.to_dict())

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/vision-caption", infer)
        app.router.add_get("/config", config)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(site._server.sockets[0].getsockname()[1])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await runner.cleanup()

    th = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    th.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port[0]}/vision-caption"
    finally:
        stop.set()
        th.join(5)


def test_run_live_measures_from_records(tmp_path):
    prof = load_profile(PROFILE)
    started = []

    @contextlib.contextmanager
    def start(policy: str, sla_s: float):
        started.append((policy, sla_s))
        with _app(policy, sla_s) as url:
            yield url

    times = np.linspace(0, 1.5, 30)
    outs = run_live(start, prof, times, b"img", "image/jpeg", ["ipa", "ray"], {"s": 1.0}, "reserved", 0.5,
                    records_dir=tmp_path)
    assert started == [("ipa", 1.0), ("ray", 1.0)]
    for policy in ("ipa", "ray"):  # every request kept, in the replayer's format
        kept = read_records(tmp_path / f"s-{policy}.jsonl")
        assert [r.index for r in kept] == list(range(30)) and all(r.ok for r in kept)
    for o in outs:
        assert o.mode == "live" and o.requests == 30 and o.completed == 30 and o.sla_attainment == 1.0
        assert abs(o.mean_accuracy - 0.55 * 0.72 * 0.6) < 1e-9
        assert o.mean_cost == 6.0  # 3 stages x 2 replicas x 1 core, read from /config


def test_run_live_stops_with_a_specific_error_when_config_refuses(tmp_path):
    """A 401 from /config used to become a NaN cost in silence."""
    posts: list = []

    @contextlib.contextmanager
    def start(policy: str, sla_s: float):
        with _app(policy, sla_s, config_status=401, posts=posts) as url:
            yield url

    times = np.linspace(0, 30, 300)
    with pytest.raises(LiveMeasurementError, match=r"answered 401 \(the app wants its bearer token\)"):
        run_live(start, load_profile(PROFILE), times, b"img", "image/jpeg", ["ipa"], {"s": 1.0}, "reserved", 0.2,
                 records_dir=tmp_path)
    assert len(posts) < len(times)  # the replay stopped when the poll was refused
