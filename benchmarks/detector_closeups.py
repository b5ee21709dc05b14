"""What every detector variant of a pipeline finds on the bundled close-ups, and its batch-1 latency.

    python benchmarks/detector_closeups.py [--pipeline vision-caption] [--repeats 5]

For each detector variant of the spec: the detections (score >= 0.25, NMS 0.45, the
variants' fixed thresholds) on scikit-image's astronaut, coffee and chelsea, and the
median seconds of ``infer`` on one image (1 thread, after one untimed warm-up call),
over ``repeats`` rounds of the three photos. Not the profiler: a quick, rough look on
a shared host (run it under the heavy-work lock); the profiler's figures are the ones
the adapter uses. Accuracy is not judged here: the labelled evaluation set does that.

Prints a table and writes JSON to benchmarks/results/detector_closeups.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

PHOTOS = ("astronaut", "coffee", "chelsea")
OUT = Path(__file__).resolve().parent / "results" / "detector_closeups.json"


def measure(spec, images: dict, repeats: int) -> dict:
    from varipipe.pipelines.variant import Payload, build_variant

    variant = build_variant(spec, threads=1)
    variant.load()
    try:
        found = {n: variant.infer([Payload(request_id=n, image=img)])[0] for n, img in images.items()}
        seconds = []
        for _ in range(repeats):
            for img in images.values():
                start = time.perf_counter()
                variant.infer([Payload(image=img)])
                seconds.append(time.perf_counter() - start)
    finally:
        variant.unload()
    return {"variant": spec.name, "batch1_median_s": round(statistics.median(seconds), 4), "samples": len(seconds),
            "found": {n: [{"label": d.label, "score": round(d.score, 3), "box": [round(v) for v in d.box]}
                          for d in out.items] for n, out in found.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="vision-caption", help="bundled pipeline name or spec YAML")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the three photos (default 5)")
    parser.add_argument("--out", type=Path, default=OUT, help="JSON file to write")
    args = parser.parse_args(argv)

    from skimage import data

    from varipipe.spec import find_spec

    images = {n: getattr(data, n)() for n in PHOTOS}
    stage = find_spec(args.pipeline).stage("detector")
    rows = []
    for spec in stage.variants:
        row = measure(spec, images, args.repeats)
        rows.append(row)
        found = " | ".join(f"{n}: " + (", ".join(f"{d['label']} {d['score']:.2f}" for d in row["found"][n]) or "-")
                           for n in PHOTOS)
        print(f"{row['variant']:<20} {row['batch1_median_s'] * 1000:6.0f} ms  {found}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python " + shlex.join(sys.argv), "pipeline": args.pipeline,
                                    "default_variant": stage.default_variant, "variants": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
