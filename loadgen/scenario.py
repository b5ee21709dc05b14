"""Experiment scenarios: the YAML users write (pydantic) and its resolution at run time.

A scenario fixes *rules*, not numbers that depend on the trace or the profile:
the window, the SLA rules (multiples of the fastest batch-1 path), the peak rate
the window is scaled to, and how full the simulated cluster is at that peak
with the largest variants. :func:`resolve` turns the rules into numbers for a
given trace file and profile, so one scenario runs unchanged on any trace of
the same format and on any profile.

Files a scenario names (``trace``, ``profile``) are relative to the scenario
file's own folder; ``trace`` may also be a packaged trace's short name
(``twitter``, ``traces.PACKAGED_TRACES``). So a scenario runs from any working
directory and after ``pip install``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from varipipe.adapter.configurations import DEFAULT_CLUSTER_CORES
from varipipe.adapter.policy import DEFAULT_INTERVAL_S
from varipipe.adapter.predictors import DEFAULT_PREDICTOR
from varipipe.errors import ConfigError
from varipipe.loadgen.traces import Trace, locate_trace, read_trace
from varipipe.records import Profile, ProfilePoint, replica_price

__all__ = ["Scenario", "SlaRule", "ClusterRule", "ResolvedScenario", "load_scenario", "parse_scenario", "resolve",
           "fastest_path_s", "peak_cores_extremes", "peak_cores_largest", "peak_replicas_largest", "scenario_file"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlaRule(_Strict):
    """SLA = ``multiple`` × the fastest batch-1 path's ``statistic`` latency (summed over stages)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    multiple: float = Field(gt=0)
    statistic: Literal["p50", "p99"] = "p50"
    note: str = ""


class ClusterRule(_Strict):
    """How big the simulated cluster is, from the profile alone (fixed before any run).

    ``largest``: floor(cores the largest variants need at the peak / ``peak_fraction``), the
    original rule: the most accurate configuration always fits, so nothing has to trade.
    ``midpoint``: halfway between the peak cores of the cheapest SLA-feasible configuration and
    of the most accurate SLA-feasible one (issue 17): the most accurate configuration does not
    fit at the peak, the cheapest leaves room, so a policy must trade accuracy for capacity.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    rule: Literal["largest", "midpoint"]
    peak_fraction: float = Field(default=0.85, ge=0.8, le=1.0)  # "largest" only
    note: str = ""


class Window(_Strict):
    start_s: int = Field(ge=0)
    duration_s: int = Field(gt=0)


class LiveSettings(_Strict):
    """A short live run: a smaller window and rate a 2-core host can serve."""

    start_s: int = Field(default=0, ge=0)  # relative to the scenario's window
    duration_s: int = Field(default=120, gt=0)
    peak_rps: float = Field(default=2.0, gt=0)
    pipeline: str = "vision-caption"
    cost_mode: Literal["reserved", "shared"] = "shared"
    cluster_cores: float = Field(default=DEFAULT_CLUSTER_CORES, gt=0)


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    trace: str = Field(min_length=1)
    window: Window
    arrivals: Literal["poisson", "uniform", "step"] = "poisson"
    seed: int = 0
    target_peak_rps: float = Field(gt=0)
    cluster_peak_fraction: float = Field(default=0.85, ge=0.8, le=1.0)
    # Cluster rows: every run uses one (--cluster NAME; default: the first). Without the key,
    # one "largest" row at cluster_peak_fraction (scenarios written before the rows).
    clusters: list[ClusterRule] = Field(default_factory=list)
    cost_mode: Literal["reserved", "shared"] = "reserved"
    # GPUs for the profile's gpu:<model> configurations (simulated runs; the cluster sizing
    # rule above counts cores only), and one GPU's memory (None: the profile's record of it).
    cluster_gpus: int = Field(default=0, ge=0)
    gpu_memory_mb: float | None = Field(default=None, gt=0)
    interval_s: float = Field(default=DEFAULT_INTERVAL_S, gt=0)
    predictor: str = DEFAULT_PREDICTOR
    policies: list[str] = Field(min_length=1)
    policy_options: dict[str, Any] = Field(default_factory=dict)
    sla: list[SlaRule] = Field(min_length=1)
    profile: str | None = None
    # rim keeps replicas fixed: "peak-largest" fixes each stage at the replicas the
    # largest variant needs at the peak (the cluster sizing rule); "one": 1 each.
    rim_replicas: Literal["peak-largest", "one"] = "peak-largest"
    live: LiveSettings = Field(default_factory=LiveSettings)
    # The folder of the file it was loaded from: what its relative paths are relative to.
    _folder: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique(self) -> Scenario:
        for kind, names in (("sla", [r.name for r in self.sla]), ("cluster", [c.name for c in self.clusters])):
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} rule names repeat: {names}")
        return self

    def cluster_rows(self) -> list[ClusterRule]:
        return self.clusters or [ClusterRule(name="largest", rule="largest", peak_fraction=self.cluster_peak_fraction)]

    def cluster_row(self, name: str | None) -> ClusterRule:
        rows = self.cluster_rows()
        if name is None:
            return rows[0]
        for row in rows:
            if row.name == name:
                return row
        raise ConfigError("command line", "--cluster", f"scenario {self.name!r} has no cluster row {name!r} "
                          f"(rows: {', '.join(r.name for r in rows)})")


@dataclass(frozen=True)
class ResolvedScenario:
    """A scenario's rules turned into numbers for one trace file and one profile."""

    scenario: Scenario
    trace_path: str  # the file read
    window_start_s: int
    window_duration_s: int
    window_peak_rps: float
    scale: float
    cluster_cores: float
    peak_cores_largest: float
    slas: dict[str, float]
    notes: tuple[str, ...]
    per_policy: dict[str, dict[str, Any]]
    trace_name: str = ""  # as the scenario or --trace named it (results name no machine's paths)
    cluster: str = ""  # the cluster row's name
    # "midpoint" rows: peak cores of the cheapest and of the most accurate SLA-feasible configuration.
    peak_cores_cheapest: float | None = None
    peak_cores_accurate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "trace": self.trace_name, "window_start_s": self.window_start_s,
                "window_duration_s": self.window_duration_s, "window_peak_rps": self.window_peak_rps,
                "scale": self.scale, "cluster": self.cluster, "cluster_cores": self.cluster_cores,
                "peak_cores_largest": self.peak_cores_largest, "peak_cores_cheapest": self.peak_cores_cheapest,
                "peak_cores_accurate": self.peak_cores_accurate, "slas": dict(self.slas), "notes": list(self.notes),
                "per_policy": self.per_policy}


