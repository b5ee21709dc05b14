"""Backends for the collapsed multiple-choice program: PuLP (CBC, HiGHS) and a DP.

Every backend receives the same :class:`Problem` and returns the chosen
configuration per stage, or ``None`` when no choice satisfies the constraints.
Solver crashes raise :class:`SolverError`; infeasibility is a return value.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from varipipe.adapter.configurations import Configuration
from varipipe.errors import SolverError, UnknownNameError

__all__ = ["Problem", "Outcome", "SOLVERS", "available_solvers", "run_solver"]

SOLVERS = ("cbc", "highs", "dp")
# Feasibility tolerance on the latency / cost / accuracy sums (seconds, cores, log-accuracy).
TOLERANCE = 1e-9
# MIP gaps: prove optimality, so the ILP equals brute-force enumeration exactly.
_GAP_REL = 1e-9
_GAP_ABS = 1e-9
# CBC's integer preprocessing (2.10.x bundled with PuLP 3.3) reported "Optimal" for a
# provably worse choice on a 3-stage multiple-choice knapsack (hypothesis found it:
# tests/unit/test_adapter_optimizer.py, seed 1506); with it off CBC matches brute force.
# Our models are a few hundred binaries, so the preprocessing buys nothing.
# CBC also prunes any node that cannot beat the incumbent by its cutoff increment
# (default 1e-5); two choices whose objectives differ by less (the cost term is
# small) then look equal, and CBC kept the worse one (seed 2 in the same test).
# Its LP's dual tolerance (default 1e-7) likewise stopped at a vertex 1e-6 short of
# the optimum (seed 5240). Both tightened: 3000 random instances then match brute force.
_CBC_OPTIONS = ["preprocess off", f"increment {_GAP_ABS / 10}", "dualTolerance 1e-10"]

Key = tuple[str, str, int, str]


@dataclass(frozen=True)
class Problem:
    """``max Σ score·x`` over one configuration per stage, subject to the named sums.

    ``acc_terms`` are each configuration's accuracy contributions, used only when
    ``accuracy_floor`` is set. Σ cost is bounded by both ``capacity_limit`` (the
    cluster) and ``cost_ceiling`` (max-accuracy mode); either may be ``None``.
    """

    stages: tuple[str, ...]
    options: Mapping[str, tuple[Configuration, ...]]
    score: Mapping[Key, float]
    acc_terms: Mapping[Key, float]
    sla_s: float | None
    capacity_limit: float | None
    cost_ceiling: float | None = None
    accuracy_floor: float | None = None

    @property
    def cost_bound(self) -> float:
        bounds = [b for b in (self.capacity_limit, self.cost_ceiling) if b is not None]
        return min(bounds) if bounds else math.inf


@dataclass(frozen=True)
class Outcome:
    chosen: dict[str, Configuration] | None
    timed_out: bool = False


@functools.cache  # what is installed does not change while the process runs; listSolvers probes PATH
def available_solvers() -> tuple[str, ...]:
    import pulp

    have = set(pulp.listSolvers(onlyAvailable=True))
    out = []
    if "PULP_CBC_CMD" in have:
        out.append("cbc")
    if "HiGHS" in have:
        out.append("highs")
    out.append("dp")
    return tuple(out)


def run_solver(problem: Problem, solver: str, time_limit_s: float, lp_path: str | None = None) -> Outcome:
    """Solve with one backend; ``lp_path`` (debugging) writes the PuLP model as an .lp file."""
    if solver == "dp":
        return Outcome(_solve_dp(problem))
    if solver in ("cbc", "highs"):
        return _solve_pulp(problem, solver, time_limit_s, lp_path)
    raise UnknownNameError("solver", solver, SOLVERS)


# ---------------------------------------------------------------- PuLP model


def _variables(prob, problem: Problem):
    import pulp

    x: dict[Key, pulp.LpVariable] = {}
    for si, stage in enumerate(problem.stages):
        for ci, c in enumerate(problem.options[stage]):
            x[c.key] = prob.add_variable(f"x_{si}_{ci}", cat=pulp.LpBinary)
    return x


def _add_objective(prob, problem: Problem, x) -> None:
    import pulp

    prob += pulp.lpSum(problem.score[k] * v for k, v in x.items())


def _add_one_config(prob, problem: Problem, x) -> None:
    import pulp

    for stage in problem.stages:
        prob += pulp.lpSum(x[c.key] for c in problem.options[stage]) == 1, f"one_config_{stage}"


def _all(problem: Problem):
    return [c for s in problem.stages for c in problem.options[s]]


def _add_sla(prob, problem: Problem, x) -> None:
    import pulp

    if problem.sla_s is not None:
        prob += pulp.lpSum(c.latency_s * x[c.key] for c in _all(problem)) <= problem.sla_s, "sla_end_to_end"


def _add_capacity(prob, problem: Problem, x) -> None:
    import pulp

    if problem.capacity_limit is not None:
        prob += pulp.lpSum(c.cost * x[c.key] for c in _all(problem)) <= problem.capacity_limit, "cluster_capacity"


def _add_cost_ceiling(prob, problem: Problem, x) -> None:
    import pulp

    if problem.cost_ceiling is not None:
        prob += pulp.lpSum(c.cost * x[c.key] for c in _all(problem)) <= problem.cost_ceiling, "max_cost"


def _add_accuracy_floor(prob, problem: Problem, x) -> None:
    import pulp

    if problem.accuracy_floor is not None:
        prob += (pulp.lpSum(problem.acc_terms[c.key] * x[c.key] for c in _all(problem))
                 >= problem.accuracy_floor, "min_accuracy")


_banner_shown = False


def _highs_banner_to_stderr() -> None:
    """HiGHS prints its banner on C stdout at the first ``Highs()`` of a process,
    which would corrupt ``--json`` output; build that first instance with fd 1
    pointed at stderr, once."""
    global _banner_shown
    if _banner_shown:
        return
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        _banner_shown = True


def _pulp_solver(solver: str, time_limit_s: float):
    import pulp

    if solver == "cbc":
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=_GAP_REL, gapAbs=_GAP_ABS,
                                 options=_CBC_OPTIONS)
    _highs_banner_to_stderr()
    return pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=_GAP_REL, gapAbs=_GAP_ABS,
                      log_to_console=False, output_flag=False)


def _solve_pulp(problem: Problem, solver: str, time_limit_s: float, lp_path: str | None = None) -> Outcome:
    import pulp

    if solver not in available_solvers():
        raise SolverError(f"solver {solver!r} is not installed here; available: {', '.join(available_solvers())}")
    prob = pulp.LpProblem("varipipe", pulp.LpMaximize)
    x = _variables(prob, problem)
    _add_objective(prob, problem, x)
    for add in (_add_one_config, _add_sla, _add_capacity, _add_cost_ceiling, _add_accuracy_floor):
        add(prob, problem, x)
    if lp_path is not None:
        prob.writeLP(lp_path)
    try:
        status = prob.solve(_pulp_solver(solver, time_limit_s))
    except pulp.PulpSolverError as e:
        raise SolverError(f"{solver} failed: {e}") from e
    if status == pulp.LpStatusInfeasible:
        return Outcome(None)
    if status != pulp.LpStatusOptimal:
        if prob.sol_status == pulp.LpSolutionNoSolutionFound:
            return Outcome(None, timed_out=True)
        raise SolverError(f"{solver} returned status {pulp.LpStatus.get(status, status)!r}")
    chosen = _read(problem, x)
    return Outcome(chosen, timed_out=prob.sol_status == pulp.LpSolutionIntegerFeasible)


def _read(problem: Problem, x) -> dict[str, Configuration]:
    chosen: dict[str, Configuration] = {}
    for stage in problem.stages:
        picked = [c for c in problem.options[stage] if (x[c.key].value() or 0) > 0.5]
        if len(picked) != 1:
            raise SolverError(f"solver chose {len(picked)} configurations for stage {stage!r}, expected 1")
        chosen[stage] = picked[0]
    return chosen


# ------------------------------------------------------------ DP with Pareto


def _pareto(lat: np.ndarray, cost: np.ndarray, acc: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of states no other state dominates (≤ latency, ≤ cost, ≥ accuracy, ≥ score)."""
    order = np.lexsort((lat, -score))  # best score first, then lowest latency
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            dominated = ((lat[k] <= lat[i] + TOLERANCE) & (cost[k] <= cost[i] + TOLERANCE)
                         & (acc[k] >= acc[i] - TOLERANCE) & (score[k] >= score[i] - TOLERANCE))
            if dominated.any():
                continue
        kept.append(i)
    return np.asarray(kept, dtype=int)


