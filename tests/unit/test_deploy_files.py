"""Every file in deploy/ parses, and the dashboard asks only for metrics varipipe exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from varipipe.pipelines.metrics import MetricsAggregator
from varipipe.pipelines.serve_config import default_decision
from varipipe.spec import find_spec

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# PromQL words that are not metric names.
PROMQL_WORDS = {"sum", "by", "rate", "increase", "max", "min", "avg", "histogram_quantile", "le", "stage",
                "variant", "status", "pipeline", "without", "label_values", "on", "ignoring"}


def _files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in suffixes)


def exported_metric_names() -> set[str]:
    """Sample names varipipe's registry exports (counters as *_total, histograms as *_bucket/_sum/_count)."""
    spec = find_spec("identity-chain")
    agg = MetricsAggregator(spec.name, spec.stage_names, 0.5, 0.0)
    agg.set_decision(default_decision(spec), None)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {m.name + sfx for m in agg.registry.collect() for sfx in suffixes[m.type]}


def test_there_are_deploy_files():
    assert _files(".yaml", ".yml") and _files(".json")


@pytest.mark.parametrize("path", _files(".yaml", ".yml"), ids=lambda p: p.name)
def test_yaml_parses(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("path", _files(".json"), ids=lambda p: p.name)
def test_json_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)


def test_cluster_launcher_has_what_ray_up_needs():
    cfg = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "auth", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])
    # Ray's workers (Serve's proxy, the ingress) at nice 0 on every node, ahead of the stages.
    from varipipe.pipelines.serve_config import WORKER_NICENESS, WORKER_NICENESS_ENV

    for c in (*cfg["head_start_ray_commands"], *cfg["worker_start_ray_commands"]):
        assert "ray start" not in c or f"{WORKER_NICENESS_ENV}={WORKER_NICENESS} ray start" in c, c


def test_prometheus_scrapes_varipipe_metrics():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["varipipe"]["metrics_path"] == "/metrics"
    assert jobs["varipipe"]["authorization"]["type"] == "Bearer"
    assert "credentials" not in jobs["varipipe"]["authorization"]  # a file, never the token itself


def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "varipipe.json").read_text())


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words - PROMQL_WORDS if not w.startswith("$")}


def test_every_panel_queries_only_exported_metrics():
    exported = exported_metric_names()
    panels = _dashboard()["panels"]
    assert len(panels) >= 8
    seen = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            names = _metric_names(t["expr"])
            assert names, t["expr"]
            assert names <= exported, f"panel {panel['title']!r}: unknown metrics {names - exported}"
            seen |= names
    # per-stage rate, latency, variant, replicas, batch, cost, SLA violations, predicted load (issue 8)
    for wanted in ("varipipe_stage_requests_total", "varipipe_stage_latency_seconds_bucket", "varipipe_variant",
                   "varipipe_replicas", "varipipe_max_batch_size", "varipipe_cost",
                   "varipipe_sla_violations_total", "varipipe_predicted_load_rps"):
        assert wanted in seen, wanted


def test_dashboard_template_variable_names_a_real_metric():
    exported = exported_metric_names()
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            assert re.search(r"label_values\((\w+)", var["query"]).group(1) in exported


def test_panel_ids_unique_and_grid_positions_set():
    panels = _dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in panels)
