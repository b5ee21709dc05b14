"""What to measure and when a point has enough samples. Pure: no clock, no models.

A profile run is a grid of points (stage, variant, batch, hardware). ``plan``
lists the grid in measuring order and drops the points an existing profile
already holds, which is what makes an interrupted run resumable.
``SamplingPolicy`` decides when one point has sampled enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from varipipe.records import PipelineSpec, ProfilePoint, VariantSpec

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_CORES",
    "SEQUENTIAL_MAX_BATCH",
    "PointKey",
    "SamplingPolicy",
    "FULL",
    "QUICK",
    "variant_batches",
    "plan",
    "missing",
]

# Issue 5's default grid.
DEFAULT_BATCHES = (1, 2, 4, 8, 16)
DEFAULT_CORES = (1, 2)
# A runtime that loops over the batch (llama.cpp generates one sequence at a
# time, VariantSpec.native_batching=False) gains nothing from larger batches:
# its latency is b x one item. Profile it up to 4 (issue 5: "the LLM at the batch
# sizes its runtime supports, e.g. 1,2,4"); the latency model covers the rest.
# A variant may set params.max_batch_size to say otherwise.
SEQUENTIAL_MAX_BATCH = 4


@dataclass(frozen=True, order=True)
class PointKey:
    stage: str
    variant: str
    batch: int
    hardware: str

    @classmethod
    def of(cls, p: ProfilePoint) -> PointKey:
        return cls(p.stage, p.variant, p.batch, p.hardware)


@dataclass(frozen=True)
class SamplingPolicy:
    """When a point has sampled enough.

    Batches up to ``small_batch_max`` sample until ``min_samples`` *and*
    ``min_seconds`` are reached (issue 5: at least 200 samples for batch <= 4);
    larger batches stop at ``min_samples`` or at the ``max_seconds`` time box,
    whichever comes first, but never below ``floor_samples``. ``time_box_small``
    applies the time box to small batches too (the quick profile).
    """

    name: str
    min_samples: int
    max_seconds: float
    min_seconds: float = 0.0
    max_samples: int = 5000
    floor_samples: int = 5
    small_batch_max: int = 4
    time_box_small: bool = False
    warmup_batches: int = 3

    def __post_init__(self) -> None:
        if self.min_samples < 1 or self.floor_samples < 1 or self.max_samples < self.min_samples:
            raise ValueError(f"sampling policy {self.name!r}: need 1 <= floor, 1 <= min_samples <= max_samples")
        if self.max_seconds <= 0:
            raise ValueError(f"sampling policy {self.name!r}: max_seconds must be > 0, got {self.max_seconds!r}")

    def time_boxed(self, batch: int) -> bool:
        return batch > self.small_batch_max or self.time_box_small

    def done(self, batch: int, samples: int, elapsed_s: float) -> bool:
        """True once a point at ``batch`` with ``samples`` taken over ``elapsed_s`` may stop."""
        if samples >= self.max_samples:
            return True
        if samples >= self.min_samples and elapsed_s >= self.min_seconds:
            return True
        return self.time_boxed(batch) and elapsed_s >= self.max_seconds and samples >= self.floor_samples

    def with_max_seconds(self, seconds: float | None) -> SamplingPolicy:
        if seconds is None:
            return self
        from dataclasses import replace

        return replace(self, max_seconds=seconds)


# Full profile: 200 samples for batch <= 4, and at least 2 s of them so fast
# points average over scheduler noise; larger batches time-boxed at 60 s (issue 5).
FULL = SamplingPolicy(name="full", min_samples=200, max_seconds=60.0, min_seconds=2.0)
# Quick profile: 30 samples or a 3 s time box for every batch size, so the whole
# flagship (about 80 points) finishes in well under 10 minutes.
QUICK = SamplingPolicy(name="quick", min_samples=30, max_seconds=3.0, time_box_small=True, warmup_batches=1)


def variant_batches(variant: VariantSpec, batches: Sequence[int]) -> tuple[int, ...]:
    """The batch sizes profiled for a variant: all of them, or up to its runtime's limit."""
    limit = variant.params.get("max_batch_size")
    if limit is None and not variant.native_batching:
        limit = SEQUENTIAL_MAX_BATCH
    chosen = tuple(sorted({b for b in batches if limit is None or b <= int(limit)}))
    return chosen or (min(batches),)


def plan(
    spec: PipelineSpec,
    batches: Sequence[int] = DEFAULT_BATCHES,
    hardware: Sequence[str] = tuple(f"cpu:{c}" for c in DEFAULT_CORES),
    stages: Iterable[str] | None = None,
    variants: Iterable[str] | None = None,
) -> list[PointKey]:
    """Every point of the grid in measuring order: stage, variant, hardware, batch."""
    wanted_stages = set(stages) if stages is not None else None
    wanted_variants = set(variants) if variants is not None else None
    keys: list[PointKey] = []
    for stage in spec.stages:
        if wanted_stages is not None and stage.name not in wanted_stages:
            continue
        for v in stage.variants:
            if wanted_variants is not None and v.name not in wanted_variants:
                continue
            for hw in hardware:
                keys.extend(PointKey(stage.name, v.name, b, hw) for b in variant_batches(v, batches))
    return keys


def missing(keys: Sequence[PointKey], existing: Iterable[ProfilePoint]) -> list[PointKey]:
    """The keys not yet measured, in their original order (resuming a run)."""
    done = {PointKey.of(p) for p in existing}
    return [k for k in keys if k not in done]
