"""Where the host's CPU goes while a pipeline serves: the stage replicas and everything else.

The simulator charges the cores to the stage replicas' batches alone (shared mode's
processor sharing). Live, the serving path runs on the same cores: Serve's proxy, the
ingress replica, the controller, Ray's raylet and GCS, and here the load generator too,
and they run at nice 0 where the stage replicas run at nice ``STAGE_NICE`` (10), so the
cores they take are the stages' loss. This script serves ``vision-caption-ci``
(``static``, batch 1, one replica a stage) at a few constant rates, evenly spaced
arrivals, and reads every process's CPU time (psutil) just after the replay starts
and just before it ends, plus the host's busy time (``/proc/stat``). Per rate: CPU-
seconds per second by group, and the non-stage CPU per request.

    flock /tmp/varipipe-heavy.lock python benchmarks/host_cpu.py --rates 1,2,3 --out benchmarks/results/host_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

# The replay's first and last seconds are left out of the reading (connections opening, the
# queue draining): the CPU is read from SETTLE_S after the first request to SETTLE_S before the last.
SETTLE_S = 5.0
# Process groups, by a piece of the process title Ray sets (ray::<actor class>:<deployment>).
GROUPS = (("stage replicas", "ServeReplica:varipipe:stage-"), ("ingress replica", "ServeReplica:varipipe:ingress"),
          ("Serve proxy", "ProxyActor"), ("Serve controller", "ServeController"), ("raylet", "raylet"),
          ("GCS", "gcs_server"))


def _group(p: psutil.Process) -> str:
    if p.pid == os.getpid():
        return "load generator (this process)"
    try:
        title = " ".join(p.cmdline()) or p.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    for name, piece in GROUPS:
        if piece in title:
            return name
    return "other"


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    out = {}
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[p.pid] = (_group(p), t.user + t.system)
    return out


def _host_busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def _read_at(delay_s: float, into: dict) -> threading.Timer:
    def read() -> None:
        into["t"] = time.perf_counter()
        into["procs"] = _cpu_by_process()
        into["host"] = _host_busy_s()

    timer = threading.Timer(delay_s, read)
    timer.start()
    return timer


def measure(pipeline: str, rps: float, seconds: float, images: list[str]) -> dict:
    from varipipe.loadgen.replayer import load_image, replay
    from varipipe.pipelines.serve_config import AppOptions
    from varipipe.pipelines.server import LocalServer

    opts = AppOptions(pipeline=pipeline, policy="static", policy_options={"batch": 1}, cost_mode="shared",
                      cluster_cores=2.0, calibration=False)
    times = np.arange(0.0, seconds, 1.0 / rps)
    bodies = [load_image(name)[0] for name in images]
    with LocalServer(opts, port=0) as server:
        first, last = {}, {}
        timers = [_read_at(SETTLE_S, first), _read_at(seconds - SETTLE_S, last)]
        summary, _records = asyncio.run(replay(server.endpoint, times, bodies))
        for t in timers:
            t.join()
    span = last["t"] - first["t"]
    groups: dict[str, float] = {}
    for pid, (group, cpu) in last["procs"].items():
        if pid in first["procs"]:
            groups[group] = groups.get(group, 0.0) + (cpu - first["procs"][pid][1]) / span
    host = (last["host"] - first["host"]) / span
    stages = groups.get("stage replicas", 0.0)
    return {"rps": rps, "seconds_read": span, "host_busy_cpu_s_per_s": host,
            "by_group_cpu_s_per_s": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "stage_cpu_s_per_s": stages, "other_cpu_s_per_s": host - stages,
            "other_cpu_s_per_request": (host - stages) / rps, "replay": summary.to_dict()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="vision-caption-ci")
    ap.add_argument("--rates", default="1,2,3", help="constant request rates (req/s), one run each")
    ap.add_argument("--seconds", type=float, default=60.0, help="each run's replay")
    ap.add_argument("--images", default="chelsea,astronaut,coffee,rocket,camera")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from varipipe.loadgen.experiment import git_commit

    runs = []
    for rps in [float(x) for x in args.rates.split(",")]:
        r = measure(args.pipeline, rps, args.seconds, args.images.split(","))
        runs.append(r)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["by_group_cpu_s_per_s"].items() if v >= 0.01)
        print(f"{rps:g} req/s: host {r['host_busy_cpu_s_per_s']:.2f} CPU-s/s, stages {r['stage_cpu_s_per_s']:.2f}, "
              f"the rest {r['other_cpu_s_per_s']:.2f} ({1000 * r['other_cpu_s_per_request']:.0f} ms a request): "
              f"{parts}", flush=True)
    rest = [r["other_cpu_s_per_request"] for r in runs]
    doc = {"command": "python benchmarks/host_cpu.py " + shlex.join(sys.argv[1:]), "git_commit": git_commit(),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_at_start": os.getloadavg(),
           "pipeline": args.pipeline, "runs": runs, "other_cpu_s_per_request_median": float(np.median(rest))}
    print(f"the rest, median over the rates: {1000 * doc['other_cpu_s_per_request_median']:.0f} ms of CPU a request")
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
