"""The HTTP API of a real Ray Serve application (identity stages, no model weights)."""

from __future__ import annotations

import base64

import httpx
import pytest

from varipipe.pipelines.images import MAX_BYTES
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

from .waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(serve_port):
    with LocalServer(AppOptions(pipeline="identity-chain", app_name="http-test"), port=serve_port) as srv:
        yield srv


def _ok(r: httpx.Response):
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["stage"] for s in body["stages"]] == ["first", "second"]
    assert all(s["variant"] == "fast" and s["seconds"] >= 0 for s in body["stages"])
    return body


def test_raw_multipart_and_json(server, png_bytes):
    _ok(httpx.post(server.endpoint, content=png_bytes, headers={"content-type": "image/png"}))
    _ok(httpx.post(server.endpoint, files={"image": ("x.png", png_bytes, "image/png")}))
    _ok(httpx.post(server.endpoint, json={"image": base64.b64encode(png_bytes).decode()}))


@pytest.mark.parametrize("kwargs,status,words", [
    ({"content": b""}, 400, "empty body"),
    ({"content": b"GIF89a but not really"}, 400, "not an image"),
    ({"json": {"image": "%%%not base64"}}, 400, "base64"),
    ({"json": {"picture": "x"}}, 400, '"image"'),
    ({"content": b"{broken", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"files": {"other": ("x.png", b"123", "image/png")}}, 400, '"image"'),
    ({"content": b"x", "headers": {"x-deadline-ms": "soon"}}, 400, "x-deadline-ms"),
])
def test_bad_input_is_4xx_with_a_message(server, kwargs, status, words):
    r = httpx.post(server.endpoint, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_truncated_image(server, png_bytes):
    r = httpx.post(server.endpoint, content=png_bytes[: len(png_bytes) // 2])
    assert r.status_code == 400


def test_oversized_payload_is_413(server):
    r = httpx.post(server.endpoint, content=b"\0" * (MAX_BYTES + 1))
    assert r.status_code == 413 and "exceeds" in r.json()["error"]


def test_decompression_bomb_is_413(server):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, "PNG")  # 100 Mpx, a few KB compressed
    r = httpx.post(server.endpoint, content=buf.getvalue())
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_unknown_pipeline_is_404(server, png_bytes):
    r = httpx.post(server.url + "/no-such-pipeline", content=png_bytes)
    assert r.status_code == 404
    assert "no-such-pipeline" in r.json()["error"] and r.json()["known"] == ["identity-chain"]


def test_healthz_config_metrics(server, png_bytes):
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    cfg = httpx.get(server.url + "/config").json()
    assert cfg["pipeline"] == "identity-chain"
    assert [s["variant"] for s in cfg["decision"]["stages"]] == ["fast", "fast"]
    for _ in range(3):
        _ok(httpx.post(server.endpoint, content=png_bytes))
    # Replicas push their records every FLUSH_INTERVAL_S; the controller closes a window every second.
    def counted() -> str:
        text = httpx.get(server.url + "/metrics").text
        wanted = ("varipipe_batch_size_bucket", 'varipipe_stage_requests_total{pipeline="identity-chain",stage="first"}')
        return text if all(w in text for w in wanted) else ""

    text = eventually(counted, "the requests counted in /metrics")
    assert 'varipipe_variant{pipeline="identity-chain",stage="first",variant="fast"} 1.0' in text

    def completed() -> dict | None:
        hist = httpx.get(server.url + "/api/history").json()
        return hist if sum(p["completed"] for p in hist["points"]) >= 3 else None

    hist = eventually(completed, "3 completed requests in /api/history")
    assert hist["pipeline"] == "identity-chain"


def test_server_keeps_serving_after_bad_input(server, png_bytes):
    for bad in (b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 50, b"\xff\xd8\xff" + b"\1" * 100):
        assert httpx.post(server.endpoint, content=bad).status_code in (400, 413)
    _ok(httpx.post(server.endpoint, content=png_bytes))


def test_deadline_that_cannot_be_met_is_504_and_counted(server, png_bytes):
    # Shorter than the time the ingress keeps for the reply: rejected before any work.
    r = httpx.post(server.endpoint, content=png_bytes, headers={"x-deadline-ms": "0.001"})
    assert r.status_code == 504, r.text
    assert "deadline exceeded" in r.json()["error"] and r.json()["dropped_at"] == "first"
    _ok(httpx.post(server.endpoint, content=png_bytes, headers={"x-deadline-ms": "30000"}))
    rejected = 'varipipe_rejected_total{pipeline="identity-chain",stage="first"} 1.0'
    eventually(lambda: rejected in httpx.get(server.url + "/metrics").text, "the rejection counted in /metrics")
