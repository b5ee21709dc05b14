"""The load-generator commands end to end on small inputs (no Ray, no network)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from varipipe.cli import main
from varipipe.loadgen.replayer import RequestRecord, arrivals_from_log

PROFILE = str(Path(__file__).resolve().parents[1] / "fixtures" / "loadgen" / "vision-caption-synthetic.json")


def _trace(tmp_path: Path) -> str:
    f = tmp_path / "t.txt"
    f.write_text("\n".join(["3"] * 40 + ["6"] * 40))
    return str(f)


def test_simulate_json_and_dump(tmp_path, capsys):
    dump = tmp_path / "req.csv"
    rc = main(["simulate", "--profiles", PROFILE, "--trace", _trace(tmp_path), "--policy", "ray", "--sla", "5",
               "--cost-mode", "reserved", "--cluster-cores", "40", "--json", "--series-step", "10",
               "--dump-requests", str(dump)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for k in ("requests", "completed", "dropped", "sla_attainment", "p99_latency_s", "mean_accuracy", "mean_cost",
              "decisions", "series"):
        assert k in out
    assert out["completed"] + out["dropped"] == out["requests"] > 0
    assert len(out["series"]["arrivals"]) == 8
    rows = list(csv.DictReader(open(dump)))
    assert len(rows) == out["requests"] and "classifier_batch" in rows[0]


def test_simulate_from_replayer_log(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(RequestRecord(i, i * 0.2, 5 + i * 0.2, 0.1, 200).to_json() + "\n" for i in range(50)))
    arr = arrivals_from_log(log)
    assert arr[0] == 0 and len(arr) == 50
    rc = main(["simulate", "--profiles", PROFILE, "--replay-log", str(log), "--policy", "ray", "--sla", "5",
               "--cost-mode", "reserved", "--cluster-cores", "40", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["requests"] == 50


def test_simulate_bad_trace_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nx\n")
    rc = main(["simulate", "--profiles", PROFILE, "--trace", str(bad), "--policy", "ray", "--sla", "5"])
    assert rc == 2 and "bad.txt:2" in capsys.readouterr().err


def test_experiment_sim_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "exp"
    rc = main(["experiment", "--profiles", PROFILE, "--trace", _trace(tmp_path), "--sla", "4,8",
               "--policies", "fa2-low,ray", "--solver", "dp", "--cost-mode", "reserved", "--cluster-cores", "40",
               "--mode", "sim", "--seed", "3", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["seed"] == 3 and len(doc["meta"]["profile_sha256"]) == 64
    assert {(r["policy"], r["sla"]) for r in doc["results"]} == {
        ("fa2-low", "sla-4s"), ("ray", "sla-4s"), ("fa2-low", "sla-8s"), ("ray", "sla-8s")}
    assert len({r["requests"] for r in doc["results"]}) == 1
    assert (out / "results.csv").exists() and (out / "summary.png").exists() and (out / "load.png").exists()


def test_experiment_scenario_by_name_runs_a_part_of_its_window_at_the_full_scale(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the packaged scenario and trace are found from any folder
    out = tmp_path / "exp"
    rc = main(["experiment", "--scenario", "twitter-eval", "--profiles", PROFILE, "--policies", "fa2-low",
               "--duration", "120", "--out", str(out)])
    assert rc == 0
    resolved = json.loads((out / "results.json").read_text())["meta"]["resolved"]
    assert resolved["trace"] == "twitter" and resolved["part_of_window_s"] == [0, 120]
    assert resolved["run_scale"] == resolved["scale"]  # the part keeps the whole window's scale


def test_simulate_live_start_serves_the_default_decision_until_the_loop_first_steps(tmp_path, capsys):
    from varipipe.loadgen.runs import live_start
    from varipipe.pipelines.serve_config import default_decision
    from varipipe.spec import find_spec

    first_s, initial = live_start("vision-caption", 10.0, 3)
    assert 0.0 <= first_s < 10.0 and first_s == live_start("vision-caption", 10.0, 3)[0]  # drawn from the seed
    assert initial == default_decision(find_spec("vision-caption"))
    assert live_start("vision-caption", 10.0, 3, lead_s=5.0)[0] == first_s + 5.0

    def replicas(start: str) -> list[float]:
        rc = main(["simulate", "--trace", _trace(tmp_path), "--policy", "ipa", "--sla", "3", "--cost-mode", "shared",
                   "--seed", "3", "--loop-start", start, "--json"])
        assert rc == 0
        return json.loads(capsys.readouterr().out)["series"]["replicas"]

    default = sum(s.replicas for s in initial.stages)
    live = replicas("live")
    assert live[:int(first_s)] == [default] * int(first_s)  # the default decision, untouched by the policy
    assert live[int(first_s) + 1] != default  # then the policy's own plan (4 replicas here)
    assert replicas("warm")[0] != default  # warm: the policy's plan from t = 0
