"""Golden test: the twitter-eval scenario's simulated table must not move under a refactor.

``varipipe experiment --scenario loadgen/scenarios/twitter-eval.yaml --mode sim --cluster
non-binding`` on 30
minutes of the evaluation window (seconds 1,146,300-1,148,099 of the Twitter trace, in
days 12-13, around the window's 388 req/s peak, so the scenario scales it as the full
run), with a frozen copy of the shipped profile. Every policy of the scenario, under
both its SLAs, on the same seed. The table (attainment, accuracy, cost, p99, drops,
reconfigurations, ...) is compared to ``tests/fixtures/golden/twitter-eval-golden.json``
exactly: the simulator, the policies and the solver are deterministic for a seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from varipipe.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "golden"
GOLDEN = FIXTURES / "twitter-eval-golden.json"
SCENARIO = ROOT / "loadgen" / "scenarios" / "twitter-eval.yaml"
# What the table keeps of each run: everything but the wall time.
COMPARED = ("sla", "sla_s", "policy", "requests", "completed", "dropped", "sla_attainment", "p99_latency_s",
            "mean_latency_s", "mean_accuracy", "mean_cost", "cost_unit", "decisions")


def golden_table(out: Path) -> dict[str, Any]:
    """Run the scenario's simulated experiment on the fixtures and return its table."""
    rc = main(["experiment", "--scenario", str(SCENARIO), "--mode", "sim", "--cluster", "non-binding", "--out", str(out),
               "--trace", str(FIXTURES / "twitter-eval-peak-1800s.txt"),
               "--profiles", str(FIXTURES / "vision-caption.json")])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    meta = doc["meta"]
    return {"cluster_cores": meta["cluster_cores"], "slas": meta["slas"], "requests": meta["requests"],
            "rows": [{k: row[k] for k in COMPARED} for row in doc["results"]]}


def test_twitter_eval_table_is_unchanged(tmp_path):
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = golden_table(tmp_path)
    assert got["cluster_cores"] == want["cluster_cores"] and got["slas"] == want["slas"]
    assert got["requests"] == want["requests"]
    assert [(r["sla"], r["policy"]) for r in got["rows"]] == [(r["sla"], r["policy"]) for r in want["rows"]]
    for g, w in zip(got["rows"], want["rows"], strict=True):
        assert g == w, f"{w['sla']}/{w['policy']} moved"