@dataclass(frozen=True)
class _Stage:
    """One stage's options as arrays (latency, cost, accuracy term, score)."""

    lat: np.ndarray
    cost: np.ndarray
    acc: np.ndarray
    score: np.ndarray


def _arrays(problem: Problem, use_acc: bool) -> list[_Stage]:
    out = []
    for stage in problem.stages:
        opts = problem.options[stage]
        out.append(_Stage(np.array([c.latency_s for c in opts]), np.array([c.cost for c in opts]),
                          np.array([problem.acc_terms[c.key] if use_acc else 0.0 for c in opts]),
                          np.array([problem.score[c.key] for c in opts])))
    return out


def _suffix(values: list[float]) -> np.ndarray:
    """``out[i]`` = sum of ``values[i+1:]``: what the stages after i add at best."""
    return np.append(np.cumsum(values[::-1])[::-1][1:], 0.0)


def _greedy_paths(stages: list[_Stage]) -> list[tuple[np.ndarray, ...]]:
    """Suffix sums (lat, cost, acc, score) of two simple completions: fastest and cheapest."""
    paths = []
    for key in ("lat", "cost"):
        picks = [int(np.lexsort((st.lat if key == "cost" else st.cost, getattr(st, key)))[0]) for st in stages]
        paths.append(tuple(_suffix([getattr(st, f)[i] for st, i in zip(stages, picks, strict=True)])
                           for f in ("lat", "cost", "acc", "score")))
    return paths


