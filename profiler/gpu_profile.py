"""Profile every carried variant on this host's GPU with the PyTorch runtimes, from source.

Made for a GPU host that has torch and transformers but no model packages, no
Ray, no llama.cpp and no network (``benchmarks/gpu_profile.sh`` runs it there;
``gpu_inputs.prepare`` makes what it reads). It measures with the profiler's
own code path -- ``measure.measure_variant`` in this process, the same
``build_variant`` / ``infer`` a replica runs -- and writes the profiler's point
format (p50/p95/p99, throughput, memory, samples) into a profile JSON after
every point, so a run cut short still leaves its points.

- Hardware label ``gpu:<model>`` (``torch.cuda.get_device_name``, normalised);
  memory is the peak CUDA memory allocated (``torch.cuda.max_memory_allocated``).
- Weights: real for the ladder's detectors (YOLOv4-tiny's rounded to float16,
  the dtype it runs in), seeded random weights of the same architecture for
  YOLOv3-tiny, the classifiers and the LLMs (their files do not travel); every
  point says which in ``accuracy_source`` and ``metadata.weights``. Accuracy
  does not depend on the hardware, so each point carries the figure measured
  for its CPU variant (for the LLMs: the Q4 GGUF on llama.cpp); a variant the
  CPU profile has no figure for yet is measured all the same and its points
  kept in ``metadata.unscored`` until ``varipipe.profiler.gpu_score`` gives
  them the CPU figure.
- The LLMs generate, per batch, the number of tokens the Q4 variant generated
  on the CPU for the batch's longest caption.
- Warm-up: every warm-up batch is timed (``metadata.replica_start``): the first
  call at the first batch size includes ``torch.compile``'s compilation of the
  LLM decode step; ``cold_start_s`` = model load + that warm-up is what a new
  GPU replica needs before it takes traffic, the reconfiguration delay the
  optimizer and the simulator should assume (``records.Profile.replica_start``).
- A check first (``metadata.gpu_check``): the detector's GPU path in half precision
  against the same code in float32 on the CPU, real weights -- raw rows and labels.
- ``--dry-run`` (and any host without CUDA) runs the same code on the CPU with
  tiny sample counts: the test of this script in ``make test``.
- Order and deadlines, for a run of at most 6 minutes of device time: the
  variants run in ``RUN_ORDER`` (the detector ladder, the classifiers, the
  LLMs, the YOLOv3-tiny candidates), so a run cut short keeps the most useful
  points; no variant starts after ``--budget-s`` (listed in
  ``metadata.skipped``), no batch size after ``--deadline-s`` or where the
  variant's longest point so far would take it past ``--variant-budget-s`` or
  the hard stop (``metadata.cut_short``); at ``--hard-stop-s`` the point under
  way is abandoned and the run ends with what it has (``metadata.hard_stop``).
  All count from the shell's start (``--started-at``).

    python -m varipipe.profiler.gpu_profile OUTDIR [--carry .gpu-carry] [--dry-run]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from varipipe.jsonfile import write_json_atomic
from varipipe.profiler.gpu_inputs import (
    DEFAULT_CARRY,
    REAL,
    REAL_FLOAT16,
    CarriedVariant,
    Carry,
    load,
)
from varipipe.profiler.measure import Hardware, PointResult, measure_variant
from varipipe.profiler.plan import SampledPoint, WindowPolicy
from varipipe.profiler.store import SCHEMA_VERSION, save_profile
from varipipe.records import Accuracy, Profile, ProfilePoint

__all__ = ["GPU_BATCHES", "STAGE_BATCHES", "GPU_POLICY", "DRY_RUN_POLICY", "RUN_ORDER", "WATCHED_MODULES", "UNSCORED",
           "Budget", "HardStop", "accuracy_note", "hard_stop_after", "main", "metadata_only_path", "run", "run_order",
           "scored_point", "write_results"]

GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64)
# The LLMs at fewer sizes: on CUDA each of the first two sizes compiles the decode step (tens of seconds
# each; torch.compile's automatic dynamic shapes make later sizes reuse the second graph), and every
# point costs warm-up and sampling time a 6-minute run must share among the variants.
STAGE_BATCHES = {"llm": (1, 4, 16, 64)}
DRY_RUN_BATCHES = (1, 2)
# The profiler's window scheme (plan.WindowPolicy: windows until 3 agree within 10 %) with small
# windows -- 10 batches and >= 0.1 s -- and a 1.5 s cap per point: the flagship's 6 vision variants
# x 7 batch sizes sample in about a minute, leaving the rest of a 6-minute run to start-up, loading
# and the LLM's compilation. Three timed warm-up batches per point: the first at a new
# batch size compiles (LLM) or picks kernels (cuDNN); CUDA graphs record on the next. Three
# reference calls (the variant's batch-1 call) between points: about 10 s in all.
GPU_POLICY = WindowPolicy(name="gpu", window_batches=10, window_min_s=0.1, max_seconds=1.5, warmup_batches=3,
                          reference_calls=3)
# The same code with the fewest calls: two one-batch windows a point, one warm-up, one reference call.
DRY_RUN_POLICY = WindowPolicy(name="gpu-dry-run", window_batches=1, window_min_s=0.0, max_seconds=0.01,
                              min_window_batches=1, stable_windows=2, max_windows=2, warmup_batches=1,
                              reference_calls=1)
# The whole run, Python's start-up included, is designed to end within 6 minutes of device time
# (issue 19: about 15 minutes of GPU time at a time, start-up of the machine included, and room to
# run it again). Counted from the shell's start: no variant starts after this...
DEFAULT_BUDGET_S = 270.0
# ... no batch size starts after this, nor where the variant's longest point so far (the first one
# includes the load and the first compilation) would take it past the hard stop ...
DEFAULT_DEADLINE_S = 300.0
# ... nor where it would take its variant past this: an LLM whose every new size recompiles (tens of
# seconds each on the H200) must not eat the next variant's turn. The flagship has one LLM on
# the GPU path (Qwen2.5-Coder-0.5B; the template rung is string rules) after 3 detectors and 3
# classifiers of about 15 s each, so it may take most of what is left ...
DEFAULT_VARIANT_BUDGET_S = 150.0
# ... and here the point under way is abandoned: the run saves what it has and ends, 20 s before the
# 6 minutes for the summary, the shell and the copy of the results.
DEFAULT_HARD_STOP_S = 340.0
# The run's order, most useful first, so that the deadlines cut the least useful (stage, models; () = any):
# the detector ladder (YOLOv10-N; YOLOv4-tiny where a pipeline still has it), the classifiers (seconds
# each), the LLMs (Qwen2.5-Coder-0.5B, the flagship's LLM rung, first: three quarters of a request's CPU
# time, but each compiles for tens of seconds first), then any other detector (YOLOv3-tiny, random
# weights). Within a group, spec order.
RUN_ORDER = (("detector", ("yolov10n",)), ("detector", ("yolov4-tiny",)), ("classifier", ()),
             ("llm", ("qwen2.5-coder-0.5b-instruct-q4_k_m",)), ("llm", ()), ("detector", ()))
# The accuracy fields of a point measured for a variant without a CPU figure yet: such points stay in
# metadata.unscored (never in the profile's points) until gpu_score gives them the CPU figure.
UNSCORED = {"accuracy": None, "accuracy_kind": None, "accuracy_source": None}
# Modules the GPU host lacks or that the GPU path must not need; the run records which it loaded.
WATCHED_MODULES = ("ray", "llama_cpp", "onnxruntime", "cv2", "pydantic", "skimage")
# Library versions worth keeping beside GPU timings.
LIBRARIES = ("torch", "transformers", "numpy", "triton", "gguf", "accelerate")


def _clock_start(started_at: float | None) -> float:
    """Wall time the run started: the shell's timestamp (Python's start-up included) or now."""
    return started_at if started_at is not None else time.time()


@dataclass
class _Log:
    started: float

    def __call__(self, message: str) -> None:
        now = time.time()
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        print(f"[{now - self.started:6.1f}s {stamp}] {message}", flush=True)

    def elapsed(self) -> float:
        return time.time() - self.started


def _versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _hardware(dry_run: bool, threads: int) -> tuple[Hardware, dict[str, Any]]:
    import torch

    from varipipe.pipelines.variants._torch_runtime import gpu_label

    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available() and not dry_run:
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": torch.cuda.get_device_name(0), "gpu_memory_mib": round(props.total_memory / 2**20),
                     "gpu_count": torch.cuda.device_count(), "cudnn": torch.backends.cudnn.version()})
        return Hardware(gpu_label(), threads, "gpu"), info
    return Hardware(f"cpu:{threads}", threads, "cpu"), info


def _weights_note(cv: CarriedVariant) -> str:
    if cv.weights == REAL:
        return "its real weights"
    if cv.weights == REAL_FLOAT16:
        return "its real weights, carried rounded to float16 (the values its float16 GPU path computes with)"
    if cv.spec.stage == "detector":
        return ("seeded random weights of the same darknet cfg (its weights do not travel), the heads' biases at "
                "RetinaNet's prior: no box reaches NMS (the real weights pass 0-6 per bundled photo), so the "
                "post-processing time is a lower bound")
    if cv.cpu_runtime == "llama_cpp":
        return ("seeded random weights of the GGUF's architecture (not the Q4 variant: its weights do not travel), "
                "generating the token counts the Q4 variant generated on the CPU")
    return "seeded random weights of the same architecture (its weights do not travel)"


def accuracy_note(cpu_runtime: str, weights_note: str, hardware: str, dtype: str) -> str:
    """What a GPU point's ``accuracy_source`` says after the CPU figure's own source."""
    return (f"[the {cpu_runtime} variant's figure, measured on the CPU: accuracy does not depend on the hardware; "
            f"this point's latency: PyTorch {dtype} on {hardware} with {weights_note}]")


def run_order(variants: Sequence[CarriedVariant]) -> list[CarriedVariant]:
    """``variants`` in ``RUN_ORDER`` (spec order within a group; any left over last)."""
    def rank(cv: CarriedVariant) -> int:
        model = str(cv.spec.params.get("model", ""))
        return next((i for i, (stage, models) in enumerate(RUN_ORDER)
                     if cv.spec.stage == stage and (not models or model in models)), len(RUN_ORDER))

    return sorted(variants, key=rank)  # stable: spec order within a group


def scored_point(measured: dict[str, Any], figure: Accuracy, note: str) -> ProfilePoint:
    """A GPU point: its measured fields with the CPU variant's accuracy ``figure`` and its ``note``."""
    return ProfilePoint(**{**measured, "accuracy": figure.value, "accuracy_kind": figure.kind.value,
                           "accuracy_source": f"{figure.source} {note}"})


