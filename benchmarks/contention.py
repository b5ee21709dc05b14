"""How much the stages slow each other on a shared host: a contention law per stage (issue 18 part 4).

    python benchmarks/contention.py --tuning benchmarks/results/fidelity_loads_pooled_tail_80_tuning.json.gz \
        --runs benchmarks/results/fidelity_loads_pooled_tail_80_runs/*.json.gz \
        --out benchmarks/results/contention_fidelity_80.json

Reads kept live runs (``fidelity_loads.py --keep``: every batch a stage ran, with its variant,
hardware, size, service time and end time; no Ray, nothing timed). For each batch: its time over
the profile's p50 for the same variant, batch size and hardware (the ratio calibration keeps),
and the **busy threads beside it**, the other batches' threads (``cpu:k`` is k), read four ways
(``BESIDE``: over the batch's time, at its start, the second before it as the simulator reads
them, and what a simulator running each second stage by stage knows of at its start); for
each, Pearson's r with log(ratio) says how much of the batches' slowdown the reading can carry.
On the tuning window it fits, per stage, by least squares

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_loads import _replicas_from  # noqa: E402  (the kept runs' decisions, as the fit reads them)

from varipipe.jsonfile import read_json, write_json_atomic  # noqa: E402
from varipipe.loadgen.experiment import checkout_relative, git_commit  # noqa: E402
from varipipe.loadgen.hostspeed import threads_before, threads_during  # noqa: E402
from varipipe.profiler.store import load_profile  # noqa: E402
from varipipe.records import busy_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiler" / "profiles" / "vision-caption-ci.json"  # fidelity_loads.py's pipeline
# What runs beside a batch: the threads in flight over its whole time, each weighted by its overlap
# ("during", what loadgen.hostspeed.fit_contention fits the slope on), those in flight when it
# starts ("at_start", the law's reading before 2026-12-07), the previous second's busy threads
# beside its stage ("before": what the simulator applies the law at, loadgen.hostspeed.threads_before),
# or what a simulator that runs each second stage by stage knows of when it starts the batch
# ("known", _known: a reading tried on 2026-12-07 and not kept, benchmarks/README.md "Fidelity:
# what runs beside a batch, read when it starts").
BESIDE = ("during", "at_start", "before", "known")


def _at_start(starts: np.ndarray, ends: np.ndarray, threads: np.ndarray) -> np.ndarray:
    """Per batch, the threads of the other batches in flight when it starts."""
    return np.array([float(threads[(starts < t0) & (ends > t0)].sum()) for t0 in starts])


def _known(starts: np.ndarray, ends: np.ndarray, threads: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Per batch, the other batches' threads over its time that a simulator running each second
    stage by stage in pipeline order (``ranks``) knows of when it starts the batch: an earlier
    stage's that start before the end of its second, its own stage's that started before it, a
    later stage's that started before its second; weighted by their overlap with it."""
    out = np.zeros(len(starts))
    for k in range(len(starts)):
        c, r = starts[k], ranks[k]
        known = np.where(ranks < r, starts < np.floor(c) + 1, np.where(ranks > r, starts < np.floor(c), starts < c))
        known[k] = False
        overlap = np.clip(np.minimum(ends, ends[k]) - np.maximum(starts, c), 0.0, None)
        out[k] = float(overlap[known] @ threads[known]) / max(float(ends[k] - c), 1e-9)
    return out


def batches(path: Path, p50: dict, stages: list[str]) -> list[dict]:
    """A kept run's profiled batches, each with its ratio to the profile's p50 and the busy threads
    beside it read each way (``BESIDE``)."""
    doc = read_json(path)
    rows = [b for b in doc["batches"] if (b["stage"], b["variant"], b["hardware"], int(b["size"])) in p50]
    end = np.array([float(b["t"]) for b in rows])  # a batch is reported when it ends
    start = end - np.array([float(b["seconds"]) for b in rows])
    threads = np.array([busy_threads(b["hardware"]) for b in rows], dtype=float)
    stage = np.array([b["stage"] for b in rows])
    beside = {"during": threads_during(start, end, threads), "at_start": _at_start(start, end, threads),
              "before": threads_before(start, end, threads, stage, _replicas_from(doc.get("decisions", []))),
              "known": _known(start, end, threads, np.array([stages.index(s) for s in stage.tolist()]))}
    return [{"stage": b["stage"], **{k: float(v[i]) for k, v in beside.items()},
             "ratio": float(b["seconds"]) / p50[(b["stage"], b["variant"], b["hardware"], int(b["size"]))]}
            for i, b in enumerate(rows)]


def _r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of a reading with log(ratio): how much of a batch's slowdown it can carry."""
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 else 0.0


def fit(rows: list[dict], stage: str, beside: str) -> dict:
    x = np.array([r[beside] for r in rows if r["stage"] == stage])
    y = np.log([r["ratio"] for r in rows if r["stage"] == stage])
    (a, gamma), *_ = np.linalg.lstsq(np.vstack([np.ones_like(x), x]).T, y, rcond=None)
    return {"a": float(a), "gamma": float(gamma), "r": _r(x, y), "batches": int(len(x)), "mean_beside": float(x.mean()),
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
    tuning = batches(Path(args.tuning), p50, list(profile.stages))
    stages = [s for s in profile.stages if any(r["stage"] == s for r in tuning)]
    kept = {path: batches(path, p50, list(profile.stages)) for path in map(Path, args.runs)}
    fits: dict[str, dict] = {}
    runs: dict[str, dict] = {}
    for beside in BESIDE:
        fits[beside] = {s: fit(tuning, s, beside) for s in stages}
        for s, f in fits[beside].items():
            print(f"tuning, {beside}: {s}: r {f['r']:+.2f}, log(ratio) = {f['a']:.3f} + {f['gamma']:.3f} x busy threads beside "
                  f"(mean {f['mean_beside']:.2f}, {f['batches']} batches, geometric mean ratio {f['geomean_ratio']:.2f}, "
                  f"median {f['median_ratio']:.2f})")
        for path, rows in kept.items():
            name = path.name.removesuffix(".gz").removesuffix(".json")
            for s, f in fits[beside].items():
                x = np.array([r[beside] for r in rows if r["stage"] == s])
                obs = np.array([r["ratio"] for r in rows if r["stage"] == s])
                runs.setdefault(name, {}).setdefault(beside, {})[s] = {
                    "batches": int(len(x)), "r": _r(x, np.log(obs)), "mean_beside": float(x.mean()),
                    "median_ratio": float(np.median(obs)),
                    "geomean_ratio": float(np.exp(np.log(obs).mean())),
                    "predicted_geomean_ratio": float(np.exp(np.mean(f["a"] + f["gamma"] * x)))}
            print(" ", name, " | ".join(f"{s} r {v['r']:+.2f} beside {v['mean_beside']:.2f} geometric mean {v['geomean_ratio']:.2f} "
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
