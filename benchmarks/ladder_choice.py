"""Choose each stage's ladder from saved measurements (dev split): dominance, candidates, a proposal's tests.

    flock /tmp/varipipe-heavy.lock python benchmarks/ladder_accuracy.py --split dev \\
        --save-runs RUNS --measure-only                       # the only locked (timed) part
    python benchmarks/ladder_choice.py --from-runs RUNS --split dev \\
        [--propose detector=a,b,c --propose classifier=x,y,z] [--markdown FILE] [--out FILE]

Reads the per-stage outputs and interleaved batch-1 cpu:1 timings that
``ladder_accuracy.py --save-runs`` kept (nothing runs or is timed here, so
no lock), and for each stage prints:

* every variant by cost: its figure with a 95 % bootstrap interval over the
  split's items (images for mAP, crops for top-1), its weights file, and
  whether another variant dominates it (costs no more, at least as accurate,
  one of the two strictly; point estimates) -- with the paired test of the
  two, so it says whether the set resolves the accuracy side;
* the candidate ladders: subsets of the undominated variants with >= 3 rungs
  and at most one degraded setting (a rung whose weights file another rung
  already runs: another input size of the same weights, or the multi-scale
  setting; different weights files are different models);
* for each --propose: its rungs by cost, adjacent paired comparisons (paired
  bootstrap over images for mAP, exact McNemar for top-1) and whether it
  meets the rules (>= 3 rungs, rising, <= 1 degraded setting, no rung
  dominated by any measured variant, in the ladder or left out of it).

Choices are made on dev only. Writes benchmarks/results/ladder_choice_<split>.json
(or --out) and, with --markdown, the tables as Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from varipipe.profiler.evaluate import accuracy_payloads
from varipipe.profiler.ladder import (
    Rung,
    candidate_ladders,
    compare,
    degraded_settings,
    describe,
    dominated_by,
    ladder,
    rung_interval,
)
from varipipe.profiler.ladder_run import CPU_THREADS, check_same_inputs, load_run, stage_rungs
from varipipe.profiler.paired import ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from varipipe.profiler.vision_eval import evaluation_for
from varipipe.spec import find_spec

RESULTS = Path(__file__).resolve().parent / "results"
MIN_RUNGS = 3  # issue 17 item 4: at least 3 rungs per stage
MAX_DEGRADED = 1  # issue 17 item 4: at most one rung a degraded setting of another rung's model
CANDIDATES_SHOWN = 8


def _proposal(text: str) -> tuple[str, tuple[str, ...]]:
    stage, sep, names = text.partition("=")
    variants = tuple(v.strip() for v in names.split(",") if v.strip())
    if not sep or not stage.strip() or not variants:
        raise argparse.ArgumentTypeError(f"expected STAGE=variant,variant,...; got {text!r}")
    return stage.strip(), variants


def _cmp_cell(c) -> str:
    if c.p_value is not None:
        return (f"{c.difference:+.3f}, McNemar p = {c.p_value:.3g} ({c.only_cheaper} vs {c.only_costlier} "
                f"discordant), {'resolved' if c.resolved else 'not resolved'}")
    return (f"{c.difference:+.3f}, 95 % CI [{c.ci_low:+.3f}, {c.ci_high:+.3f}], "
            f"{'resolved' if c.resolved else 'not resolved'}")


def _cmp_json(c) -> dict:
    return {"cheaper": c.cheaper, "costlier": c.costlier, "test": c.test, "difference": round(c.difference, 5),
            "ci_low": None if c.ci_low is None else round(c.ci_low, 5),
            "ci_high": None if c.ci_high is None else round(c.ci_high, 5),
            "p_value": None if c.p_value is None else round(c.p_value, 5),
            "only_cheaper_right": c.only_cheaper, "only_costlier_right": c.only_costlier,
            "resolved": c.resolved, "verdict": c.verdict}


def analyse(stage, run, evaluation, proposals, resamples: int, seed: int) -> tuple[dict, list[str]]:
    rungs, figures = stage_rungs(stage, run, evaluation)
    by_name: dict[str, Rung] = {r.variant: r for r in rungs}
    model_of = {v.name: str(v.params.get("model", v.name)) for v in stage.variants}
    ordered = sorted(rungs, key=lambda r: (r.latency_s, r.variant))
    losers = dominated_by(rungs)
    md = [f"### {stage.name}: {figures.metric}, {ordered[0].items if ordered else 0} dev items, "
          f"by batch-1 latency on cpu:{CPU_THREADS}", "",
          "| variant | weights | cpu:1 b1 ms | dev metric [95 % CI] | dominated by | that pair's paired test |",
          "|---|---|---|---|---|---|"]
    variants = []
    for r in ordered:
        ci = rung_interval(r, resamples, seed)
        dom = losers.get(r.variant)
        test = compare(by_name[dom], r, resamples, seed) if dom else None
        md.append(f"| {r.variant} | {model_of[r.variant]} | {r.latency_s * 1e3:.1f} | {r.accuracy:.3f} "
                  f"[{ci.ci_low:.3f}, {ci.ci_high:.3f}] | {dom or '-'} | {_cmp_cell(test) if test else '-'} |")
        variants.append({"variant": r.variant, "weights": model_of[r.variant], "latency_ms": round(r.latency_s * 1e3, 2),
                         "accuracy": round(r.accuracy, 5), "ci_low": round(ci.ci_low, 5), "ci_high": round(ci.ci_high, 5),
                         "declared": r.declared, "items": r.items, "dominated_by": dom,
                         "dominance_test": _cmp_json(test) if test else None})
    cands = candidate_ladders(rungs, model_of, MIN_RUNGS, MAX_DEGRADED)
    md += ["", f"Candidate ladders (undominated, >= {MIN_RUNGS} rungs, <= {MAX_DEGRADED} degraded setting): "
           + (f"{len(cands)}" if cands else "none")]
    md += [f"- {' -> '.join(c)}" for c in cands[:CANDIDATES_SHOWN]]
    out_props = []
    for variants_proposed in proposals:
        missing = [v for v in variants_proposed if v not in by_name]
        if missing:
            sys.exit(f"error: --propose {stage.name}: not measured in these runs: {', '.join(missing)}")
        lad = ladder(stage.name, figures.metric, [by_name[v] for v in variants_proposed], resamples, seed)
        names = [r.variant for r in lad.rungs]
        problems = []
        if len(names) < MIN_RUNGS:
            problems.append(f"fewer than {MIN_RUNGS} rungs")
        if not lad.rises:
            problems.append("accuracy does not rise with cost at every step")
        if degraded_settings(names, model_of) > MAX_DEGRADED:
            problems.append(f"{degraded_settings(names, model_of)} degraded settings")
        inside = [v for v in names if v in losers and losers[v] in names]
        if inside:
            problems.append(f"dominated inside the ladder: {', '.join(inside)}")
        outside = [f"{v} (by {losers[v]})" for v in names if v in losers and losers[v] not in names]
        if outside:
            problems.append(f"dominated by a measured variant the ladder leaves out: {', '.join(outside)}")
        md += ["", f"Proposed {stage.name} ladder: {' -> '.join(names)} "
               f"({degraded_settings(names, model_of)} degraded setting(s); "
               f"{'meets the rules' if not problems else 'FAILS: ' + '; '.join(problems)})", "",
               "| step | difference (costlier - cheaper) |", "|---|---|"]
        md += [f"| {c.cheaper} -> {c.costlier} | {_cmp_cell(c)} |" for c in lad.comparisons]
        for c in lad.comparisons:
            print("  " + describe(c))
        out_props.append({"rungs": names, "degraded_settings": degraded_settings(names, model_of),
                          "rises": lad.rises, "every_step_resolved": lad.resolved_rises, "problems": problems,
                          "comparisons": [_cmp_json(c) for c in lad.comparisons]})
    return ({"stage": stage.name, "metric": figures.metric, "variants": variants, "failed": run.failed,
             "candidates": [list(c) for c in cands], "proposals": out_props}, md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--from-runs", type=Path, required=True, help="folder written by ladder_accuracy.py "
                                                                      "--save-runs")
    parser.add_argument("--split", choices=("dev", "test"), required=True, help="the split the runs were made on")
    parser.add_argument("--pipeline", default="vision-caption", help="the spec the runs were made from")
    parser.add_argument("--stages", default="detector,classifier", help="comma-separated stages")
    parser.add_argument("--propose", type=_proposal, action="append", default=[],
                        help="STAGE=variant,variant,...: a ladder to test (repeatable)")
    parser.add_argument("--set", type=Path, default=None, help="the labelled set folder the runs used")
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables as Markdown here")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/ladder_choice_<split>.json)")
    args = parser.parse_args()
    spec = find_spec(args.pipeline)
    evaluation = evaluation_for(args.split, args.set)
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [p for p, _ in args.propose if p not in names]
    if unknown:
        parser.error(f"--propose for a stage not in --stages: {', '.join(unknown)}")
    stages, md = [], []
    photos = evaluation.payloads()
    for stage in spec.stages:
        if stage.name not in names:
            continue
        try:
            run = load_run(args.from_runs, stage.name, args.split)
            check_same_inputs(run, accuracy_payloads(evaluation, stage.name, photos))
        except ValueError as e:
            parser.error(f"--from-runs: {e}")
        print(f"{stage.name}: {len(run.outputs)} variants, {len(run.payloads)} inputs", flush=True)
        result, lines = analyse(stage, run, evaluation, [v for p, v in args.propose if p == stage.name],
                                args.resamples, args.seed)
        stages.append(result)
        md += lines + [""]
    text = "\n".join(md)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    out = args.out or RESULTS / f"ladder_choice_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/ladder_choice.py " + " ".join(sys.argv[1:]),
        "pipeline": spec.name, "split": args.split, "alpha": ALPHA, "resamples": args.resamples, "seed": args.seed,
        "rules": {"min_rungs": MIN_RUNGS, "max_degraded_settings": MAX_DEGRADED,
                  "degraded_setting": "a rung whose weights file (the spec's params.model) another rung of the "
                                      "ladder already runs: another input size or the multi-scale setting",
                  "dominated": "another variant costs no more and is at least as accurate (point estimates), "
                               "strictly better in one"},
        "stages": stages, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
