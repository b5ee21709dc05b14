"""The optimizer: (profile, load, SLA, limits, weights) -> Decision (DESIGN §5).

Collapsed multiple-choice formulation: one binary per configuration k of each
stage (variant, batch, hardware); replicas, batch wait, latency, cost and
accuracy are constants of k at the stage's load (see ``configurations``).

    max  Σ score_k · x_k
    s.t. one_config_{stage}:  Σ_{k∈s} x_k = 1
         sla_end_to_end:      Σ x_k · (l_k + w_k) ≤ SLA
         cluster_capacity:    Σ x_k · cost_k ≤ C_total (reserved) or ρ_max·cores (shared)
         max_cost:            Σ x_k · cost_k ≤ C          (objective max-accuracy)
         min_accuracy:        Σ x_k · acc_term_k ≥ A'     (objective min-cost)

    score_k = α·acc_term_k − β·cost_k − γ·b_k   (weighted), acc_term = log a
    (multiply, exact for any number of stages), a (sum) or a/S (average).

Infeasible is a status: the decision returned then carries the most load the
capacity limit allows, with the lowest latency at that load, and the reason.
Latencies within ``FALLBACK_KEEP_TOLERANCE`` of that lowest one count as equal
(the model cannot resolve them; ``FALLBACK_KEEP_TOLERANCE``'s comment): of those,
the fallback takes the choice that holds the fewest replica cores (replicas ×
``records.replica_price``; on a shared host, the fewest threads beside the
requests' own), and keeps the ``incumbent`` (the decision deployed now) when it
is one of them and holds no more.
Pure apart from measuring its own solve time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from varipipe.adapter._solvers import (
    DEFAULT_SOLVER,
    SOLVERS,
    TOLERANCE,
    Problem,
    StageOptions,
    available_solvers,
    run_solver,
)
from varipipe.adapter._table import StageRows, StageTable, stage_rows
from varipipe.adapter.configurations import (
    ACCURACY_MODES,
    OBJECTIVES,
    Configuration,
    Limits,
    Weights,
    accuracy_term,
    combine_accuracy,
)
from varipipe.adapter.explain import explain
from varipipe.errors import UnknownNameError
from varipipe.records import SLA, Decision, DecisionStatus, Profile, StageDecision, replica_price

__all__ = ["solve", "Limits", "Weights", "SOLVERS", "DEFAULT_SOLVER", "available_solvers", "objective_value",
           "TIE_BREAK", "FALLBACK_KEEP_TOLERANCE"]

# Weight of the secondary term in min-cost / max-accuracy modes: breaks ties only
# (a whole log-unit of accuracy is worth a millionth of a core).
TIE_BREAK = 1e-6
# Bisection steps when searching the largest load the capacity limit can carry:
# 2**-30 of the requested load (1e-9) is far below one request per second.
_BISECT_STEPS = 30
# The fallback carries this much less than the largest load found, so that a solver
# reading coefficients rounded to 12 digits (PuLP's model files for CBC) still finds
# its choice within the capacity limit (CBC called the exact boundary infeasible).
_CARRY_MARGIN = 1e-6
# The infeasible fallback counts end-to-end p99s within this share of the lowest as equal, takes the
# lightest of them and keeps the incumbent (the deployed decision) among them. It is the
# calibration's dead band (adapter.calibration.DEFAULT_DEAD_BAND: a correction within 5 % of 1 is
# not applied), so a gain the corrections cannot resolve neither moves the deployment nor adds a
# replica. Measured without it (benchmarks/README.md, "Why calibrated ipa lost attainment at
# 80 %"): calibrated ipa at 80 % of capacity, infeasible at every decision, changed its deployment
# 5-8 times in 100 s (uncalibrated: 0-1), for predicted gains of 0-4 % (ties among them); keeping
# the deployment but not taking the lightest, it held a second detector replica, under which live
# missed 35 % of requests against 25 % without.
FALLBACK_KEEP_TOLERANCE = 0.05


def _score(objective: str, weights: Weights, acc, cost, batch, latency):
    """A configuration's objective contribution from its accuracy term, cost, batch and latency;
    floats or numpy columns alike."""
    if objective == "weighted":
        return weights.alpha * acc - weights.beta * cost - weights.gamma * batch
    if objective == "min-cost":
        return -cost + TIE_BREAK * acc
    if objective == "max-accuracy":
        return acc - TIE_BREAK * cost
    return -latency - TIE_BREAK * cost  # "min-latency", the infeasible fallback


def _accuracy_terms(t: StageTable, accuracy: str, n_stages: int) -> np.ndarray:
    """:func:`accuracy_term` over a table's column (``math.log`` takes no arrays)."""
    return np.log(t.accuracy) if accuracy == "multiply" else accuracy_term(t.accuracy, accuracy, n_stages)


