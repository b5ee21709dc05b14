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
Pure apart from measuring its own solve time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from varipipe.adapter._solvers import SOLVERS, Problem, available_solvers, run_solver
from varipipe.adapter.configurations import (
    ACCURACY_MODES,
    OBJECTIVES,
    Configuration,
    Limits,
    Weights,
    accuracy_term,
    combine_accuracy,
    stage_configurations,
    stage_loads,
    within_replica_limit,
)
from varipipe.adapter.explain import explain
from varipipe.errors import UnknownNameError
from varipipe.records import SLA, Decision, DecisionStatus, Profile, StageDecision

__all__ = ["solve", "Limits", "Weights", "SOLVERS", "available_solvers", "objective_value", "TIE_BREAK"]

# Weight of the secondary term in min-cost / max-accuracy modes: breaks ties only
# (a whole log-unit of accuracy is worth a millionth of a core).
TIE_BREAK = 1e-6
# Bisection steps when searching the largest load the capacity limit can carry:
# 2**-50 of the requested load is far below one request per second.
_BISECT_STEPS = 50


def _scorer(objective: str, accuracy: str, weights: Weights, n_stages: int) -> Callable[[Configuration], float]:
    def score(c: Configuration) -> float:
        acc = accuracy_term(c.accuracy, accuracy, n_stages)
        if objective == "weighted":
            return weights.alpha * acc - weights.beta * c.cost - weights.gamma * c.batch
        if objective == "min-cost":
            return -c.cost + TIE_BREAK * acc
        if objective == "max-accuracy":
            return acc - TIE_BREAK * c.cost
        return -c.latency_s - TIE_BREAK * c.cost  # "min-latency", the infeasible fallback

    return score


def objective_value(chosen: dict[str, Configuration], objective: str = "weighted", accuracy: str = "multiply",
                    weights: Weights | None = None) -> float:
    """The objective of a complete choice, as the solvers see it (for tests and cross-checks)."""
    score = _scorer(objective, accuracy, weights or Weights(), len(chosen))
    return sum(score(c) for c in chosen.values())


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


def _all_configs(profile: Profile, load_rps: float, limits: Limits) -> dict[str, list[Configuration]]:
    loads = stage_loads(profile, load_rps)
    for stage in limits.pinned:
        if stage not in loads:
            raise UnknownNameError(f"stage in profile {profile.pipeline!r} (pinned)", stage, profile.stages)
    return {s: stage_configurations(profile, s, loads[s], limits) for s in profile.stages}


def _problem(every: dict[str, list[Configuration]], limits: Limits, score, accuracy: str,
             sla_s: float | None, cost_ceiling: float | None, floor: float | None) -> Problem:
    n = len(every)
    options = {s: tuple(c for c in cs if within_replica_limit(c, limits)) for s, cs in every.items()}
    flat = [c for cs in options.values() for c in cs]
    return Problem(stages=tuple(every), options=options, score={c.key: score(c) for c in flat},
                   acc_terms={c.key: accuracy_term(c.accuracy, accuracy, n) for c in flat},
                   sla_s=sla_s, capacity_limit=limits.capacity_limit, cost_ceiling=cost_ceiling,
                   accuracy_floor=floor)


def solve(profile: Profile, load_rps: float, sla: SLA, limits: Limits | None = None, weights: Weights | None = None, *,
          accuracy: str = "multiply", objective: str = "weighted", min_accuracy: float | None = None,
          max_cost: float | None = None, solver: str = "cbc", lp_path: str | None = None) -> Decision:
    """Pick variant, batch, replicas and hardware per stage for ``load_rps`` requests/s.

    ``solver`` is "cbc" (PuLP's bundled CBC), "highs" (highspy) or "dp" (an exact
    dynamic program over stages, the cross-check). Returns an OPTIMAL decision,
    TIMED_OUT with the solver's incumbent, or INFEASIBLE with the fallback and why.
    ``lp_path`` is a debugging flag: the PuLP model is also written there as an .lp file.
    """
    _check_args(load_rps, accuracy, objective, solver, min_accuracy, max_cost)
    limits = limits or Limits()
    weights = weights or Weights()
    started = time.perf_counter()
    every = _all_configs(profile, load_rps, limits)
    score = _scorer(objective, accuracy, weights, len(every))
    problem = _problem(every, limits, score, accuracy, sla.latency_s, max_cost,
                       _accuracy_floor(min_accuracy, accuracy))
    outcome = None
    if all(problem.options[s] for s in problem.stages):
        outcome = run_solver(problem, solver, limits.time_limit_s, lp_path)
    if outcome is None or outcome.chosen is None:
        reason = _diagnose(problem, every, limits, load_rps)
        if outcome is not None and outcome.timed_out:
            reason = f"solver hit its {limits.time_limit_s}s time limit without a solution; {reason}"
        return _fallback(profile, load_rps, sla, limits, accuracy, solver, reason, started)
    status = DecisionStatus.TIMED_OUT if outcome.timed_out else DecisionStatus.OPTIMAL
    why = explain(problem, outcome.chosen, every, lambda c: within_replica_limit(c, limits), score,
                  limits.max_replicas)
    return _decision(outcome.chosen, status, "", load_rps, accuracy, solver, started,
                     why.binding, why.text)


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


