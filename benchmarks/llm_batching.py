"""Batched vs sequential LLM decoding: the same captions? how many per second? (issue 19)

    python benchmarks/llm_batching.py [--pipeline vision-caption] [--synthetic 50] [--rounds 3]
                                      [--threads 1] [--batches 1,4,8] [--nice -10]

For every LLM variant of the pipeline, on one runtime thread:

* inputs: the profiler's inputs (the bundled photos through the default
  upstream variants, ``profiler.inputs``) and, for caption prompts,
  ``--synthetic`` more label sets drawn with a fixed seed from the labels the
  upstream stages can produce (0-2 ImageNet class names then 1-3 COCO names,
  the order ``collect_labels`` gives);
* identity: every input captioned (or its question answered) by the sequential path (``infer_sequential``,
  one ``create_completion`` per request: the path before this change) and by
  the batched path in batches of each size; a caption is identical when its
  text and its token count are;
* speed: items per second of each (path, batch size), the modes interleaved
  round by round on the same inputs; the batched path's split of its time
  into prompt evaluation and generation.

Writes benchmarks/results/llm_batching.json. Run under the shared lock.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from varipipe.pipelines.models import model_files
from varipipe.pipelines.variant import Payload, build_variant
from varipipe.profiler.inputs import payloads_for_stage, stage_inputs
from varipipe.profiler.measure import raise_priority
from varipipe.spec import find_spec

RESULTS = Path(__file__).resolve().parent / "results" / "llm_batching.json"
STAGE = "llm"
SEED = 19  # the number: any fixed seed, so every run draws the same label sets
DIFFERENCES_SHOWN = 5


@dataclass(frozen=True)
class Identity:
    batch: int
    identical: int
    total: int
    questions_identical: int  # of them, answers to questions (the rest are captions)
    questions_total: int
    differences: list[dict]  # the first few: input, sequential and batched caption and tokens


@dataclass(frozen=True)
class Speed:
    decoding: str
    batch: int
    items_per_s: float  # median over rounds
    rounds_items_per_s: list[float]
    prompt_s: float | None  # batched path: median seconds per round evaluating prompts
    generate_s: float | None


@dataclass(frozen=True)
class VariantResult:
    variant: str
    prefix_tokens: int  # the captions' shared prefix evaluated once and reused (0: none)
    qa_prefix_tokens: int  # the same for questions' prompts
    inputs: int
    identity: list[Identity]
    speed: list[Speed]
    batched_b4_over_b1: float | None
    batched_b4_over_sequential_b1: float | None


def synthetic_inputs(count: int) -> list[Payload]:
    """Label sets like the upstream stages produce, as request text (the prompt names them the same way)."""
    coco = [line.strip() for line in model_files("yolov3-tiny").labels.read_text().splitlines() if line.strip()]
    names = json.loads(model_files("efficientnet-lite0").labels.read_text())
    imagenet = list(names.values()) if isinstance(names, dict) else list(names)
    rng = random.Random(SEED)
    out = []
    for i in range(count):
        labels = rng.sample(imagenet, rng.randint(0, 2)) + rng.sample(coco, rng.randint(1, 3))
        out.append(Payload(request_id=f"synthetic-{i}", text=", ".join(labels)))
    return out


def _groups(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def identity(variant, inputs: list[Payload], batches: list[int]) -> list[Identity]:  # type: ignore[no-untyped-def]
    reference = [c for p in inputs for c in variant.infer_sequential([p])]
    out = []
    for b in batches:
        got = [c for g in _groups(inputs, b) for c in variant.infer_batched(g)]
        diffs = [{"input": p.request_id, "sequential": r.text, "sequential_tokens": r.tokens, "batched": c.text,
                  "batched_tokens": c.tokens}
                 for p, r, c in zip(inputs, reference, got, strict=True) if (r.text, r.tokens) != (c.text, c.tokens)]
        questions = sum(p.question is not None for p in inputs)
        q_same = questions - sum(p.question is not None for p, r, c in zip(inputs, reference, got, strict=True)
                                 if (r.text, r.tokens) != (c.text, c.tokens))
        out.append(Identity(b, len(inputs) - len(diffs), len(inputs), q_same, questions, diffs[:DIFFERENCES_SHOWN]))
        print(f"  batched b{b}: {len(inputs) - len(diffs)}/{len(inputs)} outputs identical to sequential "
              f"(answers {q_same}/{questions}, captions {len(inputs) - len(diffs) - q_same}/{len(inputs) - questions})",
              flush=True)
        for d in diffs[:DIFFERENCES_SHOWN]:
            print(f"    {d['input']}: {d['sequential']!r} ({d['sequential_tokens']}) vs "
                  f"{d['batched']!r} ({d['batched_tokens']})")
    return out


def _round(variant, inputs: list[Payload], decoding: str, batch: int) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    infer = variant.infer_sequential if decoding == "sequential" else variant.infer_batched
    prompt = generate = 0.0
    t0 = time.perf_counter()
    for g in _groups(inputs, batch):
        infer(g)
        if decoding == "batched":
            prompt += variant.last_timing.prompt_s
            generate += variant.last_timing.generate_s
    return len(inputs) / (time.perf_counter() - t0), prompt, generate


def speed(variant, inputs: list[Payload], modes: list[tuple[str, int]], rounds: int) -> list[Speed]:  # type: ignore[no-untyped-def]
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {m: [] for m in modes}
    for m in modes:  # warm-up: the batched context is built for the largest batch here
        variant.infer_batched(inputs[:m[1]]) if m[0] == "batched" else variant.infer_sequential(inputs[:1])
    for _ in range(rounds):
        for m in modes:
            runs[m].append(_round(variant, inputs, *m))
    out = []
    for (decoding, b), rs in runs.items():
        batched = decoding == "batched"
        s = Speed(decoding, b, statistics.median(r[0] for r in rs), [r[0] for r in rs],
                  statistics.median(r[1] for r in rs) if batched else None,
                  statistics.median(r[2] for r in rs) if batched else None)
        split = f"  prompt {s.prompt_s:.2f} s, generation {s.generate_s:.2f} s per round" if batched else ""
        print(f"  {decoding:<10} b{b:<3} {s.items_per_s:6.2f} items/s{split}", flush=True)
        out.append(s)
    return out


def _ratio(speeds: list[Speed], a: tuple[str, int], b: tuple[str, int]) -> float | None:
    by = {(s.decoding, s.batch): s.items_per_s for s in speeds}
    return by[a] / by[b] if a in by and b in by else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="vision-caption")
    parser.add_argument("--synthetic", type=int, default=50, help="extra label sets (caption prompts only)")
    parser.add_argument("--inputs", type=int, default=0,
                        help="use the first N of the profiler's inputs (0: all; the flagship's are 65 questions)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; 0: the identity check only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,4,8", help="batched sizes to compare (sequential: 1 and 4)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="autogroup nice of this process, as `varipipe profile --nice` (0: leave it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    nice = raise_priority(args.nice) if args.nice else None
    batches = [int(b) for b in args.batches.split(",")]
    modes = [("sequential", 1), ("sequential", 4)] + [("batched", b) for b in batches]
    spec = find_spec(args.pipeline)
    profiler_inputs = payloads_for_stage(spec, STAGE, stage_inputs(spec, threads=args.threads))
    if args.inputs > 0:
        profiler_inputs = profiler_inputs[:args.inputs]
    results = []
    for vspec in spec.stage(STAGE).variants:
        if vspec.runtime != "llama_cpp":  # the template rung: no model to decode
            continue
        variant = build_variant(vspec, threads=args.threads)
        variant.load()
        inputs = profiler_inputs + (synthetic_inputs(args.synthetic) if variant.instruction is None else [])
        prefix, qa_prefix = variant.prefix_tokens, variant.qa_prefix_tokens
        print(f"\n{vspec.name}: {len(inputs)} inputs ({sum(p.question is not None for p in inputs)} questions), "
              f"shared prefix {prefix} tokens (questions: {qa_prefix})", flush=True)
        ident = identity(variant, inputs, batches)
        speeds = speed(variant, inputs, modes, args.rounds) if args.rounds > 0 else []
        variant.unload()
        results.append(VariantResult(vspec.name, prefix, qa_prefix, len(inputs), ident, speeds,
                                     _ratio(speeds, ("batched", 4), ("batched", 1)),
                                     _ratio(speeds, ("batched", 4), ("sequential", 1))))
    for r in results:
        if r.batched_b4_over_b1 is not None and r.batched_b4_over_sequential_b1 is not None:
            print(f"{r.variant}: batched b4 / batched b1 = x{r.batched_b4_over_b1:.2f}, "
                  f"batched b4 / sequential b1 = x{r.batched_b4_over_sequential_b1:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/llm_batching.py " + " ".join(sys.argv[1:]),
        "pipeline": spec.name, "rounds": args.rounds, "threads": args.threads, "nice": nice, "seed": SEED,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variants": [asdict(r) for r in results],
    }, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
