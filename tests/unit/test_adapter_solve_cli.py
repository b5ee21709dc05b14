"""``varipipe solve`` end to end on the checked-in fixtures (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from varipipe.adapter.optimizer import DEFAULT_SOLVER
from varipipe.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"


def solve_json(capsys, *args: str) -> dict:
    assert main(["solve", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_shape(capsys):
    out = solve_json(capsys, "--profiles", str(FIXTURES / "vision-caption-synthetic.json"), "--rps", "1",
                     "--sla", "3", "--cluster-cores", "2")
    assert {"status", "feasible", "stages", "predicted", "solve_time_s", "solver", "explanation"} <= set(out)
    assert out["status"] == "optimal" and out["feasible"] is True and out["solver"] == DEFAULT_SOLVER
    assert {"stage", "variant", "batch", "replicas", "hardware", "batch_wait_s"} <= set(out["stages"][0])
    assert set(out["predicted"]) == {"latency_s", "accuracy", "cost"}
    assert out["predicted"]["latency_s"] <= 3


@pytest.mark.parametrize("solver", ["dp", "cbc", "highs"])
def test_many_stage_synthetic_profile_with_each_solver(capsys, solver):
    out = solve_json(capsys, "--profiles", str(FIXTURES / "synthetic-9x9x6.json"), "--rps", "20", "--sla", "2",
                     "--cost-mode", "reserved", "--cluster-cores", "64", "--solver", solver)
    assert out["status"] == "optimal" and len(out["stages"]) == 9 and out["solver"] == solver


def test_pin_and_objectives(capsys):
    out = solve_json(capsys, "--profiles", str(FIXTURES / "vision-caption-synthetic.json"), "--rps", "0.5",
                     "--sla", "3", "--pin", "llm=smollm2-135m", "--objective", "min-cost", "--min-accuracy", "0.2",
                     "--accuracy", "multiply", "--cluster-cores", "2")
    assert out["stages"][2]["variant"] == "smollm2-135m"


def test_infeasible_is_reported_not_an_error(capsys):
    out = solve_json(capsys, "--profiles", str(FIXTURES / "tiny.json"), "--rps", "1", "--sla", "0.0001")
    assert out["status"] == "infeasible" and out["feasible"] is False and "SLA" in out["explanation"]


def test_text_output_explains(capsys):
    assert main(["solve", "--profiles", str(FIXTURES / "tiny.json"), "--rps", "5", "--sla", "1"]) == 0
    text = capsys.readouterr().out
    assert "OPTIMAL" in text and "vs SLA" in text and "runner-up" in text


def test_bad_profile_names_file_and_field(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "pipeline": "x", "points": [{"stage": "a"}]}))
    assert main(["solve", "--profiles", str(bad), "--rps", "1", "--sla", "1"]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "points[0].variant" in err


def test_unknown_pin_is_a_clear_error(capsys):
    assert main(["solve", "--profiles", str(FIXTURES / "tiny.json"), "--rps", "1", "--sla", "1",
                 "--pin", "stage0=nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_min_cost_without_floor_is_a_clear_error(capsys):
    assert main(["solve", "--profiles", str(FIXTURES / "tiny.json"), "--rps", "1", "--sla", "1",
                 "--objective", "min-cost"]) == 2
    assert "min_accuracy" in capsys.readouterr().err


def test_write_lp_dumps_named_constraints(capsys, tmp_path):
    lp = tmp_path / "model.lp"
    solve_json(capsys, "--profiles", str(FIXTURES / "tiny.json"), "--rps", "5", "--sla", "1", "--write-lp", str(lp))
    text = lp.read_text()
    assert "sla_end_to_end" in text and "cluster_capacity" in text and "one_config_stage0" in text


def test_sla_defaults_to_the_pipeline_spec(capsys):
    from varipipe.spec import find_spec

    out = solve_json(capsys, "--profiles", str(FIXTURES / "vision-caption-synthetic.json"), "--rps", "1",
                     "--cluster-cores", "2")
    sla = find_spec("vision-caption").sla.latency_s
    assert out["status"] == "optimal" and out["predicted"]["latency_s"] <= sla
    assert main(["solve", "--profiles", str(FIXTURES / "vision-caption-synthetic.json"), "--rps", "1",
                 "--cluster-cores", "2"]) == 0
    assert f"SLA {sla:g}s" in capsys.readouterr().out


def test_no_sla_and_no_spec_is_a_clear_error(capsys, tmp_path):
    doc = json.loads((FIXTURES / "vision-caption-synthetic.json").read_text())
    doc["pipeline"] = "not-a-bundled-pipeline"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    assert main(["solve", "--profiles", str(path), "--rps", "1"]) != 0
    err = capsys.readouterr().err
    assert "--sla" in err and "not-a-bundled-pipeline" in err