def parse_scenario(data: Any, source: str = "<string>") -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError(source, "(top level)", f"expected a mapping, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(source, where, f"{err['msg']} (got {err.get('input')!r})") from e


# Scenarios shipped with the package, loadable by name (``twitter-eval``) from any folder.
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def load_scenario(path: str | Path) -> Scenario:
    """A scenario file, or a packaged scenario by name (``twitter-eval``)."""
    path = Path(path)
    if not path.exists() and (SCENARIOS / f"{path}.yaml").is_file():
        path = SCENARIOS / f"{path}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(str(path), "(file)", f"cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "(syntax)", f"not valid YAML: {e}") from e
    sc = parse_scenario(data, str(path))
    sc._folder = path.resolve().parent
    return sc


def scenario_file(sc: Scenario, rel: str) -> Path:
    """A file the scenario names: relative to the scenario file's folder (or a packaged trace)."""
    return locate_trace(rel, sc._folder)


def _best_batch1(profile: Profile, stage: str) -> list[ProfilePoint]:
    return [p for p in profile.for_stage(stage) if p.batch == 1]


def fastest_path_s(profile: Profile, statistic: str) -> float:
    """Sum over stages of the fastest batch-1 latency (``p50`` or ``p99``) of any variant/hardware."""
    attr = "latency_p50_s" if statistic == "p50" else "latency_p99_s"
    total = 0.0
    for stage in profile.stages:
        pts = _best_batch1(profile, stage) or list(profile.for_stage(stage))
        total += min(getattr(p, attr) for p in pts)
    return total


def _largest_fits(profile: Profile, stage: str, sla_s: float) -> list[ProfilePoint]:
    from varipipe.adapter.policies import ranked_variants

    heaviest = ranked_variants(profile, stage)[-1]  # the variant fa2-high runs
    largest = [p for p in profile.for_stage(stage) if p.variant == heaviest]
    return [p for p in largest if p.latency_p99_s <= sla_s] or [min(largest, key=lambda p: p.latency_p99_s)]


def peak_replicas_largest(profile: Profile, peak_rps: float, sla_s: float,
                          rho_max: float) -> dict[str, tuple[int, float]]:
    """Per stage, (replicas, price per replica in cores) the largest (heaviest, as fa2-high) variant needs at ``peak_rps``.

    The configuration (batch, hardware) of that variant whose p99 fits the SLA
    and needs the fewest cores, ``ceil(λ_s / (ρ_max·h)) · cores``, with λ_s the
    stage's load after fan-out (as the adapter computes it).
    """
    out: dict[str, tuple[int, float]] = {}
    rate = peak_rps
    for stage in profile.stages:
        rate *= profile.fanout.get(stage, 1.0)
        options = [(math.ceil(rate / (rho_max * p.throughput_rps) - 1e-9), replica_price(p.hardware))
                   for p in _largest_fits(profile, stage, sla_s)]
        out[stage] = min(options, key=lambda o: o[0] * o[1])
    return out


