"""A backlog beyond the stages' max_ongoing_requests: queued in Serve's router, or in the ingress's gate.

    python benchmarks/router_backlog.py [--service-ms 20] [--overload 2] [--duration 10] [--rounds 2]

Issue 16: in a fresh-clone ``make test`` a backlog in Ray Serve's router drained at
4 requests/s from an idle replica (pipelines/gate.py says why). This builds such a
backlog on purpose and times its drain, with the ingress's FIFO gate in front of each
stage (``stage_gate=True``, the default) and without it (``stage_gate=False``: the
behaviour before the fix), in one Ray, one process, the two applications alternating
``--rounds`` times so that the shared host's drift falls on both.

The pipeline is two identity stages that sleep ``--service-ms`` per item (batch 4,
one replica each, ``max_ongoing_requests`` 8): a stage serves 1000/service-ms
requests/s. An open loop sends ``--overload`` times that for ``--duration`` seconds,
then stops; the backlog left when it stops must drain at the stages' rate.

Per run: requests sent and answered 200; the backlog when the sending stopped (sent
minus answered by then); the drain: seconds from the last send to the last answer and
the answers per second in that time, against the stages' rate; the latency p50/p99/max.
Writes benchmarks/results/router_backlog.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overload import SPEC, _pcts, _warm, open_loop, png  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SLA_S = 0.5  # the spec's nominal SLA; nothing here uses deadlines (admission stays out of the way)
SETTLE_S = 3.0  # between runs: the last answers' records reach the controller


def drain(replies) -> dict:
    """How the backlog left at the end of the sending drained."""
    ok = [r for r in replies if r.status == 200]
    last_send = max(r.sent_s for r in replies)
    done_at = sorted(r.sent_s + r.latency_s for r in ok)
    backlog = len(replies) - sum(t <= last_send for t in done_at)
    drain_s = max(0.0, done_at[-1] - last_send) if done_at else float("nan")
    return {"backlog_at_last_send": backlog, "drain_s": round(drain_s, 2),
            "drain_rps": round(backlog / drain_s, 2) if drain_s > 0 else None}


def run_once(srv, body: bytes, rate: float, duration_s: float) -> dict:
    t0 = time.perf_counter()
    replies = asyncio.run(open_loop(srv.endpoint, body, "image/png", rate, duration_s))
    ok = [r for r in replies if r.status == 200]
    out = {"sent": len(replies), "ok": len(ok), **drain(replies),
           "latency": _pcts([r.latency_s for r in ok]), "wall_s": round(time.perf_counter() - t0, 1),
           "load_average_1m": round(os.getloadavg()[0], 2)}
    time.sleep(SETTLE_S)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--service-ms", type=float, default=20.0, help="per-item service time of each stage")
    ap.add_argument("--overload", type=float, default=2.0, help="offered load / the stages' rate")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of sending per run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
    ap.add_argument("--out", default=str(RESULTS_DIR / "router_backlog.json"))
    args = ap.parse_args()

    from varipipe.pipelines.serve_config import AppOptions
    from varipipe.pipelines.server import LocalServer, serve_session
    from varipipe.records import Decision, StageDecision

    stage_rps = 1000.0 / args.service_ms
    rate = args.overload * stage_rps
    decision = Decision(stages=(StageDecision("first", "work", 4, 1, "cpu:1", 0.005),
                                StageDecision("second", "work", 4, 1, "cpu:1", 0.005)), policy="benchmark")
    body = png()
    runs: dict[str, list[dict]] = {"gate": [], "router": []}
    with serve_session() as port:
        with tempfile.TemporaryDirectory(prefix="vp-backlog-") as tmp:
            spec = Path(tmp) / "overload-chain.yaml"
            spec.write_text(SPEC.format(sla=SLA_S, s=args.service_ms / 1000))
            for i in range(args.rounds):
                for name in ("router", "gate") if i % 2 == 0 else ("gate", "router"):
                    opts = AppOptions(pipeline=str(spec), app_name=f"backlog-{name}", admission=False,
                                      stage_gate=name == "gate")
                    with LocalServer(opts, port=port, decision=decision) as srv:
                        _warm(srv, body, "image/png")
                        out = run_once(srv, body, rate, args.duration)
                    print(name, i, json.dumps(out), flush=True)
                    runs[name].append(out)

    def med(name: str, key: str) -> float | None:
        vals = [r[key] for r in runs[name] if r[key] is not None]
        return round(statistics.median(vals), 2) if vals else None

    summary = {n: {"drain_rps_median": med(n, "drain_rps"), "drain_s_median": med(n, "drain_s"),
                   "failed": sum(r["sent"] - r["ok"] for r in runs[n])} for n in runs}
    result = {
        "benchmark": "router_backlog",
        "command": (f"python benchmarks/router_backlog.py --service-ms {args.service_ms} "
                    f"--overload {args.overload} --duration {args.duration} --rounds {args.rounds}"),
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "stage_rps": stage_rps, "offered_rps": rate, "runs": runs, "summary": summary,
        "drain_ratio_gate_over_router": (round(summary["gate"]["drain_rps_median"]
                                               / summary["router"]["drain_rps_median"], 2)
                                         if summary["gate"]["drain_rps_median"]
                                         and summary["router"]["drain_rps_median"] else None),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary), f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
