"""Faults under load: a killed stage replica, a killed controller (the adapter loop's host).

    python benchmarks/faults.py [--repeats 3] [--rate 20]

identity-chain (first stage 2 replicas, second 1) on a local Ray Serve, under an
open-loop load of ``--rate`` req/s. Baseline in the same run: the same load with
no fault. Then, ``--repeats`` times each:

* SIGKILL one replica process of stage ``first`` (and, separately, of ``second``,
  its only replica): requests that failed (by status), and recovery = time from
  the kill until Ray Serve has a new replica alive (GCS actor table) and the
  first request sent after it succeeded;
* SIGKILL the controller replica (where the adapter loop runs): requests that
  failed, and whether the restarted controller reports the running decision.

Writes benchmarks/results/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import time
from pathlib import Path

from overload import open_loop, png, summarise

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"
SLA_S = 0.5
APP = "faults-bench"
LOAD_S = 14.0  # seconds of load per fault; the kill comes KILL_AT_S in
KILL_AT_S = 3.0
RECOVERY_TIMEOUT_S = 60.0


def alive(deployment: str) -> dict[str, int]:
    from ray._private.state import state

    return {aid: a["Pid"] for aid, a in state.actor_table(None).items()
            if a["State"] == "ALIVE" and a["ActorClassName"] == f"ServeReplica:{APP}:{deployment}"}


def kill_one(deployment: str) -> dict:
    before = alive(deployment)
    victim, pid = next(iter(before.items()))
    os.kill(pid, signal.SIGKILL)
    t_kill = time.perf_counter()
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        now = alive(deployment)
        if len(now) == len(before) and victim not in now:
            return {"t_kill": t_kill, "replaced_s": round(time.perf_counter() - t_kill, 3)}
        time.sleep(0.05)
    return {"t_kill": t_kill, "replaced_s": None}


def under_load(url: str, body: bytes, rate: float, fault) -> tuple[list, dict]:
    async def run():
        t0 = time.perf_counter()
        load = asyncio.create_task(open_loop(url, body, rate, LOAD_S))
        await asyncio.sleep(KILL_AT_S)
        info = await asyncio.to_thread(fault) if fault else {}
        replies = await load
        return replies, {**info, "t0": t0}

    return asyncio.run(run())


def analyse(replies: list, info: dict) -> dict:
    out = summarise(replies, SLA_S)
    if "t_kill" in info:
        kill_s = info["t_kill"] - info["t0"]
        failed = [r for r in replies if r.status != 200]
        after = [r for r in replies if r.sent_s > kill_s + (info["replaced_s"] or 0)]
        first_ok = next((r for r in after if r.status == 200), None)
        out.update({
            "replica_replaced_s": info["replaced_s"],
            "recovered_s": round(first_ok.sent_s + first_ok.latency_s - kill_s, 3) if first_ok else None,
            "failed_first_s": round(min(r.sent_s for r in failed) - kill_s, 3) if failed else None,
            "failed_last_s": round(max(r.sent_s for r in failed) - kill_s, 3) if failed else None,
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=20.0, help="open-loop load, req/s")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    import httpx

    from varipipe.pipelines.serve_config import AppOptions
    from varipipe.pipelines.server import LocalServer
    from varipipe.records import Decision, StageDecision

    body = png()
    decision = Decision(stages=(StageDecision("first", "fast", 4, 2, "cpu:1", 0.005),
                                StageDecision("second", "fast", 4, 1, "cpu:1", 0.005)), policy="benchmark")
    runs: dict[str, list[dict]] = {}
    with LocalServer(AppOptions(pipeline="identity-chain", app_name=APP), decision=decision) as srv:
        under_load(srv.endpoint, body, args.rate, None)  # warm-up
        runs["baseline_no_fault"] = [analyse(*under_load(srv.endpoint, body, args.rate, None))]
        print("baseline", json.dumps(runs["baseline_no_fault"][0]))
        for target in ("stage-first", "stage-second", "controller"):
            runs[f"kill_{target}"] = []
            for _ in range(args.repeats):
                r = analyse(*under_load(srv.endpoint, body, args.rate, lambda t=target: kill_one(t)))
                if target == "controller":
                    cfg = httpx.get(srv.url + "/config", timeout=30).json()
                    r["decision_after"] = [(s["variant"], s["replicas"]) for s in cfg["decision"]["stages"]]
                runs[f"kill_{target}"].append(r)
                print(f"kill {target}", json.dumps(r))
                time.sleep(2)
    result = {
        "benchmark": "faults", "command": f"python benchmarks/faults.py --repeats {args.repeats} --rate {args.rate}",
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "load_rps": args.rate, "load_s": LOAD_S, "kill_at_s": KILL_AT_S, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
