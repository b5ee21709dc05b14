"""GPU requests in serving: --gpus, replicas' num_gpus, the RayService's GPU workers (no Ray, no GPU)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml

from varipipe.cli import main
from varipipe.commands.serve import add_arguments, app_options, gpu_requests
from varipipe.errors import ConfigError
from varipipe.pipelines.rayservice import GPU_RESOURCE, ClusterShape, render_rayservice
from varipipe.pipelines.serve_config import DEFAULT_GPU_FRACTION, AppOptions, parse_gpus, stage_gpus
from varipipe.records import Decision, StageDecision
from varipipe.spec import find_spec

STAGES = ("detector", "classifier", "llm")


def test_one_amount_applies_to_every_stage():
    assert parse_gpus("0.5", STAGES) == dict.fromkeys(STAGES, 0.5)
    assert parse_gpus("", STAGES) == {}


def test_amounts_per_stage():
    assert parse_gpus("llm=0.5, detector=0.25", STAGES) == {"llm": 0.5, "detector": 0.25}
    assert parse_gpus("llm=2", STAGES) == {"llm": 2.0}


@pytest.mark.parametrize("text, problem", [
    ("0", "in (0, 1]"), ("1.5", "whole number"), ("-1", "in (0, 1]"), ("half", "a number"),
    ("ocr=0.5", "STAGE=GPUS"), ("llm", "a number"), ("llm=0.5,x", "STAGE=GPUS"),
])
def test_bad_amounts_name_the_value_and_the_rule(text, problem):
    with pytest.raises(ConfigError, match="--gpus") as e:
        parse_gpus(text, STAGES)
    assert problem in str(e.value)


def test_a_stage_the_decision_puts_on_a_gpu_reserves_a_whole_one_unless_told():
    d = Decision(stages=(StageDecision("detector", "a", 1, 1, "cpu:1"), StageDecision("llm", "b", 4, 2, "gpu:h200")))
    assert stage_gpus({}, d) == {"llm": DEFAULT_GPU_FRACTION}
    assert stage_gpus({"llm": 0.25, "detector": 0.5}, d) == {"llm": 0.25, "detector": 0.5}
    assert stage_gpus({"detector": 0.5}, None) == {"detector": 0.5}


def test_gpu_stages_replicas_ask_for_their_gpus_and_build_gpu_runtimes():
    from varipipe.pipelines.app import build_app

    app = build_app(AppOptions(pipeline="identity-chain", stage_gpus={"first": 0.5}).to_args())
    stages = app._bound_deployment.init_args[1]  # Ingress(args, stages, controller)
    first, second = (stages[s]._bound_deployment for s in ("first", "second"))
    assert first.ray_actor_options["num_gpus"] == 0.5 and first.init_args[3] == "gpu"
    assert "num_gpus" not in second.ray_actor_options and second.init_args[3] == "cpu"


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_carries_gpus_into_the_app_options():
    args = _serve_args("--pipeline", "identity-chain")
    assert app_options(args, gpus={"first": 0.5}).stage_gpus == {"first": 0.5}
    assert app_options(args).stage_gpus == {}


def test_serve_refuses_gpus_an_embedded_ray_could_never_place(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = find_spec("identity-chain")
    with pytest.raises(ConfigError, match="no CUDA device"):
        gpu_requests(_serve_args("--pipeline", "identity-chain", "--gpus", "first=0.5"), spec, None)
    # a cluster's GPUs are on its workers: nothing to check here
    on_cluster = _serve_args("--pipeline", "identity-chain", "--gpus", "first=0.5", "--address", "auto")
    assert gpu_requests(on_cluster, spec, None) == {"first": 0.5}
    assert gpu_requests(_serve_args("--pipeline", "identity-chain"), spec, None) == {}


def _groups(manifest: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def test_rayservice_puts_gpu_stages_on_gpu_workers():
    spec = find_spec("vision-caption-ci")
    d = Decision(stages=(StageDecision("detector", spec.stage("detector").default_variant, 1, 3, "cpu:1"),
                         StageDecision("classifier", spec.stage("classifier").default_variant, 1, 1, "cpu:1"),
                         StageDecision("llm", spec.stage("llm").default_variant, 8, 5, "gpu:h200")))
    opts = AppOptions(pipeline=spec.name, stage_gpus=stage_gpus({"llm": 0.5}, d))
    groups = _groups(render_rayservice(spec, opts, d, ClusterShape(worker_cpus=4, gpus_per_worker=2)))
    gpu = groups["gpu-workers"]
    assert gpu["replicas"] == 2  # 5 replicas x 0.5 GPU = 2.5 GPUs, 2 per pod
    assert gpu["rayStartParams"]["num-gpus"] == "2"
    res = gpu["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"][GPU_RESOURCE] == "2"
    assert groups["cpu-workers"]["rayStartParams"]["num-gpus"] == "0"
    assert GPU_RESOURCE not in groups["cpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    # CPU workers hold the CPU stages only: 0.2 light + 4 replicas x 0.5 CPU on 4-CPU pods
    assert groups["cpu-workers"]["replicas"] == 1


def test_rayservice_without_gpus_has_no_gpu_group():
    spec = find_spec("vision-caption-ci")
    from varipipe.pipelines.serve_config import default_decision

    groups = _groups(render_rayservice(spec, AppOptions(pipeline=spec.name), default_decision(spec)))
    assert list(groups) == ["cpu-workers"]


def test_deploy_render_carries_gpu_requests(tmp_path, capsys):
    assert main(["deploy", "render", "--pipeline", "vision-caption-ci", "--gpus", "llm=0.5",
                 "--profiles", str(tmp_path / "none.json")]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve_cfg["applications"][0]["args"]["stage_gpus"] == {"llm": 0.5}
    assert _groups(doc)["gpu-workers"]["replicas"] == 1


def test_deploy_render_gives_gpu_stages_of_a_decision_a_gpu(tmp_path, capsys):
    spec = find_spec("vision-caption-ci")
    d = Decision(stages=tuple(StageDecision(s.name, s.default_variant, 1, 1, "gpu:h200" if s.name == "llm" else "cpu:1")
                              for s in spec.stages))
    (tmp_path / "d.json").write_text(json.dumps(d.to_dict()))
    assert main(["deploy", "render", "--pipeline", "vision-caption-ci", "--decision", str(tmp_path / "d.json")]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]["stage_gpus"] == {"llm": 1.0}


def test_deploy_render_refuses_a_bad_gpu_amount(capsys):
    assert main(["deploy", "render", "--pipeline", "vision-caption-ci", "--gpus", "llm=1.5"]) == 2
    assert "whole number" in capsys.readouterr().err


def test_a_gpu_replica_builds_its_variants_for_the_gpu(monkeypatch):
    from varipipe.pipelines import stage as stage_module
    from varipipe.pipelines.stage import StageConfig, StageCore

    built = []

    def fake_build(spec, threads=1, device="cpu"):
        built.append(device)
        from varipipe.pipelines.variants.identity import make

        return make(spec, threads=threads)

    monkeypatch.setattr(stage_module, "build_variant", fake_build)
    spec = find_spec("identity-chain").stage("first")
    StageCore(spec, device="gpu").configure(StageConfig(spec.default_variant))
    StageCore(spec).configure(StageConfig(spec.default_variant))
    assert built == ["gpu", "cpu"]