def objective_value(chosen: Mapping[str, Configuration | StageDecision], objective: str = "weighted",
                    accuracy: str = "multiply", weights: Weights | None = None) -> float:
    """The objective of a complete choice, as the solvers see it (for tests and cross-checks): of
    configurations, or of a decision's stages (they carry the accuracy, cost, batch and latency read)."""
    w = weights or Weights()
    n = len(chosen)
    return sum(_score(objective, w, accuracy_term(c.accuracy, accuracy, n), c.cost, c.batch, c.latency_s)
               for c in chosen.values())


def _accuracy_floor(min_accuracy: float | None, accuracy: str) -> float | None:
    if min_accuracy is None:
        return None
    if accuracy == "multiply":
        if not 0 < min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be in (0, 1] in multiply mode, got {min_accuracy!r}")
        return math.log(min_accuracy)
    return min_accuracy


def _check_args(load_rps: float, accuracy: str, objective: str, solver: str,
                min_accuracy: float | None, max_cost: float | None) -> None:
    if not (math.isfinite(load_rps) and load_rps >= 0):
        raise ValueError(f"load_rps must be a finite number >= 0, got {load_rps!r}")
    if accuracy not in ACCURACY_MODES:
        raise UnknownNameError("accuracy mode", accuracy, ACCURACY_MODES)
    if objective not in OBJECTIVES:
        raise UnknownNameError("objective", objective, OBJECTIVES)
    if solver not in SOLVERS:
        raise UnknownNameError("solver", solver, SOLVERS)
    if objective == "min-cost" and min_accuracy is None:
        raise ValueError("objective 'min-cost' needs min_accuracy (the accuracy it must reach)")
    if objective == "max-accuracy" and max_cost is None:
        raise ValueError("objective 'max-accuracy' needs max_cost (the cost it may spend)")
    if max_cost is not None and not math.isfinite(max_cost):
        raise ValueError(f"max_cost must be a finite number, got {max_cost!r} (no ceiling: a number above the "
                         "cluster's cost)")


@dataclass(frozen=True)
class _Pipeline:
    """A profile's configurations before load (gathered once per solve), its fan-out, and the
    percentile the SLA is kept at (what queueing waits are priced at)."""

    rows: dict[str, StageRows]
    fanout: Mapping[str, float]
    percentile: float

    @classmethod
    def of(cls, profile: Profile, limits: Limits, sla: SLA) -> _Pipeline:
        return cls(stage_rows(profile, limits), profile.fanout, sla.percentile)

    def at(self, load_rps: float, limits: Limits) -> dict[str, StageTable]:
        """Every stage's configurations priced at pipeline load ``load_rps`` (see stage_loads)."""
        out = {}
        for stage, rows in self.rows.items():
            load_rps *= self.fanout.get(stage, 1.0)
            out[stage] = rows.at(load_rps, limits, self.percentile)
        return out


@dataclass(frozen=True)
class _Goal:
    """What a problem maximises and the bounds its objective adds."""

    objective: str
    accuracy: str
    weights: Weights
    sla_s: float | None
    cost_ceiling: float | None = None
    accuracy_floor: float | None = None


