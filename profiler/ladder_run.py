"""Run every rung of a stage on the labelled split, timing each call: the ladder benchmark's engine.

``run_stage`` runs each variant on one thread (cpu:1) over every input, one
request at a time (batch 1), for its outputs; then it times the rungs
*interleaved*: every variant loaded at once, each round calling each of them
(in rotating order) on the same input, ``TIMING_ROUNDS`` rounds after a
warm-up call. The median call is the rung's cost. On a shared host whose load
drifts, interleaving lets the drift hit every rung alike, so their order is
the models' and not the moment's (timed one after the other on the dev split,
YOLOv3-tiny-320 came out slower than -416 during other sessions' runs).
Rough: in-process, on a shared host; the profiler's figures are the careful
ones. ``stage_ladder`` turns
the outputs into the stage figures -- through ``evaluate.stage_accuracy``,
the same function the profiler stores -- and the paired comparisons of
adjacent rungs (``ladder``). Variants are built by an injected builder, the
clock is injected, so tests run it on fakes.
"""

from __future__ import annotations

import dataclasses
import pickle
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from varipipe.pipelines.variant import Payload, StageOutput, Variant, build_variant
from varipipe.profiler.evaluate import StageAccuracy, stage_accuracy
from varipipe.profiler.ladder import Ladder, Rung, ladder
from varipipe.profiler.paired import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from varipipe.records import StageSpec

__all__ = ["StageRun", "run_stage", "time_interleaved", "stage_ladder", "stage_rungs", "save_run", "load_run", "check_same_inputs", "CPU_THREADS", "TIMING_ROUNDS"]

CPU_THREADS = 1  # cost is batch-1 latency on cpu:1 (issue 17 item 4)
# Interleaved timing rounds per stage (each times every rung once); 30 calls give a median whose
# run-to-run spread on this host is a few percent for the detectors and classifiers.
TIMING_ROUNDS = 30


@dataclass(frozen=True)
class StageRun:
    stage: str
    payloads: Sequence[Payload]
    outputs: dict[str, list[StageOutput]]
    latency_s: dict[str, float]  # median batch-1 call, timed interleaved
    failed: dict[str, str] = field(default_factory=dict)


def run_stage(stage: StageSpec, payloads: Sequence[Payload], variants: Sequence[str] | None = None,
              threads: int = CPU_THREADS, builder: Callable[..., Variant] = build_variant,
              clock: Callable[[], float] = time.perf_counter, rounds: int = TIMING_ROUNDS) -> StageRun:
    """Every (named) variant's outputs on every payload, then their batch-1 cost timed interleaved."""
    specs = [v for v in stage.variants if variants is None or v.name in variants]
    outputs: dict[str, list[StageOutput]] = {}
    failed: dict[str, str] = {}
    for spec in specs:
        try:
            v = builder(spec, threads=threads)
            v.load()
        except Exception as e:  # noqa: BLE001 - one broken variant must not stop the others
            failed[spec.name] = f"{type(e).__name__}: {e}"
            continue
        try:
            outputs[spec.name] = [v.infer([p])[0] for p in payloads]
        finally:
            v.unload()
    timed = [s for s in specs if s.name in outputs]
    latency = time_interleaved(timed, payloads, threads, builder, clock, rounds)
    return StageRun(stage.name, list(payloads), outputs, latency, failed)


def time_interleaved(specs: Sequence, payloads: Sequence[Payload], threads: int = CPU_THREADS,
                     builder: Callable[..., Variant] = build_variant, clock: Callable[[], float] = time.perf_counter,
                     rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Median batch-1 call of each variant, all loaded at once and called in turn on the same inputs."""
    loaded = []
    try:
        for spec in specs:
            v = builder(spec, threads=threads)
            v.load()
            loaded.append(v)
            v.infer([payloads[0]])  # warm-up: first-call allocations are not the rung's cost
        times: dict[str, list[float]] = {v.spec.name: [] for v in loaded}
        for r in range(rounds):
            p = payloads[r % len(payloads)]
            for k in range(len(loaded)):
                v = loaded[(r + k) % len(loaded)]  # rotate who goes first
                t0 = clock()
                v.infer([p])
                times[v.spec.name].append(clock() - t0)
    finally:
        for v in loaded:
            v.unload()
    return {name: statistics.median(t) for name, t in times.items()}


def stage_ladder(stage: StageSpec, run: StageRun, evaluation, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[Ladder, StageAccuracy]:
    """The stage figures (as the profiler stores them) and the ladder's paired comparisons.

    ``evaluation`` is a ``VisionCaptionEvaluation``: its ``outcomes`` gives the per-item outcomes the
    paired tests need (image matches for mAP, per-item scores otherwise).
    """
    rungs, figures = stage_rungs(stage, run, evaluation)
    return ladder(stage.name, figures.metric, rungs, resamples, seed), figures


def stage_rungs(stage: StageSpec, run: StageRun, evaluation) -> tuple[list[Rung], StageAccuracy]:
    """Each variant's rung (figure, cost, per-item outcomes on the items every variant scored) and the figures."""
    figures = stage_accuracy(stage, run.payloads, run.outputs, evaluation)
    outcomes = {v: evaluation.outcomes(stage.name, run.payloads, outs) for v, outs in run.outputs.items()}
    keep = [i for i in range(len(run.payloads)) if all(o[i] is not None for o in outcomes.values())]
    rungs = [Rung(stage.name, v, figures.measured[v], figures.items, run.latency_s[v],
                  figures.declared[v].value if v in figures.declared else None,
                  tuple(outcomes[v][i] for i in keep), figures.breakdown.get(v, {}))
             for v in run.outputs]
    return rungs, figures


def save_run(folder: Path, run: StageRun, split: str) -> Path:
    """Keep a stage's outputs and timings (``folder/<stage>.pkl``) to compare rungs later without re-running."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run.stage}.pkl"
    with open(path, "wb") as f:
        pickle.dump({"split": split, "run": run}, f)
    return path


def load_run(folder: Path, stage: str, split: str, variants: Sequence[str] | None = None) -> StageRun:
    """A run kept by ``save_run`` (a file we wrote: pickle), restricted to ``variants`` if given."""
    path = folder / f"{stage}.pkl"
    if not path.is_file():
        raise ValueError(f"{path}: no saved run of stage {stage!r} (made by --save-runs)")
    with open(path, "rb") as f:
        saved = pickle.load(f)
    if saved.get("split") != split:
        raise ValueError(f"{path} holds the {saved.get('split')} split, not {split}")
    run: StageRun = saved["run"]
    if variants is None:
        return run
    unknown = [v for v in variants if v not in run.outputs and v not in run.failed]
    if unknown:
        raise ValueError(f"{path} has no run of {', '.join(unknown)}")
    return dataclasses.replace(run, outputs={v: o for v, o in run.outputs.items() if v in variants},
                               latency_s={v: t for v, t in run.latency_s.items() if v in variants},
                               failed={v: e for v, e in run.failed.items() if v in variants})


def check_same_inputs(run: StageRun, inputs: Sequence[Payload]) -> None:
    """A saved run belongs to these inputs (the split's, built again by ``accuracy_payloads``, which also
    tells the evaluation set what each input is): the same request ids in the same order."""
    saved, now = [p.request_id for p in run.payloads], [p.request_id for p in inputs]
    if saved != now:
        diff = sorted(set(saved) ^ set(now))[:3]
        raise ValueError(f"the saved {run.stage} run was made on other inputs than this split's "
                         f"({len(saved)} vs {len(now)}; e.g. {diff or 'another order'})")