class _Deadline(Exception):
    """No new batch size for this variant: the run's deadline or the variant's budget is reached."""


class HardStop(BaseException):
    """The run's hard stop: raised in the main thread by SIGALRM wherever it is (not an Exception, so
    that no ``except Exception`` of the code under measurement swallows it)."""


@dataclass
class _Alarm:
    """The hard stop's state: a ring while ``held`` (a save under way) waits until the save is done."""

    message: str = ""
    held: bool = False
    rang: bool = False

    def ring(self, _signum: int, _frame: Any) -> None:
        if self.held:
            self.rang = True
            return
        raise HardStop(self.message)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """No HardStop inside; one that rang meanwhile is raised on the way out. (Blocking SIGALRM with
        pthread_sigmask would not do: numpy's and torch's threads leave it unblocked, and Python runs
        handlers in the main thread whichever thread the signal reached.)"""
        self.held = True
        try:
            yield
        finally:
            self.held = False
            if self.rang:
                self.rang = False
                raise HardStop(self.message)


_ALARM = _Alarm()


def hard_stop_after(seconds: float, message: str) -> None:
    """Raise ``HardStop(message)`` in the main thread ``seconds`` from now (SIGALRM; replaces any earlier one)."""
    _ALARM.message, _ALARM.rang = message, False
    signal.signal(signal.SIGALRM, _ALARM.ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))  # 0 would disarm it


