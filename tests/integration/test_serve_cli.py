"""`varipipe serve` in a subprocess: serves, and SIGTERM stops it and its Ray cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from varipipe.pipelines.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 180


def test_serve_then_sigterm(png_bytes, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "varipipe.cli", "serve", "--pipeline", "identity-chain", "--port", str(port),
           "--policy", "none", "--state-file", str(tmp_path / "state.json")]
    # Without PYTHONUNBUFFERED, as in CI: stdout to a pipe is block-buffered unless serve flushes.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        r = httpx.post(f"http://127.0.0.1:{port}/identity-chain", content=png_bytes, timeout=30)
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert f"serving identity-chain at http://127.0.0.1:{port}/identity-chain" in out
    assert "stopping..." in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_serve_refuses_unknown_pipeline():
    proc = subprocess.run([sys.executable, "-m", "varipipe.cli", "serve", "--pipeline", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown pipeline 'nope'" in proc.stderr and "vision-caption" in proc.stderr
