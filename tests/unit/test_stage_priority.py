"""Stage replicas yield the CPU to Serve's proxy and the ingress (issue 16: rejections in under 50 ms).

``lower_priority`` runs in a child process: a nice, once raised, cannot be lowered again
without privilege, and the test process must keep its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from varipipe.pipelines.serve_config import STAGE_NICE, AppOptions

CHILD = textwrap.dedent("""
    import os, threading, json
    from varipipe.pipelines.app import lower_priority

    def nice(tid):
        return os.getpriority(os.PRIO_PROCESS, tid)

    hold = threading.Event()
    before = threading.Thread(target=hold.wait)  # a thread that exists before the call
    before.start()
    base = {int(t): nice(int(t)) for t in os.listdir("/proc/self/task")}
    changed = lower_priority({nice})
    after = {int(t): nice(int(t)) for t in os.listdir("/proc/self/task")}
    born = []
    later = threading.Thread(target=lambda: born.append(nice(threading.get_native_id())))  # started after
    later.start(); later.join()
    hold.set(); before.join()
    print(json.dumps({"changed": changed, "base": base, "after": after, "born": born[0]}))
""")


def _child(nice: int) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", CHILD.replace("{nice}", str(nice))], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_every_thread_and_every_later_one_runs_at_the_lower_priority():
    got = _child(5)
    assert got["changed"] == len(got["base"]) >= 2  # the main thread and the one started before
    for tid, base in got["base"].items():
        assert got["after"][tid] == min(19, base + 5)
    assert got["born"] == min(19, got["base"][next(iter(got["base"]))] + 5)


def test_nice_zero_changes_nothing():
    got = _child(0)
    assert got["changed"] == 0 and got["after"] == got["base"]


def test_stages_run_below_the_ingress_by_default():
    assert AppOptions(pipeline="identity-chain").stage_nice == STAGE_NICE > 0