def _bounds(every: dict[str, StageTable], limits: Limits, goal: _Goal) -> dict[str, float]:
    """The named constraints of the program and their bounds, in the order of the ``use`` columns;
    the GPU ones only when some row is on a GPU (configurations' docstring: reserved vs shared)."""
    out: dict[str, float] = {}
    if goal.sla_s is not None:
        out["sla_end_to_end"] = goal.sla_s
    out["cluster_capacity"] = limits.capacity_limit
    if any(t.on_gpu.any() for t in every.values()):
        if limits.cost_mode == "reserved":
            out["gpu_count"] = limits.gpu_limit
        else:
            out["gpu_time"] = limits.gpu_limit
            out["gpu_memory"] = limits.gpu_memory_limit
    if goal.cost_ceiling is not None:
        out["max_cost"] = goal.cost_ceiling
    if goal.accuracy_floor is not None:  # Σ acc_term ≥ floor, negated into the ≤ form
        out["min_accuracy"] = -goal.accuracy_floor
    return out


def _columns(t: StageTable, acc: np.ndarray) -> dict[str, np.ndarray]:
    """What each row of ``t`` adds to each named constraint's sum."""
    return {"sla_end_to_end": t.latency_s, "cluster_capacity": t.cpu_use, "gpu_count": t.gpu_use,
            "gpu_time": t.gpu_use, "gpu_memory": t.gpu_memory_use, "max_cost": t.cost, "min_accuracy": -acc}


def _problem(every: dict[str, StageTable], limits: Limits, goal: _Goal) -> Problem:
    """The program over every stage's rows: scores, one ``use`` column per named constraint."""
    bounds = _bounds(every, limits, goal)
    options = []
    for t in every.values():
        acc = _accuracy_terms(t, goal.accuracy, len(every))
        columns = _columns(t, acc)
        options.append(StageOptions(
            score=_score(goal.objective, goal.weights, acc, t.cost, t.batch, t.latency_s),
            use=np.stack([columns[name] for name in bounds], axis=1).reshape(len(t), len(bounds)),
            allowed=t.within(limits)))
    return Problem(stages=tuple(every), options=tuple(options), constraints=tuple(bounds),
                   bounds=np.array(list(bounds.values()), dtype=float))


def _exclusion(c: Configuration, limits: Limits) -> tuple[str, str]:
    """Why ``c`` is outside the per-stage limits: the replica cap (or its fixed replica count),
    or one replica needs more memory than one GPU has."""
    if c.on_gpu and limits.gpu_memory_mb is not None and c.memory_mb > limits.gpu_memory_mb:
        return (f"gpu_memory_{c.stage}",
                f"a replica needs {c.memory_mb:.0f} MiB of GPU memory at batch {c.batch}, one GPU has"
                f" {limits.gpu_memory_mb:.0f} MiB")
    return (f"max_replicas_{c.stage}",
            f"needs {c.replicas} replicas for {c.load_rps:.1f} items/s (max {limits.max_replicas})")


def _chosen(problem: Problem, every: dict[str, StageTable], rows: tuple[int, ...]) -> dict[str, Configuration]:
    return {s: every[s][r] for s, r in zip(problem.stages, rows, strict=True)}