def _no_hard_stop() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    _ALARM.rang = False


@dataclass
class _State:
    """The run so far: points, metadata, where it is written."""

    out: Path
    samples: Path
    pipeline: str
    metadata: dict[str, Any]
    points: list[ProfilePoint] = field(default_factory=list)

    @property
    def metadata_only(self) -> Path:
        """Where the metadata goes while no point has an accuracy figure (a profile needs one)."""
        return metadata_only_path(self.out)

    def save(self) -> None:
        """Write the profile (or, before its first scored point, the metadata alone), atomically and
        with the hard stop held off until it is written."""
        with _ALARM.holding():
            write_results(self.out, self.pipeline, self.points, self.metadata)


def write_results(out: Path, pipeline: str, points: Sequence[ProfilePoint], metadata: dict[str, Any]) -> Path:
    """The profile at ``out`` (points, metadata, latency model), or while no point has an accuracy figure
    the metadata alone at ``metadata_only_path(out)``; atomically. Returns the path written."""
    from varipipe.profiler.latency_model import fit_profile, fits_to_metadata

    if points:
        meta = {**metadata, "latency_model": {m: fits_to_metadata(fit_profile(list(points), m))
                                              for m in ("p99", "mean")}}
        save_profile(Profile(pipeline, tuple(points), meta, {}, SCHEMA_VERSION), out)
        metadata_only_path(out).unlink(missing_ok=True)
        return out
    return write_json_atomic(metadata_only_path(out), {"pipeline": pipeline, "metadata": metadata}, indent=1)


