"""benchmarks/gpu_profile.sh, dry run: the GPU profile's code, on the CPU, on a simulated GPU host.

The script runs exactly as the lead runs it on the GPU host (``bash benchmarks/gpu_profile.sh OUT``,
from source, reading a carry folder made by ``gpu_inputs.prepare``), under a Python that cannot find
what the GPU host lacks (tests/fixtures/gpu_host/sitecustomize.py: Ray, llama.cpp, onnxruntime,
pydantic, scikit-image, OpenCV, the model packages, the editable install of varipipe). Without
CUDA it falls back to the dry run: every carried variant at batch 1 and 2 with tiny sample counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varipipe.profiler import gpu_inputs
from varipipe.profiler.gpu_profile import WATCHED_MODULES
from varipipe.profiler.store import load_profile

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GPU_HOST = REPO / "tests" / "fixtures" / "gpu_host"
CARRIED_INPUTS = 4  # the dry run needs a few inputs, not the profiler's 14
# What travels with a device run, at most (tracked files + the carry).
TRAVEL_LIMIT_BYTES = 64 * 2**20


@pytest.fixture(scope="module")
def carry(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("carry")
    gpu_inputs.prepare(out, "vision-caption", max_inputs=CARRIED_INPUTS, log=lambda _: None)
    return out


def test_the_carry_fits_in_what_travels(carry):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    size = sum((REPO / p).stat().st_size for p in tracked.decode().split("\0") if p and (REPO / p).is_file())
    assert size + gpu_inputs.carry_bytes(carry) < TRAVEL_LIMIT_BYTES
    manifest = json.loads((carry / "manifest.json").read_text())
    assert {v["weights"] for v in manifest["variants"]} == {"real", "random"}
    assert (carry / "models" / "yolov3-tiny" / "yolov3-tiny.weights").stat().st_size > 30e6  # the real weights


def test_dry_run_on_a_simulated_gpu_host(carry, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CARRY": str(carry), "PYTHONPATH": str(GPU_HOST)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_profile.sh"), str(out), "--dry-run"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    profile = load_profile(out / "vision-caption-cpu-1.json", pipeline="vision-caption")
    meta = profile.metadata
    assert meta["dry_run"] is True and meta["failed"] == {} and meta["skipped"] == {}
    # The GPU path imported none of what the GPU host lacks (they were unfindable, too).
    assert meta["modules_loaded"] == [] and set(WATCHED_MODULES) >= {"ray", "llama_cpp"}
    carried = [v["spec"]["fields"] for v in json.loads((carry / "manifest.json").read_text())["variants"]]
    assert {(p.stage, p.variant, p.batch) for p in profile.points} == {
        (v["stage"], v["name"], b) for v in carried for b in (1, 2)}
    assert {p.hardware for p in profile.points} == {"cpu:1"}
    for p in profile.points:
        start = profile.replica_start(p.stage, p.variant, p.hardware)
        assert start is not None and start.cold_start_s >= start.load_s > 0 and start.batch_change_s(2) > 0
        assert p.memory_mb >= 0 and p.samples >= 1
        assert "accuracy does not depend on the hardware" in p.accuracy_source
    llm = [p for p in profile.points if p.stage == "llm"]
    assert llm and all("not the Q4 variant" in p.accuracy_source for p in llm)
    assert {meta["weights"][f"{p.stage}/{p.variant}"] for p in profile.points if p.stage == "detector"} == {"real"}
    assert meta["gpu_check"]["images_with_the_same_labels"] == f"{CARRIED_INPUTS}/{CARRIED_INPUTS}"
    samples = (out / "vision-caption-cpu-1.samples.jsonl").read_text().splitlines()
    assert len(samples) == len(profile.points)
    log = (out / "gpu_profile.log").read_text()
    assert "done:" in log and "cold start" in log
