"""The live dashboard in a real browser, on a real Ray Serve application steered by its adapter.

The identity chain runs with the ``ipa`` policy on a synthetic profile where the
accurate variant cannot carry the peak (the live adapter test's profile). A
stepped open-loop HTTP load makes the adapter reconfigure by itself; nothing
injects a decision. Headless Chromium (Debian's, driven by playwright) opens
/dashboard: the charts must hold data points, the decision log must show the
reconfiguration, and the console must stay free of errors. The screenshot is
the README's docs/dashboard.png: written there when that file is missing or
VARIPIPE_UPDATE_SCREENSHOT=1 (so test runs leave the checkout clean).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
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
POLL_WAIT_MS = 45_000  # how long the page may take to show what the test expects (a loaded 2-core host)


@contextlib.contextmanager
def browser_page(errors: list[str]):
    """A page in a throwaway headless Chromium; console errors and page errors go to ``errors``."""
    from playwright import sync_api as playwright  # a dev dependency

    assert Path(CHROMIUM).exists(), f"chromium is not installed at {CHROMIUM}: run `make browser` (Debian's chromium)"
    with playwright.sync_playwright() as p, tempfile.TemporaryDirectory() as profile_dir:
        ctx = p.chromium.launch_persistent_context(profile_dir, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
        finally:
            ctx.close()


def _applied(config: dict) -> list[dict]:
    return [e for e in config["adapter"]["log"] if e["action"] == "applied"]


@pytest.fixture(scope="module")
def steered(serve_port, png_bytes, tmp_path_factory):
    """A live app after a stepped load: (server, results, config) while it is still serving."""
    path = tmp_path_factory.mktemp("profile") / "identity-chain.json"
    path.write_text(json.dumps(profile_to_dict(identity_profile())))
    # The adapter moves on this profile's numbers (calibrated, it would learn that the identity
    # stages run far faster than the profile says and keep the accurate variant).
    opts = AppOptions(pipeline="identity-chain", app_name="dashboard-test", policy="ipa", interval_s=INTERVAL_S,
                      profile=str(path), cluster_cores=2.0, calibration=False)
    with LocalServer(opts, port=serve_port) as srv:

        async def stepped():
            out = []
            for rate, seconds in LOAD_STEPS:
                out += await open_loop(srv.endpoint, png_bytes, rate, seconds)
            return out

        results = asyncio.run(stepped())
        yield srv, results, httpx.get(srv.url + "/config").json()


def test_dashboard_shows_the_adapter_at_work(steered, tmp_path):
    srv, results, config = steered
    shot = tmp_path / "dashboard.png"
    assert all(r.status == 200 for r in results)
    applied = _applied(config)
    assert applied, f"the adapter applied nothing: {config['adapter']}"
    errors: list[str] = []
    with browser_page(errors) as page:
        page.goto(srv.url + "/dashboard")
        for chart in ("chart-rate", "chart-latency", "chart-attainment", "chart-cost", "chart-accuracy"):
            page.wait_for_function(
                f"() => Number(document.querySelector('#{chart} svg')?.getAttribute('data-points')) > 0",
                timeout=POLL_WAIT_MS)
        # Two configurations of the first stage at least: the adapter moved it.
        page.wait_for_function("() => document.querySelectorAll('#chart-config .segment[data-lane=first]')"
                               ".length >= 2", timeout=POLL_WAIT_MS)
        # The accuracy chart's axis fits the accuracies the adapter moved between, so that the drop in
        # the peak fills a good part of it (on a 0-1 axis a few per cent would be a pixel or two).
        y_min, y_max = (float(page.get_attribute("#chart-accuracy svg", a)) for a in ("data-y-min", "data-y-max"))
        log = page.inner_text("#decisions")
        banner = page.inner_text("#banners")
        calibration = page.inner_text("#calibration")
        page.screenshot(path=str(shot), full_page=True)
    assert not errors, errors
    accuracies = [p["accuracy"] for p in httpx.get(srv.url + "/api/history").json()["points"] if p["accuracy"] > 0]
    assert y_min <= min(accuracies) < max(accuracies) <= y_max
    assert (max(accuracies) - min(accuracies)) / (y_max - y_min) >= 0.5
    new = applied[-1]["decision"]["stages"][0]
    assert f"first={new['variant']} b{new['batch']} x{new['replicas']}" in log
    assert "applied" in log and "ipa / optimal" in log and "runner-up" in log
    assert "adapter ipa" in banner and "failing" not in banner
    assert "calibration off" in calibration and "--no-calibration" in calibration
    assert shot.stat().st_size > 10_000
    if os.environ.get("VARIPIPE_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_dashboard_page_is_served_without_a_browser(steered):
    srv, _, _ = steered
    r = httpx.get(srv.url + "/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "{{" not in r.text and "api/history" in r.text
    hist = httpx.get(srv.url + "/api/history").json()
    assert hist["started"] <= hist["points"][0]["t"] and len({p["generation"] for p in hist["points"]}) >= 2


def _json(doc: dict):
    return lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(doc))


def _wait_text(page, selector: str, words: str) -> None:
    page.wait_for_function("([sel, words]) => document.querySelector(sel).innerText.includes(words)",
                           arg=[selector, words], timeout=POLL_WAIT_MS)


def test_dashboard_says_what_is_wrong(steered):
    """Empty and failing states, each answered by the real page from altered JSON (playwright routes)."""
    srv, _, config = steered
    history = httpx.get(srv.url + "/api/history").json()
    quiet = dict(history, points=[dict(p, arrival_rps=0.0, predicted_rps=None, completed=0, within_sla=0, errors=0,
                                       drops=0, rejected=0) for p in history["points"]])
    off = dict(config, policy=None, adapter={"enabled": False, "error": ""})
    failing = dict(config, adapter=dict(config["adapter"], last_error="decide failed: RuntimeError: solver crashed",
                                        consecutive_failures=2, last_error_time_s=history["now"]))
    restarted = dict(history, started=history["started"] + 60, points=[])
    corrections = [{"stage": "first", "variant": "fast", "factor": 3.0, "source": "variant", "estimate": 3.0,
                    "samples": 40, "observed_p50_s": 0.003, "predicted_p50_s": 0.001, "clipped": False},
                   {"stage": "first", "variant": "slow", "factor": 3.0, "source": "stage", "estimate": 3.0,
                    "samples": 0, "observed_p50_s": 0.0, "predicted_p50_s": 0.0, "clipped": False}]
    calibrated = dict(config, calibration={"enabled": True, "corrections": corrections, "planning": "applied",
                                           "settings": {"estimator": "median", "half_life_s": 30.0,
                                                        "min_samples": 10}})
    hist_url, config_url = re.compile(r"/api/history"), re.compile(r"/config$")
    errors: list[str] = []
    with browser_page(errors) as page:
        page.route(config_url, _json(calibrated))
        page.goto(srv.url + "/dashboard")
        _wait_text(page, "#calibration", "×3.00")  # profile vs observed, the correction in force
        table = page.inner_text("#calibration")
        assert "first" in table and "its stage's batches" in table and "3 ms" in table and "1 ms" in table
        assert "estimator median, half-life 30 s" in page.inner_text("#calibration-note")
        page.unroute(config_url)
        page.route(hist_url, _json(quiet))
        page.route(config_url, _json(off))
        page.reload()
        _wait_text(page, "#banners", "adapter off: started without --policy")
        for chart in ("chart-rate", "chart-latency", "chart-attainment"):
            assert "no requests yet" in page.get_attribute(f"#{chart} svg", "data-empty")
        page.unroute(hist_url)
        page.unroute(config_url)
        page.route(config_url, _json(failing))
        _wait_text(page, "#banners", "adapter failing")
        assert "solver crashed" in page.inner_text("#banners")
        page.route(hist_url, _json(restarted))
        _wait_text(page, "#banners", "the server restarted")
        assert "waiting for the first metrics window" in page.get_attribute("#chart-rate svg", "data-empty")
        assert not errors, errors  # every state above is said in words, with no script error
        page.route(re.compile(r"/(api/history|config)"), lambda route: route.abort())
        _wait_text(page, "#banners", "cannot reach the server")
    assert not [e for e in errors if "Failed to load resource" not in e], errors


def test_report_page_in_a_browser(tmp_path):
    """``varipipe experiment`` (a short simulation) writes report.html; it draws offline, from a file."""
    from varipipe.cli import main

    profile = Path(__file__).resolve().parents[1] / "fixtures" / "loadgen" / "vision-caption-synthetic.json"
    trace = tmp_path / "trace.txt"
    trace.write_text("\n".join(["2"] * 120 + ["8"] * 120 + ["3"] * 120))
    out = tmp_path / "exp"
    assert main(["experiment", "--profiles", str(profile), "--trace", str(trace), "--sla", "3,6",
                 "--policies", "ipa,fa2-low,fa2-high", "--solver", "dp", "--cost-mode", "reserved",
                 "--cluster-cores", "40", "--out", str(out)]) == 0
    errors: list[str] = []
    with browser_page(errors) as page:
        page.route(re.compile(r"^https?://"), lambda route: route.abort())  # offline: any fetch would fail
        page.goto((out / "report.html").as_uri())
        for chart in ("chart-load", "chart-attainment", "chart-p99", "chart-cost", "chart-accuracy"):
            assert int(page.get_attribute(f"#{chart} svg", "data-points")) > 0, chart
        assert page.locator("#summary tbody tr").count() == 3
        assert page.locator("#figures img").count() == 4  # summary, load, one per SLA
        lanes = page.eval_on_selector_all("#timelines svg", "els => els.map(e => Number(e.dataset.points))")
        assert len(lanes) == 3 and min(lanes) > 0, lanes  # each policy's configuration over time
        page.select_option("#sla", "sla-6s")
        assert "sla-6s" in page.inner_text("#sla") and page.locator("#summary tbody tr").count() == 3
    assert not errors, errors
