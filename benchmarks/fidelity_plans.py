"""What `ipa` plans in the fidelity benchmark's settings, and on which load (issue 18 part 4).

    python benchmarks/fidelity_plans.py --out benchmarks/results/fidelity_plans.json

``fidelity_loads.py`` compares live and simulated `ipa` on Poisson arrivals at 40 % and 80 % of
the capacity it measured (3.876 req/s on vision-caption-ci, SLA 1 s, shared mode on 2 cores,
5 s interval). This script asks what those runs asked of the optimizer: simulated on the same
arrivals (the profile's host, routed as Serve routes; nothing live, nothing timed), with
calibration off and on, it counts each decision's status (OPTIMAL, or INFEASIBLE: the fallback,
the most load the capacity limit carries at the lowest predicted latency, no SLA) and the load
it planned for, under three forecasters:

* ``reactive``, the default (``adapter.predictors``): the peak of the last interval's
  per-second arrival counts;
* ``reactive-10``: the same peak read over buckets long enough to expect 10 arrivals at the
  window's mean rate (``peak_rate(min_expected=10)``: about 3 s at 3 req/s), so that a second's
  Poisson count (sd 100 % of a mean of 1, 58 % of a mean of 3) is not read as the rate;
* ``rate``: the arrivals' true mean rate, the best a forecaster could know of a steady load.

The planner already prices Poisson bursts in its queueing wait (``adapter.queueing``: each
replica an M/G/1 queue at the SLA's percentile), so a forecast that also reads them as the
rate counts them twice. Writes per load, forecaster and calibration setting: the share of
INFEASIBLE decisions, the median planned load, and the run's attainment, p99, mean latency,
cost and accuracy.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_loads import CLUSTER_CORES, INTERVAL_S, POLICY, PROFILE, _duration_s, _times  # noqa: E402

from varipipe.adapter.policies import make_policy  # noqa: E402
from varipipe.adapter.policy import Forecast  # noqa: E402
from varipipe.adapter.predictors import Reactive, make_predictor  # noqa: E402
from varipipe.jsonfile import write_json_atomic  # noqa: E402
from varipipe.loadgen.experiment import checkout_relative, git_commit  # noqa: E402
from varipipe.loadgen.runs import SimSettings, policy_context  # noqa: E402
from varipipe.loadgen.simulator import predictor_forecaster, simulate  # noqa: E402
from varipipe.profiler.store import load_profile  # noqa: E402

# fidelity_loads.py's capacity on 2026-12-06 (the tail run: closed loop, 8 clients, the default
# decision), the loads it ran at, and the requests a run holds.
CAPACITY_RPS = 3.876
LOADS = (0.4, 0.8)
REQUESTS = 300
SLA_S = 1.0
# Buckets of reactive-10: long enough to expect this many arrivals (module docstring).
BUCKET_ARRIVALS = 10.0
FORECASTERS = ("reactive", "reactive-10", "rate")


def _forecaster(name: str, rate: float):
    if name == "rate":
        return lambda time_s, history: Forecast(rps=rate, predictor="rate")
    predictor = (make_predictor("reactive") if name == "reactive"
                 else Reactive(name="reactive-10", min_expected=BUCKET_ARRIVALS))
    return predictor_forecaster(predictor, horizon_s=INTERVAL_S)


def run(profile, rate: float, forecaster: str, calibration: bool, seeds: Sequence[int]) -> dict:
    """Simulated `ipa` on fidelity_loads' arrivals at ``rate`` (seed 0), one run per simulator seed."""
    times = _times(rate, _duration_s(rate, REQUESTS), 0)
    rows = []
    for seed in seeds:
        settings = SimSettings(sla_s=SLA_S, interval_s=INTERVAL_S, cost_mode="shared", cluster_cores=CLUSTER_CORES,
                               seed=seed, calibration=calibration, routing="replica")
        policy = make_policy(POLICY, policy_context(profile, settings))
        r = simulate(profile, times, policy, _forecaster(forecaster, rate), settings.sim_config())
        status = collections.Counter(d.status.value for d in r.timeline)
        rows.append({"infeasible_share": status.get("infeasible", 0) / max(len(r.timeline), 1),
                     "planned_rps_median": float(np.median([d.load_rps for d in r.timeline])),
                     "attainment": r.sla_attainment, "p99_s": r.p99_latency_s, "mean_s": r.mean_latency_s,
                     "cost": r.mean_cost, "accuracy": r.mean_accuracy})
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]} | {"runs": len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="simulator seeds per setting (service times, routing)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    profile = load_profile(PROFILE)
    results = []
    print(f"{'load':>5} {'rate':>5} {'forecaster':>12} {'cal':>4} {'infeasible':>10} {'planned':>8} "
          f"{'attain':>7} {'p99 s':>6} {'mean s':>6} {'cost':>5} {'acc':>5}")
    for load in LOADS:
        rate = load * CAPACITY_RPS
        for name in FORECASTERS:
            for calibration in (False, True):
                r = run(profile, rate, name, calibration, range(100, 100 + args.seeds))
                results.append({"load": load, "rate_rps": rate, "forecaster": name, "calibration": calibration, **r})
                print(f"{load:5.1f} {rate:5.2f} {name:>12} {'on' if calibration else 'off':>4} "
                      f"{r['infeasible_share']:10.0%} {r['planned_rps_median']:8.2f} {r['attainment']:7.3f} "
                      f"{r['p99_s']:6.3f} {r['mean_s']:6.3f} {r['cost']:5.2f} {r['accuracy']:5.3f}")
    if args.out:
        write_json_atomic(args.out, {
            "benchmark": "fidelity_plans", "git_commit": git_commit(), "profile": checkout_relative(PROFILE),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python benchmarks/fidelity_plans.py " + shlex.join(sys.argv[1:]),
            "capacity_rps": CAPACITY_RPS, "sla_s": SLA_S, "results": results}, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
