"""The offline experiment report: one self-contained HTML file from an experiment's output folder."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys

import pytest

from varipipe.errors import VaripipeError
from varipipe.loadgen.report_html import REPORT_NAME, report_data, write_report


def _series(n: int, cost: float) -> dict:
    return {"arrivals": [10.0] * n, "within_sla": [9.0] * n, "dropped": [1.0] * n, "accuracy_sum": [4.0] * n,
            "completed": [9.0] * n, "sla_attainment": [0.9] * n, "mean_accuracy": [0.44] * n,
            "cost": [cost] * (n - 1) + [math.nan], "predicted_rps": [0.2] * n, "replicas": [3.0] * n,
            "p99_latency_s": [None] * n, "step_s": [60.0]}


def _row(policy: str, sla: str, attainment: float) -> dict:
    return {"policy": policy, "sla": sla, "sla_s": 2.0, "mode": "sim", "requests": 600, "completed": 590,
            "dropped": 10, "sla_attainment": attainment, "p99_latency_s": 1.5, "mean_latency_s": 0.5,
            "mean_accuracy": 0.44, "mean_cost": None, "cost_unit": "reserved cores", "decisions": 4, "wall_s": 1.0}


@pytest.fixture
def results_dir(tmp_path):
    from PIL import Image

    rows = [_row("ipa", "tight", 0.99), _row("fa2-low", "tight", 0.95), _row("rim", "tight", 0.9)]
    (tmp_path / "results.json").write_text(json.dumps({"meta": {"seed": 1, "mode": "sim", "command": "x </script>"},
                                                       "results": rows}))
    for policy, cost in (("ipa", 3.0), ("fa2-low", 2.0)):  # rim's series is missing on purpose
        p = tmp_path / "series" / "tight" / f"{policy}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_series(10, cost)))  # json writes NaN, as the runner does
    (tmp_path / "series" / "tight" / "ipa.timeline.json").write_text(json.dumps(
        [{"t": 0.0, "stages": [{"stage": "a", "variant": "v1", "batch": 1, "replicas": 1}], "cost": 1.0,
          "accuracy": 0.5, "status": "optimal"}]))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    (tmp_path / "summary.png").write_bytes(buf.getvalue())
    (tmp_path / "over_time_other.png").write_bytes(buf.getvalue())  # not an SLA of these results
    return tmp_path


def _embedded(page: str) -> dict:
    m = re.search(r"window\.VP_DATA = (\{.*?\});\n", page)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def test_report_is_one_offline_file(results_dir):
    path = write_report(results_dir)
    assert path == results_dir / REPORT_NAME
    page = path.read_text(encoding="utf-8")
    assert "{{" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "the report must not fetch anything"
    assert "<script src" not in page and page.count("</script>") == 1  # the command's "</script>" is escaped
    data = _embedded(page)
    assert [r["policy"] for r in data["results"]] == ["ipa", "fa2-low", "rim"]
    assert data["series"]["tight"]["ipa"]["cost"][-1] is None  # NaN -> null
    assert [f["name"] for f in data["figures"]] == ["summary.png"]
    assert data["figures"][0]["src"].startswith("data:image/png;base64,")
    assert any("tight/rim" in n for n in data["notes"])
    assert list(data["timelines"]["tight"]) == ["ipa"]


def test_timeline_rows_keep_configuration_changes_only():
    from varipipe.loadgen.experiment import timeline_rows
    from varipipe.records import Decision, StageDecision

    def d(t, replicas, cost):
        return Decision(stages=(StageDecision("a", "v1", 2, replicas, "cpu:1", 0.0),), predicted_cost=cost, time_s=t)

    rows = timeline_rows([d(0, 1, 1.0), d(10, 1, 1.5), d(20, 2, math.nan)])
    assert [(r["t"], r["stages"][0]["replicas"], r["cost"]) for r in rows] == [(0, 1, 1.0), (20, 2, None)]


def test_report_data_names_a_missing_results_file(tmp_path):
    with pytest.raises(VaripipeError, match="results.json"):
        report_data(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(VaripipeError, match="expected"):
        report_data(tmp_path)


def test_report_writer_imports_neither_pipelines_nor_ray(results_dir):
    code = ("import sys\nfrom varipipe.loadgen.report_html import write_report\n"
            f"write_report({str(results_dir)!r})\n"
            "print(','.join(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'varipipe.pipelines')))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


@pytest.mark.slow  # a short simulation and the runner's matplotlib plots: ~4 s
def test_experiment_command_writes_the_report(tmp_path, capsys):
    from pathlib import Path

    from varipipe.cli import main

    profile = Path(__file__).resolve().parents[1] / "fixtures" / "loadgen" / "vision-caption-synthetic.json"
    trace = tmp_path / "trace.txt"
    trace.write_text("\n".join(["2"] * 60 + ["6"] * 60))
    out = tmp_path / "exp"
    rc = main(["experiment", "--profiles", str(profile), "--trace", str(trace), "--sla", "4", "--policies", "fa2-low",
               "--solver", "dp", "--cost-mode", "reserved", "--cluster-cores", "40", "--out", str(out)])
    assert rc == 0 and str(out / REPORT_NAME) in capsys.readouterr().out
    data = _embedded((out / REPORT_NAME).read_text(encoding="utf-8"))
    assert data["results"][0]["policy"] == "fa2-low" and data["series"]["sla-4s"]["fa2-low"]["arrivals"]
    assert {f["name"] for f in data["figures"]} == {"summary.png", "load.png", "over_time_sla-4s.png"}
    assert data["timelines"]["sla-4s"]["fa2-low"][0]["stages"]
