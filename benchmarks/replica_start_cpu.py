"""CPU-seconds that a live reconfiguration burns: a replica start, a variant switch.

On one host every replica shares the same cores, so a new replica process
importing its runtime and loading its model slows the batches already running.
The simulator charges that CPU in ``shared`` mode
(``loadgen.simulator.REPLICA_START_CPU_S`` and ``VARIANT_SWITCH_CPU_S``); this
script measures it on real Ray Serve with the real ``vision-caption-ci`` models.

For each change it applies the decision (the applier returns once every changed
replica is RUNNING with its model loaded), waits ``SETTLE_S`` more, and sums the
CPU time (user + system) of every process of the local Ray session -- the
driver and all its descendants: GCS, raylet, Serve controller, proxy, replicas
-- over that window, minus the same processes' idle rate measured just before
(``BASELINE_S``). Other work on the host does not count, so the figure holds on
a shared machine. Changes: 1 -> 2 replicas of each stage (and back, untimed),
and a variant switch in the detector and the classifier.

    python benchmarks/replica_start_cpu.py [--repeats 3]

Prints and writes benchmarks/results/replica_start_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varipipe.pipelines.serve_config import AppOptions  # noqa: E402
from varipipe.pipelines.server import LocalServer  # noqa: E402
from varipipe.records import Decision, StageDecision  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "replica_start_cpu.json"
PIPELINE = "vision-caption-ci"
# Idle rate of the Ray processes, measured right before each change.
BASELINE_S = 5.0
# After the applier returns (replica RUNNING, model loaded): a replica's first
# health checks and the controller's bookkeeping still run for a moment.
SETTLE_S = 2.0
# Between changes, so one change's tail does not count in the next baseline.
GAP_S = 5.0


def decision(detector="yolov3-tiny-320", classifier="mobilenet-v2", replicas: dict | None = None) -> Decision:
    r = {"detector": 1, "classifier": 1, "llm": 1, **(replicas or {})}
    return Decision(stages=(StageDecision("detector", detector, 1, r["detector"], "cpu:1"),
                            StageDecision("classifier", classifier, 1, r["classifier"], "cpu:1"),
                            StageDecision("llm", "smollm2-135m", 1, r["llm"], "cpu:1")))


BASE = decision()
# kind -> (change, undo)
CHANGES = {
    "add:detector": (decision(replicas={"detector": 2}), BASE),
    "add:classifier": (decision(replicas={"classifier": 2}), BASE),
    "add:llm": (decision(replicas={"llm": 2}), BASE),
    "switch:detector": (decision(detector="yolov3-tiny-416"), BASE),
    "switch:classifier": (decision(classifier="efficientnet-lite0"), BASE),
}


def session_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of this process and every descendant, by pid."""
    me = psutil.Process(os.getpid())
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:  # exited meanwhile
            continue
    return out


def used_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots: a new process counts in full, an exited one not at all."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def measure(srv: LocalServer, change: Decision, undo: Decision) -> dict:
    s0 = session_cpu_s()
    time.sleep(BASELINE_S)
    s1 = session_cpu_s()
    idle_rate = used_since(s0, s1) / BASELINE_S
    t0 = time.monotonic()
    res = srv.apply(change)
    time.sleep(SETTLE_S)
    s2 = session_cpu_s()
    window = time.monotonic() - t0
    total = used_since(s1, s2)
    srv.apply(undo)
    time.sleep(GAP_S)
    return {"apply_s": res.seconds, "window_s": window, "cpu_s": total, "idle_cpu_rate": idle_rate,
            "cpu_s_above_idle": total - idle_rate * window}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {k: [] for k in CHANGES}
    with LocalServer(AppOptions(pipeline=PIPELINE, app_name="bench-start-cpu"), decision=BASE) as srv:
        time.sleep(GAP_S)
        for i in range(args.repeats):
            for kind, (change, undo) in CHANGES.items():
                r = measure(srv, change, undo)
                runs[kind].append(r)
                print(f"[{i + 1}/{args.repeats}] {kind}: {r['cpu_s_above_idle']:.2f} CPU-s above idle "
                      f"(apply {r['apply_s']:.2f} s, idle {r['idle_cpu_rate']:.2f} CPU)", flush=True)
    summary = {k: {"median_cpu_s": statistics.median(x["cpu_s_above_idle"] for x in v),
                   "median_apply_s": statistics.median(x["apply_s"] for x in v)} for k, v in runs.items()}
    out = {"benchmark": "replica_start_cpu", "pipeline": PIPELINE,
           "command": "python benchmarks/replica_start_cpu.py " + " ".join(sys.argv[1:]),
           "cpu_count": os.cpu_count(), "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