def solve(profile: Profile, load_rps: float, sla: SLA, limits: Limits | None = None, weights: Weights | None = None, *,
          accuracy: str = "multiply", objective: str = "weighted", min_accuracy: float | None = None,
          max_cost: float | None = None, solver: str = DEFAULT_SOLVER, lp_path: str | None = None,
          incumbent: Decision | None = None) -> Decision:
    """Pick variant, batch, replicas and hardware per stage for ``load_rps`` requests/s.

    ``solver`` is "dp" (the default: an exact dynamic program over stages, pruned by
    Lagrangian bounds), "cbc" (PuLP's bundled CBC) or "highs" (highspy). Returns an OPTIMAL decision,
    TIMED_OUT with the solver's incumbent, or INFEASIBLE with the fallback and why; ``incumbent``,
    the decision deployed now, is what the fallback keeps when its p99 is within
    ``FALLBACK_KEEP_TOLERANCE`` of the fastest and it holds no more than the fallback's choice
    (module docstring).
    ``lp_path`` is a debugging flag: the PuLP model is also written there as an .lp file.
    """
    _check_args(load_rps, accuracy, objective, solver, min_accuracy, max_cost)
    limits = limits or Limits()
    weights = weights or Weights()
    started = time.perf_counter()
    pipeline = _Pipeline.of(profile, limits, sla)
    every = pipeline.at(load_rps, limits)
    goal = _Goal(objective, accuracy, weights, sla.latency_s, max_cost, _accuracy_floor(min_accuracy, accuracy))
    problem = _problem(every, limits, goal)
    outcome = run_solver(problem, solver, limits.time_limit_s, lp_path)
    if outcome.rows is None:
        reason = _diagnose(problem, every, limits, load_rps)
        if outcome.timed_out:
            reason = f"solver hit its {limits.time_limit_s}s time limit without a solution; {reason}"
        return _fallback(pipeline, load_rps, sla, limits, accuracy, solver, reason, started, incumbent)
    status = DecisionStatus.TIMED_OUT if outcome.timed_out else DecisionStatus.OPTIMAL
    chosen = _chosen(problem, every, outcome.rows)
    why = explain(problem, outcome.rows, every, lambda c: _exclusion(c, limits))
    return _decision(chosen, status, "", load_rps, accuracy, outcome.solver or solver, started, why.binding, why.text)


def _decision(chosen: dict[str, Configuration], status: DecisionStatus, reason: str, load_rps: float,
              accuracy: str, solver: str, started: float, binding: tuple[str, ...], text: str) -> Decision:
    stages = tuple(
        StageDecision(stage=s, variant=c.variant, batch=c.batch, replicas=c.replicas, hardware=c.hardware,
                      batch_wait_s=c.batch_wait_s, latency_s=c.latency_s, accuracy=c.accuracy, cost=c.cost)
        for s, c in chosen.items()
    )
    return Decision(
        stages=stages, status=status, reason=reason,
        predicted_latency_s=sum(c.latency_s for c in chosen.values()),
        predicted_accuracy=combine_accuracy([c.accuracy for c in chosen.values()], accuracy),
        predicted_cost=sum(c.cost for c in chosen.values()), load_rps=load_rps, solver=solver,
        solve_time_s=time.perf_counter() - started, binding_constraints=binding, explanation=text,
    )


# ------------------------------------------------------------------ infeasible


def _least(problem: Problem) -> np.ndarray:
    """Per constraint, the least Σ use any choice can reach (each stage's least allowed row)."""
    return np.sum([st.use[st.allowed].min(axis=0) for st in problem.options], axis=0)


def _unreachable(name: str, least: float, bound: float, limits: Limits, load_rps: float) -> str:
    if name == "cluster_capacity":
        return (f"load {load_rps:.1f} rps is beyond the cluster: the configurations using the fewest cores"
                f" use {least:.3f}, capacity limit ({limits.cost_mode}) is {bound:.3f}")
    if name == "gpu_count":
        return (f"load {load_rps:.1f} rps is beyond the cluster's GPUs: a decision needs at least {least:.0f}"
                f" GPUs, cluster_gpus is {bound:.0f}")
    if name == "gpu_time":
        return (f"load {load_rps:.1f} rps is beyond the cluster's GPUs: a decision keeps them busy at least"
                f" {least:.3f} GPU-s/s, the limit (rho_max x cluster_gpus) is {bound:.3f}")
    if name == "gpu_memory":
        return (f"load {load_rps:.1f} rps is beyond the GPUs' memory: a decision's GPU replicas need at least"
                f" {least:.0f} MiB together, the GPUs have {bound:.0f} MiB")
    if name == "sla_end_to_end":
        return f"SLA {bound:.3f}s is below the fastest path's predicted p99 {least:.3f}s"
    if name == "max_cost":
        return f"max cost {bound:.3f} is below the cheapest decision's cost {least:.3f}"
    if name == "min_accuracy":
        return f"min accuracy is unreachable: the most accurate decision's accuracy term is {-least:.4f}"
    return f"{name}: the least any decision needs is {least:.3f}, the limit is {bound:.3f}"


