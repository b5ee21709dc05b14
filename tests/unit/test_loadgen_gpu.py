"""The simulator on GPU configurations (issue 19): service times, warm-up delays, sharing, cost.

Hand-made profiles with deterministic service times (p50 = p99), as in
test_loadgen_simulator.py, plus the synthetic GPU fixture end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from varipipe.errors import VaripipeError
from varipipe.loadgen.runs import SimSettings, run_policy
from varipipe.loadgen.simulator import (
    BATCH_CHANGE_S,
    REPLICA_ADD_S,
    REPLICA_PROCESS_S,
    SimConfig,
    simulate,
)
from varipipe.loadgen.traces import Trace, arrival_times
from varipipe.profiler.store import load_profile
from varipipe.records import GPU_REPLICA_PRICE_CORES, Decision, Profile, ProfilePoint, StageDecision

GPU_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "profiles" / "vision-caption-gpu-synthetic.json"
CPU_S, GPU_S = 0.1, 0.02  # batch-1 service times of the hand-made profile
COLD_S = 20.0  # the hand-made GPU replica's cold start (load + compile)
WARM_4_S = 5.0  # its warm-up at batch 4 on a warm replica


def _point(stage: str, batch: int, hw: str, seconds: float) -> ProfilePoint:
    return ProfilePoint(stage, "v", batch, hw, seconds, seconds, seconds, batch / seconds, 500.0, 100, 0.9,
                        "declared", "test")


def _profile(stages=("a",)) -> Profile:
    """Each stage on cpu:1 (0.1 s a batch) and gpu:x (0.02 s), batches 1 and 4; the GPU's
    start-up recorded as the GPU profiler writes it."""
    pts = [_point(s, b, hw, t) for s in stages for b in (1, 4) for hw, t in (("cpu:1", CPU_S), ("gpu:x", GPU_S))]
    start = {"load_s": 1.0, "model_warmup_s": [COLD_S - 1.0], "warmup_s": {"1": [0.0], "4": [WARM_4_S]},
             "first_batch": 1, "cold_start_s": COLD_S}
    return Profile("test", tuple(pts), metadata={"replica_start": {f"{s}/v/gpu:x": start for s in stages}})


class Script:
    """Stand-in policy: per stage (hardware, batch, replicas) from time ``t`` on."""

    name = "script"

    def __init__(self, steps: dict[float, tuple[str, int, int]], stages=("a",)) -> None:
        self.steps, self.stages = steps, stages

    def decide(self, observation, forecast, current) -> Decision:
        hw, batch, reps = [v for t, v in sorted(self.steps.items()) if observation.time_s >= t][-1]
        return Decision(tuple(StageDecision(s, "v", batch, reps, hw) for s in self.stages))


def _last(t, h):
    from varipipe.adapter.policy import Forecast

    return Forecast(float(h[-10:].max()) if len(h) else 0.0, "last")


def _arrivals(rate: float, seconds: int, seed: int = 0) -> np.ndarray:
    return arrival_times(Trace(np.full(seconds, rate)), "poisson", seed)


def _run(arr, policy, profile=None, mode="reserved", cores=8.0, gpus=0, sla=60.0):
    cfg = SimConfig(sla, 10.0, mode, cores, 0, cluster_gpus=gpus)
    return simulate(profile or _profile(), arr, policy, _last, cfg, keep_table=True)


def test_the_fixture_records_replica_starts_as_the_gpu_profiler_does():
    profile = load_profile(GPU_FIXTURE)
    start = profile.replica_start("llm", "gemma3-270m", "gpu:h200")
    assert start is not None and start.cold_start_s == pytest.approx(2.0 + 52.0 + 0.02 + 0.03)
    assert start.cold_start_s == pytest.approx(profile.metadata["replica_start"]["llm/gemma3-270m/gpu:h200"]
                                               ["cold_start_s"])
    assert start.batch_change_s(16) == pytest.approx(5.2 + 0.02)
    assert profile.replica_start("llm", "gemma3-270m", "cpu:1") is None


def test_a_gpu_replica_serves_at_its_profiled_time():
    arr = _arrivals(2, 30)
    gpu, cpu = _run(arr, Script({0: ("gpu:x", 1, 1)})), _run(arr, Script({0: ("cpu:1", 1, 1)}))
    assert np.nanmin(gpu.table.latency_s) == pytest.approx(GPU_S)
    assert np.nanmin(cpu.table.latency_s) == pytest.approx(CPU_S)


def test_a_switch_onto_the_gpu_waits_for_the_replica_to_warm_up():
    """At t=10 the stage moves to the GPU: its replicas restart there, serving after the
    process start and the profiled cold start (20 s), not the CPU's 2.4 s variant switch."""
    arr = _arrivals(2, 60)
    r = _run(arr, Script({0: ("cpu:1", 1, 1), 10: ("gpu:x", 1, 1)}))
    ready = 10.0 + REPLICA_PROCESS_S + COLD_S
    lat = r.table.latency_s
    assert np.nanmin(lat[(arr > 13.0) & (arr < ready - 1.0)]) == pytest.approx(CPU_S)  # still the CPU model
    assert np.nanmin(lat[arr > ready + 1.0]) == pytest.approx(GPU_S)
    assert np.nanmax(lat[arr > ready + 1.0]) < CPU_S


