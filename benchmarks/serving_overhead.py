"""Framework overhead: varipipe's chain vs the same chain hand-written in plain Ray Serve.

Both chains have two identity stages behind an HTTP ingress that decodes the
image (same ``decode_image``) and walks the stages through deployment handles.
varipipe runs ``identity-chain`` with batch 1 and no batch wait (the fair
setting: the baseline does not batch). Both run in the same Ray, one after the
other, twice each in alternation, on the same machine; ratios are reported.

    python benchmarks/serving_overhead.py [--seconds 15] [--clients 8] [--out FILE]

Targets (issue 4): p50 within 1.15x, throughput at least 0.9x of the baseline.
"""


import argparse
import asyncio
import io
import json
import statistics
import time
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from varipipe.pipelines.images import decode_image
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer, serve_session
from varipipe.records import Decision, StageDecision

RESULTS = Path(__file__).parent / "results" / "serving_overhead.json"

baseline_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Echo:
    def __call__(self, item: dict) -> dict:  # sync: Serve runs it off the event loop, as ours does
        time.sleep(0.001)  # identity-chain's "fast" variant: service_s 0.001
        return item


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(baseline_api)
class BaselineIngress:
    def __init__(self, first, second) -> None:
        self.first, self.second = first, second

    @baseline_api.post("/identity-chain")
    async def infer(self, request: Request):
        image = decode_image(await request.body())
        item = {"shape": image.shape, "image": image}
        item = await self.first.remote(item)
        item = await self.second.remote(item)
        return JSONResponse({"stages": ["first", "second"], "shape": list(item["shape"])})


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


async def measure(url: str, body: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(20):  # warm-up
            await client.post(url, content=body)
        end = time.perf_counter() + seconds

        async def worker():
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = await client.post(url, content=body)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "throughput_rps": len(latencies) / elapsed,
            "p50_s": statistics.median(latencies), "p99_s": latencies[int(0.99 * (len(latencies) - 1))]}


def run_varipipe(port: int, body: bytes, clients: int, seconds: float) -> dict:
    d = Decision(stages=(StageDecision("first", "fast", 1, 1, "cpu:1", 0.0),
                         StageDecision("second", "fast", 1, 1, "cpu:1", 0.0)))
    with LocalServer(AppOptions(pipeline="identity-chain", app_name="bench-varipipe"), port=port, decision=d) as srv:
        return asyncio.run(measure(srv.endpoint, body, clients, seconds))


def run_baseline(port: int, body: bytes, clients: int, seconds: float) -> dict:
    app = BaselineIngress.bind(Echo.options(name="first").bind(), Echo.options(name="second").bind())
    serve.run(app, name="bench-baseline", route_prefix="/")
    try:
        return asyncio.run(measure(f"http://127.0.0.1:{port}/identity-chain", body, clients, seconds))
    finally:
        serve.delete("bench-baseline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes (default: %(default)s)")
    args = ap.parse_args()
    body = png()
    runs: dict[str, list[dict]] = {"baseline": [], "varipipe": []}
    with serve_session() as port:
        for _ in range(args.rounds):
            for name, fn in (("baseline", run_baseline), ("varipipe", run_varipipe)):
                res = fn(port, body, args.clients, args.seconds)
                runs[name].append(res)
                print(f"{name:9s} {res['throughput_rps']:7.1f} req/s  p50 {res['p50_s'] * 1000:6.1f} ms  "
                      f"p99 {res['p99_s'] * 1000:6.1f} ms  errors {res['errors']}")
    best = {k: {"p50_s": statistics.median(r["p50_s"] for r in v),
                "throughput_rps": statistics.median(r["throughput_rps"] for r in v)} for k, v in runs.items()}
    summary = {
        "p50_ratio": best["varipipe"]["p50_s"] / best["baseline"]["p50_s"],
        "throughput_ratio": best["varipipe"]["throughput_rps"] / best["baseline"]["throughput_rps"],
        "targets": {"p50_ratio_max": 1.15, "throughput_ratio_min": 0.9},
        "clients": args.clients, "seconds": args.seconds, "rounds": args.rounds, "runs": runs,
    }
    print(f"p50 ratio {summary['p50_ratio']:.2f} (target <= 1.15), "
          f"throughput ratio {summary['throughput_ratio']:.2f} (target >= 0.9)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
