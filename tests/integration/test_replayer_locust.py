"""The locustfile's trace shape drives real locust against a local server (no Ray)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web

# Never `import locust` here: it monkey-patches socket and threading with gevent for
# the whole pytest process, and every later Ray start then hangs. locust runs below
# in its own process.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadgen" / "locustfile.py"


def _serve(counter: list[int], ready: threading.Event, stop: threading.Event, port: list[int]) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        counter.append(1)
        return web.json_response({"stages": [], "latency_s": 0.0})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/p", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(site._server.sockets[0].getsockname()[1])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


@pytest.mark.slow
def test_locust_follows_the_trace(tmp_path):
    trace = tmp_path / "t.txt"
    trace.write_text("4\n4\n4\n4\n")  # 16 requests over 4 s
    counter: list[int] = []
    ready, stop, port = threading.Event(), threading.Event(), []
    th = threading.Thread(target=_serve, args=(counter, ready, stop, port), daemon=True)
    th.start()
    assert ready.wait(10)
    env = {**os.environ, "VARIPIPE_TRACE": str(trace), "VARIPIPE_PATH": "/p", "VARIPIPE_IMAGE": "synthetic",
           "VARIPIPE_PER_USER_RPS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                               "-H", f"http://127.0.0.1:{port[0]}", "--only-summary", "--stop-timeout", "2"],
                              env=env, capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        th.join(5)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 8 <= len(counter) <= 24  # about 4 users × 1 req/s × 4 s
