"""The LLM rungs on the grounded questions (profiler/evalset/qa.json) with ground-truth upstream outputs.

    flock /tmp/varipipe-heavy.lock python benchmarks/llm_qa.py --split dev
        [--variants template,smollm2-135m,...] [--shots N] [--out FILE]

Each variant of vision-caption's llm stage answers every question of the split,
one request at a time on one thread (batch 1, cpu:1), given the photo's
ground truth in the shape the stage receives from upstream
(profiler/qa_task.ground_truth_upstream). Prints exact-match accuracy per
question kind and overall, and the cost per item: the median and mean seconds
of one batch-1 ``infer`` call (after one untimed warm-up call). Prompts and
budgets are chosen with --split dev; reported figures come from --split test.
Writes benchmarks/results/llm_qa_<split>.json (or --out).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from varipipe.pipelines.variant import build_variant  # noqa: E402
from varipipe.profiler.qa import KINDS, load_qa_set, normalise_answer, score_answer  # noqa: E402
from varipipe.profiler.qa_task import ground_truth_upstream  # noqa: E402
from varipipe.spec import find_spec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EVALSET = Path(__file__).resolve().parents[1] / "profiler" / "evalset"
THREADS = 1


def inputs(split: str):  # -> list[tuple[QaItem, Payload]]
    from varipipe.pipelines.variant import Payload

    labels = json.loads((EVALSET / "labels.json").read_text(encoding="utf-8"))
    classes = [c for c in (EVALSET / "coco_classes.txt").read_text(encoding="utf-8").split("\n") if c]
    photos = {it["id"]: it for it in labels["items"]}
    out = []
    for q in load_qa_set().split(split):
        it = photos[q.image]
        up = ground_truth_upstream([(b["label"], tuple(b["box"]), b["crowd"]) for b in it["boxes"]],
                                   (it["width"], it["height"]), classes)
        out.append((q, Payload(request_id=q.id, question=q.question, outputs=up)))
    return out


def run_variant(spec, name: str, items, shots: int | None) -> dict:
    vspec = spec.stage("llm").variant(name)
    if shots is not None:
        vspec = dataclasses.replace(vspec, params={**vspec.params, "qa_shots": shots})
    variant = build_variant(vspec, threads=THREADS)
    variant.load()
    try:
        variant.infer([items[0][1]])  # warm-up, untimed
        answers, seconds = [], []
        for _, p in items:
            t0 = time.perf_counter()
            (out,) = variant.infer([p])
            seconds.append(time.perf_counter() - t0)
            answers.append(out)
    finally:
        variant.unload()
    scores = [score_answer(q, a.text) for (q, _), a in zip(items, answers, strict=True)]
    by_kind = {k: [s for (q, _), s in zip(items, scores, strict=True) if q.kind == k] for k in KINDS}
    wrong = Counter((q.kind, q.answer, normalise_answer(a.text, q.kind) or repr(a.text[:12]))
                    for (q, _), a, s in zip(items, answers, scores, strict=True) if s == 0.0)
    return {
        "variant": name, "items": len(items),
        "accuracy": sum(scores) / len(scores),
        "by_kind": {k: {"items": len(v), "accuracy": sum(v) / len(v)} for k, v in by_kind.items() if v},
        "cost_s_median": statistics.median(seconds), "cost_s_mean": statistics.fmean(seconds),
        "tokens_mean": statistics.fmean(a.tokens for a in answers),
        "wrong_most_common": [[*k, n] for k, n in wrong.most_common(8)],
        "answers": {q.id: a.text for (q, _), a in zip(items, answers, strict=True)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--pipeline", default="vision-caption")
    parser.add_argument("--variants", default="", help="comma-separated llm variants (default: all)")
    parser.add_argument("--shots", type=int, default=None, help="few-shot examples in the prompt (default: spec)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    spec = find_spec(args.pipeline)
    names = [n for n in args.variants.split(",") if n] or list(spec.stage("llm").variant_names)
    items = inputs(args.split)
    rows = []
    for name in names:
        r = run_variant(spec, name, items, args.shots)
        rows.append(r)
        kinds = "  ".join(f"{k} {v['accuracy']:.3f} ({v['items']})" for k, v in r["by_kind"].items())
        print(f"{name:<20} all {r['accuracy']:.3f} ({r['items']})  {kinds}  cost/item {r['cost_s_median'] * 1000:.1f} ms "
              f"median, {r['cost_s_mean'] * 1000:.1f} mean; tokens {r['tokens_mean']:.2f}", flush=True)
        print(f"{'':<20} most common wrong (kind, expected, got, n): {r['wrong_most_common']}", flush=True)
    out = args.out or RESULTS / f"llm_qa_{args.split}.json"
    doc = {"command": " ".join(["python", "benchmarks/llm_qa.py", *(argv or sys.argv[1:])]),
           "split": args.split, "shots": args.shots, "threads": THREADS, "host": platform.node(),
           "cpu": platform.processor() or platform.machine(), "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