def _solve_dp(problem: Problem) -> dict[str, Configuration] | None:
    """Exact dynamic program over stages keeping the Pareto front of partial choices.

    Partial choices are dropped when even the best completion cannot meet a bound
    (fastest remaining latency, cheapest remaining cost, most accurate remaining
    accuracy), or cannot beat an incumbent found by completing states greedily.
    """
    sla = problem.sla_s if problem.sla_s is not None else math.inf
    bound = problem.cost_bound
    use_acc = problem.accuracy_floor is not None
    floor = problem.accuracy_floor if use_acc else -math.inf
    stages = _arrays(problem, use_acc)
    min_lat = _suffix([st.lat.min() for st in stages])
    min_cost = _suffix([st.cost.min() for st in stages])
    max_acc = _suffix([st.acc.max() for st in stages])
    max_score = _suffix([st.score.max() for st in stages])
    paths = _greedy_paths(stages)
    incumbent = -math.inf
    lat, cost, acc, score = np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1)
    back: list[np.ndarray] = []  # per stage: (parent state, option index) of each state
    for i, st in enumerate(stages):
        n_lat = (lat[:, None] + st.lat[None, :]).ravel()
        n_cost = (cost[:, None] + st.cost[None, :]).ravel()
        n_acc = (acc[:, None] + st.acc[None, :]).ravel()
        n_score = (score[:, None] + st.score[None, :]).ravel()
        for p_lat, p_cost, p_acc, p_score in paths:
            done = ((n_lat + p_lat[i] <= sla + TOLERANCE) & (n_cost + p_cost[i] <= bound + TOLERANCE)
                    & (n_acc + p_acc[i] >= floor - TOLERANCE))
            if done.any():
                incumbent = max(incumbent, float((n_score[done] + p_score[i]).max()))
        ok = np.flatnonzero((n_lat + min_lat[i] <= sla + TOLERANCE) & (n_cost + min_cost[i] <= bound + TOLERANCE)
                            & (n_acc + max_acc[i] >= floor - TOLERANCE)
                            & (n_score + max_score[i] >= incumbent - TOLERANCE))
        if ok.size == 0:
            return None
        keep = ok[_pareto(n_lat[ok], n_cost[ok], n_acc[ok], n_score[ok])]
        lat, cost, acc, score = n_lat[keep], n_cost[keep], n_acc[keep], n_score[keep]
        back.append(np.stack([keep // len(st.lat), keep % len(st.lat)], axis=1))
    state = int(np.argmax(score))
    chosen: dict[str, Configuration] = {}
    for stage, table in zip(reversed(problem.stages), reversed(back), strict=True):
        parent, option = table[state]
        chosen[stage] = problem.options[stage][int(option)]
        state = int(parent)
    return {s: chosen[s] for s in problem.stages}
