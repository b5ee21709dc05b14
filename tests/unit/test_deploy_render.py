"""``varipipe deploy render``: the RayService manifest and its serveConfigV2."""

from __future__ import annotations

import json

import pytest
import yaml

from varipipe.cli import main
from varipipe.pipelines.rayservice import (
    ClusterShape,
    render_rayservice,
    serve_config_v2,
    to_yaml,
    worker_replicas,
)
from varipipe.pipelines.serve_config import (
    WORKER_NICENESS,
    WORKER_NICENESS_ENV,
    AppOptions,
    build_app_config,
    default_decision,
)
from varipipe.records import Decision, StageDecision
from varipipe.spec import find_spec


def _render(capsys, *argv: str) -> tuple[dict, str]:
    assert main(["deploy", "render", *argv]) == 0
    out, err = capsys.readouterr()
    return yaml.safe_load(out), err


def _check_rayservice(doc: dict) -> dict:
    """The RayService fields varipipe relies on (KubeRay ray.io/v1); returns serveConfigV2 parsed."""
    from ray.serve.schema import ServeDeploySchema

    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    assert doc["metadata"]["name"].startswith("varipipe-")
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_cfg)
    cluster = doc["spec"]["rayClusterConfig"]
    assert isinstance(cluster["rayVersion"], str)
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD types them as strings
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        assert group["template"]["spec"]["containers"][0]["image"]
    # Every node starts Ray's workers (Serve's proxy, the ingress) at nice 0, ahead of the stages.
    for group in (head, *cluster["workerGroupSpecs"]):
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env[WORKER_NICENESS_ENV] == str(WORKER_NICENESS)
    return serve_cfg


def test_render_uses_the_shipped_profile(capsys):
    from varipipe.profiler.store import default_profile_path

    assert default_profile_path("vision-caption-ci").exists(), "shipped profile vision-caption-ci.json is missing"
    doc, err = _render(capsys, "--pipeline", "vision-caption-ci")
    assert "optimizer decision" in err and "vision-caption-ci.json" in err
    _check_rayservice(doc)


def test_render_without_profile_uses_the_default_decision_and_says_so(tmp_path, capsys):
    doc, err = _render(capsys, "--pipeline", "vision-caption-ci", "--image", "example.org/varipipe:1",
                       "--profiles", str(tmp_path / "none.json"))
    serve_cfg = _check_rayservice(doc)
    assert "no profile" in err and "default configuration" in err
    app = serve_cfg["applications"][0]
    assert app["import_path"] == "varipipe.pipelines.app:build_app"
    spec = find_spec("vision-caption-ci")
    expected = build_app_config(AppOptions(pipeline="vision-caption-ci", cost_mode="reserved", cluster_cores=8.0),
                                default_decision(spec), generation=0)
    assert app["deployments"] == json.loads(json.dumps(expected["deployments"]))
    containers = [doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0],
                  doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]]
    assert {c["image"] for c in containers} == {"example.org/varipipe:1"}


def test_render_with_a_decision_file(tmp_path, capsys):
    d = Decision(stages=(StageDecision("first", "slow", 8, 3, "cpu:1", 0.01),
                         StageDecision("second", "fast", 2, 1, "cpu:1", 0.0)), policy="ipa")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(d.to_dict()))
    doc, _ = _render(capsys, "--pipeline", "identity-chain", "--decision", str(path))
    deps = {x["name"]: x for x in _check_rayservice(doc)["applications"][0]["deployments"]}
    assert deps["stage-first"]["num_replicas"] == 3
    assert deps["stage-first"]["user_config"]["variant"] == "slow"
    assert deps["stage-first"]["user_config"]["max_batch_size"] == 8
    assert deps["controller"]["user_config"]["decision"]["stages"][0]["variant"] == "slow"


def identity_profile(variants=(("first", "fast", 0.5), ("first", "slow", 0.9), ("second", "fast", 0.5))) -> dict:
    """A small profile of identity-chain: 1 ms per item, 300 items/s per replica."""
    return {"schema_version": 1, "pipeline": "identity-chain", "metadata": {"source": "test"}, "points": [
        {"stage": st, "variant": v, "batch": b, "hardware": "cpu:1", "latency_p50_s": 0.001 * b,
         "latency_p95_s": 0.0012 * b, "latency_p99_s": 0.0015 * b, "throughput_rps": 300.0, "memory_mb": 10.0,
         "samples": 200, "accuracy": acc, "accuracy_kind": "declared", "accuracy_source": "test"}
        for st, v, acc in variants for b in (1, 4)]}


def test_render_with_a_profile_uses_the_solver(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(identity_profile()))
    doc, err = _render(capsys, "--pipeline", "identity-chain", "--profiles", str(path), "--rps", "20")
    assert "optimizer decision (optimal)" in err
    deps = _check_rayservice(doc)["applications"][0]["deployments"]
    decision = deps[1]["user_config"]["decision"]
    assert decision["load_rps"] == 20 and decision["status"] == "optimal"
    assert decision["stages"][0]["variant"] == "slow"  # the more accurate one fits the SLA easily


def test_stale_profile_naming_unknown_variants_is_refused(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(identity_profile((("first", "gone", 0.9), ("second", "fast", 0.5)))))
    assert main(["deploy", "render", "--pipeline", "identity-chain", "--profiles", str(path)]) == 2
    assert "'gone'" in capsys.readouterr().err


def test_decision_for_another_pipeline_is_a_clear_error(tmp_path, capsys):
    d = Decision(stages=(StageDecision("detector", "x", 1, 1),))
    path = tmp_path / "d.json"
    path.write_text(json.dumps(d.to_dict()))
    assert main(["deploy", "render", "--pipeline", "identity-chain", "--decision", str(path)]) == 2
    assert "stages" in capsys.readouterr().err


def test_corrupt_decision_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    assert main(["deploy", "render", "--pipeline", "identity-chain", "--decision", str(path)]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_no_token_in_the_manifest():
    spec = find_spec("identity-chain")
    opts = AppOptions(pipeline="identity-chain", auth_token="s3cret")
    text = to_yaml(render_rayservice(spec, opts, default_decision(spec)))
    assert "s3cret" not in text
    assert "secretKeyRef" in text and "VARIPIPE_TOKEN" in text
    assert serve_config_v2(opts, default_decision(spec))["applications"][0]["args"]["auth_token"] == ""


@pytest.mark.parametrize("replicas,cpus,expected", [(1, 4, 1), (8, 1, 5), (20, 2, 6)])
def test_worker_pods_hold_every_replica(replicas, cpus, expected):
    spec = find_spec("identity-chain")  # 0.25 CPU per stage replica
    d = Decision(stages=(StageDecision("first", "fast", 1, replicas), StageDecision("second", "fast", 1, replicas)))
    assert worker_replicas(spec, d, cpus) == expected
    shape = ClusterShape(worker_cpus=cpus)
    group = render_rayservice(spec, AppOptions(pipeline="identity-chain"), d, shape)["spec"]["rayClusterConfig"][
        "workerGroupSpecs"][0]
    assert group["replicas"] == expected and group["rayStartParams"]["num-cpus"] == str(cpus)
