"""The profiler end to end on real (identity) variants: measuring processes, store, resume, show, GPU."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from varipipe.cli import main
from varipipe.profiler.hostinfo import gpu_model
from varipipe.profiler.measure import cpu_hardware, gpu_hardware
from varipipe.profiler.plan import QUICK, PointKey
from varipipe.profiler.run import ProfileRequest, run_profile
from varipipe.profiler.stats import percentile
from varipipe.profiler.store import load_profile
from varipipe.spec import find_spec

# Tiny windows and cap: identity stages take ~1-4 ms, so a point is a few hundred samples in 3+ windows.
_BOX = replace(QUICK, window_min_s=0.05, max_seconds=0.2)


_CPU1 = (cpu_hardware(1),)


def _req(out, hardware=_CPU1, **kw):
    return ProfileRequest(spec=find_spec("identity-chain"), out=out, batches=(1, 2), hardware=hardware,
                          policy=_BOX, command="varipipe profile (test)", progress=False, **kw)


@pytest.mark.slow
def test_cli_profiles_identity_chain_in_separate_processes(tmp_path, capsys):
    out = tmp_path / "ic.json"
    rc = main(["profile", "--pipeline", "identity-chain", "--quick", "--batch", "1,2", "--cores", "1",
               "--max-seconds-per-point", "0.2", "--out", str(out), "--no-progress"])
    assert rc == 1  # the spec's 'broken' variant fails to load, and says so
    assert "failed second/broken" in capsys.readouterr().out
    prof = load_profile(out, pipeline="identity-chain")
    assert {(p.stage, p.variant) for p in prof.points} == {("first", "fast"), ("first", "slow"), ("second", "fast")}
    slow = {p.batch: p for p in prof.points if p.variant == "slow"}
    assert slow[1].latency_p50_s >= 0.004  # params.service_s of the spec, really slept
    assert all(p.accuracy_kind == "declared" for p in prof.points)
    for p in prof.points:  # every point says how steady it was and how the host moved around it
        assert p.windows >= QUICK.stable_windows and p.stable is not None and p.latency_cv >= 0
        assert p.reference_before_s > 0 and p.reference_after_s > 0
        assert p.samples >= QUICK.stable_windows * QUICK.min_window_batches  # the last 3 windows merged
    by_batch = {p.batch: p for p in prof.points if p.variant == "slow"}
    assert by_batch[1].reference_after_s == by_batch[2].reference_before_s  # one probe between two points
    assert by_batch[1].reference_before_s >= 0.004  # the slow variant's own batch-1 call, really run
    meta = prof.metadata
    assert meta["mode"] == "quick" and "peak RSS" in meta["memory_method"] and meta["failed"]
    assert {f["variant"] for f in meta["latency_model"]["p99"]["fits"]} == {"fast", "slow"}
    cond = meta["conditions"]["first/slow/cpu:1/b1"]  # how contended the host was while measuring
    assert cond["wall_s_per_batch"] >= 0.004 and 0 <= cond["cpu_share"]
    assert len(cond["windows"]) == by_batch[1].windows and cond["windows"][0]["batches"] >= QUICK.min_window_batches
    assert meta["sampling"]["window_batches"] == QUICK.window_batches and meta["sampling"]["max_seconds"] == 0.2


@pytest.mark.slow
def test_interrupted_run_resumes_with_only_the_missing_points(tmp_path):
    out = tmp_path / "ic.json"
    seen: list = []

    def interrupt_after_two(point):
        seen.append(point)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_profile(_req(out, variants=("fast", "slow"), isolate=False), on_point=interrupt_after_two)
    kept = load_profile(out).points
    assert [PointKey.of(p) for p in kept] == [PointKey.of(p) for p in seen]  # saved after every point

    again: list = []
    summary = run_profile(_req(out, variants=("fast", "slow"), isolate=False), on_point=again.append)
    assert summary.skipped == 2 and summary.measured == len(again) == 6 - 2
    final = load_profile(out)
    assert len(final.points) == 6
    assert {PointKey.of(p): p for p in final.points}[PointKey.of(kept[0])] == kept[0]  # untouched
    assert run_profile(_req(out, variants=("fast", "slow"), isolate=False)).measured == 0


@pytest.mark.slow
def test_show_prints_points_and_fit_errors_and_writes_plots(tmp_path, capsys):
    out = tmp_path / "ic.json"
    run_profile(_req(out, variants=("fast", "slow"), isolate=False))
    assert main(["profile", "show", str(out), "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "first/slow" in text and "LOO mean err" in text
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["identity-chain-first-latency.png", "identity-chain-first-pareto.png",
                    "identity-chain-second-latency.png", "identity-chain-second-pareto.png"]
    assert main(["profile", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"]


def test_samples_out_keeps_every_points_raw_latencies(tmp_path):
    samples = tmp_path / "raw" / "samples.jsonl"
    prof = run_profile(_req(tmp_path / "ic.json", variants=("fast",), isolate=False, samples_out=samples)).profile
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(lines) == len(prof.points)
    by_key = {(d["stage"], d["variant"], d["batch"], d["hardware"]): d for d in lines}
    for p in prof.points:
        line = by_key[(p.stage, p.variant, p.batch, p.hardware)]
        raw = line["latencies_s"]
        assert min(raw) > 0 and len(line["window_batches"]) == p.windows and line["stable"] == p.stable
        assert len(raw) >= sum(line["window_batches"])  # every batch timed, the final windows among them
        mine = raw[line["point_from"]:line["point_to"]]
        assert len(mine) == p.samples == sum(line["window_batches"][-QUICK.stable_windows:])
        assert percentile(sorted(mine), 50) == pytest.approx(p.latency_p50_s, abs=1e-6)  # stored to 0.1 µs
    assert "latencies_s" not in json.dumps(prof.metadata["conditions"])  # the profile keeps only percentiles


def test_gpu_flag_without_a_gpu_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without one
    rc = main(["profile", "--pipeline", "identity-chain", "--gpu", "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "finds no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(gpu_model() is None, reason="no GPU on this machine")
def test_gpu_hardware_is_profiled_and_labelled(tmp_path):
    from varipipe.pipelines.variants._torch_runtime import normalise_gpu_name

    hw = gpu_hardware(gpu_model())
    prof = run_profile(_req(tmp_path / "gpu.json", hardware=(hw,), variants=("fast",), isolate=False)).profile
    assert {p.hardware for p in prof.points} == {f"gpu:{normalise_gpu_name(gpu_model())}"}
