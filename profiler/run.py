"""A whole profile run: plan, inputs, accuracy, measurement, store -- resumable.

``run_profile`` measures every point of the plan that the output file does not
hold yet and saves the file (atomically) after every point, so an interrupted
run resumes where it stopped. A file made with another sampling mode is not
silently mixed into: resuming it is an error that names the field.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from varipipe.errors import ProfileError, UnknownNameError
from varipipe.profiler.evaluate import (
    StageAccuracy,
    accuracy_payloads,
    items_per_request,
    load_evaluation,
    stage_accuracy,
    stage_outputs,
)
from varipipe.profiler.hostinfo import host_metadata
from varipipe.profiler.inputs import payloads_for_stage, stage_inputs
from varipipe.profiler.latency_model import fit_profile, fits_to_metadata
from varipipe.profiler.measure import Hardware, MeasureError, PointResult, measure_variant
from varipipe.profiler.plan import PointKey, SampledPoint, WindowPolicy, missing, plan
from varipipe.profiler.store import SCHEMA_VERSION, load_profile, save_profile
from varipipe.records import Accuracy, PipelineSpec, Profile, ProfilePoint

__all__ = ["ProfileRequest", "RunSummary", "run_profile", "group_by_variant", "order_points"]

log = logging.getLogger(__name__)

# Threads for the untimed work (upstream inputs, accuracy runs): outputs do not
# depend on it, and llama.cpp's spinning worker threads slow down several-fold
# when two of them share two busy cores with other processes.
_SETUP_THREADS = 1
# Why Profile.fanout stays 1 for every stage of these pipelines, kept in the metadata.
_FANOUT_NOTE = (
    "Profile.fanout is the request multiplicity between stages. Every stage here batches whole "
    "requests (a classifier batch of b images classifies all their crops in one call), so each "
    "stage's latency and throughput_rps are per request and the multiplicity is 1. "
    "items_per_request records the measured items (crops) per request behind those figures."
)


@dataclass(frozen=True)
class ProfileRequest:
    spec: PipelineSpec
    out: Path
    batches: tuple[int, ...]
    hardware: tuple[Hardware, ...]
    policy: WindowPolicy
    command: str
    stages: tuple[str, ...] | None = None
    variants: tuple[str, ...] | None = None
    isolate: bool = True  # each (variant, hardware) in a fresh process
    progress: bool = True
    only: frozenset[PointKey] | None = None  # measure just these points of the plan (benchmarks)
    # metadata["accuracy"] of an earlier profile of the same spec: reuse its figures, skip the runs
    reuse_accuracy: Mapping[str, Any] | None = None
    # Autogroup nice of each measuring process (measure.raise_priority); 0 leaves it as is.
    nice: int = 0
    # Append every point's raw per-batch latencies here as JSON lines (re-analysis, estimator checks).
    samples_out: Path | None = None


@dataclass
class RunSummary:
    profile: Profile
    measured: int = 0
    skipped: int = 0  # already in the file
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def group_by_variant(keys: Sequence[PointKey]) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """(stage, variant, hardware, batches) in first-seen order: one measuring process each."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for k in keys:
        groups.setdefault((k.stage, k.variant, k.hardware), []).append(k.batch)
    return [(s, v, h, tuple(b)) for (s, v, h), b in groups.items()]


def order_points(points: Sequence[ProfilePoint], keys: Sequence[PointKey]) -> tuple[ProfilePoint, ...]:
    """Points in plan order; points the plan does not name keep their place after them."""
    rank = {k: i for i, k in enumerate(keys)}
    return tuple(sorted(points, key=lambda p: rank.get(PointKey.of(p), len(rank))))


def _check_names(req: ProfileRequest) -> None:
    for s in req.stages or ():
        req.spec.stage(s)  # raises UnknownNameError naming the known stages
    if req.variants:
        known = {v.name for st in req.spec.stages for v in st.variants}
        for v in req.variants:
            if v not in known:
                raise UnknownNameError(f"variant of pipeline {req.spec.name!r}", v, sorted(known))


