"""Requests lost during 50 live reconfigurations under load (target: 0), on identity-chain.

    python benchmarks/reconfig_soak.py [--changes 50] [--rate 0.5]

Starts identity-chain on a local Ray Serve, measures its capacity closed-loop,
then sends an open-loop load of ``--rate`` x capacity while applying ``--changes``
decisions one after another through the same declarative path the adapter uses
(``ServeApplier.apply``, waiting until each is in force): batch size and wait,
variant switches (fast <-> slow, whose load takes 0.5 s), replica counts 1 <-> 2.
Baseline in the same run: the same load for 15 s with no change. Reports every
non-200 reply and every request with no reply. Writes
benchmarks/results/reconfig_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

from overload import REQUEST_TIMEOUT_S, Reply, closed_loop, open_loop, png, summarise

RESULTS = Path(__file__).resolve().parent / "results" / "reconfig_soak.json"
SLA_S = 0.5  # identity-chain's SLA
BASELINE_S = 15.0
# Load keeps going this long after the last change, so requests sent during it finish too.
TAIL_S = 3.0
# The cycle of decisions applied in turn: (first variant, batch, replicas, second batch, wait s).
CYCLE = (("fast", 8, 1, 4, 0.01), ("slow", 8, 1, 4, 0.01), ("slow", 8, 2, 4, 0.01), ("fast", 2, 2, 8, 0.002),
         ("fast", 4, 1, 4, 0.005))


def decisions(n: int):
    from varipipe.records import Decision, StageDecision

    for i in range(n):
        first, b1, r1, b2, wait = CYCLE[i % len(CYCLE)]
        yield Decision(stages=(StageDecision("first", first, b1, r1, "cpu:1", wait),
                               StageDecision("second", "fast", b2, 1, "cpu:1", wait)), policy="soak")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--rate", type=float, default=0.5, help="load as a fraction of the measured capacity")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    from varipipe.pipelines.serve_config import AppOptions
    from varipipe.pipelines.server import LocalServer

    body = png()
    plan = list(decisions(args.changes))
    with LocalServer(AppOptions(pipeline="identity-chain", app_name="soak"), decision=plan[-1]) as srv:
        asyncio.run(closed_loop(srv.endpoint, body, 8, 3))  # warm-up
        capacity = asyncio.run(closed_loop(srv.endpoint, body, 16, 8))
        rate = max(2.0, args.rate * capacity)
        print(f"capacity {capacity:.1f} req/s; load {rate:.1f} req/s")
        baseline = summarise(asyncio.run(open_loop(srv.endpoint, body, rate, BASELINE_S)), SLA_S)
        print("baseline (no change)", json.dumps(baseline))
        applies: list[dict] = []
        replies: list[Reply] = []

        async def soak() -> float:
            stop = asyncio.Event()
            load = asyncio.create_task(until_stopped(srv.endpoint, body, rate, stop, replies))
            started = time.perf_counter()
            for i, d in enumerate(plan):
                res = await asyncio.to_thread(srv.apply, d)
                applies.append({"i": i, "changed": list(res.changed_stages), "seconds": round(res.seconds, 3)})
            changes_s = time.perf_counter() - started
            await asyncio.sleep(TAIL_S)
            stop.set()
            await load  # every request sent gets its reply (or its transport error) recorded
            return changes_s

        changes_s = asyncio.run(soak())
    during = summarise(replies, SLA_S)
    print("during changes", json.dumps(during))
    result = {
        "benchmark": "reconfig_soak", "command": f"python benchmarks/reconfig_soak.py --changes {args.changes} "
                                                 f"--rate {args.rate}",
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "capacity_rps": round(capacity, 2), "load_rps": round(rate, 2), "changes": len(applies),
        "changes_wall_s": round(changes_s, 1),
        "apply_seconds": {"min": min(a["seconds"] for a in applies), "max": max(a["seconds"] for a in applies),
                          "mean": round(sum(a["seconds"] for a in applies) / len(applies), 3)},
        "requests_lost": during["sent"] - during["served"],
        "baseline_no_change": baseline, "during_changes": during, "applies": applies,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"requests lost during {len(applies)} changes: {result['requests_lost']} of {during['sent']}; "
          f"wrote {args.out}")
    return 0


async def until_stopped(url: str, body: bytes, rate: float, stop: asyncio.Event, replies: list[Reply]) -> None:
    """Open-loop POSTs at ``rate`` until ``stop`` is set, then wait for every reply."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000), timeout=timeout) as session:
        t0 = time.perf_counter()

        async def one() -> None:
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"content-type": "image/png"}) as r:
                    await r.read()
                    replies.append(Reply(start - t0, r.status, time.perf_counter() - start))
            except (TimeoutError, aiohttp.ClientError):
                replies.append(Reply(start - t0, 0, time.perf_counter() - start))

        tasks, i = [], 0
        while not stop.is_set():
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
            i += 1
        await asyncio.gather(*tasks)


if __name__ == "__main__":
    raise SystemExit(main())
