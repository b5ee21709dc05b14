"""A model's first call against its next ones: what a variant switched in costs its first batch.

    python benchmarks/first_call.py [--pipeline vision-caption-ci] [--calls 5] [--rounds 2]

For each detector and classifier variant of the pipeline, in a process that already runs
models (a replica switching variants): build it, load it, and time ``--calls`` batch-1
calls on the sample photo, in ``--rounds`` rounds (a fresh model object each round; round 1
also pays the process's own first use of each runtime). The first call is where OpenCV DNN
and onnxruntime build what they run on; ``pipelines/stage.py`` now runs it on a served
request before a switched-in model takes traffic, and ``varipipe/admission.py`` lets no
model's first batch set a stage's estimate (``COLD_BATCHES``). The LLM stage is left out:
its inputs are the classifier's outputs, and llama.cpp's first call is its prompt's own.
One thread, as a ``cpu:1`` replica. Writes benchmarks/results/first_call.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("detector", "classifier")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="vision-caption-ci")
    ap.add_argument("--image", default="chelsea")
    ap.add_argument("--calls", type=int, default=5, help="batch-1 calls per model object (the first is timed apart)")
    ap.add_argument("--rounds", type=int, default=2, help="fresh model objects per variant, in turn")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "first_call.json"))
    args = ap.parse_args()

    import cv2
    import numpy as np

    from varipipe.jsonfile import write_json_atomic
    from varipipe.loadgen.experiment import git_commit
    from varipipe.loadgen.replayer import load_image
    from varipipe.pipelines.variant import Payload, build_variant
    from varipipe.spec import find_spec

    spec = find_spec(args.pipeline)
    body, _ = load_image(args.image)
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rows = []
    for rnd in range(1, args.rounds + 1):
        upstream: dict = {}  # the detector's output on the photo, for the classifiers
        for stage in (s for s in spec.stages if s.name in STAGES):
            for vspec in stage.variants:
                variant = build_variant(vspec, threads=1)
                t0 = time.perf_counter()
                variant.load()
                load_s = time.perf_counter() - t0
                calls = []
                for _ in range(args.calls):
                    p = Payload(request_id="first-call", image=image, outputs=dict(upstream))
                    t0 = time.perf_counter()
                    out = variant.infer([p])
                    calls.append(time.perf_counter() - t0)
                if stage.name == "detector" and "detector" not in upstream:
                    upstream["detector"] = out[0]
                rest = statistics.median(calls[1:]) if len(calls) > 1 else float("nan")
                row = {"round": rnd, "stage": stage.name, "variant": vspec.name, "load_s": round(load_s, 4),
                       "first_s": round(calls[0], 4), "next_median_s": round(rest, 4),
                       "first_over_next": round(calls[0] / rest, 2) if rest else None,
                       "calls_s": [round(c, 4) for c in calls]}
                rows.append(row)
                print(f"round {rnd} {stage.name:10s} {vspec.name:22s} load {load_s:.3f} s  first {calls[0]:.3f} s  "
                      f"next (median) {rest:.3f} s  x{row['first_over_next']}", flush=True)
                variant.unload()
    doc = {"benchmark": "first_call", "pipeline": args.pipeline, "image": args.image, "threads": 1,
           "git_commit": git_commit(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python benchmarks/first_call.py " + " ".join(sys.argv[1:]), "rows": rows}
    write_json_atomic(args.out, doc, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
