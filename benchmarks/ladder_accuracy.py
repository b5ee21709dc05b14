"""Each vision-caption ladder on the labelled set: accuracy per rung beside its cost, and paired comparisons.

    flock /tmp/varipipe-heavy.lock python benchmarks/ladder_accuracy.py --split dev|test
        [--pipeline vision-caption] [--stages detector,classifier,llm] [--variants a,b,...]
        [--resamples 2000] [--seed 17] [--set DIR] [--out FILE]
        [--save-runs DIR [--measure-only]] [--from-runs DIR]

For every stage of the pipeline, every variant runs on the split of
profiler/evalset (profiler/EVAL_SET.md), one request at a time on one thread:

* detector: on the photos; COCO-style mAP@0.5 of its detections as served;
* classifier: on crops of the ground-truth boxes whose COCO class the
  ImageNet->COCO mapping covers; top-1 through the mapping;
* llm: on inputs built from the ground-truth labels by the set's LLM task,
  scored by that task's metric (skipped, and said so, while the set has none).

Each rung's figure is the one the profiler stores (evaluate.stage_accuracy);
its cost is the median batch-1 call on cpu:1 in this same run, timed with
every rung of the stage loaded and called in turn on the same inputs (so a
host's drift hits them alike; rough: one process on a shared host, per
photo / per crop / per LLM input). Rungs are
sorted by that cost; each is compared with the next costlier one on the same
items -- paired bootstrap over images for mAP, exact McNemar for right/wrong
outcomes -- and a difference is claimed only where the test resolves it.

--save-runs keeps each stage's outputs and timings (a pickle per stage) so
that the comparisons -- and benchmarks/ladder_choice.py's analysis of
candidate ladders -- can be redone later from the same measurements, without
the lock (--from-runs DIR reads them instead of running anything;
--measure-only stops after saving, keeping the locked run short).

Every choice (thresholds, rungs, metric details) is made on --split dev;
reported figures come from --split test. Writes
benchmarks/results/ladder_accuracy_<split>.json (or --out).
"""

from __future__ import annotations

import os

# cpu:1 before any numerical library starts its thread pools.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from varipipe.profiler.evaluate import accuracy_payloads  # noqa: E402
from varipipe.profiler.ladder import Ladder, describe  # noqa: E402
from varipipe.profiler.ladder_run import (  # noqa: E402
    CPU_THREADS,
    TIMING_ROUNDS,
    check_same_inputs,
    load_run,
    run_stage,
    save_run,
    stage_ladder,
)
from varipipe.profiler.paired import (  # noqa: E402
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    best_case_mcnemar_difference,
)
from varipipe.profiler.vision_eval import SET_NAME, evaluation_for  # noqa: E402
from varipipe.spec import find_spec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _ladder_json(lad: Ladder, source: str, failed: dict[str, str]) -> dict:
    return {
        "stage": lad.stage, "metric": lad.metric, "source": source,
        "items": lad.rungs[0].items if lad.rungs else 0,
        # McNemar: the least any comparison on this many items could resolve (6 discordant, all one way)
        "best_case_resolvable": (best_case_mcnemar_difference(lad.rungs[0].items)
                                 if lad.comparisons and lad.comparisons[0].p_value is not None else None),
        "rises_with_cost": lad.rises, "every_step_resolved": lad.resolved_rises,
        "rungs": [{"variant": r.variant, "accuracy": round(r.accuracy, 5), "latency_ms": round(r.latency_s * 1e3, 2),
                   "declared": r.declared, "items": r.items,
                   "breakdown": {k: round(v, 5) for k, v in r.breakdown.items()}} for r in lad.rungs],
        "comparisons": [{"cheaper": c.cheaper, "costlier": c.costlier, "test": c.test,
                         "difference": round(c.difference, 5), "ci_low": _r(c.ci_low), "ci_high": _r(c.ci_high),
                         "p_value": _r(c.p_value), "only_cheaper_right": c.only_cheaper,
                         "only_costlier_right": c.only_costlier, "resolved": c.resolved, "verdict": c.verdict,
                         "smallest_resolvable": _r(c.smallest_resolvable), "items": c.items}
                        for c in lad.comparisons],
        "failed": failed,
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 5)