def metadata_only_path(profile: Path) -> Path:
    """``<profile stem>.metadata.json``: a run's metadata while it has no scored point."""
    return profile.with_name(profile.stem + ".metadata.json")


def _measure(state: _State, cv: CarriedVariant, hw: Hardware, carry: Carry, batches: Sequence[int],
             policy: WindowPolicy, log: _Log, stop: Callable[[float], str | None]) -> None:
    """Measure one variant at ``batches``; after each point, ``stop(seconds the next may take)`` (a reason,
    or None) may end it: the estimate is the variant's longest point so far, load and warm-up included."""
    from varipipe.pipelines.variant import build_variant

    spec = cv.spec
    key = f"{spec.stage}/{spec.name}"
    dtype = build_variant(spec, threads=hw.threads, device=hw.device).dtype_name()  # not loaded: cheap
    note = accuracy_note(cv.cpu_runtime, _weights_note(cv), hw.label, dtype)
    state.metadata["accuracy_note"][key] = note
    state.metadata["weights"][key] = cv.weights
    state.metadata["dtype"][key] = dtype
    state.metadata["variants"][key] = {"runtime": spec.runtime, "factory": spec.factory, "cpu_runtime": cv.cpu_runtime,
                                       "input_size": spec.input_size, "params": dict(spec.params)}
    start = state.metadata["replica_start"].setdefault(f"{key}/{hw.label}", {"warmup_s": {}})
    timing = {"last": time.perf_counter(), "longest": 0.0}  # when the last point landed; the longest point

    def heard(batch: int, conditions: dict) -> None:
        conditions = dict(conditions)
        sampled: SampledPoint = conditions.pop("sampled")
        warmup = [round(v, 4) for v in conditions.pop("warmup_s")]
        start["warmup_s"][str(batch)] = warmup
        if "model_warmup_s" in conditions:  # batch-1 calls before the first point: the first compiles
            start["model_warmup_s"] = [round(v, 4) for v in conditions.pop("model_warmup_s")]
            log(f"  warm-up at batch 1: first call {start['model_warmup_s'][0]:.2f} s "
                f"({len(start['model_warmup_s'])} calls, {sum(start['model_warmup_s']):.2f} s)")
        cond = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in conditions.items()}
        cond["windows"] = [{"latency_s": round(w.latency_s, 6), "batches": w.batches, "seconds": round(w.seconds, 3)}
                           for w in sampled.windows]
        state.metadata["conditions"][f"{key}/{hw.label}/b{batch}"] = cond
        with state.samples.open("a") as f:
            f.write(json.dumps({"stage": spec.stage, "variant": spec.name, "batch": batch, "hardware": hw.label,
                                "warmup_s": warmup, "final_from": sampled.final_from, "final_to": sampled.final_to,
                                "latencies_s": [round(v, 7) for v in sampled.latencies_s]}) + "\n")

    def landed(r: PointResult) -> None:
        s = r.stats
        figure = cv.accuracy
        measured = dict(
            stage=spec.stage, variant=spec.name, batch=r.batch, hardware=hw.label, latency_p50_s=s.p50_s,
            latency_p95_s=s.p95_s, latency_p99_s=s.p99_s, throughput_rps=s.throughput_rps, memory_mb=r.memory_mb,
            samples=s.samples, latency_mean_s=s.mean_s, p99_low_samples=s.p99_low_samples,
            windows=r.stability.windows, stable=r.stability.stable, latency_cv=round(r.stability.latency_cv, 5),
            throughput_cv=round(r.stability.throughput_cv, 5), reference_before_s=r.reference_before_s,
            reference_after_s=r.reference_after_s)
        if figure is None:  # kept apart until the CPU profile has a figure (varipipe.profiler.gpu_score)
            state.metadata["unscored"].append({**measured, **UNSCORED})
        else:
            state.points.append(scored_point(measured, figure, note))
        if "first_batch" not in start:  # a new replica's start: load + warm-up (compilation) before serving
            start["first_batch"] = r.batch
            start["cold_start_s"] = round(start["load_s"] + sum(start.get("model_warmup_s", []))
                                          + sum(start["warmup_s"][str(r.batch)]), 3)
        state.save()
        first_call = start["warmup_s"].get(str(r.batch)) or [0.0]
        log(f"  b={r.batch:<3d} p50 {s.p50_s * 1e3:8.2f} ms  p99 {s.p99_s * 1e3:8.2f} ms  "
            f"{s.throughput_rps:9.1f} items/s  {r.memory_mb:8.1f} MiB  n={s.samples:<3d} "
            f"{'stable' if r.stability.stable else 'capped'}  first call {first_call[0]:6.2f} s"
            + ("" if figure else "  (no accuracy figure yet: metadata.unscored)"))
        now = time.perf_counter()
        timing["longest"], timing["last"] = max(timing["longest"], now - timing["last"]), now
        reason = stop(timing["longest"]) if r.batch != batches[-1] else None
        if reason is not None:
            left = [b for b in batches if b > r.batch]
            state.metadata["cut_short"][key] = f"batches {left} not measured: {reason}"
            raise _Deadline(reason)

    def loaded(load_s: float) -> None:
        start["load_s"] = round(load_s, 3)
        log(f"  loaded in {load_s:.2f} s")

    log(f"{key} on {hw.label} ({dtype}, {cv.weights} weights): loading")
    measure_variant(spec, hw, carry.payloads[spec.stage], batches, policy, on_point=landed, isolate=False,
                    on_conditions=heard, on_loaded=loaded)


