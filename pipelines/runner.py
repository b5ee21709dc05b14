"""Run a pipeline in-process, without Ray: one payload through the stages in order.

What ``varipipe run`` and the profiler use to see what a pipeline does to one
input, with the same variant objects that serve (``build_variant``), timed
per stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from varipipe.errors import UnknownNameError
from varipipe.pipelines.variant import Payload, StageOutput, Variant, build_variant
from varipipe.records import PipelineSpec, VariantSpec

__all__ = ["PipelineRunner", "RunResult", "StageResult", "choose_variants"]


@dataclass(frozen=True)
class StageResult:
    """One stage's part of a run: which variant, what it returned, how long ``infer`` took."""

    stage: str
    variant: str
    output: StageOutput
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "variant": self.variant, "seconds": round(self.seconds, 6),
                "output": self.output.to_json(), "summary": self.output.summary()}


@dataclass(frozen=True)
class RunResult:
    """A whole run: every stage's result in pipeline order, and the end-to-end time."""

    pipeline: str
    stages: tuple[StageResult, ...]
    total_s: float

    def stage(self, name: str) -> StageResult:
        for s in self.stages:
            if s.stage == name:
                return s
        raise UnknownNameError("stage", name, [s.stage for s in self.stages])

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "total_s": round(self.total_s, 6),
                "stages": [s.to_json() for s in self.stages]}


def choose_variants(spec: PipelineSpec, chosen: Mapping[str, str] | None) -> dict[str, VariantSpec]:
    """Each stage's variant: the chosen name where given, else the stage default.

    Unknown stage or variant names raise ``UnknownNameError`` listing the known ones.
    """
    chosen = dict(chosen or {})
    for stage in chosen:
        spec.stage(stage)  # raises for an unknown stage
    return {s.name: s.variant(chosen.get(s.name, s.default_variant)) for s in spec.stages}


class PipelineRunner:
    """Loads the chosen variant of every stage and runs payloads through them in order."""

    def __init__(self, spec: PipelineSpec, variants: Mapping[str, str] | None = None, threads: int = 1,
                 builder: Callable[..., Variant] = build_variant) -> None:
        self.spec = spec
        self.chosen = choose_variants(spec, variants)
        self.threads = threads
        self._builder = builder
        self._variants: dict[str, Variant] = {}

    def load(self) -> PipelineRunner:
        """Build and load every stage's variant (idempotent)."""
        for stage, vspec in self.chosen.items():
            if stage not in self._variants:
                variant = self._builder(vspec, threads=self.threads)
                variant.load()
                self._variants[stage] = variant
        return self

    def close(self) -> None:
        """Unload every variant, releasing its memory."""
        for variant in self._variants.values():
            variant.unload()
        self._variants.clear()

    def __enter__(self) -> PipelineRunner:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, payload: Payload) -> RunResult:
        """Send ``payload`` through every stage; its ``outputs`` fill up as it goes."""
        self.load()
        results = []
        start = time.perf_counter()
        for stage, variant in self._variants.items():
            t0 = time.perf_counter()
            (output,) = variant.infer([payload])
            seconds = time.perf_counter() - t0
            payload.outputs[stage] = output
            results.append(StageResult(stage, variant.name, output, seconds))
        return RunResult(self.spec.name, tuple(results), time.perf_counter() - start)
