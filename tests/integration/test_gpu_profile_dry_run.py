"""benchmarks/gpu_profile.sh, dry run: the GPU profile's code, on the CPU, on a simulated GPU host.

The script runs exactly as the lead runs it on the GPU host (``bash benchmarks/gpu_profile.sh OUT``,
from source, reading a carry folder made by ``gpu_inputs.prepare``), under a Python that cannot find
what the GPU host lacks (tests/fixtures/gpu_host/sitecustomize.py: Ray, llama.cpp, onnxruntime,
pydantic, scikit-image, OpenCV, the model packages, the editable install of varipipe). Without
CUDA it falls back to the dry run: every carried variant at batch 1 and 2 with tiny sample counts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varipipe.profiler import gpu_inputs
from varipipe.profiler.gpu_profile import RUN_ORDER, WATCHED_MODULES
from varipipe.profiler.store import default_profile_path, load_profile, save_profile
from varipipe.records import Profile, ProfilePoint, VariantSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GPU_HOST = REPO / "tests" / "fixtures" / "gpu_host"
# What travels with a device run, at most (tracked files + the carry), and what benchmarks/gpu_carry.sh
# allows so that the repository can grow: 14 MiB of room.
TRAVEL_LIMIT_BYTES = 64 * 2**20
TRAVEL_TARGET_BYTES = 50 * 2**20


# A variant whose CPU figure the carry's profile lacks: measured all the same, scored later by gpu_score.
NOT_YET_SCORED = ("detector", "yolov10n-256")


@pytest.fixture(scope="module")
def carry(tmp_path_factory) -> Path:
    """The carry as benchmarks/gpu_carry.sh makes it (every input: its size is the real one), its accuracy
    figures from the shipped profile less NOT_YET_SCORED's (which has no declared figure either)."""
    out = tmp_path_factory.mktemp("carry")
    shipped = load_profile(default_profile_path("vision-caption"), pipeline="vision-caption")
    older = dataclasses.replace(shipped, points=tuple(p for p in shipped.points
                                                      if (p.stage, p.variant) != NOT_YET_SCORED))
    save_profile(older, out.parent / "cpu-profile-without-one.json")
    gpu_inputs.prepare(out, "vision-caption", cpu_profile=out.parent / "cpu-profile-without-one.json",
                       log=lambda _: None)
    return out


def manifest_skipped(carry: Path) -> dict[str, str]:
    return json.loads((carry / "manifest.json").read_text())["skipped"]


def test_the_carry_fits_in_what_travels(carry):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    size = sum((REPO / p).stat().st_size for p in tracked.decode().split("\0") if p and (REPO / p).is_file())
    assert size + gpu_inputs.carry_bytes(carry) <= TRAVEL_TARGET_BYTES < TRAVEL_LIMIT_BYTES
    manifest = json.loads((carry / "manifest.json").read_text())
    weights = {(v["spec"]["fields"]["stage"], v["weights"]) for v in manifest["variants"]}
    # the detector's real weights travel; the classifiers and the LLM run their architectures
    assert weights == {("detector", gpu_inputs.REAL), ("classifier", gpu_inputs.RANDOM), ("llm", gpu_inputs.RANDOM)}
    assert (carry / "models" / "yolov10n-pt" / "yolov10n.pt").stat().st_size > 10e6
    assert manifest["skipped"] == {"llm/template": "no GPU path for its family"}  # string rules, no model


def test_darknet_models_travel_as_float16_or_as_their_cfg(tmp_path, monkeypatch):
    """Pipelines that still have darknet detectors (vision-caption-ci): YOLOv4-tiny as a float16 state dict
    that finds what the full weights find, YOLOv3-tiny as its cfg (random weights)."""
    from varipipe.pipelines.models import CACHE_ENV
    from varipipe.pipelines.variant import Payload, build_variant
    from varipipe.profiler.inputs import bundled_images

    assert gpu_inputs._carry_model("yolov4-tiny", tmp_path) == (gpu_inputs.REAL_FLOAT16, {})
    assert 11e6 < (tmp_path / "models" / "yolov4-tiny" / "yolov4-tiny.float16.pt").stat().st_size < 13e6
    assert not list((tmp_path / "models" / "yolov4-tiny").glob("*.weights"))
    assert gpu_inputs._carry_model("yolov3-tiny", tmp_path) == (
        gpu_inputs.RANDOM, {"weights": "random", "arch_config": "arch/yolov3-tiny.cfg"})
    assert not (tmp_path / "models" / "yolov3-tiny").exists()
    spec = VariantSpec("detector", "v4", "torch", "varipipe.pipelines.variants.detector_torch:make", input_size=416,
                       params={"model": "yolov4-tiny"})
    photos = [Payload(request_id=n, image=img) for n, img in bundled_images()]
    full = build_variant(spec)
    full.load()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "models"))
    carried = build_variant(spec)
    carried.load()  # from the copy: the float16 state dict, read back to float32
    assert [d.labels() for d in carried.infer(photos)] == [d.labels() for d in full.infer(photos)]


