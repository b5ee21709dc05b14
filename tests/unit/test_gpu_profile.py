"""The GPU profile's bookkeeping without a GPU or models: its order, its hard stop, scoring points later."""

from __future__ import annotations

import json
import signal
import threading

import pytest

from tests.unit.profile_points import point
from varipipe.profiler import gpu_profile as gp
from varipipe.profiler import gpu_score
from varipipe.profiler.gpu_inputs import CarriedVariant
from varipipe.profiler.store import load_profile, save_profile
from varipipe.records import Accuracy, AccuracyKind, Profile, VariantSpec


def _carried(stage: str, name: str, model: str) -> CarriedVariant:
    return CarriedVariant(VariantSpec(stage, name, "torch", "m:f", params={"model": model}), "real", None, "onnx")


def test_the_ladder_runs_first_then_classifiers_llms_and_the_other_detectors():
    spec_order = [_carried("detector", "v3-320", "yolov3-tiny"), _carried("detector", "v4-320", "yolov4-tiny"),
                  _carried("detector", "v10-320", "yolov10n"), _carried("classifier", "c", "mobilenet-v2"),
                  _carried("llm", "s", "smollm2-135m-instruct-q4_1"), _carried("detector", "v4-416", "yolov4-tiny"),
                  _carried("llm", "q", "qwen2.5-coder-0.5b-instruct-q4_k_m"), _carried("detector", "v10-640", "yolov10n")]
    assert [cv.spec.name for cv in gp.run_order(spec_order)] == [
        "v10-320", "v10-640", "v4-320", "v4-416", "c", "q", "s", "v3-320"]


def test_the_hard_stop_interrupts_whatever_the_run_is_waiting_on():
    never = threading.Event()
    try:
        with pytest.raises(gp.HardStop, match="the stop"):
            gp.hard_stop_after(0.05, "the stop")
            never.wait(60)  # a compile or a kernel that would outlast the run
    finally:
        gp._no_hard_stop()


def test_the_hard_stop_waits_for_a_save_to_finish(tmp_path, monkeypatch):
    """A save under way is not cut in half: a ring during it is raised once the file is written."""
    written = []

    def write_while_it_rings(out, pipeline, points, metadata):
        signal.raise_signal(signal.SIGALRM)  # the alarm rings in here
        written.append(out)

    monkeypatch.setattr(gp, "write_results", write_while_it_rings)
    state = gp._State(tmp_path / "p.json", tmp_path / "s.jsonl", "vision-caption", {})
    try:
        gp.hard_stop_after(60, "the stop")
        with pytest.raises(gp.HardStop, match="the stop"):
            state.save()
    finally:
        gp._no_hard_stop()
    assert written == [tmp_path / "p.json"]


def _measured(variant: str, batch: int) -> dict:
    p = point(stage="detector", variant=variant, batch=batch, hardware="gpu:h200").to_dict()
    return {**{k: v for k, v in p.items() if not k.startswith("accuracy")}, **gp.UNSCORED}


def test_unscored_points_get_the_cpu_figure_once_it_exists(tmp_path):
    note = gp.accuracy_note("onnx", "its real weights", "gpu:h200", "float16")
    scored = gp.scored_point(_measured("a", 1), Accuracy(0.4, AccuracyKind.DECLARED, "paper"), note)
    meta = {"accuracy_note": {"detector/b": note, "detector/c": note},
            "unscored": [_measured("b", 1), _measured("b", 2), _measured("c", 1)]}
    gp.write_results(tmp_path / "gpu.json", "vision-caption", [scored], meta)
    figures = {("detector", "b"): Accuracy(0.3, AccuracyKind.MEASURED, "eval set dev split")}
    pipeline, points, metadata, path = gpu_score.read_result(tmp_path / "gpu.json")
    done = gpu_score.score(points, metadata, figures, "cpu.json")
    assert (done.moved, done.left) == (2, 1)
    assert [(p.variant, p.batch, p.accuracy) for p in done.points] == [("a", 1, 0.4), ("b", 1, 0.3), ("b", 2, 0.3)]
    assert done.points[1].accuracy_source == f"eval set dev split {note}"
    assert [u["variant"] for u in done.metadata["unscored"]] == ["c"]
    assert done.metadata["scored_later"] == [{"points": 2, "figures_from": "cpu.json"}]


def test_a_run_without_a_scored_point_keeps_its_metadata_and_can_be_scored_later(tmp_path):
    note = gp.accuracy_note("onnx", "its real weights", "gpu:h200", "float16")
    written = gp.write_results(tmp_path / "vision-caption-gpu-h200.json", "vision-caption", [],
                               {"accuracy_note": {"detector/yolov10n-320": note},
                                "unscored": [_measured("yolov10n-320", 1)]})
    assert written == tmp_path / "vision-caption-gpu-h200.metadata.json"
    assert not (tmp_path / "vision-caption-gpu-h200.json").exists()
    cpu = Profile("vision-caption", (point(stage="detector", variant="yolov10n-320", accuracy=0.25,
                                           accuracy_kind="measured", accuracy_source="dev split"),), {}, {})
    save_profile(cpu, tmp_path / "cpu.json")
    assert gpu_score.main([str(written), "--cpu-profile", str(tmp_path / "cpu.json")]) == 0
    prof = load_profile(tmp_path / "vision-caption-gpu-h200.json", pipeline="vision-caption")
    assert [(p.variant, p.accuracy, p.hardware) for p in prof.points] == [("yolov10n-320", 0.25, "gpu:h200")]
    assert prof.metadata["unscored"] == [] and not written.exists()
    assert json.loads(json.dumps(prof.metadata["latency_model"]))  # refitted with the new points
