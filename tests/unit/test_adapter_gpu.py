"""GPU planning on the synthetic GPU fixture (issue 19): no GPU needed.

tests/fixtures/profiles/vision-caption-gpu-synthetic.json is the flagship on cpu:1,
cpu:2 and a synthetic gpu:h200 (README there). Every decision is checked against
the profile's own numbers: GPUs held, one replica's memory, the GPUs' busy time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from varipipe.adapter.configurations import Limits, profile_gpu_memory_mb
from varipipe.adapter.optimizer import SOLVERS, available_solvers, objective_value, solve
from varipipe.adapter.synthetic import vision_caption_gpu_like
from varipipe.cli import main
from varipipe.profiler.store import load_profile
from varipipe.records import GPU_REPLICA_PRICE_CORES, SLA, Decision, DecisionStatus

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "profiles" / "vision-caption-gpu-synthetic.json"
GPU = load_profile(FIXTURE)
H200_MIB = 143771.0


def point(decision_stage):
    s = decision_stage
    [p] = [p for p in GPU.points if p.key == (s.stage, s.variant, s.batch, s.hardware)]
    return p


def assert_within_gpus(d: Decision, limits: Limits) -> None:
    """GPUs, memory and busy time recomputed from the profile's points, not the optimizer's columns."""
    on_gpu = [s for s in d.stages if s.hardware.startswith("gpu:")]
    for s in on_gpu:
        assert point(s).memory_mb <= limits.gpu_memory_mb  # one replica fits one GPU
    if limits.cost_mode == "reserved":
        assert sum(s.replicas for s in on_gpu) <= limits.cluster_gpus
        for s in on_gpu:
            assert s.cost == pytest.approx(GPU_REPLICA_PRICE_CORES * s.replicas)
    else:
        busy = sum(d.load_rps * point(s).mean_latency_s / s.batch for s in on_gpu)
        assert busy <= limits.rho_max * limits.cluster_gpus + 1e-9
        assert sum(s.replicas * point(s).memory_mb for s in on_gpu) <= limits.cluster_gpus * limits.gpu_memory_mb


@pytest.fixture(params=SOLVERS)
def solver(request):
    # Every solver is a dependency (pulp's bundled CBC, highspy, our DP): a missing one is a broken install.
    assert request.param in available_solvers(), f"solver {request.param} is not available: {available_solvers()}"
    return request.param


def test_fixture_is_the_generator_output():
    assert GPU == vision_caption_gpu_like()


def test_gpu_wins_where_the_cpu_needs_more_than_its_price(solver):
    """20 captions/s: Gemma on one core carries 0.78/s, so the CPU cannot (16-replica cap); one
    GPU replica at batch 16 carries it for 8 cores' price."""
    limits = Limits(cost_mode="reserved", cluster_cores=64, max_replicas=16, cluster_gpus=4, gpu_memory_mb=H200_MIB)
    d = solve(GPU, 20.0, SLA(3.0), limits, solver=solver)
    assert d.status is DecisionStatus.OPTIMAL
    assert d.stage("llm").hardware == "gpu:h200" and d.stage("llm").replicas == 1
    assert_within_gpus(d, limits)
    cpu_only = solve(GPU, 20.0, SLA(3.0), Limits(cost_mode="reserved", cluster_cores=64, max_replicas=16),
                     solver=solver)
    assert objective_value({s.stage: s for s in d.stages}) > objective_value({s.stage: s for s in cpu_only.stages})


def test_cpu_wins_at_low_load(solver):
    """0.5 captions/s: one core per stage carries it; a GPU replica costs 8 cores."""
    limits = Limits(cost_mode="reserved", cluster_cores=64, max_replicas=16, cluster_gpus=4, gpu_memory_mb=H200_MIB)
    d = solve(GPU, 0.5, SLA(3.0), limits, solver=solver)
    assert d.status is DecisionStatus.OPTIMAL
    assert all(s.hardware.startswith("cpu:") for s in d.stages)
    assert "GPUs 0 of cluster_gpus 4" in d.explanation


def test_gpu_memory_of_one_replica_binds_in_reserved_mode(solver):
    """A 1,000 MiB GPU holds SmolLM2 at batch 16 (940 MiB) but not Gemma (1,560 MiB)."""
    limits = Limits(cost_mode="reserved", cluster_cores=64, max_replicas=16, cluster_gpus=4, gpu_memory_mb=1000.0)
    d = solve(GPU, 20.0, SLA(3.0), limits, solver=solver)
    llm = d.stage("llm")
    assert (llm.variant, llm.batch, llm.hardware) == ("smollm2-135m", 16, "gpu:h200")
    assert "gpu_memory_llm" in d.binding_constraints
    assert "a replica needs 1560 MiB of GPU memory at batch 16, one GPU has 1000 MiB" in d.explanation
    assert "GPU memory 940 MiB per replica" in d.explanation
    assert_within_gpus(d, limits)