def _existing(req: ProfileRequest) -> Profile | None:
    if not req.out.exists():
        return None
    prof = load_profile(req.out, pipeline=req.spec.name)
    sampling = prof.metadata.get("sampling")
    mode = sampling.get("name") if isinstance(sampling, dict) else None
    if mode is not None and mode != req.policy.name:
        raise ProfileError(str(req.out), "metadata.sampling.name",
                           f"file was measured in {mode!r} mode; resuming it in {req.policy.name!r} mode would "
                           "mix the two: use the same mode or another --out file")
    if isinstance(sampling, dict) and "window_batches" not in sampling:
        raise ProfileError(str(req.out), "metadata.sampling",
                           "file was measured by sample counts, before the profiler measured in windows; "
                           "resuming it would mix the two schemes: use another --out file")
    return prof


def gpu_accuracy_source(source: str, runtime: str, hardware: str) -> str:
    """The accuracy source of a point measured on a GPU: the figure is the CPU variant's."""
    return (f"{source} [the {runtime} variant's figure: accuracy does not depend on the hardware; this point's "
            f"latency: the PyTorch runtime on {hardware}" + (", a model dequantised from the GGUF, not the Q4 variant"
                                                             if runtime == "llama_cpp" else "") + "]")


def _point(key: PointKey, r: PointResult, figure: Any, runtime: str = "") -> ProfilePoint:
    s = r.stats
    source = (gpu_accuracy_source(figure.source, runtime, key.hardware) if key.hardware.startswith("gpu:")
              else figure.source)
    return ProfilePoint(
        stage=key.stage, variant=key.variant, batch=key.batch, hardware=key.hardware,
        latency_p50_s=s.p50_s, latency_p95_s=s.p95_s, latency_p99_s=s.p99_s,
        throughput_rps=s.throughput_rps, memory_mb=r.memory_mb, samples=s.samples,
        accuracy=figure.value, accuracy_kind=figure.kind.value, accuracy_source=source,
        latency_mean_s=s.mean_s, p99_low_samples=s.p99_low_samples,
        windows=r.stability.windows, stable=r.stability.stable, latency_cv=round(r.stability.latency_cv, 5),
        throughput_cv=round(r.stability.throughput_cv, 5), reference_before_s=r.reference_before_s,
        reference_after_s=r.reference_after_s,
    )


class _Run:
    """The mutable state of one run: points so far, metadata, the file."""

    def __init__(self, req: ProfileRequest, existing: Profile | None, keys: Sequence[PointKey]) -> None:
        self.req = req
        self.keys = keys
        self.points: dict[PointKey, ProfilePoint] = {PointKey.of(p): p for p in (existing.points if existing else ())}
        self.metadata: dict[str, Any] = dict(existing.metadata) if existing else {}
        self.started = time.monotonic()
        self.prior_s = float(self.metadata.get("duration_s", 0.0))
        fresh = host_metadata(req.command)
        self.metadata.setdefault("created", fresh)
        self.metadata.update({k: fresh[k] for k in ("host_cpu", "cpu_count", "gpu", "libraries", "date",
                                                    "command", "platform", "python", "loadavg_at_start", "gpu_runtimes")})
        self.metadata["tool_version"] = fresh["libraries"].get("varipipe", "unknown")
        self.metadata["sampling"] = asdict(req.policy)
        self.metadata["mode"] = req.policy.name
        self.metadata["schema_version"] = SCHEMA_VERSION
        self.metadata["fanout_note"] = _FANOUT_NOTE
        self.metadata.setdefault("accuracy", dict(req.reuse_accuracy or {}))
        self.metadata.setdefault("items_per_request", {})
        self.metadata.setdefault("variants", {})
        self.metadata.setdefault("conditions", {})
        self.metadata["conditions_note"] = (
            "per point: process CPU seconds vs wall seconds per batch (cpu_share = their ratio; about "
            "the threads used when the host is idle, far less when other work competes for the cores), "
            "the host's CPU pressure (PSI some avg10) when the point finished, and every measurement "
            "window (latency_s: the window's stability percentile; throughput_rps; batches; seconds)")
        self.metadata["stability_note"] = (
            "per point: windows = measurement windows taken; stable = the last 3 windows agreed within "
            "the tolerance (max/min - 1) on the latency percentile and the throughput before the time cap "
            "(metadata.sampling); latency_cv / throughput_cv = coefficient of variation (sample std / "
            "mean) of those final windows' latency percentile and throughput; the point's figures are "
            "the final windows' batches merged. reference_before_s / reference_after_s = median of the "
            "variant's own batch-1 call on one fixed input, timed just before and after the point in "
            "the same process (after/before - 1 = the host's drift while the point was measured)")
        self.metadata["memory_method"] = (
            "peak RSS (VmHWM) of a fresh measuring process per (variant, hardware), reset just before the "
            "model is built, minus the RSS at that moment: weights + runtime + activations of the largest "
            "batch so far; interpreter and library code excluded" if req.isolate else
            "RSS growth of the profiling process from before load to after the batch (in-process mode)")
        self.metadata["measuring_nice"] = req.nice if req.isolate else 0
        self.metadata["throughput_method"] = ("batch / mean batch latency, batches run back to back on one "
                                              "replica (saturation)")

    def profile(self) -> Profile:
        pts = order_points(list(self.points.values()), self.keys)
        meta = dict(self.metadata)
        meta["duration_s"] = round(self.prior_s + time.monotonic() - self.started, 1)
        if pts:
            meta["latency_model"] = {m: fits_to_metadata(fit_profile(pts, m)) for m in ("p99", "mean")}
        return Profile(self.req.spec.name, pts, meta, {}, SCHEMA_VERSION)

    def save(self) -> None:
        if self.points:
            save_profile(self.profile(), self.req.out)


