"""Online calibration on a live application (issue 18 part 2): the stages' batches reach the
controller's calibrator, which corrects the profile the adapter plans on and shows it at
``/api/calibration``, ``/config`` and ``/metrics``; ``--no-calibration`` turns it off."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer
from varipipe.profiler.store import profile_to_dict
from varipipe.records import Profile, ProfilePoint

from .openloop import open_loop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The identity stages sleep params.service_s a batch: "first/fast" 1 ms. This profile says 0.1 ms,
# so the stage runs ~10x slower than profiled (the bound, 4, clips it).
PROFILED_S = 0.0001
# How long to wait for the adapter's next step (every 1 s here) after the load.
STEP_WAIT_S = 15.0


def _profile() -> Profile:
    pts = []
    for stage, variant in (("first", "fast"), ("first", "slow"), ("second", "fast")):
        for b in (1, 2):
            lat = PROFILED_S * b
            pts.append(ProfilePoint(stage, variant, b, "cpu:1", lat, lat, lat, b / lat, 10.0, 200,
                                    0.5 if variant == "slow" else 0.9, "declared", "test figure"))
    return Profile("identity-chain", tuple(pts))


def _run(tmp_path, serve_port, png_bytes, calibration: bool):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_to_dict(_profile())))
    # static runs each stage's most accurate variant: "fast" here.
    opts = AppOptions(pipeline="identity-chain", app_name="calibration-live", policy="static", interval_s=1.0,
                      profile=str(path), cluster_cores=2.0, calibration=calibration)
    with LocalServer(opts, port=serve_port) as srv:
        results = asyncio.run(open_loop(srv.endpoint, png_bytes, 20, 3))
        steps = httpx.get(srv.url + "/config").json()["adapter"]["steps"]
        deadline = time.monotonic() + STEP_WAIT_S
        while time.monotonic() < deadline:  # one more adapter step after the load, on every batch
            cfg = httpx.get(srv.url + "/config").json()
            if cfg["adapter"]["steps"] > steps:
                break
            time.sleep(0.2)
        cal = httpx.get(srv.url + "/api/calibration", params={"since": 0}).json()
        cfg = httpx.get(srv.url + "/config").json()
        metrics = httpx.get(srv.url + "/metrics").text
    assert all(r.status == 200 for r in results)
    return cal, cfg, metrics


def test_live_batches_calibrate_the_profile_the_adapter_plans_on(tmp_path, serve_port, png_bytes):
    cal, cfg, metrics = _run(tmp_path, serve_port, png_bytes, calibration=True)
    assert cal["enabled"] and cal["batches"], cal
    b = next(x for x in cal["batches"] if x["stage"] == "first")
    assert b["hardware"] == "cpu:1" and b["size"] >= 1 and b["seconds"] > 0
    first = next(c for c in cal["corrections"] if (c["stage"], c["variant"]) == ("first", "fast"))
    assert first["source"] == "variant" and first["samples"] >= 10
    assert first["factor"] == pytest.approx(4.0) and first["clipped"]  # ~10x slower than profiled: bounded
    assert cfg["calibration"]["enabled"] and cfg["calibration"]["planning"] == "applied"
    assert cfg["adapter"]["calibration"] == "applied"
    # The adapter's last decision priced "first" on the corrected profile.
    stage = next(s for s in cfg["adapter"]["log"][-1]["decision"]["stages"] if s["stage"] == "first")
    assert stage["latency_s"] >= 4 * PROFILED_S * 0.99
    assert 'varipipe_calibration_factor{pipeline="identity-chain",stage="first",variant="fast"} 4.0' in metrics


def test_no_calibration_plans_on_the_profile(tmp_path, serve_port, png_bytes):
    cal, cfg, metrics = _run(tmp_path, serve_port, png_bytes, calibration=False)
    assert not cal["enabled"] and cal["batches"]  # the batches are still logged
    assert cfg["adapter"]["calibration"] == "off"
    stage = next(s for s in cfg["adapter"]["log"][-1]["decision"]["stages"] if s["stage"] == "first")
    assert stage["latency_s"] == pytest.approx(PROFILED_S)
    assert "varipipe_calibration_factor{" not in metrics