# The reference side of the GPU check runs on the GPU host's CPU: a few threads keep it to seconds.
CHECK_THREADS = 4
# Rows compared in the check: those some class scores at least this on the reference (the rest is noise
# no threshold keeps); the detector's own threshold is 0.25.
CHECK_MIN_SCORE = 0.1


def detector_check(cv: CarriedVariant, hw: Hardware, payloads: Sequence[Any]) -> dict[str, Any]:
    """The detector's GPU path (in its GPU dtype) against the same code in float32 on the CPU, real weights:
    how far half precision moves the raw rows and whether the detections stay the same."""
    import torch

    from varipipe.pipelines.variant import build_variant

    fast = build_variant(cv.spec, threads=hw.threads, device=hw.device)
    ref = build_variant(cv.spec, threads=CHECK_THREADS, device="cpu")
    fast.load()
    ref.load()
    try:
        got, _ = fast.raw_outputs(payloads)
        want, _ = ref.raw_outputs(payloads)
        got = got.cpu()
        with torch.inference_mode():
            want_scores = (want[..., 5:] * want[..., 4:5]).max(dim=-1).values
            got_scores = (got[..., 5:] * got[..., 4:5]).max(dim=-1).values
            sure = want_scores >= CHECK_MIN_SCORE
            box_px = (got[..., :4] - want[..., :4]).abs().max(dim=-1).values[sure]
        same = sum(a.labels() == b.labels() for a, b in zip(ref.infer(payloads), fast.infer(payloads), strict=True))
        return {"variant": cv.spec.name, "dtype": fast.dtype_name(), "reference": "float32 on the CPU, same code",
                "rows_compared": int(sure.sum()), "box_max_abs_px": round(float(box_px.max()), 4) if len(box_px) else 0.0,
                "score_max_abs": round(float((got_scores - want_scores).abs()[sure].max()), 5) if sure.any() else 0.0,
                "images_with_the_same_labels": f"{same}/{len(payloads)}"}
    finally:
        fast.unload()
        ref.unload()


