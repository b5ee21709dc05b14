"""Reconfiguration time and losses: batch change, replica change, variant switch, under load.

Runs ``identity-chain`` (its ``slow`` variant takes 0.5 s to load) behind an
open-loop load and applies, alternately, 10 batch-size changes, 10 replica
changes and 10 variant switches. For each it records the time from ``apply``
until every changed replica reports the new configuration (the applier waits
for that before returning; a variant switch includes loading the model), and
counts failed requests over the whole run (the client never retries).

    python benchmarks/reconfig.py [--rate 20] [--repeats 10]
"""

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.integration.openloop, run from anywhere

import httpx  # noqa: E402

from tests.integration.openloop import Result, _one  # noqa: E402
from varipipe.pipelines.serve_config import AppOptions  # noqa: E402
from varipipe.pipelines.server import LocalServer, serve_session  # noqa: E402
from varipipe.records import Decision, StageDecision  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "reconfig.json"
GAP_S = 1.0  # load between two changes, so each change lands on a serving application


def decision(variant="fast", batch=4, replicas=1) -> Decision:
    return Decision(stages=(StageDecision("first", variant, batch, replicas, "cpu:1", 0.005),
                            StageDecision("second", "fast", 4, 1, "cpu:1", 0.005)))


# Each kind alternates between two decisions, so every apply is a real change.
KINDS = {
    "batch": (decision(batch=8), decision(batch=2)),
    "replicas": (decision(replicas=2), decision(replicas=1)),
    "variant": (decision(variant="slow"), decision(variant="fast")),
}


def png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


async def load_until(url: str, body: bytes, rate: float, stop: asyncio.Event) -> list[Result]:
    """Open loop at ``rate`` until ``stop`` is set; waits for every reply."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1000)) as client:
        t0, tasks, i = loop.time(), [], 0
        while not stop.is_set():
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, url, body, t0, "image/png")))
            i += 1
        return list(await asyncio.gather(*tasks))


async def scenario(srv: LocalServer, rate: float, repeats: int) -> tuple[dict, list]:
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    stop = asyncio.Event()
    load = asyncio.create_task(load_until(srv.endpoint, png(), rate, stop))
    for i in range(repeats):
        for kind, pair in KINDS.items():
            await asyncio.sleep(GAP_S)
            res = await asyncio.to_thread(srv.apply, pair[0])
            times[kind].append(res.seconds)
            await asyncio.to_thread(srv.apply, pair[1])  # back; not timed
        print(f"round {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    await asyncio.sleep(GAP_S)
    stop.set()
    return times, await load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0, help="open-loop requests per second")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    with serve_session() as port, LocalServer(AppOptions(pipeline="identity-chain", app_name="bench-reconfig"),
                                              port=port, decision=decision(batch=2)) as srv:
        times, results = asyncio.run(scenario(srv, args.rate, args.repeats))
    failed = [r for r in results if r.status != 200]
    summary = {
        "rate_rps": args.rate, "repeats": args.repeats,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "max_s": {k: max(v) for k, v in times.items()},
        "changes": 2 * args.repeats * len(KINDS), "requests": len(results), "failed": len(failed),
        "times_s": times,
    }
    print(json.dumps({k: summary[k] for k in ("median_s", "max_s", "changes", "requests", "failed")}, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
