"""The full flagship pipeline served on this machine: smallest vs largest variants.

For each configuration: p50/p99 end-to-end latency of one client sending one
request at a time (no queueing), and the most requests per second it sustains
with 1, 2, 4 and 8 closed-loop clients (throughput stops growing once the CPUs
are saturated). Real models, real HTTP, the embedded Ray.

``--llm-decoding`` runs each configuration once per LLM decoding, in one run:
``batched`` (a batch decoded together) and ``sequential`` (one sequence at a
time, the path before issue 19): copies of the spec with ``decoding`` set on
its llama.cpp LLM variants, written to a temporary file.

Each request carries a question about the photo (header ``x-question``), in
turn from the QA set's dev items, as the load generator sends them (served
load = profiled load); ``--no-questions`` sends photos only.

    python benchmarks/pipeline_capacity.py [--seconds 30] [--image chelsea] [--llm-decoding sequential,batched]
                                           [--no-questions]
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from varipipe.loadgen.questions import question_headers, questions_for
from varipipe.loadgen.replayer import load_image
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer
from varipipe.records import Decision, StageDecision

RESULTS = Path(__file__).parent / "results" / "pipeline_capacity.json"
# 8 clients: with a batch of 4 per stage, 4 requests in flight rarely fill an LLM batch.
CLIENTS = (1, 2, 4, 8)
PIPELINE = "vision-caption"
DECODINGS = ("sequential", "batched")
# Batch 4 with a 10 ms wait: batches can form under load, a lone request waits little.
BATCH, WAIT_S = 4, 0.01

# The flagship's cheapest and costliest rungs, each with the only llama.cpp LLM it has (the other
# rung, template, has no model to batch). Before the ladders were pruned (issue 17) these were
# yolov3-tiny-320 / mobilenet-v2 / smollm2-135m and yolov3-tiny-608 / efficientnet-lite2 / gemma3-270m.
CONFIGS = {
    "smallest": ("yolov10n-256", "mobilenet-v2-160", "qwen2.5-coder-0.5b"),
    "largest": ("yolov10n-416", "efficientnet-lite0", "qwen2.5-coder-0.5b"),
}


def decision(variants: tuple[str, str, str]) -> Decision:
    stages = ("detector", "classifier", "llm")
    return Decision(stages=tuple(StageDecision(s, v, BATCH, 1, "cpu:1", WAIT_S) for s, v in zip(stages, variants,
                                                                                                  strict=True)))


class Requests:
    """The request body, and each request's headers: its question in turn, as the load generator sends them."""

    def __init__(self, body: bytes, ctype: str, questions: list[str]) -> None:
        self.body, self.ctype, self.questions = body, ctype, questions
        self._sent = 0

    def headers(self) -> dict[str, str]:
        self._sent += 1
        return {"content-type": self.ctype, **question_headers(self.questions, self._sent - 1)}


async def sequential(url: str, req: Requests, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=120) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = await c.post(url, content=req.body, headers=req.headers())
            r.raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


async def closed_loop(url: str, req: Requests, clients: int, seconds: float) -> float:
    done = 0
    async with httpx.AsyncClient(timeout=300) as c:
        end = time.perf_counter() + seconds

        async def worker():
            nonlocal done
            while time.perf_counter() < end:
                r = await c.post(url, content=req.body, headers=req.headers())
                done += r.status_code == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.perf_counter() - t0)


def spec_with_decoding(decoding: str, folder: Path) -> str:
    """The pipeline to serve: a copy of the shipped spec whose llama.cpp LLM variants decode ``decoding``
    (the shipped spec may pin either: the flagship's Qwen rung says ``decoding: sequential``)."""
    from varipipe.spec import find_spec

    raw = yaml.safe_load(Path(find_spec(PIPELINE).source_file).read_text())
    for stage in raw["stages"]:
        for v in stage["variants"]:
            if v["runtime"] == "llama_cpp":
                v["params"] = {**v.get("params", {}), "decoding": decoding}
    path = folder / f"{PIPELINE}-{decoding}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def measure(name: str, variants, req: Requests, seconds: float, n_seq: int, pipeline: str) -> dict:
    opts = AppOptions(pipeline=pipeline, app_name=f"bench-{name}")
    with LocalServer(opts, decision=decision(variants)) as srv:
        asyncio.run(sequential(srv.endpoint, req, 3))  # warm-up
        lat = sorted(asyncio.run(sequential(srv.endpoint, req, n_seq)))
        rates = {c: asyncio.run(closed_loop(srv.endpoint, req, c, seconds)) for c in CLIENTS}
    res = {"variants": list(variants), "p50_s": statistics.median(lat), "p99_s": lat[int(0.99 * (len(lat) - 1))],
           "samples": len(lat), "throughput_by_clients": rates, "max_sustained_rps": max(rates.values())}
    print(f"{name:8s} p50 {res['p50_s'] * 1000:6.0f} ms  p99 {res['p99_s'] * 1000:6.0f} ms  "
          f"max {res['max_sustained_rps']:.2f} req/s  {rates}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="closed-loop seconds per client count")
    ap.add_argument("--requests", type=int, default=30, help="sequential requests for p50/p99")
    ap.add_argument("--image", default="chelsea")
    ap.add_argument("--no-questions", action="store_true",
                    help="send photos only (captions); by default each request carries a question about the photo "
                         "in turn from the QA set's dev items, as the load generator sends them")
    ap.add_argument("--llm-decoding", default="sequential,batched",
                    help=f"comma-separated LLM decodings to serve each configuration with, from {DECODINGS}")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {tuple(CONFIGS)}")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"result JSON (default {RESULTS.name})")
    args = ap.parse_args()
    decodings = [d.strip() for d in args.llm_decoding.split(",") if d.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs):
        ap.error(f"--configs: each must be one of {tuple(CONFIGS)}, got {args.configs!r}")
    if not decodings or any(d not in DECODINGS for d in decodings):
        ap.error(f"--llm-decoding: each must be one of {DECODINGS}, got {args.llm_decoding!r}")
    body, ctype = load_image(args.image)
    questions = [] if args.no_questions else questions_for(PIPELINE, args.image)
    results: dict[str, dict] = {d: {} for d in decodings}
    with tempfile.TemporaryDirectory() as folder:
        pipelines = {d: spec_with_decoding(d, Path(folder)) for d in decodings}
        for name in configs:  # decodings interleaved per configuration
            v = CONFIGS[name]
            for d in decodings:
                print(f"llm decoding: {d}", flush=True)
                req = Requests(body, ctype, questions)  # each run sends the same questions in the same order
                results[d][name] = measure(f"{name}-{d}", v, req, args.seconds, args.requests, pipelines[d])
    ratios = {}
    if "sequential" in results and "batched" in results:
        ratios = {name: results["batched"][name]["max_sustained_rps"] / results["sequential"][name]["max_sustained_rps"]
                  for name in configs}
        for name, r in ratios.items():
            print(f"{name}: batched / sequential max sustained = x{r:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/pipeline_capacity.py " + " ".join(sys.argv[1:]),
                                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "image": args.image, "batch": BATCH, "batch_wait_s": WAIT_S,
                                   "clients": list(CLIENTS), "questions": questions, "llm_decoding": results,
                                   "batched_over_sequential_max_sustained": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
