"""More fuzz cases against the HTTP API than CI runs: how many, and how many unexpected 5xx.

    python benchmarks/fuzz.py [--examples 400] [--shape-examples 100]

Runs tests/integration/test_fuzz_http.py (hypothesis, on a local Ray Serve): a
real app of identity stages with ``--examples`` cases per fuzz test (5 tests),
against CI's 60, and the image-shape fuzz on the real vision-caption-ci and
doc-ocr-ci pipelines with ``--shape-examples`` cases each, against CI's 20. The
test fails on any 5xx other than the deliberate 503/504, on a shape the ingress
accepts that is not answered 200 (or one it refuses that is not a 422), on a
crashed or restarted replica (actor ids compared), or on identity replica memory
growing by 150 MB or more. Baseline in the same run: CI's case counts, run first.
Writes benchmarks/results/fuzz.json with the status counts per app, the replicas
before/after and their RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.json"
TEST = "tests/integration/test_fuzz_http.py"
CI_EXAMPLES = 60  # the test's default per identity-chain fuzz test
CI_SHAPE_EXAMPLES = 20  # the test's default per real pipeline
REAL_PIPELINES = ("vision-caption-ci", "doc-ocr-ci")


def _unexpected_5xx(stats: dict) -> int:
    return sum(n for k, n in stats.items() if k.startswith("status_5") and k not in ("status_503", "status_504"))


def run(examples: int, shape_examples: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="vp-fuzz-") as tmp:
        report = Path(tmp) / "report.json"
        env = {**os.environ, "VARIPIPE_FUZZ_EXAMPLES": str(examples),
               "VARIPIPE_FUZZ_SHAPE_EXAMPLES": str(shape_examples), "VARIPIPE_FUZZ_REPORT": str(report)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        data = json.loads(report.read_text()) if report.exists() else {}
    shapes = {p: data.get(f"shapes_{p}", {}) for p in REAL_PIPELINES}
    stats = [data.get("stats", {})] + [s.get("stats", {}) for s in shapes.values()]
    return {"examples_per_test": examples, "shape_examples_per_pipeline": shape_examples,
            "passed": proc.returncode == 0, "cases": sum(s.get("cases", 0) for s in stats),
            "unexpected_5xx": sum(_unexpected_5xx(s) for s in stats), "wall_s": round(wall, 1), **data,
            "pytest_tail": [ln for ln in proc.stdout.splitlines() if ln.startswith(("E   ", "FAILED"))][:20]
            + proc.stdout.strip().splitlines()[-1:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=400, help="cases per identity-chain fuzz test (5 tests)")
    ap.add_argument("--shape-examples", type=int, default=100,
                    help="image-shape cases per real pipeline (vision-caption-ci, doc-ocr-ci)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    runs = {}
    for name, n, m in (("ci_baseline", CI_EXAMPLES, CI_SHAPE_EXAMPLES),
                       ("benchmark", args.examples, args.shape_examples)):
        runs[name] = run(n, m)
        print(name, json.dumps({k: v for k, v in runs[name].items() if k != "rss_growth_mb"}))
    result = {"benchmark": "fuzz",
              "command": f"python benchmarks/fuzz.py --examples {args.examples} --shape-examples {args.shape_examples}",
              "host": {"machine": platform.machine(), "python": platform.python_version()}, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["passed"] for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