def test_a_new_gpu_replica_serves_after_its_warm_up():
    """One GPU replica at 80 items/s (it carries 50/s) until t=10 asks for two: the second
    serves only after REPLICA_PROCESS_S + the cold start."""
    arr = _arrivals(80, 50)
    r = _run(arr, Script({0: ("gpu:x", 1, 1), 10: ("gpu:x", 1, 2)}))
    done = np.sort(r.table.item_done_s[0][~np.isnan(r.table.item_done_s[0])])
    ready = 10.0 + REPLICA_PROCESS_S + COLD_S
    assert ready > 10.0 + REPLICA_ADD_S
    assert np.diff(done[(done > 11.0) & (done < ready - 0.5)]).min() >= GPU_S - 1e-9  # still one replica
    assert np.diff(done[(done > ready + 0.5) & (done < ready + 5.0)]).min() < GPU_S  # two overlap


def test_a_batch_change_on_the_gpu_waits_for_the_new_sizes_warm_up():
    arr = _arrivals(20, 40)
    r = _run(arr, Script({0: ("gpu:x", 1, 1), 10: ("gpu:x", 4, 1)}))
    sizes = np.bincount(r.table.item_batch[0][r.table.item_batch[0] >= 0])
    batch_end = np.full(len(sizes), np.nan)
    ok = r.table.item_batch[0] >= 0
    batch_end[r.table.item_batch[0][ok]] = r.table.item_done_s[0][ok]
    ready = 10.0 + BATCH_CHANGE_S + WARM_4_S
    assert sizes[batch_end < ready].max() == 1
    assert sizes[batch_end > ready + 1.0].max() > 1


def test_shared_mode_gpu_replicas_share_the_gpus_not_the_cores():
    """Two stages on the GPU, each busy 0.8 GPU-s/s: one GPU is oversubscribed, two are not;
    the host's single core is not involved either way."""
    profile, arr = _profile(("a", "b")), _arrivals(40, 60)
    gpu_only = Script({0: ("gpu:x", 1, 2)}, stages=("a", "b"))
    one, two = (_run(arr, gpu_only, profile, mode="shared", cores=1.0, gpus=g) for g in (1, 2))
    assert one.mean_latency_s > 1.5 * two.mean_latency_s
    # Cost: GPU-seconds at a GPU's price, at most the GPUs'; no CPU-seconds.
    assert two.series.cost[5:50] == pytest.approx(GPU_REPLICA_PRICE_CORES * 2 * 40 * GPU_S, rel=0.25)
    assert one.series.cost.max() <= GPU_REPLICA_PRICE_CORES * 1 + 1e-9


