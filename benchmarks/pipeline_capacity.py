"""The full flagship pipeline served on this machine: smallest vs largest variants.

For each configuration: p50/p99 end-to-end latency of one client sending one
request at a time (no queueing), and the most requests per second it sustains
with 1, 2 and 4 closed-loop clients (throughput stops growing once the CPUs
are saturated). Real models, real HTTP, the embedded Ray.

    python benchmarks/pipeline_capacity.py [--seconds 30] [--image chelsea]
"""

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from varipipe.loadgen.replayer import load_image
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer
from varipipe.records import Decision, StageDecision

RESULTS = Path(__file__).parent / "results" / "pipeline_capacity.json"
CLIENTS = (1, 2, 4)
# Batch 4 with a 10 ms wait: batches can form under load, a lone request waits little.
BATCH, WAIT_S = 4, 0.01

CONFIGS = {
    "smallest": ("yolov3-tiny-320", "mobilenet-v2", "smollm2-135m"),
    "largest": ("yolov3-tiny-608", "efficientnet-lite2", "gemma3-270m"),
}


def decision(variants: tuple[str, str, str]) -> Decision:
    stages = ("detector", "classifier", "llm")
    return Decision(stages=tuple(StageDecision(s, v, BATCH, 1, "cpu:1", WAIT_S) for s, v in zip(stages, variants,
                                                                                                  strict=True)))


async def sequential(url: str, body: bytes, ctype: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=120) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = await c.post(url, content=body, headers={"content-type": ctype})
            r.raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


async def closed_loop(url: str, body: bytes, ctype: str, clients: int, seconds: float) -> float:
    done = 0
    async with httpx.AsyncClient(timeout=300) as c:
        end = time.perf_counter() + seconds

        async def worker():
            nonlocal done
            while time.perf_counter() < end:
                r = await c.post(url, content=body, headers={"content-type": ctype})
                done += r.status_code == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.perf_counter() - t0)


def measure(name: str, variants, body: bytes, ctype: str, seconds: float, n_seq: int) -> dict:
    opts = AppOptions(pipeline="vision-caption", app_name=f"bench-{name}")
    with LocalServer(opts, decision=decision(variants)) as srv:
        asyncio.run(sequential(srv.endpoint, body, ctype, 3))  # warm-up
        lat = sorted(asyncio.run(sequential(srv.endpoint, body, ctype, n_seq)))
        rates = {c: asyncio.run(closed_loop(srv.endpoint, body, ctype, c, seconds)) for c in CLIENTS}
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
    args = ap.parse_args()
    body, ctype = load_image(args.image)
    results = {name: measure(name, v, body, ctype, args.seconds, args.requests) for name, v in CONFIGS.items()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"image": args.image, "batch": BATCH, "batch_wait_s": WAIT_S, **results},
                                  indent=1) + "\n")


if __name__ == "__main__":
    main()
