"""Run every rung of a stage on the labelled split, timing each call: the ladder benchmark's engine.

``run_stage`` loads each variant on one thread (cpu:1), warms it up on the
first input, then runs it on every input one request at a time (batch 1),
timing each call; the median is the rung's cost, measured in the same run as
its accuracy (rough: in-process, on a shared host). ``stage_ladder`` turns
the outputs into the stage figures -- through ``evaluate.stage_accuracy``,
the same function the profiler stores -- and the paired comparisons of
adjacent rungs (``ladder``). Variants are built by an injected builder, the
clock is injected, so tests run it on fakes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from varipipe.pipelines.variant import Payload, StageOutput, Variant, build_variant
from varipipe.profiler.evaluate import StageAccuracy, stage_accuracy
from varipipe.profiler.ladder import Ladder, Rung, ladder
from varipipe.profiler.paired import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from varipipe.records import StageSpec

__all__ = ["StageRun", "run_stage", "stage_ladder", "CPU_THREADS"]

CPU_THREADS = 1  # cost is batch-1 latency on cpu:1 (issue 17 item 4)


@dataclass(frozen=True)
class StageRun:
    stage: str
    payloads: Sequence[Payload]
    outputs: dict[str, list[StageOutput]]
    latency_s: dict[str, float]  # median of the timed batch-1 calls
    failed: dict[str, str] = field(default_factory=dict)


def run_stage(stage: StageSpec, payloads: Sequence[Payload], variants: Sequence[str] | None = None,
              threads: int = CPU_THREADS, builder: Callable[..., Variant] = build_variant,
              clock: Callable[[], float] = time.perf_counter) -> StageRun:
    """Every (named) variant of ``stage`` on every payload, one request at a time, each call timed."""
    outputs: dict[str, list[StageOutput]] = {}
    latency: dict[str, float] = {}
    failed: dict[str, str] = {}
    for spec in stage.variants:
        if variants is not None and spec.name not in variants:
            continue
        try:
            v = builder(spec, threads=threads)
            v.load()
        except Exception as e:  # noqa: BLE001 - one broken variant must not stop the others
            failed[spec.name] = f"{type(e).__name__}: {e}"
            continue
        try:
            v.infer([payloads[0]])  # warm-up: first-call allocations are not the rung's cost
            outs, times = [], []
            for p in payloads:
                t0 = clock()
                outs.extend(v.infer([p]))
                times.append(clock() - t0)
        finally:
            v.unload()
        outputs[spec.name], latency[spec.name] = outs, statistics.median(times)
    return StageRun(stage.name, list(payloads), outputs, latency, failed)


def stage_ladder(stage: StageSpec, run: StageRun, evaluation, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[Ladder, StageAccuracy]:
    """The stage figures (as the profiler stores them) and the ladder's paired comparisons.

    ``evaluation`` is a ``VisionCaptionEvaluation``: its ``outcomes`` gives the per-item outcomes the
    paired tests need (image matches for mAP, per-item scores otherwise).
    """
    figures = stage_accuracy(stage, run.payloads, run.outputs, evaluation)
    outcomes = {v: evaluation.outcomes(stage.name, run.payloads, outs) for v, outs in run.outputs.items()}
    keep = [i for i in range(len(run.payloads)) if all(o[i] is not None for o in outcomes.values())]
    rungs = [Rung(stage.name, v, figures.measured[v], figures.items, run.latency_s[v],
                  figures.declared[v].value if v in figures.declared else None,
                  tuple(outcomes[v][i] for i in keep), figures.breakdown.get(v, {}))
             for v in run.outputs]
    return ladder(stage.name, figures.metric, rungs, resamples, seed), figures
