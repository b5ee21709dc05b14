"""Overload at 2x capacity: goodput with and without admission control at the ingress.

    python benchmarks/overload.py [--pipeline overload-chain] [--service-ms 50] [--duration 20]
    python benchmarks/overload.py --pipeline vision-caption-ci --duration 30

``overload-chain`` is two identity stages that sleep ``--service-ms`` per item
(batch 4, one replica each: the stages allow 1000/service-ms requests/s; sleeping
leaves the 2 cores to Ray, the client and the other engineers). ``vision-caption-ci``
is the real detector -> classifier -> LLM pipeline on its default decision, fed a
photo (``--image``).

One Ray, one process, two applications one after the other, the same load:

1. **before** (``admission=False``, no default deadline: the behaviour before
   issue 16). Its capacity is measured first: closed loops of each ``--clients``
   count, ``--capacity-s`` seconds each; the capacity is the most requests/s
   answered 200 by any of them. Then an open loop at ``--overload`` x capacity,
   twice: without a deadline, and with ``x-deadline-ms`` = the SLA (stages drop
   late requests, after they queued).
2. **after** (``admission=True``, default deadline = the SLA): the same open loop
   with ``x-deadline-ms`` = the SLA, and without the header (the server's default
   deadline applies).

Per run: requests sent; answered 200 within the SLA (goodput); 200s later than the
SLA (= the deadline where there is one); rejected at once by the ingress (503, or 504
before any work); dropped by stages or answered 504 for finishing late; other
failures; the client-side latency of rejections (p50/p99/max) and of 200s; and for
200s the time outside the ingress's view (client latency minus the ingress's
``latency_s``). Writes benchmarks/results/overload[-<pipeline>].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYNTHETIC = "overload-chain"
SLA_S = 0.5  # the overload-chain spec's SLA (vision-caption-ci's comes from its spec)
OVERLOAD = 2.0  # issue 8 / issue 16: overload of 2x capacity
# Closed-loop client counts for the capacity: from too few to keep the stages busy to
# more than the stages hold (max_ongoing 8 each), where Serve's router queues.
CLIENTS = {SYNTHETIC: (4, 8, 16, 32), "vision-caption-ci": (1, 2, 4, 8)}
REQUEST_TIMEOUT_S = 300.0  # no client-side give-up: the queue is what is measured
WARMUP_REQUESTS = 8  # each app: models loaded, the ingress has seen the stages' service times
SETTLE_S = 2.0  # between runs: the last answers' records reach the controller

SPEC = """\
name: overload-chain
description: two identity stages with a fixed per-item service time (overload benchmark)
input: image
sla: {{latency_s: {sla}}}
stages:
  - name: first
    num_cpus: 0.25
    variants:
      - name: work
        runtime: identity
        factory: varipipe.pipelines.variants.identity:make
        accuracy: {{value: 0.5, kind: declared, source: "identity stage, nominal"}}
        params: {{per_item_s: {s}}}
  - name: second
    num_cpus: 0.25
    variants:
      - name: work
        runtime: identity
        factory: varipipe.pipelines.variants.identity:make
        accuracy: {{value: 0.5, kind: declared, source: "identity stage, nominal"}}
        params: {{per_item_s: {s}}}
