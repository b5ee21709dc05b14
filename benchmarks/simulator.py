"""Simulator speed: simulated requests per wall-clock second at two trace lengths.

    python benchmarks/simulator.py [--trace twitter]

Target (issue 7): >= 50,000 simulated requests per second, growing linearly
with trace length. Windows come from day 1 of the trace (the training days;
days 12-13 are kept for evaluation). Two policies: ``static`` (one fixed
configuration: the simulator alone) and ``fa2-low`` (the adapter's solver, its
default unless ``--solver`` names another, called every 10 s interval, as in an
experiment). Writes
benchmarks/results/simulator.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from functools import partial
from pathlib import Path

from varipipe.adapter.optimizer import DEFAULT_SOLVER, SOLVERS
from varipipe.adapter.policies import make_policy
from varipipe.adapter.policy import PolicyContext
from varipipe.loadgen.experiment import git_commit
from varipipe.loadgen.runs import SimSettings, run_policy
from varipipe.loadgen.simulator import SimConfig, predictor_forecaster, simulate
from varipipe.loadgen.traces import arrival_times, read_trace
from varipipe.profiler.store import load_profile
from varipipe.records import SLA

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "tests" / "fixtures" / "loadgen" / "vision-caption-synthetic.json"
TARGET_RPS = 50_000  # issue 7: simulated requests per wall second
DAY1_START_S = 86_400  # a training-day window; the eval days stay untouched
LENGTHS_S = (3_600, 14_400)  # one and four hours at full Twitter rate
SLA_S = 5.0
CLUSTER_CORES = 200.0  # enough for the full-rate trace with any variant
STATIC_REPLICAS = 60  # per stage: carries day 1's peak with the smallest variants at batch 1


def _static(profile, arrivals, seed: int) -> float:
    ctx = PolicyContext(spec=None, profile=profile, sla=SLA(SLA_S), cost_mode="reserved",
                        cluster_cores=CLUSTER_CORES)
    policy = make_policy("static", ctx, replicas=STATIC_REPLICAS)

    class _Last:
        name = "reactive"

        def predict(self, h):
            return float(max(h[-10:])) if len(h) else 0.0

    started = time.perf_counter()
    simulate(profile, arrivals, policy, predictor_forecaster(_Last()),
             SimConfig(SLA_S, cost_mode="reserved", cluster_cores=CLUSTER_CORES, seed=seed))
    return time.perf_counter() - started


def _fa2(profile, arrivals, seed: int, solver: str = DEFAULT_SOLVER) -> float:
    settings = SimSettings(sla_s=SLA_S, cost_mode="reserved", cluster_cores=CLUSTER_CORES, seed=seed,
                           policy_options={"solver": solver})
    started = time.perf_counter()
    run_policy(profile, arrivals, "fa2-low", settings)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="twitter", help="trace file or packaged trace name (default: twitter)")
    ap.add_argument("--profile", default=str(PROFILE))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solver", choices=SOLVERS, default=DEFAULT_SOLVER,
                    help=f"fa2-low's solver (default: the adapter's, {DEFAULT_SOLVER}; before 2026-12-07 highs)")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    rows = []
    for length in LENGTHS_S:
        arrivals = arrival_times(read_trace(args.trace, DAY1_START_S, length), "poisson", args.seed)
        for name, fn in (("static", _static), ("fa2-low", partial(_fa2, solver=args.solver))):
            wall = fn(profile, arrivals, args.seed)
            rows.append({"policy": name, "trace_s": length, "requests": int(len(arrivals)), "wall_s": wall,
                         "sim_requests_per_s": len(arrivals) / wall})
            print(f"{name:>8} {length:>6} s trace: {len(arrivals):>8} requests in {wall:6.2f} s "
                  f"= {len(arrivals) / wall:>9,.0f} req/s (target {TARGET_RPS:,})")
    growth = {}
    for name in ("static", "fa2-low"):
        a, b = (r for r in rows if r["policy"] == name)
        growth[name] = {"requests_ratio": b["requests"] / a["requests"], "wall_ratio": b["wall_s"] / a["wall_s"]}
        print(f"{name}: {growth[name]['requests_ratio']:.2f}x the requests took {growth[name]['wall_ratio']:.2f}x "
              "the time (linear: equal ratios)")
    out = {"target_requests_per_s": TARGET_RPS, "baseline": "target 50,000 simulated req/s (issue 7)",
           "rows": rows, "growth": growth,
           "meets_target": {name: all(r["sim_requests_per_s"] >= TARGET_RPS for r in rows if r["policy"] == name)
                            for name in ("static", "fa2-low")},
           "solver": args.solver, "git_commit": git_commit(),
           "command": "python benchmarks/simulator.py " + shlex.join(sys.argv[1:]), "profile": str(Path(args.profile).name)}
    path = ROOT / "benchmarks" / "results" / "simulator.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
