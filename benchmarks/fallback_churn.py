"""Why calibrated `ipa` lost attainment at 80 % of capacity: its deployment changes (issue 18 part 4).

    python benchmarks/fallback_churn.py --runs benchmarks/results/fidelity_loads_pooled_tail_80_runs/*.json.gz \
        benchmarks/results/fidelity_loads_routed_80_runs/load*.json.gz --out benchmarks/results/fallback_churn.json

Reads kept live runs of ``fidelity_loads.py`` (``--keep``: every request, every batch, the decision
in force at each poll; no Ray, nothing timed) and, per run:

* **changes**: how often the deployed decision changed after the first 12 s (the warm start and
  the first decision), and how many of those added a replica;
* **replayed**: the calibrated planning of the run again (for a calibrated run: a calibrator fed
  the run's batches up to each decision time, as the live controller fed it), solved at the
  load each live decision was planned for (its recorded ``load_rps``; runs kept before that was
  recorded: ``--forecast``, the reactive peak at 80 %, 7 req/s, ``fidelity_plans.py``), once
  handing the optimizer the decision in force (``incumbent``, what
  the solver policies do since the fallback keeps it, ``optimizer.FALLBACK_KEEP_TOLERANCE``) and
  once not: how many times each changes the deployment, what it deploys most, and for each change
  without it, the predicted gain (the kept decision's p99 over the new one's, both priced at the new fallback's
  carried load);
* **by configuration**: requests missed (dropped or over the SLA) and each stage's batch time over
  its profile's p50 (geometric mean), per configuration in force and setting, so that a
  calibrated run's periods on the uncalibrated runs' configuration can be set beside them.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import _batches_of  # noqa: E402
from fidelity_loads import PIPELINE, PROFILE, _opts  # noqa: E402

from varipipe.adapter.calibration import make_calibrator  # noqa: E402
from varipipe.adapter.optimizer import _incumbent_at, _max_carried, _Pipeline, solve  # noqa: E402
from varipipe.adapter.policies import _limits  # noqa: E402
from varipipe.adapter.policy import policy_context  # noqa: E402
from varipipe.jsonfile import read_json, write_json_atomic  # noqa: E402
from varipipe.loadgen.experiment import checkout_relative, git_commit  # noqa: E402
from varipipe.profiler.store import load_profile  # noqa: E402
from varipipe.records import Decision  # noqa: E402
from varipipe.spec import find_spec  # noqa: E402

SLA_S = 1.0  # fidelity_loads.py's SLA
# The reactive forecast of the 80 % runs: the peak second of the last interval (fidelity_plans.py).
FORECAST_RPS = 7.0
# The warm start and the first decision: changes before this are the run starting, not churn.
SETTLED_S = 12.0


def _shape(stages) -> tuple:
    return tuple((s[1], int(s[2]), int(s[3]), s[4]) for s in stages)


def changes(doc: dict) -> dict:
    """The deployed decision's changes after SETTLED_S, and those that added a replica."""
    decs = [d for d in doc["decisions"] if d["stages"]]
    moved = added = 0
    for a, b in zip(decs, decs[1:], strict=False):
        if b["t"] < SETTLED_S or _shape(a["stages"]) == _shape(b["stages"]):
            continue
        moved += 1
        added += any(int(y[3]) > int(x[3]) for x, y in zip(a["stages"], b["stages"], strict=True))
    return {"changes": moved, "replica_additions": added}


def replay(doc: dict, profile, ctx, calibrated: bool, forecast: float) -> dict:
    """The run's planning again at each decision time, with and without the incumbent."""
    limits = _limits(ctx)
    steps = list(zip(_planned(doc, profile, calibrated), doc["decisions"][1:], strict=True))
    out = {}
    for with_incumbent in (False, True):
        current, moved, gains, shapes = None, 0, [], collections.Counter()
        for planned, d in steps:
            load = d.get("load_rps") or forecast  # kept runs since 2026-12-06 21:00 record it
            new = solve(planned, load, ctx.sla, limits, incumbent=current if with_incumbent else None)
            if current is not None and not new.same_config(current):
                moved += 1
                if not with_incumbent:
                    gains.append(_gain(planned, ctx, limits, load, current, new))
            current = new
            shapes[tuple((s.variant, s.batch, s.replicas, s.hardware) for s in new.stages)] += 1
        shape, n = shapes.most_common(1)[0] if shapes else ((), 0)
        out["with_incumbent" if with_incumbent else "without"] = {
            "changes": moved, "most_deployed": [list(x) for x in shape], "most_deployed_share": n / max(sum(shapes.values()), 1)}
        if not with_incumbent:
            out["without"]["predicted_gains"] = [g for g in gains if g is not None]
    return out


