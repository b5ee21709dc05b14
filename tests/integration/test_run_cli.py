"""``varipipe run`` and ``varipipe models prepare`` end to end, on real weights (no Ray)."""

from __future__ import annotations

import json

import pytest

from varipipe.cli import main

pytestmark = pytest.mark.slow

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _run_json(capsys, *args: str) -> dict:
    assert main(["run", "chelsea", "--pipeline", "vision-caption-ci", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_prints_every_stage_of_chelsea(capsys):
    result = _run_json(capsys)
    stages = {s["stage"]: s for s in result["stages"]}
    assert list(stages) == ["detector", "classifier", "llm"]
    assert "cat" in stages["detector"]["summary"]
    assert stages["classifier"]["output"]["classifications"][0]["class_id"] in IMAGENET_CATS
    assert stages["llm"]["output"]["text"].startswith("The photo shows")
    assert stages["llm"]["output"]["tokens"] <= 8  # the CI spec's token budget
    assert all(s["seconds"] > 0 for s in result["stages"])


def test_run_switches_variants(capsys):
    result = _run_json(capsys, "--variants", "detector=yolov3-tiny-416,classifier=efficientnet-lite0")
    assert [s["variant"] for s in result["stages"]] == ["yolov3-tiny-416", "efficientnet-lite0", "smollm2-135m"]


def test_run_human_output(capsys):
    assert main(["run", "coffee", "--pipeline", "vision-caption-ci"]) == 0
    out = capsys.readouterr().out
    assert "detector" in out and "classifier" in out and "The photo shows" in out


def test_models_prepare_is_idempotent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VARIPIPE_CACHE", str(tmp_path))
    assert main(["models", "prepare", "--pipeline", "vision-caption-ci", "--quiet"]) == 0
    made = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert {"mobilenet-v2.v2.onnx", "efficientnet-lite0.v2.onnx", "yolov10n.v1.onnx"} <= set(made)
    assert main(["models", "prepare", "--pipeline", "vision-caption-ci", "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == made
    assert "5 model(s) ready" in capsys.readouterr().out
