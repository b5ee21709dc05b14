"""Memory of the controller's history (what GET /api/history and the dashboard serve) over an hour.

Drives a ``ControllerState`` with a fake clock through one hour of 1 s metrics
windows: every second ``RATE_RPS`` requests with per-stage timings, a new
decision every ``DECISION_EVERY_S``. tracemalloc measures the memory the state
holds (everything allocated since it was built and still alive) at 30 and at
60 minutes. The buffer is bounded (HISTORY_LEN points), so the two should match.

    python benchmarks/history_memory.py [--rate 20] [--minutes 60]

Writes benchmarks/results/history_memory.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

from varipipe.pipelines.controller_logic import DECISION_LOG_LEN, HISTORY_LEN, ControllerState
from varipipe.pipelines.metrics import RequestRecord, StageTiming
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.stage import ReplicaStatus
from varipipe.records import Decision, StageDecision

RESULTS = Path(__file__).resolve().parent / "results" / "history_memory.json"
PIPELINE = "identity-chain"
# 20 req/s: the identity chain's rate in the live adapter test's peak step is 30 req/s; the
# per-window cost of the history does not depend on it (points are per window, not per request).
RATE_RPS = 20
DECISION_EVERY_S = 60  # a reconfiguration a minute: far more often than the adapter's 10 s loop applies in practice
SAMPLE_AT_MIN = (5, 15, 30, 45, 60)
TOP_SITES = 5  # allocation sites listed in the result


def _decision(i: int) -> Decision:
    variant = ("fast", "slow")[i % 2]
    return Decision(stages=(StageDecision("first", variant, 1 + i % 8, 1 + i % 3, "cpu:1", 0.005),
                            StageDecision("second", "fast", 4, 1, "cpu:1", 0.005)),
                    reason="benchmark", policy="bench", predicted_cost=0.5 + i % 3, predicted_accuracy=0.45,
                    explanation=f"decision {i}: runner-up slow b1 x1 lost: e2e latency would be 0.61s > SLA 0.500s")


def _requests(t: float, rate: int) -> list[RequestRecord]:
    return [RequestRecord(t + k / rate, 0.02 + 0.001 * k, 200,
                          (StageTiming("first", "fast", 0.008, 1), StageTiming("second", "fast", 0.009, 1)))
            for k in range(rate)]


def _deploy(st: ControllerState, decision, generation: int) -> None:
    """Serve delivers the config and every stage's replica reports it: the decision then serves."""
    st.set_decision_config({"decision": decision.to_dict(), "generation": generation})
    for s in decision.stages:
        for i in range(s.replicas):
            st.report_replica(ReplicaStatus(f"{s.stage}-{i}", s.stage, s.variant, (s.variant,), generation, s.batch,
                                            s.batch_wait_s, 0.0, 0.0, "", 0, st.clock()))


def run(rate: int, minutes: int) -> dict:
    now = [1_700_000_000.0]
    tracemalloc.start()
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    st = ControllerState(AppOptions(pipeline=PIPELINE), clock=lambda: now[0], start_thread=False)
    samples = []
    started = time.perf_counter()
    for second in range(1, minutes * 60 + 1):
        if second % DECISION_EVERY_S == 1:
            _deploy(st, _decision(second // DECISION_EVERY_S), second // DECISION_EVERY_S)
        recs = _requests(now[0], rate)
        st.metrics.add_arrivals(r.time for r in recs)
        st.metrics.add_requests(recs)
        now[0] += 1.0
        st.tick()
        if second % 60 == 0 and second // 60 in SAMPLE_AT_MIN:
            gc.collect()
            view = st.history_view()
            samples.append({"minute": second // 60, "traced_bytes": tracemalloc.get_traced_memory()[0] - base,
                            "points": len(view["points"]), "decision_log": len(st.decision_log),
                            "history_json_bytes": len(json.dumps(view))})
    top = _top_sites(tracemalloc.take_snapshot())
    tracemalloc.stop()
    return {"samples": samples, "top_sites_at_end": top, "sim_wall_s": round(time.perf_counter() - started, 2)}


def _top_sites(snapshot: tracemalloc.Snapshot, n: int = TOP_SITES) -> list[dict]:
    """Where the memory alive at the end was allocated (file:line inside varipipe, sizes)."""
    out = []
    for stat in snapshot.statistics("lineno")[:n]:
        frame = stat.traceback[0]
        parts = Path(frame.filename).parts
        where = "/".join(parts[-2:]) if "varipipe" not in parts else "/".join(parts[parts.index("varipipe"):])
        out.append({"site": f"{where}:{frame.lineno}", "bytes": stat.size, "blocks": stat.count})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=RATE_RPS, help="requests per simulated second")
    ap.add_argument("--minutes", type=int, default=60)
    args = ap.parse_args()
    out = run(args.rate, args.minutes)
    by = {s["minute"]: s for s in out["samples"]}
    doc = {
        "what": "ControllerState memory (tracemalloc, bytes alive since it was built) over simulated 1 s windows",
        "pipeline": PIPELINE, "rate_rps": args.rate, "decision_every_s": DECISION_EVERY_S,
        "history_len": HISTORY_LEN, "decision_log_len": DECISION_LOG_LEN, **out,
        "bytes_30_min": by.get(30, {}).get("traced_bytes"), "bytes_60_min": by.get(60, {}).get("traced_bytes"),
        "python": sys.version.split()[0], "machine": platform.machine(),
        "command": "python benchmarks/history_memory.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for s in out["samples"]:
        print(f"{s['minute']:3d} min: {s['traced_bytes'] / 1e6:7.2f} MB traced, {s['points']} points, "
              f"/api/history JSON {s['history_json_bytes'] / 1e6:.2f} MB")
    for t in out["top_sites_at_end"]:
        print(f"  {t['bytes'] / 1e6:6.2f} MB  {t['site']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