def _accuracies(req: ProfileRequest, run: _Run, stages: Sequence[str], inputs: list,
                threads: int, failed: dict[str, str]) -> dict[str, StageAccuracy]:
    result = {}
    evaluation = load_evaluation(req.spec)
    for name in stages:
        stored = run.metadata["accuracy"].get(name)
        if stored:
            result[name] = StageAccuracy.from_metadata(name, stored)
            continue
        stage = req.spec.stage(name)
        payloads = accuracy_payloads(evaluation, name, payloads_for_stage(req.spec, name, inputs))
        log.info("accuracy: running %d variants of %s on %d inputs", len(stage.variants), name, len(payloads))
        outputs, errors = stage_outputs(stage, payloads, threads)
        failed.update({f"{name}/{v}": e for v, e in errors.items()})
        result[name] = stage_accuracy(stage, payloads, outputs, evaluation)
        run.metadata["accuracy"][name] = result[name].to_metadata()
        for variant, outs in outputs.items():
            tokens = [o.tokens for o in outs if isinstance(getattr(o, "tokens", None), int)]
            if tokens:  # generated length per request (the budget is params.max_tokens)
                run.metadata.setdefault("output_tokens_mean", {})[f"{name}/{variant}"] = sum(tokens) / len(tokens)
        # Items per *served* request: the default variant's outputs on the profiler's inputs (stage_inputs ran it
        # for every stage but the last); the accuracy inputs may differ (one ground-truth crop each).
        served = [p.outputs[name] for p in inputs if name in p.outputs] or outputs.get(stage.default_variant)
        if served:
            run.metadata["items_per_request"][name] = round(items_per_request(served), 4)
    return result


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="point", disable=not enabled, dynamic_ncols=True)