def test_dry_run_on_a_simulated_gpu_host(carry, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CARRY": str(carry), "PYTHONPATH": str(GPU_HOST)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_profile.sh"), str(out), "--dry-run"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    profile = load_profile(out / "vision-caption-cpu-1.json", pipeline="vision-caption")
    meta = profile.metadata
    assert meta["dry_run"] is True and meta["failed"] == {} and meta["skipped"] == manifest_skipped(carry)
    assert meta["cut_short"] == {} and "hard_stop" not in meta
    # The GPU path imported none of what the GPU host lacks (they were unfindable, too).
    assert meta["modules_loaded"] == [] and set(WATCHED_MODULES) >= {"ray", "llama_cpp"}
    manifest = json.loads((carry / "manifest.json").read_text())
    carried = [v["spec"]["fields"] for v in manifest["variants"]]
    assert {v["stage"] for v in carried} == {"detector", "classifier", "llm"}
    unscored = [ProfilePoint(**{**u, "accuracy": 0.0, "accuracy_kind": "declared", "accuracy_source": "-"})
                for u in meta["unscored"]]
    # Every variant measured: with the CPU variant's figure, or kept apart where it has none yet.
    assert {(p.stage, p.variant, p.batch) for p in (*profile.points, *unscored)} == {
        (v["stage"], v["name"], b) for v in carried for b in (1, 2)}
    assert {(u.stage, u.variant) for u in unscored} == {
        (v["spec"]["fields"]["stage"], v["spec"]["fields"]["name"]) for v in manifest["variants"]
        if v["accuracy"] is None} == {NOT_YET_SCORED}
    assert {p.hardware for p in profile.points} == {"cpu:1"}
    # The ladder first, so that a run cut short keeps the most useful points.
    groups = [next(i for i, (stage, models) in enumerate(RUN_ORDER) if key.startswith(stage + "/")
                   and (not models or any(f"/{m}-" in key for m in models))) for key in meta["order"]]
    assert groups == sorted(groups) and meta["order"][0].startswith("detector/yolov10n-")
    for p in profile.points:
        start = profile.replica_start(p.stage, p.variant, p.hardware)
        assert start is not None and start.cold_start_s >= start.load_s > 0 and start.batch_change_s(2) > 0
        assert "accuracy does not depend on the hardware" in p.accuracy_source
    for p in (*profile.points, *unscored):
        assert p.memory_mb >= 0 and p.samples >= 1
    for key in meta["order"]:  # every variant's start-up, scored or not
        start = meta["replica_start"][f"{key}/cpu:1"]
        assert start["cold_start_s"] >= start["load_s"] > 0 and set(start["warmup_s"]) == {"1", "2"}
    llm = [note for key, note in meta["accuracy_note"].items() if key.startswith("llm/")]
    assert llm and all("not the Q4 variant" in note for note in llm)  # each point's accuracy_source ends so
    assert {meta["weights"][key] for key in meta["order"] if key.startswith("detector/")} == {gpu_inputs.REAL}
    inputs = manifest["inputs"]
    assert meta["gpu_check"]["variant"].startswith("yolov10n-")
    assert meta["gpu_check"]["images_with_the_same_labels"] == f"{inputs}/{inputs}"
    samples = (out / "vision-caption-cpu-1.samples.jsonl").read_text().splitlines()
    assert len(samples) == len(profile.points) + len(unscored)
    log = (out / "gpu_profile.log").read_text()
    assert "done:" in log and "cold start" in log

    # Once the CPU profile has their figures, gpu_score moves the unscored points into the profile.
    figures = [ProfilePoint(**{**u.to_dict(), "hardware": "cpu:1", "accuracy": 0.2, "accuracy_kind": "measured",
                               "accuracy_source": "a later CPU run"}) for u in unscored]
    save_profile(Profile("vision-caption", tuple(figures), {}, {}), tmp_path / "cpu.json")
    done = subprocess.run([sys.executable, "-m", "varipipe.profiler.gpu_score", str(out / "vision-caption-cpu-1.json"),
                           "--cpu-profile", str(tmp_path / "cpu.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = load_profile(out / "vision-caption-cpu-1.json", pipeline="vision-caption")
    assert len(scored.points) == len(profile.points) + len(unscored) and scored.metadata["unscored"] == []
    later = [p for p in scored.points if p.accuracy_source.startswith("a later CPU run")]
    assert len(later) == len(unscored) and all("depend on the hardware" in p.accuracy_source for p in later)
