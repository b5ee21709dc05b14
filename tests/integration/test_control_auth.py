"""Control and dashboard endpoints need the bearer token when one is set (issue 8, part 6)."""

from __future__ import annotations

import json

import httpx
import pytest

from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "test-token-8f3a"
GUARDED_GETS = ("/config", "/metrics", "/api/replicas", "/api/history")


def identity_profile() -> dict:
    return {"schema_version": 1, "pipeline": "identity-chain", "metadata": {"source": "test"}, "points": [
        {"stage": st, "variant": v, "batch": 1, "hardware": "cpu:1", "latency_p50_s": 0.001,
         "latency_p95_s": 0.0012, "latency_p99_s": 0.0015, "throughput_rps": 300.0, "memory_mb": 10.0,
         "samples": 200, "accuracy": 0.5, "accuracy_kind": "declared", "accuracy_source": "test"}
        for st, v in (("first", "fast"), ("first", "slow"), ("second", "fast"))]}


@pytest.fixture(scope="module")
def server(serve_port, tmp_path_factory):
    profile = tmp_path_factory.mktemp("auth") / "identity.json"
    profile.write_text(json.dumps(identity_profile()))
    # A loop that exists (so control has something to act on) but never steps during the test.
    opts = AppOptions(pipeline="identity-chain", app_name="auth-test", auth_token=TOKEN, policy="static",
                      profile=str(profile), interval_s=3600.0)
    with LocalServer(opts, port=serve_port) as srv:
        yield srv


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", GUARDED_GETS)
@pytest.mark.parametrize("headers", [{}, _bearer("wrong"), {"authorization": TOKEN}, _bearer(TOKEN + "x")])
def test_dashboard_data_needs_the_token(server, path, headers):
    r = httpx.get(server.url + path, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer" and "Bearer" in r.json()["error"]


@pytest.mark.parametrize("path", GUARDED_GETS)
def test_dashboard_data_with_the_token(server, path):
    assert httpx.get(server.url + path, headers=_bearer(TOKEN)).status_code == 200


@pytest.mark.parametrize("headers", [{}, _bearer("wrong")])
def test_control_needs_the_token_and_changes_nothing_without_it(server, headers):
    r = httpx.post(server.url + "/api/control", json={"action": "dry_run", "value": True}, headers=headers)
    assert r.status_code == 401
    cfg = httpx.get(server.url + "/config", headers=_bearer(TOKEN)).json()
    assert cfg["adapter"]["dry_run"] is False


def test_control_with_the_token(server):
    post = lambda body: httpx.post(server.url + "/api/control", json=body, headers=_bearer(TOKEN))  # noqa: E731
    r = post({"action": "pin", "stage": "first", "variant": "slow"})
    assert r.status_code == 200 and r.json()["pins"] == {"first": "slow"}
    assert post({"action": "dry_run", "value": True}).json()["dry_run"] is True
    cfg = httpx.get(server.url + "/config", headers=_bearer(TOKEN)).json()
    assert cfg["adapter"]["pins"] == {"first": "slow"} and cfg["adapter"]["dry_run"] is True and cfg["dry_run"]
    assert post({"action": "unpin", "stage": "first"}).json()["pins"] == {}
    assert post({"action": "dry_run", "value": False}).json()["dry_run"] is False
    bad = post({"action": "pin", "stage": "first", "variant": "nope"})
    assert bad.status_code == 400 and "'nope'" in bad.json()["error"]


def test_serving_and_health_stay_open(server, png_bytes):
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.post(server.endpoint, content=png_bytes).status_code == 200