@dataclass(frozen=True)
class Budget:
    """When the run stops starting things, in seconds since it started (or since a variant started)."""

    start_variants_s: float = DEFAULT_BUDGET_S  # no variant starts after this
    start_points_s: float = DEFAULT_DEADLINE_S  # no batch size starts after this
    per_variant_s: float = DEFAULT_VARIANT_BUDGET_S  # no batch size that would take its variant past this
    hard_stop_s: float = DEFAULT_HARD_STOP_S  # the point under way is abandoned, the run ends


def _grid(stage: str, batches: Sequence[int] | None, device: str) -> tuple[int, ...]:
    if batches:
        return tuple(batches)
    return DRY_RUN_BATCHES if device == "cpu" else STAGE_BATCHES.get(stage, GPU_BATCHES)


def run(outdir: Path, carry_root: Path, dry_run: bool, budget: Budget, batches: Sequence[int] | None,
        variants: Sequence[str] | None, threads: int, started_at: float | None, command: str) -> Path:
    """Measure every carried variant (or ``variants``) in ``RUN_ORDER``; returns the profile's path."""
    log = _Log(_clock_start(started_at))
    log(f"python {platform.python_version()} on {platform.node()}: importing torch")
    hw, info = _hardware(dry_run, threads)
    log(f"hardware {hw.label}; torch {info['torch']} (CUDA {info['torch_cuda']}), "
        f"cuda available: {info['cuda_available']}" + (" -- dry run on the CPU" if hw.device == "cpu" else ""))
    os.environ["VARIPIPE_CACHE"] = str(carry_root / "models")  # model_files finds the carried copies there
    carry = load(carry_root)
    policy = DRY_RUN_POLICY if hw.device == "cpu" else GPU_POLICY
    chosen = run_order([cv for cv in carry.variants if not variants or cv.spec.name in variants])
    grids = {cv.spec.stage: _grid(cv.spec.stage, batches, hw.device) for cv in chosen}
    outdir.mkdir(parents=True, exist_ok=True)
    label = hw.label.replace(":", "-")
    from varipipe.profiler.hostinfo import cpu_model

    state = _State(out=outdir / f"{carry.pipeline}-{label}.json", samples=outdir / f"{carry.pipeline}-{label}.samples.jsonl",
                   pipeline=carry.pipeline, metadata={
        "command": command, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "host_cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(), "libraries": _versions(),
        "device": info, "hardware": hw.label, "dry_run": hw.device == "cpu", "mode": policy.name,
        "sampling": dataclasses.asdict(policy), "batches": {k: list(v) for k, v in grids.items()},
        "budget": dataclasses.asdict(budget), "order": [f"{cv.spec.stage}/{cv.spec.name}" for cv in chosen],
        "schema_version": SCHEMA_VERSION, "carry": carry.manifest.get("note", ""),
        "carry_made": carry.manifest.get("made", ""), "accuracy_from": carry.manifest.get("accuracy_from", ""),
        "weights": {}, "dtype": {}, "variants": {}, "conditions": {}, "replica_start": {}, "failed": {},
        "cut_short": {}, "accuracy_note": {}, "unscored": [],
        "skipped": dict(carry.manifest.get("skipped", {})),
        "replica_start_note": ("per variant, one replica measured its batch sizes in increasing order: load_s "
                               "(weights read and moved to the device, or random init), model_warmup_s (batch-1 "
                               "calls before the first point; the first includes torch.compile of the LLM decode "
                               "step), warmup_s[batch] (each timed warm-up call at that size; a new size may "
                               "recompile), cold_start_s = load_s + model warm-up + the first size's warm-up: "
                               "what a new replica (or a variant switch) needs before it serves; "
                               "records.Profile.replica_start reads it"),
        "memory_method": ("peak CUDA memory allocated by tensors (torch.cuda.max_memory_allocated) since just "
                          "before the model was built: weights + KV cache + activations of the largest batch so far"
                          if hw.device == "gpu" else "RSS growth of this process (dry run on the CPU)"),
        "throughput_method": "batch / mean batch latency, batches back to back on one replica (saturation)",
    })
    for old in (state.out, state.metadata_only, state.samples):
        old.unlink(missing_ok=True)  # a fresh run: points of an older run would mix two sessions' conditions
    hard_stop_after(budget.hard_stop_s - log.elapsed(), f"the hard stop, {budget.hard_stop_s:.0f} s after the start")
    try:
        _run_variants(state, chosen, hw, carry, grids, policy, budget, log)
    except HardStop as e:
        state.metadata["hard_stop"] = f"{e}: the point under way was abandoned and the run ended at {log.elapsed():.0f} s"
        log(f"HARD STOP: {state.metadata['hard_stop']}")
    finally:
        _no_hard_stop()
    state.metadata["modules_loaded"] = sorted(m for m in WATCHED_MODULES if m in sys.modules)
    state.metadata["duration_s"] = round(log.elapsed(), 1)
    state.save()
    log(f"done: {len(state.points)} points in {state.out}, {len(state.metadata['unscored'])} kept in "
        "metadata.unscored (no accuracy figure yet)")
    print(summary(state.points, state.metadata), flush=True)
    return state.out


