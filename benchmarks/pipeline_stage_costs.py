"""CPU time each stage spends per request in pipeline_capacity.py's configurations.

    python benchmarks/pipeline_stage_costs.py [--rounds 5] [--image chelsea] [--no-questions]

Why batched LLM decoding moves the whole pipeline's capacity as much as it does
(issue 19, part 1): in process, without Ray, the configurations of
``benchmarks/pipeline_capacity.py`` (one runtime thread per stage, batch 4,
the same image in every request, with its questions in turn) run stage after stage on a batch of 4, and
each stage's process CPU time per request is measured; the LLM both ways,
interleaved in each round (``infer_sequential``: the path before issue 19;
``infer``: batched). The served pipeline's stages share this host's cores, so
its capacity is at most ``cores / (CPU seconds a request)``; the ratio of that
bound with the new LLM cost over the old is the most the LLM's speed-up can
move it, before Ray's own per-request cost (which only dilutes it further).

Writes benchmarks/results/pipeline_stage_costs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from varipipe.loadgen.questions import questions_for
from varipipe.loadgen.replayer import load_image
from varipipe.pipelines.images import decode_image
from varipipe.pipelines.variant import Payload, Variant, build_variant
from varipipe.spec import find_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_capacity import BATCH, CONFIGS, PIPELINE  # noqa: E402  (the configurations it serves)

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_stage_costs.json"
# pipeline_capacity.py's target: the pipeline's maximum sustained rate >= 1.25x today's (issue 19).
TARGET = 1.25
STAGES = ("detector", "classifier", "llm")


def _cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _payloads(image: str, questions: list[str]) -> list[Payload]:
    pixels = decode_image(load_image(image)[0])  # as the server decodes the request's body
    return [Payload(request_id=f"r{i}", image=pixels, question=questions[i % len(questions)] if questions else None)
            for i in range(BATCH)]


def _run(variant: Variant, batch: list[Payload], stage: str, infer: Callable | None = None) -> list[Payload]:
    outs = (infer or variant.infer)(batch)
    for p, o in zip(batch, outs, strict=True):
        p.outputs[stage] = o
    return batch


def measure(config: tuple[str, str, str], image: str, rounds: int, questions: list[str]) -> dict:
    spec = find_spec(PIPELINE)
    variants = {s: build_variant(spec.stage(s).variant(v), threads=1) for s, v in zip(STAGES, config, strict=True)}
    for v in variants.values():
        v.load()
    llm = variants["llm"]
    kinds = ("detector", "classifier", "llm_sequential", "llm_batched")
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for r in range(rounds + 1):  # round 0 warms up (first-call allocation, the batched context)
            batch = _payloads(image, questions)
            t = {"detector": _cpu(lambda b=batch: _run(variants["detector"], b, "detector")),
                 "classifier": _cpu(lambda b=batch: _run(variants["classifier"], b,
                                                                      "classifier"))}
            feed = [Payload(request_id=p.request_id, image=p.image, question=p.question, outputs=dict(p.outputs))
                    for p in batch]
            first, second = ("llm_sequential", "llm_batched") if r % 2 else ("llm_batched", "llm_sequential")
            for k in (first, second):
                path = llm.infer_sequential if k == "llm_sequential" else llm.infer_batched
                t[k] = _cpu(lambda path=path, feed=feed: path(feed))
            if r:
                for k in kinds:
                    cpu[k].append(t[k] / BATCH)
    finally:
        for v in variants.values():
            v.unload()
    per = {k: statistics.median(v) for k, v in cpu.items()}
    cores = os.cpu_count() or 1
    old = per["detector"] + per["classifier"] + per["llm_sequential"]
    new = per["detector"] + per["classifier"] + per["llm_batched"]
    rest = per["detector"] + per["classifier"]
    return {
        "variants": list(config), "cpu_s_per_request": per,
        "llm_share_old": per["llm_sequential"] / old,
        "llm_speedup": per["llm_sequential"] / per["llm_batched"],
        "bound_rps_old": cores / old, "bound_rps_new": cores / new, "bound_ratio": old / new,
        # the LLM cost a request that would make the bound TARGET x the old one (< 0: not even a free LLM)
        "llm_cpu_s_for_target": old / TARGET - rest,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after one warm-up (default 5)")
    parser.add_argument("--image", default="chelsea", help="image of every request (default chelsea, as "
                        "pipeline_capacity.py)")
    parser.add_argument("--no-questions", action="store_true", help="photos only (captions), as "
                        "pipeline_capacity.py --no-questions; by default the questions it sends")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"result JSON (default {RESULTS.name})")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    questions = [] if args.no_questions else questions_for(PIPELINE, args.image)
    out = {}
    for name, config in CONFIGS.items():
        r = measure(config, args.image, args.rounds, questions)
        out[name] = r
        per = r["cpu_s_per_request"]
        print(f"{name:<9} " + "  ".join(f"{k} {v * 1e3:6.1f} ms" for k, v in per.items())
              + f"  | LLM share {r['llm_share_old']:.0%}, LLM x{r['llm_speedup']:.2f} -> bound "
              f"{r['bound_rps_old']:.2f} -> {r['bound_rps_new']:.2f} req/s (x{r['bound_ratio']:.2f}); "
              f"x{TARGET} needs the LLM at {r['llm_cpu_s_for_target'] * 1e3:.0f} ms a request", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/pipeline_stage_costs.py " + " ".join(sys.argv[1:]),
        "pipeline": PIPELINE, "batch": BATCH, "image": args.image, "questions": questions, "rounds": args.rounds,
        "target": TARGET,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "configurations": out,
    }, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