def peak_cores_largest(profile: Profile, peak_rps: float, sla_s: float, rho_max: float) -> float:
    """Cores the largest variants of every stage need together at ``peak_rps``."""
    return float(sum(n * c for n, c in peak_replicas_largest(profile, peak_rps, sla_s, rho_max).values()))


def _window(trace: Trace, sc: Scenario, notes: list[str]) -> Trace:
    start, dur = sc.window.start_s, sc.window.duration_s
    if start + dur <= trace.duration_s:
        return trace.window(start, dur)
    dur = min(dur, trace.duration_s)
    notes.append(f"trace has {trace.duration_s} s, shorter than the window {start}+{sc.window.duration_s}: "
                 f"used its last {dur} s")
    return trace.window(trace.duration_s - dur, dur)


def resolve(sc: Scenario, profile: Profile, trace_override: str | None = None,
            cluster: str | None = None) -> ResolvedScenario:
    """Turn the scenario's rules into a window, scale, cluster size and SLAs for this trace and
    profile; ``cluster`` names the cluster row (default: the scenario's first)."""
    from varipipe.adapter.configurations import DEFAULT_RHO_MAX

    # --trace is the user's (relative to the working directory); the scenario's, relative to it.
    path = locate_trace(trace_override) if trace_override else scenario_file(sc, sc.trace)
    notes: list[str] = []
    trace = _window(read_trace(path), sc, notes)
    scale = sc.target_peak_rps / trace.peak_rps if trace.peak_rps > 0 else 1.0
    slas = {r.name: r.multiple * fastest_path_s(profile, r.statistic) for r in sc.sla}
    sla_s = slas[sc.sla[0].name]
    per_stage = peak_replicas_largest(profile, sc.target_peak_rps, sla_s, DEFAULT_RHO_MAX)
    need = float(sum(n * c for n, c in per_stage.values()))
    rim = {s: (n if sc.rim_replicas == "peak-largest" else 1) for s, (n, _) in per_stage.items()}
    row = sc.cluster_row(cluster)
    notes.append(f"scale {scale:.4g} maps the window's peak {trace.peak_rps:g} req/s to {sc.target_peak_rps:g}")
    notes.append(f"largest variants need {need:g} cores at that peak (rho_max {DEFAULT_RHO_MAX})")
    cheap = accurate = None
    if row.rule == "largest":
        cores = max(math.floor(need / row.peak_fraction), 1)
        notes.append(f"cluster row {row.name!r} (largest): {cores} cores, so the peak needs {need / cores:.0%} of it")
    else:
        cheap, accurate = peak_cores_extremes(profile, sc.target_peak_rps, sla_s, sc.cost_mode)
        cores = max(math.floor((cheap + accurate) / 2), 1)
        notes.append(f"cluster row {row.name!r} (midpoint): the cheapest SLA-feasible configuration needs {cheap:g} "
                     f"cores at the peak, the most accurate {accurate:g}: {cores} cores")
    return ResolvedScenario(sc, str(path), trace.offset_s, trace.duration_s, trace.peak_rps, scale, float(cores),
                            need, slas, tuple(notes), {"rim": {"replicas": rim}}, trace_override or sc.trace,
                            cluster=row.name, peak_cores_cheapest=cheap, peak_cores_accurate=accurate)


# A cluster no configuration's peak can fill: the extremes are asked of an unbounded cluster.
_UNBOUNDED_CORES = 1e6
_ANY_ACCURACY = 1e-12


def peak_cores_extremes(profile: Profile, peak_rps: float, sla_s: float, cost_mode: str) -> tuple[float, float]:
    """Peak cores (reserved: replicas x price; shared: the optimizer's cost) of the cheapest and of the
    most accurate configuration that meets ``sla_s`` at ``peak_rps``, as the adapter's optimizer
    finds them on an unbounded cluster (the accurate one's ties broken by cost)."""
    from varipipe.adapter.configurations import NO_COST_CEILING, Limits
    from varipipe.adapter.optimizer import solve
    from varipipe.records import SLA, DecisionStatus, decision_cost

    limits = Limits(cost_mode=cost_mode, cluster_cores=_UNBOUNDED_CORES, max_replicas=int(_UNBOUNDED_CORES))
    out = []
    # Bounds that never bind: any accuracy above zero, any cost the unbounded cluster allows.
    for objective, bound in (("min-cost", {"min_accuracy": _ANY_ACCURACY}), ("max-accuracy", {"max_cost": NO_COST_CEILING})):
        d = solve(profile, peak_rps, SLA(sla_s), limits, objective=objective, **bound)
        if d.status is not DecisionStatus.OPTIMAL:
            raise ConfigError("scenario", "clusters", f"no {objective} configuration meets the SLA "
                              f"{sla_s:.3g} s at {peak_rps:g} req/s on this profile ({d.status.value}: {d.reason})")
        out.append(decision_cost(d, cost_mode))
    return out[0], out[1]
