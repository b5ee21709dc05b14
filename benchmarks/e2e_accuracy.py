"""End-to-end accuracy of vision-caption configurations, measured, beside the product of their stage figures.

    flock /tmp/varipipe-heavy.lock python benchmarks/e2e_accuracy.py --split test
        [--ladder benchmarks/results/ladder_accuracy_test.json] [--configs d/c/l,d/c/l,...]
        [--profile FILE] [--set DIR] [--resamples 2000] [--seed 17] [--out FILE]

Definition (profiler/end_to_end.py): each photo of the split goes through the
configuration's detector, its classifier on the detector's real output, and
its LLM stage on the real upstream outputs (one request at a time, as
served); the answers are scored by the LLM stage's own metric against the
photo's ground truth; end-to-end accuracy = the mean score over every LLM
input of the split, with a 95 % interval from resampling photos.

It is compared with the product of the configuration's stage figures, read
from a ladder run on the same split (benchmarks/ladder_accuracy.py: detector
mAP x classifier top-1 x LLM stage metric), or with --profile from a profile
(Profile.variant_accuracy: exactly the figures the optimizer multiplies). Without --configs, the configurations span the ladders (rungs in
the ladder run's cost order): all cheapest, all costliest, all middle, and
each stage at one end with the others at the other (profiler/end_to_end.py:
spanning_configurations). Needs the set's LLM task (the LLM rungs define it).
Writes benchmarks/results/e2e_accuracy_<split>.json (or --out).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from varipipe.errors import VaripipeError  # noqa: E402
from varipipe.profiler.end_to_end import ChainRunner, measure_end_to_end, spanning_configurations  # noqa: E402
from varipipe.profiler.ladder_run import CPU_THREADS  # noqa: E402
from varipipe.profiler.paired import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED  # noqa: E402
from varipipe.profiler.vision_eval import SET_NAME, evaluation_for  # noqa: E402
from varipipe.spec import find_spec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _configs(text: str) -> list[tuple[str, ...]]:
    return [tuple(c.split("/")) for c in text.split(",") if c.strip()]


def _ladders(path: Path, stages: list[str]) -> tuple[list[list[str]], dict[str, dict[str, float]]]:
    """Each stage's rungs in cost order, and stage -> variant -> figure, from a ladder run."""
    data = json.loads(path.read_text(encoding="utf-8"))
    by_stage = {s["stage"]: s for s in data["stages"]}
    missing = [s for s in stages if s not in by_stage]
    if missing:
        raise VaripipeError(f"{path}: no ladder for stage(s) {missing}: run benchmarks/ladder_accuracy.py on all "
                            f"stages first (skipped: {data.get('skipped')})")
    order = [[r["variant"] for r in by_stage[s]["rungs"]] for s in stages]
    figures = {s: {r["variant"]: r["accuracy"] for r in by_stage[s]["rungs"]} for s in stages}
    return order, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--split", choices=("dev", "test"), required=True)
    parser.add_argument("--pipeline", default="vision-caption")
    parser.add_argument("--ladder", type=Path, default=None,
                        help="ladder_accuracy JSON of the same split (default results/ladder_accuracy_<split>.json)")
    parser.add_argument("--configs", type=_configs, default=None,
                        help="comma-separated det/cls/llm variant triples (default: spanning the ladders)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="take the stage figures from this profile (what the optimizer uses) instead of the "
                             "ladder run")
    parser.add_argument("--set", type=Path, default=None, help="another labelled set folder (default: shipped)")
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    spec = find_spec(args.pipeline)
    ladder_file = args.ladder or RESULTS / f"ladder_accuracy_{args.split}.json"
    try:
        order, figures = _ladders(ladder_file, spec.stage_names)
    except (OSError, VaripipeError) as e:
        print(f"e2e_accuracy: {e}", file=sys.stderr)
        return 2
    if args.profile is not None:
        from varipipe.profiler.store import load_profile

        profile = load_profile(args.profile, pipeline=spec.name)
        figures = {s: {v: profile.variant_accuracy(s, v) for v in figures[s]} for s in spec.stage_names}
    evaluation = evaluation_for(args.split, args.set)
    configs = args.configs or spanning_configurations(order)
    if not evaluation.metric(spec.stage_names[-1]):
        print(f"e2e_accuracy: the labelled set does not score stage {spec.stage_names[-1]!r} yet (no LLM task: "
              "profiler/vision_eval.py llm_task); nothing to measure end to end", file=sys.stderr)
        return 2
    started = time.monotonic()
    runner = ChainRunner(spec, evaluation.payloads(), threads=CPU_THREADS)
    rows = []
    print(f"{'configuration':<60} {'measured':>9} {'95% CI':>17} {'product':>8} {'ratio':>6}")
    for config in configs:
        r = measure_end_to_end(runner, evaluation, config, figures, args.resamples, args.seed)
        rows.append({"configuration": dict(zip(spec.stage_names, config, strict=True)),
                     "end_to_end": round(r.accuracy, 5), "ci_low": round(r.ci_low, 5), "ci_high": round(r.ci_high, 5),
                     "stage_figures": [round(f, 5) for f in r.stage_figures], "product": round(r.product, 5),
                     "ratio": round(r.ratio, 4), "product_inside_interval": r.product_inside_interval,
                     "items": r.items, "photos": r.photos})
        print(f"{'/'.join(config):<60} {r.accuracy:>9.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] {r.product:>8.3f} "
              f"{r.ratio:>6.2f}", flush=True)
    out = args.out or RESULTS / f"e2e_accuracy_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/e2e_accuracy.py " + " ".join(sys.argv[1:]),
        "pipeline": spec.name, "set": str(args.set) if args.set else SET_NAME, "split": args.split,
        "ladder": str(ladder_file), "figures_from": str(args.profile or ladder_file), "metric": evaluation.metric(spec.stage_names[-1]),
        "definition": "mean LLM-metric score of the pipeline's final answers with real upstream outputs, over every "
                      "LLM input of the split; 95% interval from resampling photos",
        "product": "detector mAP x classifier top-1 x LLM stage metric, each measured alone on the same split",
        "resamples": args.resamples, "seed": args.seed, "configurations": rows,
        "seconds": round(time.monotonic() - started, 1),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1) + "\n")
    print(f"wrote {out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