def test_gpu_memory_of_all_replicas_binds_in_shared_mode(solver):
    """Shared: replicas share the GPU, so their memory adds up; Gemma at batch 32 (2,520 MiB)
    and the detector's GPU replica (220 MiB at batch 4) do not fit 2,600 MiB together, so
    the detector stays on the CPU."""
    limits = Limits(cost_mode="shared", cluster_cores=2.0, cluster_gpus=1, gpu_memory_mb=2600.0)
    d = solve(GPU, 5.0, SLA(3.0), limits, solver=solver)
    assert d.status is DecisionStatus.OPTIMAL
    assert "gpu_memory" in d.binding_constraints
    assert "GPU memory would be" in d.explanation
    assert_within_gpus(d, limits)
    roomy = solve(GPU, 5.0, SLA(3.0), Limits(cost_mode="shared", cluster_cores=2.0, cluster_gpus=1,
                                              gpu_memory_mb=H200_MIB), solver=solver)
    assert roomy.stage("detector").hardware == "gpu:h200" and d.stage("detector").hardware.startswith("cpu:")
    assert roomy.stage("llm").batch == d.stage("llm").batch == 32


def test_gpu_count_binds_in_reserved_mode(solver):
    """One GPU: at most one replica on it, whichever stage gains most."""
    limits = Limits(cost_mode="reserved", cluster_cores=64, max_replicas=16, cluster_gpus=1, gpu_memory_mb=H200_MIB)
    d = solve(GPU, 40.0, SLA(3.0), limits, solver=solver)
    assert d.status is DecisionStatus.OPTIMAL
    assert sum(s.replicas for s in d.stages if s.hardware.startswith("gpu:")) == 1
    assert_within_gpus(d, limits)


def test_shared_gpu_time_bounds_the_gpu_stages(solver):
    limits = Limits(cost_mode="shared", cluster_cores=2.0, cluster_gpus=1, gpu_memory_mb=H200_MIB)
    for load in (1.0, 5.0, 20.0):
        d = solve(GPU, load, SLA(3.0), limits, solver=solver)
        assert d.status is DecisionStatus.OPTIMAL, d.reason
        assert_within_gpus(d, limits)
    assert "GPU time" in d.explanation


def test_without_gpus_no_gpu_configuration_is_chosen(solver):
    d = solve(GPU, 20.0, SLA(3.0), Limits(cost_mode="reserved", cluster_cores=64, max_replicas=32), solver=solver)
    assert d.status is DecisionStatus.OPTIMAL
    assert all(s.hardware.startswith("cpu:") for s in d.stages)


def test_only_gpu_hardware_and_no_gpus_is_infeasible_with_the_reason():
    limits = Limits(cost_mode="reserved", cluster_cores=8, hardware=("gpu:h200",))
    d = solve(GPU, 1.0, SLA(3.0), limits)
    assert d.status is DecisionStatus.INFEASIBLE
    assert "cluster_gpus is 0" in d.reason


def test_a_model_larger_than_any_gpu_is_named():
    limits = Limits(cost_mode="reserved", cluster_cores=8, hardware=("gpu:h200",), cluster_gpus=2, gpu_memory_mb=100.0)
    d = solve(GPU, 1.0, SLA(3.0), limits)
    assert d.status is DecisionStatus.INFEASIBLE
    assert "of GPU memory, one GPU has 100 MiB" in d.reason


def test_limits_need_the_memory_of_a_gpu():
    with pytest.raises(ValueError, match="gpu_memory_mb"):
        Limits(cluster_gpus=1)
    with pytest.raises(ValueError, match="cluster_gpus"):
        Limits(cluster_gpus=-1)
    with pytest.raises(ValueError, match="gpu_memory_mb"):
        Limits(cluster_gpus=1, gpu_memory_mb=0.0)


def test_gpu_memory_default_comes_from_the_profile():
    assert profile_gpu_memory_mb(GPU) == H200_MIB
    assert profile_gpu_memory_mb(load_profile(FIXTURE.parent / "tiny.json")) is None


def test_solve_cli_shows_gpu_choices_and_the_memory_constraint(capsys):
    args = ["solve", "--profiles", str(FIXTURE), "--rps", "20", "--sla", "3", "--cost-mode", "reserved",
            "--cluster-cores", "64", "--max-replicas", "16", "--cluster-gpus", "4", "--gpu-memory-mb", "1000"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "gpu:h200" in text and "GPUs 1 of cluster_gpus 4" in text
    # The LLM's memory binds (gemma3-270m needs 1560 MiB at batch 16); so does the SLA, since one
    # replica's queueing wait at 20 rps is priced too (adapter/queueing.py).
    [binding] = [line for line in text.splitlines() if line.startswith("binding: ")]
    assert "gpu_memory_llm" in binding.split(": ", 1)[1].split(", ") and "one GPU has 1000 MiB" in text
    assert main([*args[:-2], "--json"]) == 0  # memory from the profile's metadata
    out = json.loads(capsys.readouterr().out)
    assert out["stages"][2]["hardware"] == "gpu:h200" and out["stages"][2]["variant"] == "gemma3-270m"


def test_solve_cli_refuses_gpus_without_their_memory(capsys):
    tiny = FIXTURE.parent / "tiny.json"
    assert main(["solve", "--profiles", str(tiny), "--rps", "1", "--sla", "1", "--cluster-gpus", "1"]) == 2
    assert "gpu_memory_mb" in capsys.readouterr().err