def _diagnose(problem: Problem, every: dict[str, list[Configuration]], limits: Limits, load_rps: float) -> str:
    for s in problem.stages:
        if not problem.options[s]:
            best = max(every[s], key=lambda c: c.throughput_rps)
            cap = limits.rho_max * best.throughput_rps * limits.fixed_replicas.get(s, limits.max_replicas)
            return (f"stage {s!r} receives {best.load_rps:.1f} items/s but its fastest configuration"
                    f" ({best.variant} b={best.batch} {best.hardware}) carries at most {cap:.1f}/s"
                    f" within the replica limit")
    min_cost = sum(min(c.cost for c in problem.options[s]) for s in problem.stages)
    if problem.capacity_limit is not None and min_cost > problem.capacity_limit:
        return (f"load {load_rps:.1f} rps is beyond the cluster: the cheapest configurations cost"
                f" {min_cost:.3f}, capacity limit ({limits.cost_mode}) is {problem.capacity_limit:.3f}")
    min_lat = sum(min(c.latency_s for c in problem.options[s]) for s in problem.stages)
    if problem.sla_s is not None and min_lat > problem.sla_s:
        return f"SLA {problem.sla_s:.3f}s is below the fastest path's predicted p99 {min_lat:.3f}s"
    if problem.cost_ceiling is not None and min_cost > problem.cost_ceiling:
        return f"max cost {problem.cost_ceiling:.3f} is below the cheapest decision's cost {min_cost:.3f}"
    if problem.accuracy_floor is not None:
        top = sum(max(problem.acc_terms[c.key] for c in problem.options[s]) for s in problem.stages)
        if top < problem.accuracy_floor:
            return f"min accuracy is unreachable: the most accurate decision's accuracy term is {top:.4f}"
    return "no decision meets the SLA, the capacity limit and the objective's bound together"


def _carries(profile: Profile, rate: float, limits: Limits) -> bool:
    every = _all_configs(profile, rate, limits)
    options = [[c for c in cs if within_replica_limit(c, limits)] for cs in every.values()]
    if not all(options):
        return False
    return sum(min(c.cost for c in cs) for cs in options) <= limits.capacity_limit


def _max_carried(profile: Profile, load_rps: float, limits: Limits) -> float:
    """The largest rate ≤ load the capacity limit and replica cap can carry (monotone: bisect)."""
    if _carries(profile, load_rps, limits):
        return load_rps
    lo, hi = 0.0, load_rps
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _carries(profile, mid, limits) else (lo, mid)
    return lo


def _fallback(profile: Profile, load_rps: float, sla: SLA, limits: Limits, accuracy: str, solver: str,
              reason: str, started: float) -> Decision:
    carried = _max_carried(profile, load_rps, limits)
    every = _all_configs(profile, carried, limits)
    score = _scorer("min-latency", accuracy, Weights(), len(every))
    problem = _problem(every, limits, score, accuracy, None, None, None)
    chosen = None
    if all(problem.options[s] for s in problem.stages):
        chosen = run_solver(problem, solver, limits.time_limit_s).chosen
    if chosen is None:  # not even one replica per stage fits: the cheapest of each, fastest on ties
        chosen = {s: min(cs, key=lambda c: (c.cost, c.latency_s)) for s, cs in every.items()}
        note = "even the cheapest configuration of every stage exceeds the capacity limit; cheapest chosen"
    else:
        note = (f"fallback carries {carried:.1f} of {load_rps:.1f} rps (highest capacity within the limit),"
                f" lowest latency at that load; admission control sheds the rest")
    e2e = sum(c.latency_s for c in chosen.values())
    text = f"INFEASIBLE: {reason}\n{note}\npredicted e2e p99 {e2e:.3f}s vs SLA {sla.latency_s:.3f}s"
    lines = [f"{s}: {c.label()} (p99+wait {c.latency_s * 1e3:.1f} ms, cost {c.cost:.3f})" for s, c in chosen.items()]
    return _decision(chosen, DecisionStatus.INFEASIBLE, reason, load_rps, accuracy, solver, started,
                     (), "\n".join([text, *lines]))
