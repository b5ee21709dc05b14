"""`varipipe demo --duration 30`: the README's main command, end to end, in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from varipipe.pipelines.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_end_to_end():
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "varipipe.cli", "demo", "--duration", "30", "--port", str(port)],
        capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert f"serving at http://127.0.0.1:{port}/vision-caption" in out
    import re

    errors = [int(n) for n in re.findall(r"errors\s+(\d+)", out)]
    assert errors and not any(errors), f"{errors}\nstdout:\n{out[-4000:]}"
    assert "configurations used (t: seconds since the load started):" in out
    assert re.search(r"t= +[-+]\d+s  detector=.*\n +why: ", out), out[-3000:]  # each configuration says why
    # a real answer came back: the demo asks each photo a question from the labelled set's dev split
    assert re.search(r"chelsea '[^']+\?': '[^']+'", out), out[-3000:]
    for stage in ("detector:", "classifier:", "llm:"):
        assert stage in out
