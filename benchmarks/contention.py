"""How much the stages slow each other on a shared host: a contention law per stage (issue 18 part 4).

    python benchmarks/contention.py --tuning benchmarks/results/fidelity_loads_pooled_tail_80_tuning.json.gz \
        --runs benchmarks/results/fidelity_loads_pooled_tail_80_runs/*.json.gz \
        --out benchmarks/results/contention_fidelity_80.json

Reads kept live runs (``fidelity_loads.py --keep``: every batch a stage ran, with its variant,
hardware, size, service time and end time; no Ray, nothing timed). For each batch: its time over
the profile's p50 for the same variant, batch size and hardware (the ratio calibration keeps),
and the **busy threads beside it**, the other batches' threads (``cpu:k`` is k), read two ways:
weighted by how much of this batch each overlapped (``during``: what ``loadgen.hostspeed.fit_contention``
fits since 2026-12-07), or those in flight when it starts (``at_start``: all a simulator knows at that
instant, what the law was fitted on before). On the tuning window it fits, per stage, by least squares

    log(ratio) = a + gamma * (busy threads beside it)

and predicts each other run's per-stage geometric mean ratio from that run's own overlaps (the
statistic a least-squares fit in logs predicts; a median of the law's values is not the median of
the ratios, which also spread around the law). The question
it answers: does a law fitted at one load (the tuning window's) carry the slowdown the stages
show at another (benchmarks/README.md, "Fidelity at two loads": the short stages 15-60 % slower at
80 % than at 60 %)? Writes the fits and, per run and stage, the observed and predicted geometric
means (and the observed median).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from varipipe.jsonfile import read_json, write_json_atomic
from varipipe.loadgen.experiment import checkout_relative, git_commit
from varipipe.loadgen.hostspeed import threads_during
from varipipe.profiler.store import load_profile
from varipipe.records import busy_threads

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiler" / "profiles" / "vision-caption-ci.json"  # fidelity_loads.py's pipeline
# What runs beside a batch: the threads in flight over its whole time, each weighted by its overlap
# ("during", what loadgen.hostspeed.fit_contention fits), or those in flight when it starts
# ("at_start": all a simulator knows at that instant; the law's reading before 2026-12-07).
BESIDE = ("during", "at_start")


def _at_start(starts: np.ndarray, ends: np.ndarray, threads: np.ndarray) -> np.ndarray:
    """Per batch, the threads of the other batches in flight when it starts."""
    return np.array([float(threads[(starts < t0) & (ends > t0)].sum()) for t0 in starts])


def batches(path: Path, p50: dict) -> list[dict]:
    """A kept run's profiled batches, each with its ratio to the profile's p50 and the busy threads
    beside it (the other batches' threads, weighted by their overlap with it)."""
    rows = [b for b in read_json(path)["batches"]
            if (b["stage"], b["variant"], b["hardware"], int(b["size"])) in p50]
    end = np.array([float(b["t"]) for b in rows])  # a batch is reported when it ends
    start = end - np.array([float(b["seconds"]) for b in rows])
    threads = np.array([busy_threads(b["hardware"]) for b in rows], dtype=float)
    at_start, during = _at_start(start, end, threads), threads_during(start, end, threads)
    return [{"stage": b["stage"], "during": float(during[i]), "at_start": float(at_start[i]),
             "ratio": float(b["seconds"]) / p50[(b["stage"], b["variant"], b["hardware"], int(b["size"]))]}
            for i, b in enumerate(rows)]


def fit(rows: list[dict], stage: str, beside: str) -> dict:
    x = np.array([r[beside] for r in rows if r["stage"] == stage])
    y = np.log([r["ratio"] for r in rows if r["stage"] == stage])
    (a, gamma), *_ = np.linalg.lstsq(np.vstack([np.ones_like(x), x]).T, y, rcond=None)
    return {"a": float(a), "gamma": float(gamma), "batches": int(len(x)), "mean_beside": float(x.mean()),
            "median_ratio": float(np.median(np.exp(y))), "geomean_ratio": float(np.exp(y.mean()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuning", required=True, help="the kept tuning window (fidelity_loads.py --keep DIR: tuning.json)")
    ap.add_argument("--runs", nargs="+", required=True, help="kept runs to predict")
    ap.add_argument("--profile", default=str(PROFILE))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    profile = load_profile(Path(args.profile))
    p50 = {(p.stage, p.variant, p.hardware, p.batch): p.latency_p50_s for p in profile.points}
    tuning = batches(Path(args.tuning), p50)
    stages = [s for s in profile.stages if any(r["stage"] == s for r in tuning)]
    kept = {path: batches(path, p50) for path in map(Path, args.runs)}
    fits: dict[str, dict] = {}
    runs: dict[str, dict] = {}
    for beside in BESIDE:
        fits[beside] = {s: fit(tuning, s, beside) for s in stages}
        for s, f in fits[beside].items():
            print(f"tuning, {beside}: {s}: log(ratio) = {f['a']:.3f} + {f['gamma']:.3f} x busy threads beside "
                  f"(mean {f['mean_beside']:.2f}, {f['batches']} batches, geometric mean ratio {f['geomean_ratio']:.2f}, "
                  f"median {f['median_ratio']:.2f})")
        for path, rows in kept.items():
            name = path.name.removesuffix(".gz").removesuffix(".json")
            for s, f in fits[beside].items():
                x = np.array([r[beside] for r in rows if r["stage"] == s])
                obs = np.array([r["ratio"] for r in rows if r["stage"] == s])
                runs.setdefault(name, {}).setdefault(beside, {})[s] = {
                    "batches": int(len(x)), "mean_beside": float(x.mean()), "median_ratio": float(np.median(obs)),
                    "geomean_ratio": float(np.exp(np.log(obs).mean())),
                    "predicted_geomean_ratio": float(np.exp(np.mean(f["a"] + f["gamma"] * x)))}
            print(" ", name, " | ".join(f"{s} beside {v['mean_beside']:.2f} geometric mean {v['geomean_ratio']:.2f} "
                                        f"predicted {v['predicted_geomean_ratio']:.2f}" for s, v in runs[name][beside].items()))
    if args.out:
        doc = {"benchmark": "contention", "profile": checkout_relative(Path(args.profile)), "git_commit": git_commit(),
               "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": "python benchmarks/contention.py " + shlex.join(sys.argv[1:]),
               "tuning": checkout_relative(Path(args.tuning)), "fits": fits, "runs": runs}
        write_json_atomic(args.out, doc, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