def test_shared_mode_refuses_a_gpu_decision_without_gpus():
    with pytest.raises(VaripipeError, match="cluster_gpus=0"):
        _run(_arrivals(1, 5), Script({0: ("gpu:x", 1, 1)}), mode="shared", gpus=0)


def test_reserved_cost_counts_a_gpu_replica_at_its_price():
    profile = _profile(("a", "b"))

    class Mixed(Script):
        def decide(self, observation, forecast, current):
            return Decision((StageDecision("a", "v", 1, 1, "cpu:1"), StageDecision("b", "v", 1, 2, "gpu:x")))

    r = _run(_arrivals(2, 20), Mixed({}), profile)
    assert r.series.cost[:15] == pytest.approx(1.0 + 2 * GPU_REPLICA_PRICE_CORES)


def test_a_solver_policy_plans_and_runs_gpus_on_the_synthetic_fixture():
    """ipa on the flagship with one shared GPU: the optimizer puts the LLM on it (the
    fixture's memory record as the default), and the simulator runs that decision."""
    profile = load_profile(GPU_FIXTURE)
    arr = _arrivals(3, 120)
    settings = SimSettings(sla_s=3.0, cost_mode="shared", cluster_cores=2.0, cluster_gpus=1)
    r = run_policy(profile, arr, "ipa", settings)
    assert any(s.hardware == "gpu:h200" for d in r.timeline for s in d.stages if s.stage == "llm")
    assert r.sla_attainment > 0.9
    cpu = run_policy(profile, arr, "ipa", SimSettings(sla_s=3.0, cost_mode="shared", cluster_cores=2.0))
    assert all(s.hardware.startswith("cpu:") for d in cpu.timeline for s in d.stages)


def _trace_file(tmp_path: Path) -> str:
    f = tmp_path / "t.txt"
    # 1 req/s, then 12: at 1 the LLM starts on the CPU; at 3 (the step's first rate before the
    # optimizer priced the queueing wait) its CPU replicas' wait already sends it to the GPU at
    # the first decision, which starts warm, so no move would pay the warm-up.
    f.write_text("\n".join(["1"] * 40 + ["12"] * 40))
    return str(f)


def test_simulate_cli_plans_gpus_and_their_warm_up_costs_attainment(tmp_path, capsys):
    """The load steps from 1 to 12 rps at t=40: ipa moves the LLM onto a GPU, and the requests
    wait while the new GPU replica compiles (the fixture's 31-52 s). The same profile without
    the warm-up record switches in the CPU's seconds and does better."""
    import dataclasses

    from varipipe.cli import main
    from varipipe.profiler.store import save_profile

    profile = load_profile(GPU_FIXTURE)
    no_warmup = tmp_path / "no-warmup.json"
    save_profile(dataclasses.replace(profile, metadata={k: v for k, v in profile.metadata.items()
                                                         if k != "replica_start"}), no_warmup)
    args = ["simulate", "--trace", _trace_file(tmp_path), "--policy", "ipa", "--sla", "3", "--cost-mode",
            "reserved", "--cluster-cores", "16", "--cluster-gpus", "2", "--json"]
    runs = {}
    for name, path in (("warm-up", GPU_FIXTURE), ("none", no_warmup)):
        assert main([*args, "--profiles", str(path)]) == 0
        runs[name] = json.loads(capsys.readouterr().out)
    assert runs["none"]["sla_attainment"] > runs["warm-up"]["sla_attainment"] + 0.1


def test_experiment_sim_takes_gpus_and_records_them(tmp_path, capsys):
    from varipipe.cli import main

    out = tmp_path / "exp"
    rc = main(["experiment", "--profiles", str(GPU_FIXTURE), "--trace", _trace_file(tmp_path), "--sla", "3",
               "--policies", "fa2-low", "--cost-mode", "shared", "--cluster-cores", "2", "--cluster-gpus", "1",
               "--mode", "sim", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["cluster_gpus"] == 1 and doc["results"][0]["sla_attainment"] > 0.9
