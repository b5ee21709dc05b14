"""Scenario validation and resolution, the sim experiment runner, records -> metrics, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from varipipe.adapter.policies import RayPolicy
from varipipe.errors import ConfigError
from varipipe.loadgen.experiment import (
    _config_url,
    load_peaks,
    metrics_from_records,
    run_sim,
    variant_switches,
    write_results,
)
from varipipe.loadgen.replayer import RequestRecord
from varipipe.loadgen.report import plot_all
from varipipe.loadgen.runs import SimSettings, policy_context, run_policy
from varipipe.loadgen.scenario import (
    fastest_path_s,
    load_scenario,
    parse_scenario,
    peak_cores_extremes,
    peak_cores_largest,
    resolve,
)
from varipipe.loadgen.traces import Trace, arrival_times
from varipipe.profiler.store import load_profile
from varipipe.records import Decision, StageDecision

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "tests" / "fixtures" / "loadgen" / "vision-caption-synthetic.json"
SCENARIO = ROOT / "loadgen" / "scenarios" / "twitter-eval.yaml"


def _scenario_dict() -> dict:
    return yaml.safe_load(SCENARIO.read_text())


def test_shipped_scenario_is_valid_and_uses_the_eval_days():
    sc = load_scenario(SCENARIO)
    assert (sc.window.start_s, sc.window.duration_s) == (1_036_800, 172_800)
    assert set(sc.policies) >= {"ipa", "fa2-low", "fa2-high", "rim", "ray", "oracle"}
    assert sc.cluster_peak_fraction >= 0.8


@pytest.mark.parametrize("field,value,needle", [
    ("cluster_peak_fraction", 0.5, "0.5"), ("target_peak_rps", -3, "-3"), ("arrivals", "gamma", "gamma")])
def test_bad_scenario_quotes_the_value(field, value, needle):
    d = _scenario_dict() | {field: value}
    with pytest.raises(ConfigError) as e:
        parse_scenario(d, "s.yaml")
    assert "s.yaml" in str(e.value) and field in str(e.value) and needle in str(e.value)


def test_resolve_on_another_trace(tmp_path):
    prof = load_profile(PROFILE)
    f = tmp_path / "short.txt"
    f.write_text("\n".join(str(x) for x in [10, 20, 80, 40] * 100))
    sc = parse_scenario(_scenario_dict())
    rs = resolve(sc, prof, str(f))
    assert rs.window_duration_s == 400 and rs.scale == pytest.approx(sc.target_peak_rps / 80)
    assert any("shorter" in n for n in rs.notes)
    assert rs.slas["ipa-5x"] == pytest.approx(5 * fastest_path_s(prof, "p50"))
    assert rs.slas["tight-2x-p99"] == pytest.approx(2 * fastest_path_s(prof, "p99"))
    # The non-binding row's cluster is sized so that its own peak needs >= 80 % of it (it had been
    # divided by the binding row's cluster, which the queueing wait made the larger one here).
    legacy = resolve(sc, prof, str(f), "non-binding")
    assert legacy.peak_cores_largest / legacy.cluster_cores >= 0.8


def test_cluster_rows_binding_midpoint_and_non_binding_largest():
    prof = load_profile(PROFILE)
    sc = load_scenario(SCENARIO)
    assert [c.name for c in sc.cluster_rows()] == ["binding", "non-binding"]
    binding, legacy = resolve(sc, prof), resolve(sc, prof, cluster="non-binding")
    assert binding.cluster == "binding" and legacy.cluster == "non-binding"
    cheap, accurate = peak_cores_extremes(prof, sc.target_peak_rps, binding.slas["ipa-5x"], sc.cost_mode)
    assert cheap < accurate  # the synthetic ladder's most accurate configuration costs more
    assert (binding.peak_cores_cheapest, binding.peak_cores_accurate) == (cheap, accurate)
    assert binding.cluster_cores == (cheap + accurate) // 2
    assert cheap <= binding.cluster_cores < accurate  # the most accurate does not fit at the peak
    assert legacy.cluster_cores == int(legacy.peak_cores_largest / 0.85)
    with pytest.raises(ConfigError, match="no cluster row 'huge'.*binding, non-binding"):
        resolve(sc, prof, cluster="huge")


def test_scenario_without_cluster_rows_keeps_the_original_rule():
    d = _scenario_dict()
    d.pop("clusters")
    sc = parse_scenario(d | {"cluster_peak_fraction": 0.9})
    [row] = sc.cluster_rows()
    assert (row.rule, row.peak_fraction) == ("largest", 0.9)
    with pytest.raises(ConfigError, match="cluster rule names repeat"):
        parse_scenario(_scenario_dict() | {"clusters": [{"name": "a", "rule": "midpoint"}] * 2})


def test_variant_switches_count_variant_changes_only():
    def d(t, *variants, replicas=1):
        return Decision(stages=tuple(StageDecision(stage=f"s{i}", variant=v, batch=1, replicas=replicas)
                                     for i, v in enumerate(variants)), time_s=t)
    timeline = [d(0, "a", "x"), d(10, "a", "x", replicas=3), d(20, "b", "x"), d(30, "b", "x"), d(40, "a", "y")]
    assert variant_switches(timeline) == 2  # the replica change is not a switch
    assert variant_switches([]) == 0


def test_load_peaks_count_the_days_of_a_diurnal_trace():
    t = np.arange(2 * 86_400)
    rng = np.random.default_rng(0)
    diurnal = rng.poisson(20 + 15 * np.sin(2 * np.pi * t / 86_400))  # two days, one peak each
    assert load_peaks(diurnal) == 2
    assert load_peaks(np.zeros(100)) == 0
    assert load_peaks(np.array([1, 1, 1, 9, 9, 9, 1, 1, 9, 9, 1] * 10)) >= 1


def test_shipped_scenario_resolves_its_packaged_trace_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_scenario("twitter-eval") == load_scenario(SCENARIO)  # by name, from any folder
    rs = resolve(load_scenario("twitter-eval"), load_profile(PROFILE))
    assert (rs.window_start_s, rs.window_duration_s) == (1_036_800, 172_800)  # days 12-13, not a shorter file
    assert rs.to_dict()["trace"] == "twitter"


def test_scenario_paths_are_relative_to_the_scenario_file(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "mine.txt").write_text("\n".join(str(x) for x in [5, 10] * 50))
    (folder / "s.yaml").write_text(yaml.safe_dump(_scenario_dict() | {"trace": "mine.txt"}))
    monkeypatch.chdir(tmp_path)  # not the scenario's folder
    rs = resolve(load_scenario(folder / "s.yaml"), load_profile(PROFILE))
    assert rs.window_duration_s == 100 and rs.window_peak_rps == 10


def test_peak_cores_grow_with_load():
    prof = load_profile(PROFILE)
    assert peak_cores_largest(prof, 40, 5.0, 0.8) > peak_cores_largest(prof, 4, 5.0, 0.8)


def test_run_policy_takes_a_policy_built_by_the_caller():
    prof = load_profile(PROFILE)
    times = arrival_times(Trace(np.full(60, 3.0)), "poisson", 1)
    settings = SimSettings(sla_s=2.0, cost_mode="reserved", cluster_cores=40, seed=1)
    mine = RayPolicy(policy_context(prof, settings))
    result = run_policy(prof, times, "ray", settings, policy=mine)
    assert set(mine.metrics) == set(prof.stages)  # the simulation stepped this very object
    assert result.requests == len(times)
    default = run_policy(prof, times, "ray", settings)
    assert default.sla_attainment == result.sla_attainment  # same rule, same seed


def test_run_sim_same_arrivals_for_every_policy(tmp_path):
    prof = load_profile(PROFILE)
    times = arrival_times(Trace(np.full(120, 3.0)), "poisson", 1)
    base = SimSettings(sla_s=1.0, cost_mode="reserved", cluster_cores=40, seed=1, policy_options={"solver": "dp"})
    outs = run_sim(prof, times, ["fa2-low", "ray"], {"a": 3.0, "b": 6.0}, base)
    assert [(o.sla, o.policy) for o in outs] == [("a", "fa2-low"), ("a", "ray"), ("b", "fa2-low"), ("b", "ray")]
    assert len({o.requests for o in outs}) == 1
    assert all(o.completed + o.dropped == o.requests for o in outs)
    paths = write_results(tmp_path, outs, {"seed": 1, "git_commit": "x"})
    doc = json.loads(paths["json"].read_text())
    assert doc["meta"]["seed"] == 1 and len(doc["results"]) == 4
    assert (tmp_path / "series" / "a" / "ray.json").exists()
    pngs = plot_all(outs, tmp_path)
    assert all(p.exists() and p.stat().st_size > 1000 for p in pngs)


def test_metrics_from_records():
    prof = load_profile(PROFILE)
    v = {"detector": "yolov3-tiny-320", "classifier": "mobilenetv2", "llm": "smollm2-135m"}
    recs = [RequestRecord(0, 0.1, 0.1, 0.5, 200, v), RequestRecord(1, 0.6, 0.6, 3.0, 200, v),
            RequestRecord(2, 1.2, 1.2, 0.1, 503), RequestRecord(3, 1.5, 1.5, 0.2, 200)]
    m, s = metrics_from_records(recs, 1.0, prof, 2.0, cost_samples=[(0.0, 2.0), (1.0, 4.0)])
    assert m["requests"] == 4 and m["completed"] == 3 and m["dropped"] == 1 and m["cost_unit"] == "CPU-seconds per second"
    assert m["sla_attainment"] == pytest.approx(2 / 4)
    assert m["mean_accuracy"] == pytest.approx(0.55 * 0.72 * 0.6)
    assert m["mean_cost"] == pytest.approx(3.0)
    assert s.arrivals.tolist() == [2, 2]


@pytest.mark.parametrize("endpoint,config", [
    ("http://127.0.0.1:8000/vision-caption", "http://127.0.0.1:8000/config"),
    ("http://127.0.0.1:8000/ocr/doc-ocr", "http://127.0.0.1:8000/ocr/config"),
])
def test_config_url_sits_beside_the_endpoint_under_its_route_prefix(endpoint, config):
    assert _config_url(endpoint) == config


def test_results_name_the_commit_and_say_when_the_checkout_was_modified(tmp_path):
    import subprocess

    from varipipe.loadgen.experiment import checkout_relative, git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    head = git_commit(tmp_path)
    assert len(head) == 40 and "+" not in head
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == head + "+dirty"
    assert git_commit(tmp_path / "no-such-dir") == ""
    root = Path(__file__).resolve().parents[2]
    assert checkout_relative(root / "profiler" / "profiles" / "x.json") == "profiler/profiles/x.json"
    assert checkout_relative(tmp_path / "f.txt") == str(tmp_path / "f.txt")

