"""Admission control at the ingress of a real Ray Serve application (issue 16).

Two identity stages with a known service time (50 ms per item, batch 4, one
replica each: about 20 requests/s at most). A burst far beyond what they can do
within the deadline must be answered at once for the excess: 503 with
``Retry-After`` and a JSON reason naming the stage and the predicted finish; the
requests that are served are never answered 200 after their deadline; every
rejection is counted in ``/metrics``. Behaviour, not timing: nothing here asserts
how fast anything was (how often what admission lets in finishes in time is
measured by ``benchmarks/admission_burst.py``).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.integration.identity_chain import decision
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

from .waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLA_S = 0.5
PER_ITEM_S = 0.05
BURST = 80  # requests sent at once: the stages run about 10 within the SLA
WARM_UP_DEADLINE_MS = 60_000  # as long as the client waits (httpx timeout below)

SPEC = f"""\
name: admission-chain
description: two identity stages with a fixed per-item service time (admission tests)
input: image
sla: {{latency_s: {SLA_S}}}
stages:
  - name: first
    num_cpus: 0.25
    variants:
      - name: fast
        runtime: identity
        factory: varipipe.pipelines.variants.identity:make
        accuracy: {{value: 0.5, kind: declared, source: "identity stage, nominal"}}
        params: {{per_item_s: {PER_ITEM_S}}}
  - name: second
    num_cpus: 0.25
    variants:
      - name: fast
        runtime: identity
        factory: varipipe.pipelines.variants.identity:make
        accuracy: {{value: 0.5, kind: declared, source: "identity stage, nominal"}}
        params: {{per_item_s: {PER_ITEM_S}}}
"""


@pytest.fixture(scope="module")
def server(serve_port, tmp_path_factory):
    spec = tmp_path_factory.mktemp("admission") / "admission-chain.yaml"
    spec.write_text(SPEC)
    # Requests without a header get the SLA as their deadline.
    opts = AppOptions(pipeline=str(spec), app_name="admission-test", deadline_sla_factor=1.0)
    with LocalServer(opts, port=serve_port, decision=decision(b1=4, b2=4)) as srv:
        # The ingress learns the stages' service times. These warm-up requests carry a deadline of
        # their own (WARM_UP_DEADLINE_MS): the server's default (the 0.5 s SLA) answered the first
        # ones 504 on a loaded host while the replicas were still starting (a fresh-clone run).
        with httpx.Client(timeout=60) as c:
            for _ in range(8):
                r = c.post(srv.endpoint, content=_png(), headers={"x-deadline-ms": str(WARM_UP_DEADLINE_MS)})
                assert r.status_code == 200, r.text
        yield srv


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(buf, "PNG")
    return buf.getvalue()


async def _burst(url: str, n: int, headers: dict[str, str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        body = _png()
        return list(await asyncio.gather(*(c.post(url, content=body, headers=headers) for _ in range(n))))


def _check(replies: list[httpx.Response], deadline_ms: float) -> list[httpx.Response]:
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 503, 504}, statuses
    # Not everything is shed at the door: some requests were admitted to the stages. Whether they
    # then finished within the deadline is a matter of wall time on a shared host (the time outside
    # the stages under a burst varied 50-210 ms here against a 450 ms budget), which
    # benchmarks/admission_burst.py measures; here a late one must be a 504 that says so, never a
    # late 200 (below).
    admitted = [r for r in replies if r.status_code == 200 or "rejected_at" not in r.json()]
    assert admitted, [r.json() for r in replies[:3]]
    rejected = [r for r in replies if r.status_code == 503]
    assert rejected, statuses  # a burst this far beyond capacity cannot all fit
    for r in rejected:
        assert int(r.headers["retry-after"]) >= 1
        body = r.json()
        assert body["rejected_at"] in ("first", "second") and body["deadline_ms"] == deadline_ms
        assert body["predicted_ms"] > 0 and "overloaded" in body["error"] and body["rejected_at"] in body["error"]
    for r in replies:
        if r.status_code == 200:  # the server's own latency: a 200 never leaves past the deadline
            assert r.json()["latency_s"] * 1000 <= deadline_ms, r.json()
        elif r.status_code == 504:
            assert "deadline exceeded" in r.json()["error"]
    return rejected


def _rejected_total(srv) -> float:
    text = httpx.get(srv.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("varipipe_rejected_total{"))


def test_a_burst_beyond_capacity_is_shed_at_once_with_retry_after_and_counted(server):
    before = _rejected_total(server)
    replies = asyncio.run(_burst(server.endpoint, BURST, {"x-deadline-ms": str(SLA_S * 1000)}))
    rejected = _check(replies, SLA_S * 1000)
    # The ingress pushes its records to the controller in the background (pipelines/flusher.py).
    total = eventually(lambda: (t := _rejected_total(server)) >= before + len(rejected) and t,
                       f"{len(rejected)} rejections counted in /metrics")
    assert total == before + len(rejected)


def test_requests_without_a_deadline_get_the_servers_default(server):
    replies = asyncio.run(_burst(server.endpoint, BURST, {}))
    _check(replies, SLA_S * 1000)


def test_the_pipeline_serves_again_once_the_burst_is_gone(server):
    asyncio.run(_burst(server.endpoint, BURST, {"x-deadline-ms": str(SLA_S * 1000)}))
    # Every request of the burst has its answer, so nothing is in flight: the next one fits.
    r = httpx.post(server.endpoint, content=_png(), headers={"x-deadline-ms": str(SLA_S * 1000)}, timeout=60)
    assert r.status_code == 200, r.text
