"""An LLM variant switch while a batch is generating: the batch finishes, nothing crashes.

Real llama.cpp weights (the flagship's Qwen rung, switched to its template rung). Before the stage waited for
the running batch, the switch closed the old model under the generation and the
process died with SIGSEGV (a replica death, failing its requests; seen in a demo
run). The race runs in a subprocess so that a crash is a failed assertion, not a
dead test runner.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import threading
    import weakref
    import numpy as np
    from varipipe.pipelines import models
    from varipipe.pipelines.stage import StageConfig, StageCore
    from varipipe.pipelines.variant import Payload
    from varipipe.spec import find_spec

    WAIT_S = 300  # only a hung run waits this long
    spec = find_spec("vision-caption")
    models.prepare(spec)
    core = StageCore(spec.stage("llm"))
    core.configure(StageConfig("qwen2.5-coder-0.5b", 4, 0.0, 1))
    # The batch starts, then generates only once the switch has landed: the switch runs
    # while the batch holds the old model, every time (no timing luck).
    started, switched = threading.Event(), threading.Event()
    old = weakref.ref(core.variant)  # weak: the test must not keep the old model alive
    def infer(payloads):
        started.set()
        assert switched.wait(WAIT_S)
        return type(old()).infer(old(), payloads)
    core.variant.infer = infer
    batch = [Payload(request_id=str(i), image=np.zeros((64, 64, 3), np.uint8)) for i in range(4)]
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("out", core.infer(batch)))
    worker.start()
    assert started.wait(WAIT_S)
    core.configure(StageConfig("template", 4, 0.0, 2))
    switched.set()
    worker.join()
    print("BATCH", [p.trace[-1].variant for p in done["out"]], all("llm" in p.outputs for p in done["out"]))
    print("NOW", core.infer(batch[:1])[0].trace[-1].variant, core.status(0.0).loaded_variants)
""")


def test_llm_switch_under_a_running_batch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode} (-11: SIGSEGV)\n{proc.stderr[-2000:]}"
    assert "BATCH ['qwen2.5-coder-0.5b', 'qwen2.5-coder-0.5b', 'qwen2.5-coder-0.5b', 'qwen2.5-coder-0.5b'] True" in proc.stdout, proc.stdout
    assert "NOW template ('template',)" in proc.stdout, proc.stdout
