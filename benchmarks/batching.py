"""What batching buys each variant: latency at batch 1 and batch 8, per-item speed-up.

    python benchmarks/batching.py [--pipeline vision-caption] [--repeats 5] [--threads 1] [--stages llm]

For every variant of the pipeline, on real weights and the bundled photos
(each stage fed the outputs of the default upstream variants, as in serving):

* baseline: batch 1 -- each of 8 requests in its own ``infer`` call;
* batch 8 -- the same 8 requests in one ``infer`` call;
* per-item speed-up = batch-1 latency / (batch-8 latency / 8); > 1 means
  batching helps per item.

Medians over ``--repeats`` rounds after a warm-up round. Writes
benchmarks/results/batching.json (``--stages``: only those stages' variants,
to batching_<stages>.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from varipipe.pipelines.variant import Payload, Variant, build_variant
from varipipe.records import PipelineSpec, VariantSpec
from varipipe.spec import find_spec

RESULTS = Path(__file__).resolve().parent / "results" / "batching.json"
BATCH = 8  # the batch size compared against batch 1 (issue 3)
# Bundled scikit-image photos, each used twice (as is and mirrored) to make 8 requests.
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@dataclass(frozen=True)
class BatchingResult:
    stage: str
    variant: str
    native_batching: bool
    batch1_latency_s: float  # median time of one infer call on one request
    batch8_latency_s: float  # median time of one infer call on 8 requests
    batch8_per_item_s: float
    per_item_speedup: float  # batch1_latency_s / batch8_per_item_s


def _photos() -> list[Payload]:
    import numpy as np
    import skimage.data

    payloads = []
    for name in PHOTOS:
        img = np.ascontiguousarray(np.asarray(getattr(skimage.data, name)())[..., :3])
        payloads.append(Payload(request_id=name, image=img))
        payloads.append(Payload(request_id=f"{name}-mirrored", image=np.ascontiguousarray(img[:, ::-1])))
    return payloads


def _feed(spec: PipelineSpec, payloads: list[Payload], upto: str, threads: int) -> None:
    """Fill ``outputs`` of every stage before ``upto`` with the default variants' results."""
    for stage in spec.stages:
        if stage.name == upto or stage.name in payloads[0].outputs:
            return
        variant = build_variant(stage.variant(stage.default_variant), threads=threads)
        variant.load()
        for p in payloads:
            (p.outputs[stage.name],) = variant.infer([p])
        variant.unload()


def _inputs(spec: PipelineSpec, vspec: VariantSpec, all_outputs: list[Payload]) -> list[Payload]:
    names = spec.stage_names
    upstream = set(names[: names.index(vspec.stage)])
    return [dataclasses.replace(p, outputs={k: v for k, v in p.outputs.items() if k in upstream})
            for p in all_outputs]


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(variant: Variant, payloads: list[Payload], repeats: int) -> tuple[float, float]:
    """(median batch-1 latency, median batch-8 latency) in seconds, after one warm-up round."""
    variant.infer(payloads[:1])
    variant.infer(payloads)
    singles, batches = [], []
    for _ in range(repeats):
        singles.extend(_time(lambda p=p: variant.infer([p])) for p in payloads)
        batches.append(_time(lambda: variant.infer(payloads)))
    return statistics.median(singles), statistics.median(batches)


def run(spec: PipelineSpec, repeats: int, threads: int, stages: set[str] | None = None) -> list[BatchingResult]:
    payloads = _photos()
    results = []
    for stage in spec.stages:
        if stages is not None and stage.name not in stages:
            continue
        _feed(spec, payloads, stage.name, threads)
        for vspec in stage.variants:
            variant = build_variant(vspec, threads=threads)
            variant.load()
            b1, b8 = measure(variant, _inputs(spec, vspec, payloads), repeats)
            variant.unload()
            r = BatchingResult(stage.name, vspec.name, vspec.native_batching, b1, b8, b8 / BATCH, b1 / (b8 / BATCH))
            print(f"{r.stage:<11} {r.variant:<20} b1 {b1 * 1e3:8.1f} ms   b8 {b8 * 1e3:8.1f} ms"
                  f"   per item {r.batch8_per_item_s * 1e3:7.1f} ms   speed-up x{r.per_item_speedup:.2f}", flush=True)
            results.append(r)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="vision-caption")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stages", default="", help="comma-separated stages to measure (default: all)")
    args = parser.parse_args()
    spec = find_spec(args.pipeline)
    stages = {s.strip() for s in args.stages.split(",") if s.strip()} or None
    results = run(spec, args.repeats, args.threads, stages)
    out = RESULTS if stages is None else RESULTS.with_name(f"batching_{'_'.join(sorted(stages))}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/batching.py " + " ".join(sys.argv[1:]),
        "pipeline": spec.name, "batch": BATCH, "repeats": args.repeats, "threads": args.threads,
        "baseline": "batch 1: each request in its own infer call",
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": [dataclasses.asdict(r) for r in results],
    }, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
