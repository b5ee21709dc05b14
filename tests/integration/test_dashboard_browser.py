"""The live dashboard in a real browser, on a real Ray Serve application steered by its adapter.

The identity chain runs with the ``ipa`` policy on a synthetic profile where the
accurate variant cannot carry the peak (the live adapter test's profile). A
stepped open-loop HTTP load makes the adapter reconfigure by itself; nothing
injects a decision. Headless Chromium (Debian's, driven by playwright) opens
/dashboard: the charts must hold data points, the decision log must show the
reconfiguration, and the console must stay free of errors. The screenshot goes
to docs/dashboard.png for the README.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer
from varipipe.profiler.store import profile_to_dict

from .openloop import open_loop
from .test_adapter_live import identity_profile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a quiet, offline, throwaway headless Chromium (no sandbox: CI runs as root).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
INTERVAL_S = 2.0  # adapter interval: short, so a step in load is answered within seconds
# (rate req/s, seconds): quiet, a peak the accurate variant cannot carry, quiet again.
LOAD_STEPS = ((3, 8), (30, 12), (3, 14))
POLL_WAIT_MS = 20_000  # how long the page may take to show what the test expects


def _browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make browser installs Debian's)")
    return playwright


def _applied(config: dict) -> list[dict]:
    return [e for e in config["adapter"]["log"] if e["action"] == "applied"]


@pytest.fixture(scope="module")
def steered(serve_port, png_bytes, tmp_path_factory):
    """A live app after a stepped load: (server, results, config) while it is still serving."""
    path = tmp_path_factory.mktemp("profile") / "identity-chain.json"
    path.write_text(json.dumps(profile_to_dict(identity_profile())))
    opts = AppOptions(pipeline="identity-chain", app_name="dashboard-test", policy="ipa", interval_s=INTERVAL_S,
                      profile=str(path), cluster_cores=2.0)
    with LocalServer(opts, port=serve_port) as srv:

        async def stepped():
            out = []
            for rate, seconds in LOAD_STEPS:
                out += await open_loop(srv.endpoint, png_bytes, rate, seconds)
            return out

        results = asyncio.run(stepped())
        yield srv, results, httpx.get(srv.url + "/config").json()


def test_dashboard_shows_the_adapter_at_work(steered):
    srv, results, config = steered
    assert all(r.status == 200 for r in results)
    applied = _applied(config)
    assert applied, f"the adapter applied nothing: {config['adapter']}"
    sync_api = _browser()
    errors: list[str] = []
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile_dir:
        ctx = p.chromium.launch_persistent_context(profile_dir, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/dashboard")
            for chart in ("chart-rate", "chart-latency", "chart-attainment", "chart-cost", "chart-accuracy"):
                page.wait_for_function(
                    f"() => Number(document.querySelector('#{chart} svg')?.getAttribute('data-points')) > 0",
                    timeout=POLL_WAIT_MS)
            # Two configurations of the first stage at least: the adapter moved it.
            page.wait_for_function("() => document.querySelectorAll('#chart-config .segment[data-lane=first]')"
                                   ".length >= 2", timeout=POLL_WAIT_MS)
            log = page.inner_text("#decisions")
            banner = page.inner_text("#banners")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            ctx.close()
    assert not errors, errors
    new = applied[-1]["decision"]["stages"][0]
    assert f"first={new['variant']} b{new['batch']} x{new['replicas']}" in log
    assert "applied" in log and "ipa / optimal" in log and "runner-up" in log
    assert "adapter ipa" in banner and "failing" not in banner
    assert SCREENSHOT.stat().st_size > 10_000


def test_dashboard_page_is_served_without_a_browser(steered):
    srv, _, _ = steered
    r = httpx.get(srv.url + "/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "{{" not in r.text and "api/history" in r.text
    hist = httpx.get(srv.url + "/api/history").json()
    assert hist["started"] <= hist["points"][0]["t"] and len({p["generation"] for p in hist["points"]}) >= 2
