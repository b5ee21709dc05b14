"""Which latency figure should a point's windows agree on? Replays recorded latencies through the sampler.

    python benchmarks/profile_windows.py collect --seconds 90 --out /tmp/windows_samples.jsonl
    python benchmarks/profile_windows.py replay benchmarks/results/profile_windows_samples.jsonl [--out FILE]

``collect`` times a few points of the flagship (``POINTS``) for ``--seconds`` each with a policy
that never settles (its tolerance is 0), as ``varipipe profile`` times them, and keeps every
batch latency (``--samples-out`` lines). ``replay`` feeds each recorded stream through
``plan.PointSampler`` on a fake clock (the clock advances by each latency), once per candidate
stability figure (the window p50, p99, or the throughput alone, i.e. perf_analyzer's default of
the mean latency) and from two starting offsets (the first half and the second half of the
stream: two runs of the same point a few tens of seconds apart), and reports per figure: how
often a point settles, how many windows it needs, and how far the two runs' p50 and p99 land apart.
Writes benchmarks/results/profile_windows.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "profile_windows.json"
# Points of different speed and shape: the classifier's two-humped batch-1 latency (1-3 crops
# an image) and a batch of 2, a detector, an LLM (90 s holds two runs of 3 of its 15 s windows).
POINTS = (
    ("classifier", "mobilenet-v2", "cpu:1", 1),
    ("classifier", "efficientnet-lite0", "cpu:2", 2),
    ("detector", "yolov3-tiny-320", "cpu:1", 1),
    ("llm", "smollm2-135m", "cpu:2", 1),
)
# The candidate latency figures a window is judged on, beside its throughput: (name, percentile);
# None is the mean, perf_analyzer's default, which makes the two checks one (throughput = batch / mean).
CANDIDATES = (("p50", 50.0), ("p99", 99.0), ("mean", None))


def collect(seconds: float, out: Path) -> None:
    from varipipe.commands.profile import DEFAULT_NICE
    from varipipe.profiler.measure import cpu_hardware
    from varipipe.profiler.plan import FULL, PointKey
    from varipipe.profiler.run import ProfileRequest, run_profile
    from varipipe.profiler.store import default_profile_path, load_profile
    from varipipe.spec import find_spec

    spec = find_spec("vision-caption")
    never = replace(FULL, tolerance=1e-12, max_seconds=seconds, max_windows=1000)
    keys = frozenset(PointKey(s, v, b, h) for s, v, h, b in POINTS)
    reuse = load_profile(default_profile_path(spec.name)).metadata.get("accuracy")
    work = Path(tempfile.mkdtemp(prefix="profile-windows-"))
    req = ProfileRequest(spec=spec, out=work / "collect.json", batches=(1, 2, 4), hardware=(cpu_hardware(1),
                         cpu_hardware(2)), policy=never, command="benchmarks/profile_windows.py collect",
                         only=keys, reuse_accuracy=reuse, nice=DEFAULT_NICE, samples_out=out)
    summary = run_profile(req)
    print(f"collected {summary.measured} points into {out} ({summary.seconds:.0f} s)")


def _run(policy, latencies, batch):
    from varipipe.profiler.plan import FULL, PointSampler

    # windows sized as the full profile sizes them (from the first batch, as from a warm-up batch)
    sampler = PointSampler(policy, batch, FULL.window_count(latencies[0]), 0.0)
    now = 0.0
    for lat in latencies:
        now += lat
        sampler.add(lat, now)
        if sampler.done:
            break
    return sampler.result(), now


def replay(path: Path) -> dict:
    from varipipe.profiler.plan import FULL
    from varipipe.profiler.stats import summarize

    rows = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        lat, batch = d["latencies_s"], d["batch"]
        half = len(lat) // 2
        for name, q in CANDIDATES:
            # each half-stream is one run; its cap is what that half holds (a capped run: stable=False)
            policy = replace(FULL, stability_percentile=q, max_seconds=min(FULL.max_seconds, sum(lat[:half])))
            runs = []
            for stream in (lat[:half], lat[half:]):
                r, used = _run(policy, stream, batch)
                s = summarize(r.point_latencies_s, batch)
                runs.append({"stable": r.stable, "windows": len(r.windows), "seconds": round(used, 1),
                             "p50_s": s.p50_s, "p99_s": s.p99_s})
            a, b = runs
            rows.append({"point": f"{d['stage']}/{d['variant']}/{d['hardware']}/b{batch}", "figure": name,
                         "runs": runs, "p50_spread": abs(a["p50_s"] - b["p50_s"]) / min(a["p50_s"], b["p50_s"]),
                         "p99_spread": abs(a["p99_s"] - b["p99_s"]) / min(a["p99_s"], b["p99_s"])})
    summary = {}
    for name, _ in CANDIDATES:
        mine = [r for r in rows if r["figure"] == name]
        runs = [x for r in mine for x in r["runs"]]
        summary[name] = {"runs_stable": f"{sum(x['stable'] for x in runs)} of {len(runs)}",
                         "mean_windows": sum(x["windows"] for x in runs) / len(runs),
                         "mean_seconds": sum(x["seconds"] for x in runs) / len(runs),
                         "mean_p50_spread": sum(r["p50_spread"] for r in mine) / len(mine),
                         "mean_p99_spread": sum(r["p99_spread"] for r in mine) / len(mine)}
    return {"summary": summary, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    c = sub.add_parser("collect", help="time POINTS for --seconds each, keeping every latency")
    c.add_argument("--seconds", type=float, default=90.0)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replay", help="replay a samples file through the sampler, per candidate figure")
    r.add_argument("samples", type=Path)
    r.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.action == "collect":
        collect(args.seconds, args.out)
        return 0
    result = {"benchmark": "profile_windows", "command": "python " + shlex.join(sys.argv), **replay(args.samples)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for row in result["rows"]:
        a, b = row["runs"]
        print(f"{row['point']:42s} {row['figure']:24s} stable {a['stable']!s:5s}/{b['stable']!s:5s} windows "
              f"{a['windows']:3d}/{b['windows']:3d}  p50 spread {row['p50_spread']:6.1%}  p99 spread "
              f"{row['p99_spread']:6.1%}")
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