def _append_samples(path: Path, key: PointKey, sampled: SampledPoint) -> None:
    """One JSON line per point: its key, raw per-batch latencies (seconds, measuring order), the
    batches of each window, and which latencies make the point's figures ([point_from, point_to))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"stage": key.stage, "variant": key.variant, "batch": key.batch, "hardware": key.hardware,
            "latencies_s": [round(v, 7) for v in sampled.latencies_s],
            "window_batches": [w.batches for w in sampled.windows],
            "point_from": sampled.final_from, "point_to": sampled.final_to, "stable": sampled.stable}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


def _measure_group(run: _Run, summary: RunSummary, bar, group: tuple, figure: Accuracy, payloads: list,
                   on_point: Callable[[ProfilePoint], None] | None) -> None:
    """One (variant, hardware): measure its batch sizes, saving the file as each point lands."""
    stage_name, variant_name, hardware, batches = group
    req = run.req
    key_of = {b: PointKey(stage_name, variant_name, b, hardware.label) for b in batches}
    spec = req.spec.stage(stage_name).variant(variant_name)
    run.metadata["variants"][f"{stage_name}/{variant_name}"] = {
        "runtime": spec.runtime, "source": spec.source, "input_size": spec.input_size,
        "native_batching": spec.native_batching, "params": dict(spec.params)}

    def landed(r: PointResult) -> None:
        p = _point(key_of[r.batch], r, figure, spec.runtime)
        run.points[key_of[r.batch]] = p
        run.save()
        summary.measured += 1
        bar.update(1)
        if on_point is not None:
            on_point(p)

    def heard(batch: int, conditions: dict) -> None:
        k = key_of[batch]
        conditions = dict(conditions)
        sampled: SampledPoint = conditions.pop("sampled")
        if req.samples_out is not None:
            _append_samples(req.samples_out, k, sampled)
        cond = {name: (round(v, 6) if isinstance(v, float) else v) for name, v in conditions.items()}
        cond["cpu_share"] = round(conditions["cpu_s_per_batch"] / conditions["wall_s_per_batch"], 3)
        cond["windows"] = [{"latency_s": round(w.latency_s, 6), "throughput_rps": round(w.throughput_rps, 4),
                            "batches": w.batches, "seconds": round(w.seconds, 3)} for w in sampled.windows]
        cond["window_batches"], cond["widened"] = sampled.window_batches, sampled.widened
        run.metadata["conditions"][f"{k.stage}/{k.variant}/{k.hardware}/b{k.batch}"] = cond

    try:
        measure_variant(spec, hardware, payloads, batches, req.policy, landed, isolate=req.isolate,
                        on_conditions=heard, nice=req.nice)
    except MeasureError as e:
        summary.failed[f"{stage_name}/{variant_name}/{hardware.label}"] = str(e).splitlines()[0]
        log.error("%s", str(e).splitlines()[0])
        bar.update(len([b for b in batches if key_of[b] not in run.points]))


def run_profile(req: ProfileRequest, on_point: Callable[[ProfilePoint], None] | None = None) -> RunSummary:
    """Measure what ``req.out`` lacks, saving after every point; returns the final profile."""
    _check_names(req)
    existing = _existing(req)
    keys = plan(req.spec, req.batches, [h.label for h in req.hardware], req.stages, req.variants)
    if req.only is not None:
        keys = [k for k in keys if k in req.only]
    todo = missing(keys, existing.points if existing else ())
    run = _Run(req, existing, keys)
    summary = RunSummary(profile=existing or Profile(req.spec.name, ()), skipped=len(keys) - len(todo))
    if not todo:
        run.save()
        summary.profile = run.profile() if run.points else summary.profile
        return summary
    inputs = stage_inputs(req.spec, threads=_SETUP_THREADS)
    stages = list(dict.fromkeys(k.stage for k in todo))
    figures = _accuracies(req, run, stages, inputs, _SETUP_THREADS, summary.failed)
    by_label = {h.label: h for h in req.hardware}
    with _progress(len(todo), req.progress) as bar:
        for stage_name, variant_name, hw, batches in group_by_variant(todo):
            figure = figures[stage_name].figures.get(variant_name)
            if figure is None or f"{stage_name}/{variant_name}" in summary.failed:
                bar.update(len(batches))
                continue
            bar.set_postfix_str(f"{stage_name}/{variant_name} {hw}")
            payloads = payloads_for_stage(req.spec, stage_name, inputs)
            _measure_group(run, summary, bar, (stage_name, variant_name, by_label[hw], batches), figure, payloads,
                           on_point)
    run.metadata["failed"] = dict(summary.failed)
    run.save()
    summary.profile = run.profile()
    summary.seconds = time.monotonic() - run.started
    return summary