def _run_variants(state: _State, chosen: Sequence[CarriedVariant], hw: Hardware, carry: Carry,
                  grids: dict[str, tuple[int, ...]], policy: WindowPolicy, budget: Budget, log: _Log) -> None:
    """The detector check, then each variant in turn, within the budget; ``HardStop`` may end it anywhere."""
    current: dict[str, str] = {}  # "key": the variant under measurement, once the check is done
    try:
        _check_and_measure(state, chosen, hw, carry, grids, policy, budget, log, current)
    except HardStop:
        if "key" in current:
            state.metadata["cut_short"][current["key"]] = "the hard stop came while it was measured"
        else:
            state.metadata["gpu_check"] = {"failed": "the hard stop came during the check"}
        for cv in chosen:
            key = f"{cv.spec.stage}/{cv.spec.name}"
            if key not in state.metadata["variants"] and key not in state.metadata["skipped"]:
                state.metadata["skipped"][key] = "not started before the hard stop"
        raise


def _check_and_measure(state: _State, chosen: Sequence[CarriedVariant], hw: Hardware, carry: Carry,
                       grids: dict[str, tuple[int, ...]], policy: WindowPolicy, budget: Budget, log: _Log,
                       current: dict[str, str]) -> None:
    checked = next((cv for cv in chosen if cv.weights in (REAL, REAL_FLOAT16) and cv.spec.stage == "detector"), None)
    if checked is not None:
        try:
            state.metadata["gpu_check"] = detector_check(checked, hw, carry.payloads[checked.spec.stage])
            log(f"check: {state.metadata['gpu_check']}")
        except Exception as e:  # noqa: BLE001 - a failed check is reported, the profile still runs
            state.metadata["gpu_check"] = {"failed": f"{type(e).__name__}: {e}"[:2000]}
            log(f"check FAILED: {type(e).__name__}: {e}")
    for i, cv in enumerate(chosen):
        key = f"{cv.spec.stage}/{cv.spec.name}"
        if log.elapsed() > budget.start_variants_s:
            for rest in chosen[i:]:
                state.metadata["skipped"][f"{rest.spec.stage}/{rest.spec.name}"] = (
                    f"budget of {budget.start_variants_s:.0f} s used up after {log.elapsed():.0f} s")
            log(f"budget used up: skipping {len(chosen) - i} variants")
            break
        began = log.elapsed()
        current["key"] = key

        def stop(estimate: float, began: float = began) -> str | None:
            now = log.elapsed()
            if now > budget.start_points_s:
                return f"the run's deadline ({budget.start_points_s:.0f} s) passed at {now:.0f} s"
            if now + estimate > budget.hard_stop_s:
                return (f"its longest point so far ({estimate:.0f} s) would not end before the hard stop "
                        f"({budget.hard_stop_s:.0f} s) at {now:.0f} s")
            if now - began + estimate > budget.per_variant_s:
                return (f"its longest point so far ({estimate:.0f} s) would take it past the variant's budget "
                        f"({budget.per_variant_s:.0f} s) after {now - began:.0f} s")
            return None

        try:
            _measure(state, cv, hw, carry, grids[cv.spec.stage], policy, log, stop)
        except _Deadline as e:
            log(f"  stopped {key}: {e}")
        except Exception as e:  # noqa: BLE001 - one variant's failure must not lose the others' points
            state.metadata["failed"][key] = f"{type(e).__name__}: {e}"[:2000]
            log(f"  FAILED {key}: {type(e).__name__}: {e}")
        state.metadata["modules_loaded"] = sorted(m for m in WATCHED_MODULES if m in sys.modules)
        state.metadata["duration_s"] = round(log.elapsed(), 1)
        state.save()


