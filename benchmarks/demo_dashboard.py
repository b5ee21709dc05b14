"""`varipipe demo` end to end, with its dashboard captured (issue 17 item 8).

    flock /tmp/varipipe-heavy.lock .venv/bin/python benchmarks/demo_dashboard.py

Runs ``varipipe demo --keep-serving`` with its defaults (vision-caption, objective max-accuracy,
5 s adapter interval, the rising and falling load) in a subprocess, waits until its load is over
(the line "still serving at" on its stdout), reads ``/config`` and ``/api/history``, opens
``/dashboard`` in Debian's headless Chromium (playwright, as the browser test) and saves a
screenshot, then stops the demo as Ctrl-C does. Writes benchmarks/results/demo-issue17.json (the
demo's printed output, the decision log, per window the arrival rate, the forecast, the LLM
variant and the end-to-end accuracy in force) and benchmarks/results/demo-dashboard.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from varipipe.pipelines.server import free_port

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As tests/integration/test_dashboard_browser.py: a quiet, offline, throwaway headless Chromium.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PAGE_WAIT_MS = 45_000  # how long the page may take to draw (a loaded 2-core host)
STOP_WAIT_S = 120  # how long the demo may take to shut Ray Serve down after Ctrl-C
DONE_MARK = "still serving at"  # what the demo prints when its load is over (--keep-serving)


def _run_demo(port: int, extra: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """Start the demo; return it and its stdout lines up to the end of its load (echoed here)."""
    proc = subprocess.Popen([sys.executable, "-m", "varipipe.cli", "demo", "--keep-serving", "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
        if DONE_MARK in line:
            return proc, lines
    raise SystemExit(f"the demo ended (exit {proc.wait()}) before its load did")


def _screenshot(url: str, path: Path) -> None:
    from playwright import sync_api as playwright

    with playwright.sync_playwright() as p, tempfile.TemporaryDirectory() as profile_dir:
        ctx = p.chromium.launch_persistent_context(profile_dir, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.goto(url + "/dashboard")
            page.wait_for_function("() => Number(document.querySelector('#chart-accuracy svg')"
                                   "?.getAttribute('data-points')) > 0", timeout=PAGE_WAIT_MS)
            page.wait_for_function("() => document.querySelectorAll('#chart-config .segment').length > 0",
                                   timeout=PAGE_WAIT_MS)
            page.screenshot(path=str(path), full_page=True)
        finally:
            ctx.close()


def _windows(history: dict) -> list[dict]:
    """Per window: time, arrivals, forecast, the LLM variant and the end-to-end accuracy in force."""
    out = []
    for p in history["points"]:
        llm = next((s["variant"] for s in p["stages"] if s["stage"] == "llm"), "")
        out.append({"t": p["t"], "arrival_rps": p["arrival_rps"], "predicted_rps": p["predicted_rps"],
                    "llm": llm, "accuracy": p["accuracy"]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "demo-issue17.json")
    ap.add_argument("--png", type=Path, default=RESULTS / "demo-dashboard.png")
    ap.add_argument("demo_args", nargs="*", help="further `varipipe demo` arguments (after --)")
    args = ap.parse_args()
    port = free_port()
    started = time.time()
    proc, lines = _run_demo(port, args.demo_args)
    url = f"http://127.0.0.1:{port}"
    try:
        config = httpx.get(url + "/config", timeout=30).json()
        history = httpx.get(url + "/api/history", timeout=30).json()
        _screenshot(url, args.png)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    doc = {"benchmark": "demo-dashboard", "command": "python benchmarks/demo_dashboard.py " + " ".join(args.demo_args),
           "date": time.strftime("%Y-%m-%d", time.localtime(started)), "demo_stdout": lines,
           "decision_log": config.get("decision_log", []), "adapter": config["adapter"],
           "calibration": config.get("calibration"),
           "windows": _windows(history), "screenshot": args.png.name}
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