def _planned(doc: dict, profile, calibrated: bool) -> list:
    """The profile planned on at each decision after the first: for a calibrated run, corrected by
    a calibrator fed the run's batches up to that decision, as the live controller fed it."""
    if not calibrated:
        return [profile] * len(doc["decisions"][1:])
    cal = make_calibrator(profile, _opts(SLA_S, True))
    batches = _batches_of(doc["batches"])
    i, out = 0, []
    for d in doc["decisions"][1:]:
        t = float(d["t"])
        while i < len(batches) and batches[i].ended_s[0] <= t:
            cal.add([batches[i]])
            i += 1
        out.append(cal.corrected(t))
    return out


def _gain(planned, ctx, limits, forecast: float, current: Decision, new: Decision) -> float | None:
    """1 - new p99 / current p99, both priced at the new fallback's carried load (None: the current
    decision does not carry it within the limits)."""
    pipeline = _Pipeline.of(planned, limits, ctx.sla)
    carried = _max_carried(pipeline, forecast, limits)
    cur = _incumbent_at(pipeline, carried, limits, current)
    nxt = _incumbent_at(pipeline, carried, limits, new)
    if cur is None or nxt is None:
        return None
    cur_s, new_s = (sum(c.latency_s for c in x.values()) for x in (cur, nxt))
    return 1.0 - new_s / cur_s


def by_configuration(doc: dict, p50: dict, setting: str, acc: dict) -> None:
    """Add the run's requests and batches to ``acc``, keyed by (setting, configuration in force)."""
    decs = [d for d in doc["decisions"] if d["stages"]]
    ts = np.array([d["t"] for d in decs])

    def key(t: float):
        i = int(np.searchsorted(ts, t, side="right")) - 1
        return (setting, _shape(decs[i]["stages"])) if i >= 0 else None

    for r in doc["records"]:
        if r["scheduled_s"] >= SETTLED_S and (k := key(r["scheduled_s"])) is not None:
            acc[k]["requests"] += 1
            acc[k]["missed"] += r["status"] != 200 or r["latency_s"] > SLA_S
    for b in doc["batches"]:
        q = p50.get((b["stage"], b["variant"], b["hardware"], int(b["size"])))
        if q and b["t"] >= SETTLED_S and (k := key(b["t"])) is not None:
            acc[k]["ratios"][b["stage"]].append(b["seconds"] / q)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="kept live runs (fidelity_loads.py --keep DIR: load*.json.gz)")
    ap.add_argument("--forecast", type=float, default=FORECAST_RPS,
                    help="the load the live decisions were planned for, where a run did not record it")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    profile = load_profile(PROFILE)
    ctx = policy_context(find_spec(PIPELINE), profile, _opts(SLA_S, True))
    p50 = {(p.stage, p.variant, p.hardware, p.batch): p.latency_p50_s for p in profile.points}
    runs = {}
    acc: dict = collections.defaultdict(lambda: {"requests": 0, "missed": 0, "ratios": collections.defaultdict(list)})
    for path in map(Path, args.runs):
        doc = read_json(path)
        calibrated = "-cal-" in path.name
        setting = "calibrated" if calibrated else "uncalibrated"
        name = f"{path.parent.name}/{path.name.removesuffix('.gz').removesuffix('.json')}"
        runs[name] = {"setting": setting, **changes(doc), "replayed": replay(doc, profile, ctx, calibrated, args.forecast)}
        by_configuration(doc, p50, setting, acc)
        r = runs[name]
        gains = r["replayed"]["without"]["predicted_gains"]
        kept = r["replayed"]["with_incumbent"]
        print(f"{name}: {r['changes']} changes ({r['replica_additions']} adding a replica); replayed without the "
              f"incumbent {r['replayed']['without']['changes']}, with it {kept['changes']}; "
              f"predicted gains of the changes without it: {', '.join(f'{g:.1%}' for g in gains) or '-'}; "
              f"deployed most ({kept['most_deployed_share']:.0%}): "
              + ", ".join(f"{v[:10]} b{b} x{n} {h}" for v, b, n, h in kept["most_deployed"]))
    configs = []
    for (setting, shape), v in sorted(acc.items(), key=lambda kv: -kv[1]["requests"]):
        ratios = {s: float(np.exp(np.mean(np.log(x)))) for s, x in v["ratios"].items()}
        configs.append({"setting": setting, "configuration": [list(s) for s in shape], "requests": v["requests"],
                        "missed": v["missed"] / max(v["requests"], 1), "batch_over_p50_geomean": ratios})
        print(f"{setting:>12} {[(s[0][:10], s[1], s[2], s[3]) for s in shape]}: {v['requests']} requests, missed "
              f"{v['missed'] / max(v['requests'], 1):.3f}; batch / p50 " + " ".join(f"{s} {x:.2f}" for s, x in ratios.items()))
    if args.out:
        write_json_atomic(args.out, {
            "benchmark": "fallback_churn", "git_commit": git_commit(), "profile": checkout_relative(PROFILE),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python benchmarks/fallback_churn.py " + shlex.join(sys.argv[1:]), "forecast_rps": args.forecast,
            "runs": runs, "by_configuration": configs}, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