def summary(points: Sequence[ProfilePoint], metadata: dict[str, Any]) -> str:
    """A table of the points (then those without an accuracy figure yet, marked *) with each batch size's
    warm-up, each variant's cold start, and what was skipped, cut short or failed."""
    lines = [f"{'stage/variant':34s} {'hw':10s} {'b':>3s} {'p50 ms':>9s} {'p99 ms':>9s} {'items/s':>9s} "
             f"{'MiB':>8s} {'n':>4s} {'warm-up s':>9s}"]
    rows = [(p.to_dict(), "") for p in points] + [(u, " *") for u in metadata.get("unscored", [])]
    for p, mark in rows:
        start = metadata["replica_start"].get(f"{p['stage']}/{p['variant']}/{p['hardware']}", {})
        warmup = sum(start.get("warmup_s", {}).get(str(p["batch"]), [float("nan")]))
        lines.append(f"{p['stage'] + '/' + p['variant'] + mark:34s} {p['hardware']:10s} {p['batch']:3d} "
                     f"{p['latency_p50_s'] * 1e3:9.2f} {p['latency_p99_s'] * 1e3:9.2f} {p['throughput_rps']:9.1f} "
                     f"{p['memory_mb']:8.1f} {p['samples']:4d} {warmup:9.2f}")
    for key, start in metadata["replica_start"].items():
        if "cold_start_s" in start:
            lines.append(f"cold start {key}: {start['cold_start_s']:.2f} s (load {start['load_s']:.2f} s + "
                         f"warm-up at b={start['first_batch']})")
    for what in ("skipped", "cut_short", "failed"):
        for k, v in metadata.get(what, {}).items():
            lines.append(f"{what}: {k}: {v}")
    if "hard_stop" in metadata:
        lines.append(f"hard stop: {metadata['hard_stop']}")
    return "\n".join(lines)


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varipipe.profiler.gpu_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", help="folder for the profile JSON and the raw samples (JSON lines)")
    parser.add_argument("--carry", default=str(DEFAULT_CARRY), help="folder made by gpu_inputs (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU with tiny sample counts")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="start no variant after this many seconds since --started-at (default: %(default)s)")
    parser.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S,
                        help="start no batch size after this many seconds (default: %(default)s)")
    parser.add_argument("--variant-budget-s", type=float, default=DEFAULT_VARIANT_BUDGET_S,
                        help="start no batch size that would take its variant past this many seconds, by its "
                             "longest point so far (default: %(default)s)")
    parser.add_argument("--hard-stop-s", type=float, default=DEFAULT_HARD_STOP_S,
                        help="abandon the point under way and end the run after this many seconds "
                             "(default: %(default)s)")
    parser.add_argument("--batches", type=_int_list, default=None,
                        help=f"batch sizes (default {','.join(map(str, GPU_BATCHES))}, the LLMs "
                             f"{','.join(map(str, STAGE_BATCHES['llm']))}; dry run {','.join(map(str, DRY_RUN_BATCHES))})")
    parser.add_argument("--variants", type=lambda t: tuple(v for v in t.split(",") if v), default=None,
                        help="only these variants (comma-separated names)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the replica (default: %(default)s)")
    parser.add_argument("--started-at", type=float, default=None,
                        help="epoch seconds the run started (the shell's clock, so start-up counts)")
    args = parser.parse_args(argv)
    carry = Path(args.carry)
    if not (carry / "manifest.json").exists():
        print(f"error: no carry folder at {carry} (make it with benchmarks/gpu_carry.sh)", file=sys.stderr)
        return 2
    command = "python -m varipipe.profiler.gpu_profile " + " ".join(sys.argv[1:] if argv is None else argv)
    budget = Budget(args.budget_s, args.deadline_s, args.variant_budget_s, args.hard_stop_s)
    run(Path(args.outdir), carry, args.dry_run, budget, args.batches, args.variants, args.threads,
        args.started_at, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
