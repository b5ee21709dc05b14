"""loadgen talks to the live pipeline over HTTP only: it never imports pipelines or Ray."""

from __future__ import annotations

import subprocess
import sys

MODULES = ("traces", "replayer", "service", "simulator", "scenario", "runs", "experiment", "report", "questions")


def test_loadgen_imports_neither_pipelines_nor_ray():
    code = (
        "import sys\n"
        + "".join(f"import varipipe.loadgen.{m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'varipipe.pipelines')))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