"""


@dataclass(frozen=True)
class Reply:
    sent_s: float
    status: int  # 0: no HTTP answer
    latency_s: float  # at the client
    kind: str  # "ok", "rejected" (by the ingress, before any work), "dropped" (504 after work began), "other"
    server_latency_s: float | None = None  # a 200's or a rejection's latency_s as the ingress measured it


def png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(buf, "PNG")
    return buf.getvalue()


def classify(status: int, raw: bytes) -> tuple[str, float | None]:
    if status == 0:
        return "other", None
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if status == 200:
        return "ok", body.get("latency_s")
    if body.get("rejected_at"):
        return "rejected", body.get("latency_s")
    if status == 504 and body.get("dropped_at"):
        return "dropped", None
    return "other", None


async def open_loop(url: str, body: bytes, ctype: str, rate_rps: float, duration_s: float,
                    headers: dict[str, str] | None = None) -> list[Reply]:
    """POST at a fixed rate for ``duration_s`` whatever the replies; wait for every answer."""
    import aiohttp

    hdrs = {"content-type": ctype, **(headers or {})}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000), timeout=timeout) as session:
        t0 = time.perf_counter()

        async def one() -> Reply:
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=hdrs) as r:
                    raw = await r.read()
                    latency = time.perf_counter() - start
                    return Reply(start - t0, r.status, latency, *classify(r.status, raw))
            except (TimeoutError, aiohttp.ClientError):
                return Reply(start - t0, 0, time.perf_counter() - start, "other")

        tasks = []
        for i in range(int(rate_rps * duration_s)):
            delay = t0 + i / rate_rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        return list(await asyncio.gather(*tasks))


async def closed_loop(url: str, body: bytes, ctype: str, clients: int, duration_s: float) -> float:
    """Requests per second answered 200 by ``clients`` back-to-back senders."""
    import aiohttp

    done = 0
    end = time.perf_counter() + duration_s
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker():
            nonlocal done
            while time.perf_counter() < end:
                async with session.post(url, data=body, headers={"content-type": ctype}) as r:
                    await r.read()
                    done += r.status == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.perf_counter() - t0)


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    a = np.array(values)
    return {"p50_s": round(float(np.percentile(a, 50)), 4), "p99_s": round(float(np.percentile(a, 99)), 4),
            "max_s": round(float(a.max()), 4)}


def summarise(replies: list[Reply], sla_s: float, duration_s: float) -> dict:
    n = len(replies)
    ok = [r for r in replies if r.kind == "ok"]
    good = [r for r in ok if r.latency_s <= sla_s]
    rejected = [r for r in replies if r.kind == "rejected"]
    statuses: dict[str, int] = {}
    for r in replies:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    outside = [r.latency_s - r.server_latency_s for r in ok if r.server_latency_s is not None]
    return {
        "sent": n, "statuses": statuses,
        "ok": len(ok), "ok_within_sla": len(good), "ok_late": len(ok) - len(good),
        "goodput_fraction": round(len(good) / n, 4) if n else 0.0,
        "goodput_rps": round(len(good) / duration_s, 2),
        "rejected": len(rejected), "rejected_503": sum(r.status == 503 for r in rejected),
        "dropped": sum(r.kind == "dropped" for r in replies), "other": sum(r.kind == "other" for r in replies),
        "ok_latency": _pcts([r.latency_s for r in ok]),
        "rejection_latency": _pcts([r.latency_s for r in rejected]),
        "rejections_over_50ms": sum(r.latency_s > REJECTION_TARGET_S for r in rejected),
        "outside_ingress": _pcts(outside),
        # Where a rejection's time went: the ingress's own part of the slowest ones, beside the client's.
        "rejection_in_ingress": _pcts([r.server_latency_s for r in rejected if r.server_latency_s is not None]),
        "slowest_rejections_client_vs_ingress_ms": [
            [round(r.latency_s * 1000, 1), None if r.server_latency_s is None else round(r.server_latency_s * 1000, 1)]
            for r in sorted(rejected, key=lambda r: r.latency_s)[-3:]],
    }


REJECTION_TARGET_S = 0.050  # issue 16: every rejection answered in under 50 ms


def _spec_and_body(args, tmp: str) -> tuple[str, float, bytes, str]:
    if args.pipeline == SYNTHETIC:
        spec = Path(tmp) / "overload-chain.yaml"
        spec.write_text(SPEC.format(sla=SLA_S, s=args.service_ms / 1000))
        return str(spec), SLA_S, png(), "image/png"
    from varipipe.loadgen.replayer import load_image
    from varipipe.spec import find_spec

    body, ctype = load_image(args.image)
    return args.pipeline, find_spec(args.pipeline).sla.latency_s, body, ctype


def _decision(args):
    if args.pipeline != SYNTHETIC:
        return None  # the pipeline's default decision
    from varipipe.records import Decision, StageDecision

    return Decision(stages=(StageDecision("first", "work", 4, 1, "cpu:1", 0.005),
                            StageDecision("second", "work", 4, 1, "cpu:1", 0.005)), policy="benchmark")


def _run(srv, name: str, body: bytes, ctype: str, rate: float, args, sla_s: float, headers: dict) -> dict:
    t0 = time.perf_counter()
    replies = asyncio.run(open_loop(srv.endpoint, body, ctype, rate, args.duration, headers))
    # The host is shared: its 1-minute load average at the end of the run says how busy it was.
    out = {**summarise(replies, sla_s, args.duration), "wall_s": round(time.perf_counter() - t0, 1),
           "load_average_1m": round(os.getloadavg()[0], 2)}
    print(name, json.dumps(out), flush=True)
    time.sleep(SETTLE_S)
    return out


def _warm(srv, body: bytes, ctype: str) -> None:
    import httpx

    # A deadline long enough for a cold start: with the server's default (the SLA) the first
    # requests to a real pipeline, still loading and warming its models, would be shed.
    headers = {"content-type": ctype, "x-deadline-ms": str(REQUEST_TIMEOUT_S * 1000)}
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as c:
        for _ in range(WARMUP_REQUESTS):
            c.post(srv.endpoint, content=body, headers=headers).raise_for_status()


def capacity_rps(pipeline: str, body: bytes, ctype: str, seconds: float, port: int = 0,
                 app_name: str = "capacity") -> float:
    """A pipeline's capacity as ``main`` measures it, for the scripts that reuse it: its default
    decision, admission off and no default deadline (with them, rejected clients of a closed
    loop come straight back and the 200s undercount), warmed, then a closed loop of the largest
    client count of ``CLIENTS`` for ``seconds``. ``port`` 0: a Ray of its own."""
    from varipipe.pipelines.serve_config import AppOptions
    from varipipe.pipelines.server import LocalServer

    clients = max(CLIENTS.get(pipeline, (1, 2, 4, 8)))
    with LocalServer(AppOptions(pipeline=pipeline, app_name=app_name, admission=False), port=port) as srv:
        _warm(srv, body, ctype)
        return asyncio.run(closed_loop(srv.endpoint, body, ctype, clients, seconds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default=SYNTHETIC,
                    help=f"{SYNTHETIC} (identity stages) or a pipeline name, e.g. vision-caption-ci "
                         "(default: %(default)s)")
    ap.add_argument("--service-ms", type=float, default=50.0, help=f"{SYNTHETIC}: per-item service time of each stage")
    ap.add_argument("--image", default="chelsea", help="a real pipeline's request image (sample name or file)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of open-loop load per run")
    ap.add_argument("--capacity-s", type=float, default=8.0, help="closed-loop seconds per client count")
    ap.add_argument("--clients", default="", help="closed-loop client counts, comma separated "
                                                   "(default: per pipeline)")
    ap.add_argument("--overload", type=float, default=OVERLOAD, help="offered load / capacity")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    clients = tuple(int(c) for c in args.clients.split(",")) if args.clients else CLIENTS.get(args.pipeline, (1, 2, 4, 8))

    from varipipe.pipelines.serve_config import AppOptions
    from varipipe.pipelines.server import LocalServer, serve_session

    runs: dict[str, dict] = {}
    with serve_session() as port:
        with tempfile.TemporaryDirectory(prefix="vp-overload-") as tmp:
            spec, sla_s, body, ctype = _spec_and_body(args, tmp)
            deadline = {"x-deadline-ms": str(sla_s * 1000)}
            before = AppOptions(pipeline=spec, app_name="overload-before", admission=False)
            with LocalServer(before, port=port, decision=_decision(args)) as srv:
                _warm(srv, body, ctype)
                by_clients = {c: round(asyncio.run(closed_loop(srv.endpoint, body, ctype, c, args.capacity_s)), 2)
                              for c in clients}
                capacity = max(by_clients.values())
                rate = args.overload * capacity
                print(f"capacity {capacity:.2f} req/s (closed loop, by clients {by_clients}); "
                      f"open loop {rate:.2f} req/s for {args.duration:.0f} s", flush=True)
                time.sleep(SETTLE_S)
                runs["before_no_deadline"] = _run(srv, "before_no_deadline", body, ctype, rate, args, sla_s, {})
                runs["before_deadline_sla"] = _run(srv, "before_deadline_sla", body, ctype, rate, args, sla_s,
                                                   deadline)
            after = AppOptions(pipeline=spec, app_name="overload-after", admission=True, deadline_sla_factor=1.0)
            with LocalServer(after, port=port, decision=_decision(args)) as srv:
                _warm(srv, body, ctype)
                runs["after_deadline_sla"] = _run(srv, "after_deadline_sla", body, ctype, rate, args, sla_s, deadline)
                runs["after_default_deadline"] = _run(srv, "after_default_deadline", body, ctype, rate, args, sla_s,
                                                      {})
    result = {
        "benchmark": "overload", "pipeline": args.pipeline,
        "command": "python benchmarks/overload.py " + " ".join(
            f"--{k} {v}" for k, v in (("pipeline", args.pipeline), ("duration", args.duration),
                                      ("capacity-s", args.capacity_s), ("overload", args.overload))
        ) + (f" --service-ms {args.service_ms}" if args.pipeline == SYNTHETIC else f" --image {args.image}"),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "sla_s": sla_s, "capacity_rps": capacity, "capacity_by_clients": by_clients,
        "offered_rps": round(rate, 2), "duration_s": args.duration, "runs": runs,
    }
    if args.pipeline == SYNTHETIC:
        result |= {"service_ms_per_item": args.service_ms, "stage_limit_rps": round(1000 / args.service_ms, 2)}
    out = Path(args.out or RESULTS_DIR / ("overload.json" if args.pipeline == SYNTHETIC
                                          else f"overload-{args.pipeline}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