# The order in which _diagnose names an unreachable bound: the cluster before the SLA.
_DIAGNOSIS_ORDER = ("cluster_capacity", "gpu_count", "gpu_time", "gpu_memory", "sla_end_to_end", "max_cost",
                    "min_accuracy")


def _no_row(stage: str, t: StageTable, limits: Limits) -> str:
    """Why no configuration of a stage is within the per-stage limits."""
    fits = t.fits_gpu(limits)
    if not fits.any():
        return (f"stage {stage!r}: a replica of its smallest configuration needs {t.rows.memory_mb.min():.0f} MiB"
                f" of GPU memory, one GPU has {limits.gpu_memory_mb:.0f} MiB")
    best = t[int(np.argmax(np.where(fits, t.throughput_rps, -np.inf)))]
    cap = limits.rho_max * best.throughput_rps * limits.fixed_replicas.get(stage, limits.max_replicas)
    return (f"stage {stage!r} receives {best.load_rps:.1f} items/s but its fastest configuration"
            f" ({best.variant} b={best.batch} {best.hardware}) carries at most {cap:.1f}/s"
            f" within the replica limit")


def _diagnose(problem: Problem, every: dict[str, StageTable], limits: Limits, load_rps: float) -> str:
    for s, st in zip(problem.stages, problem.options, strict=True):
        if not st.allowed.any():
            return _no_row(s, every[s], limits)
    least = _least(problem)
    names = sorted(problem.constraints, key=lambda n: (_DIAGNOSIS_ORDER + (n,)).index(n))
    for name in names:
        d = problem.constraints.index(name)
        if least[d] > problem.bounds[d] + TOLERANCE:
            return _unreachable(name, float(least[d]), float(problem.bounds[d]), limits, load_rps)
    return "no decision meets the SLA, the capacity limit and the objective's bound together"


# The infeasible fallback: the lowest latency within the capacity limit, no SLA.
_FALLBACK_GOAL = _Goal("min-latency", "sum", Weights(), None)


def _carries(pipeline: _Pipeline, rate: float, limits: Limits) -> bool:
    """Some choice of every stage carries ``rate`` within the replica cap and the capacity limits."""
    problem = _problem(pipeline.at(rate, limits), limits, _FALLBACK_GOAL)
    if not problem.solvable:
        return False
    if (_least(problem) > problem.bounds).any():
        return False
    # One constraint: its least sum is reachable, so some choice fits. Several: ask the DP.
    return len(problem.constraints) == 1 or run_solver(problem, "dp", limits.time_limit_s).rows is not None


def _max_carried(pipeline: _Pipeline, load_rps: float, limits: Limits) -> float:
    """The largest rate ≤ load the capacity limit and replica cap can carry (monotone: bisect)."""
    if _carries(pipeline, load_rps, limits):
        return load_rps
    lo, hi = 0.0, load_rps
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _carries(pipeline, mid, limits) else (lo, mid)
    return lo * (1 - _CARRY_MARGIN)


def _incumbent_at(pipeline: _Pipeline, load_rps: float, limits: Limits,
                  incumbent: Decision | None) -> dict[str, Configuration] | None:
    """``incumbent``'s configurations priced at ``load_rps`` with its own replica counts, when each
    is within its stage's limits there and together they keep the fallback's constraints; else None."""
    if incumbent is None or [s.stage for s in incumbent.stages] != list(pipeline.rows):
        return None
    own = dataclasses.replace(limits, fixed_replicas={s.stage: s.replicas for s in incumbent.stages})
    every = pipeline.at(load_rps, own)
    problem = _problem(every, own, _FALLBACK_GOAL)
    rows = []
    for sd, t, opt in zip(incumbent.stages, every.values(), problem.options, strict=True):
        r = t.rows
        match = [i for i in np.flatnonzero(opt.allowed)
                 if (r.variant[i], int(r.batch[i]), r.hardware[i]) == (sd.variant, sd.batch, sd.hardware)]
        if not match:
            return None
        rows.append(int(match[0]))
    use = sum(opt.use[r] for opt, r in zip(problem.options, rows, strict=True))
    return _chosen(problem, every, tuple(rows)) if (use <= problem.bounds + TOLERANCE).all() else None


