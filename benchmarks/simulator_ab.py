"""Simulator speed, old code against new, in one session: the minimum of repeated runs.

    python benchmarks/simulator_ab.py LABEL [--trace FILE] [--static-runs 5] [--fa2-runs 3]

Simulates 1 h of day 1 of the Twitter trace at full rate (168,606 Poisson
requests, seed 0) on the synthetic vision-caption profile under ``static`` and
``fa2-low`` (the adapter's default solver unless ``--solver`` names one), as benchmarks/simulator.py does, several times each, and
prints the minimum wall time of each (the least disturbed run on a shared
host) with the attainment (equal for equal results). It imports whichever
``varipipe`` comes first on the path: run it from this checkout, and with
PYTHONPATH on a package tree of an older commit, alternating, under the lock
(benchmarks/README.md, "Simulator speed", issue 18).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from varipipe.adapter.policies import make_policy
from varipipe.adapter.policy import PolicyContext
from varipipe.loadgen.runs import SimSettings, run_policy
from varipipe.loadgen.simulator import SimConfig, predictor_forecaster, simulate
from varipipe.loadgen.traces import arrival_times, read_trace
from varipipe.profiler.store import load_profile
from varipipe.records import SLA

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "tests" / "fixtures" / "loadgen" / "vision-caption-synthetic.json"
DAY1_START_S, LENGTH_S = 86_400, 3_600  # benchmarks/simulator.py's shorter window
SLA_S, CLUSTER_CORES, STATIC_REPLICAS = 5.0, 200.0, 60  # as benchmarks/simulator.py


class _Last:
    name = "reactive"

    def predict(self, history):
        return float(max(history[-10:])) if len(history) else 0.0


def _static(profile, arrivals) -> tuple[float, float]:
    ctx = PolicyContext(spec=None, profile=profile, sla=SLA(SLA_S), cost_mode="reserved",
                        cluster_cores=CLUSTER_CORES, max_replicas=int(CLUSTER_CORES))
    policy = make_policy("static", ctx, replicas=STATIC_REPLICAS)
    started = time.perf_counter()
    r = simulate(profile, arrivals, policy, predictor_forecaster(_Last()),
                 SimConfig(SLA_S, cost_mode="reserved", cluster_cores=CLUSTER_CORES, seed=0))
    return time.perf_counter() - started, r.sla_attainment


def _fa2(profile, arrivals, solver: str | None = None) -> tuple[float, float]:
    settings = SimSettings(sla_s=SLA_S, cost_mode="reserved", cluster_cores=CLUSTER_CORES, seed=0,
                           policy_options={"solver": solver} if solver else {})
    started = time.perf_counter()
    r = run_policy(profile, arrivals, "fa2-low", settings)
    return time.perf_counter() - started, r.sla_attainment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("label", help="what to call this tree in the output (old, new)")
    ap.add_argument("--trace", default="twitter", help="trace file or packaged trace name (default: twitter, as simulator.py)")
    ap.add_argument("--static-runs", type=int, default=5)
    ap.add_argument("--fa2-runs", type=int, default=3)
    ap.add_argument("--solver", default=None, help="fa2-low's solver (default: the tree's own default)")
    args = ap.parse_args()
    profile = load_profile(PROFILE)
    arrivals = arrival_times(read_trace(args.trace, DAY1_START_S, LENGTH_S), "poisson", 0)
    fa2 = partial(_fa2, solver=args.solver)
    for name, fn, runs in (("static", _static, args.static_runs), ("fa2-low", fa2, args.fa2_runs)):
        walls, attainment = zip(*(fn(profile, arrivals) for _ in range(runs)), strict=True)
        print(f"{args.label} {name}: {len(arrivals)} requests, min {min(walls):.3f} s "
              f"({', '.join(f'{w:.2f}' for w in walls)}), attainment {attainment[0]:.6f}", flush=True)


if __name__ == "__main__":
    main()