def _print_ladder(lad: Ladder, split: str) -> None:
    print(f"\n{lad.stage}: {lad.metric} on the {split} split ({lad.rungs[0].items if lad.rungs else 0} inputs), "
          f"rungs by batch-1 latency on cpu:{CPU_THREADS}")
    print(f"  {'variant':<28} {'latency ms':>10} {'measured':>9} {'declared':>9}")
    for r in lad.rungs:
        declared = f"{r.declared:.3f}" if r.declared is not None else "-"
        print(f"  {r.variant:<28} {r.latency_s * 1e3:>10.1f} {r.accuracy:>9.3f} {declared:>9}")
    for c in lad.comparisons:
        print("  " + describe(c))
    print(f"  rises with cost: {'yes' if lad.rises else 'NO'}; every step resolved: "
          f"{'yes' if lad.resolved_rises else 'no'}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--split", choices=("dev", "test"), required=True,
                        help="dev for every choice, test for reported figures")
    parser.add_argument("--pipeline", default="vision-caption", help="a spec whose evaluation is profiler/evalset")
    parser.add_argument("--stages", type=_names, default=None, help="comma-separated stages (default: all)")
    parser.add_argument("--variants", type=_names, default=None, help="comma-separated variants (default: all)")
    parser.add_argument("--set", type=Path, default=None,
                        help="a labelled set folder in the same format (default: the shipped profiler/evalset)")
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default results/ladder_accuracy_<split>"
                                                                ".json)")
    parser.add_argument("--save-runs", type=Path, default=None,
                        help="folder to keep each stage's outputs and timings in (<stage>.pkl)")
    parser.add_argument("--measure-only", action="store_true",
                        help="with --save-runs: stop after saving (no comparisons, no JSON)")
    parser.add_argument("--from-runs", type=Path, default=None,
                        help="read the stages' outputs and timings saved by --save-runs instead of running")
    args = parser.parse_args()
    if args.measure_only and not args.save_runs:
        parser.error("--measure-only needs --save-runs DIR")
    if args.from_runs and args.save_runs:
        parser.error("--from-runs and --save-runs exclude each other")
    spec = find_spec(args.pipeline)
    evaluation = evaluation_for(args.split, args.set)
    started = time.monotonic()
    photos = evaluation.payloads()
    stages, skipped = [], {}
    for stage in spec.stages:
        if args.stages and stage.name not in args.stages:
            continue
        if not evaluation.metric(stage.name):
            skipped[stage.name] = "the labelled set does not score this stage yet (no LLM task)"
            print(f"\n{stage.name}: skipped -- {skipped[stage.name]}", flush=True)
            continue
        inputs = accuracy_payloads(evaluation, stage.name, photos)
        if args.from_runs:
            try:
                run = load_run(args.from_runs, stage.name, args.split, args.variants)
                check_same_inputs(run, inputs)
            except ValueError as e:
                sys.exit(f"error: --from-runs: {e}")
        else:
            print(f"\n{stage.name}: running {len(stage.variants)} variants on {len(inputs)} inputs ...", flush=True)
            run = run_stage(stage, inputs, args.variants)
        if args.save_runs:
            save_run(args.save_runs, run, args.split)
            print(f"  saved {args.save_runs / (stage.name + '.pkl')}", flush=True)
            if args.measure_only:
                continue
        lad, figures = stage_ladder(stage, run, evaluation, args.resamples, args.seed)
        _print_ladder(lad, args.split)
        source = next(iter(figures.figures.values())).source if figures.figures else ""
        stages.append(_ladder_json(lad, source, run.failed))
    if args.measure_only:
        print(f"\nmeasured and saved in {args.save_runs} ({time.monotonic() - started:.0f} s)")
        return 0
    out = args.out or RESULTS / f"ladder_accuracy_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/ladder_accuracy.py " + " ".join(sys.argv[1:]),
        "pipeline": spec.name, "set": str(args.set) if args.set else SET_NAME, "split": args.split, "photos": len(photos),
        "split_rule": dataclasses.asdict(evaluation.labelled.split_rule),
        "cost": f"median of {TIMING_ROUNDS} batch-1 infer calls on cpu:{CPU_THREADS} in this run, every rung of "
                "the stage loaded and called in turn on the same inputs, after one warm-up call each",
        "alpha": ALPHA, "resamples": args.resamples, "seed": args.seed,
        "multiple_comparisons": "each adjacent-rung comparison at alpha on its own, no correction",
        "stages": stages, "skipped": skipped,
        "seconds": round(time.monotonic() - started, 1),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "loadavg": os.getloadavg()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1) + "\n")
    print(f"\nwrote {out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