def _same(a: Configuration, b: Configuration) -> bool:
    return (a.variant, a.batch, a.hardware, a.replicas) == (b.variant, b.batch, b.hardware, b.replicas)


def _held(chosen: Mapping[str, Configuration]) -> float:
    """The replica cores a choice holds: replicas × ``records.replica_price`` (threads, on a shared host)."""
    return sum(c.replicas * replica_price(c.hardware) for c in chosen.values())


def _lightest_within(problem: Problem, every: dict[str, StageTable], latency_s: float, solver: str,
                     limits: Limits) -> tuple[int, ...] | None:
    """Of the choices within ``problem``'s constraints whose summed latency is at most ``latency_s``,
    the one holding the fewest replica cores (:func:`_held`), the lowest latency among equals."""
    options = tuple(StageOptions(score=-(t.rows.price * t.replicas) - TIE_BREAK * t.latency_s,
                                 use=np.concatenate([t.latency_s[:, None], o.use], axis=1), allowed=o.allowed)
                    for t, o in zip(every.values(), problem.options, strict=True))
    light = Problem(stages=problem.stages, options=options, constraints=("sla_end_to_end", *problem.constraints),
                    bounds=np.concatenate([[latency_s], problem.bounds]))
    return run_solver(light, solver, limits.time_limit_s).rows


def _fallback(pipeline: _Pipeline, load_rps: float, sla: SLA, limits: Limits, accuracy: str, solver: str,
              reason: str, started: float, incumbent: Decision | None = None) -> Decision:
    carried = _max_carried(pipeline, load_rps, limits)
    every = pipeline.at(carried, limits)
    problem = _problem(every, limits, _FALLBACK_GOAL)
    rows = run_solver(problem, solver, limits.time_limit_s).rows
    chosen = _chosen(problem, every, rows) if rows is not None else None
    if chosen is None:  # not even one replica per stage fits: the cheapest of each, fastest on ties
        chosen = {s: t[int(np.lexsort((t.latency_s, t.cost))[0])] for s, t in every.items()}
        note = "even the cheapest configuration of every stage exceeds the capacity limit; cheapest chosen"
    else:
        note = (f"fallback carries {carried:.1f} of {load_rps:.1f} rps (highest capacity within the limit),"
                f" lowest latency at that load; admission control sheds the rest")
        fastest_s = sum(c.latency_s for c in chosen.values())
        equal_s = fastest_s * (1 + FALLBACK_KEEP_TOLERANCE)  # what counts as equally fast
        light = _lightest_within(problem, every, equal_s + TOLERANCE, solver, limits)
        if light is not None and _held(lighter := _chosen(problem, every, light)) < _held(chosen):
            chosen = lighter
            note += (f"; of the choices within {FALLBACK_KEEP_TOLERANCE:.0%} of its predicted p99 {fastest_s:.3f}s,"
                     f" the one holding the fewest replica cores ({_held(chosen):g})")
        kept = _incumbent_at(pipeline, carried, limits, incumbent)
        if (kept is not None and any(not _same(kept[s], c) for s, c in chosen.items())
                and sum(c.latency_s for c in kept.values()) <= equal_s + TOLERANCE and _held(kept) <= _held(chosen)):
            chosen = kept
            note += (f"; the deployed configuration kept: within {FALLBACK_KEEP_TOLERANCE:.0%} of the lowest"
                     f" predicted p99 {fastest_s:.3f}s, and no heavier")
    e2e = sum(c.latency_s for c in chosen.values())
    text = f"INFEASIBLE: {reason}\n{note}\npredicted e2e p99 {e2e:.3f}s vs SLA {sla.latency_s:.3f}s"
    lines = [f"{s}: {c.label()} (p99+waits {c.latency_s * 1e3:.1f} ms, cost {c.cost:.3f})" for s, c in chosen.items()]
    return _decision(chosen, DecisionStatus.INFEASIBLE, reason, load_rps, accuracy, solver, started,
                     (), "\n".join([text, *lines]))
