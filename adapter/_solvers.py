"""Backends for the collapsed multiple-choice program: the exact DP (default), CBC, HiGHS.

Every backend receives the same :class:`Problem` and returns the chosen row of
every stage, or ``None`` when no choice satisfies the constraints. Solver
crashes raise :class:`SolverError`; infeasibility is a return value. One
contract suite (tests/unit/test_adapter_optimizer.py) runs against each.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from varipipe.adapter._dp import MAX_CANDIDATES, TooManyStates, solve_dp
from varipipe.adapter._problem import TOLERANCE, Problem, StageOptions
from varipipe.errors import SolverError, UnknownNameError

log = logging.getLogger(__name__)

__all__ = ["Problem", "StageOptions", "Outcome", "TOLERANCE", "SOLVERS", "DEFAULT_SOLVER", "available_solvers",
           "run_solver"]

SOLVERS = ("dp", "cbc", "highs")
# The DP: exact, and on most 9 x 9 x 6 x 3 instances of benchmarks/solve_time.py a few times
# faster than either MIP solver through PuLP; where its partial choices explode (more than
# _dp.MAX_CANDIDATES at a stage) it hands the program to HiGHS, or CBC (benchmarks/README.md,
# "Solve time").
DEFAULT_SOLVER = "dp"

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
# With preprocessing off, that CBC crashes (segmentation fault) while writing its solution file
# when its bound tightening proves a program infeasible (random programs of
# tests/unit/test_adapter_solvers.py, a few in a thousand). After such a crash the program is
# solved again with CBC's preprocessing on: "infeasible" from it is believed, anything else
# is a solver failure.
_CBC_RETRY_OPTIONS = _CBC_OPTIONS[1:]
# HiGHS (1.16) likewise stopped 1e-7 short of the optimum with its default MIP feasibility
# (1e-6), primal and dual feasibility (1e-7) tolerances: the weighted objective's cost and
# tie-break terms are that small (hypothesis: test_dp_equals_the_mip_solvers_beyond_brute_force,
# seed 1, max-accuracy). With all three at 1e-10 it matches the DP there.
_HIGHS_OPTIONS = {"mip_feasibility_tolerance": 1e-10, "primal_feasibility_tolerance": 1e-10,
                  "dual_feasibility_tolerance": 1e-10}


@dataclass(frozen=True)
class Outcome:
    rows: tuple[int, ...] | None  # the chosen row of each stage
    timed_out: bool = False
    solver: str = ""  # the backend that solved it, where not the one asked (the DP's hand-over)


@functools.cache  # what is installed does not change while the process runs; listSolvers probes PATH
def available_solvers() -> tuple[str, ...]:
    import pulp

    have = set(pulp.listSolvers(onlyAvailable=True))
    out = ["dp"]
    if "PULP_CBC_CMD" in have:
        out.append("cbc")
    if "HiGHS" in have:
        out.append("highs")
    return tuple(out)


def run_solver(problem: Problem, solver: str, time_limit_s: float, lp_path: str | None = None) -> Outcome:
    """Solve with one backend; ``lp_path`` (debugging) writes the program as a PuLP .lp file,
    whichever backend solves it."""
    if solver == "dp":
        if lp_path is not None:
            _model(problem)[0].writeLP(lp_path)
        mip = next((s for s in ("highs", "cbc") if s in available_solvers()), None)
        try:
            return Outcome(solve_dp(problem, MAX_CANDIDATES if mip else None))
        except TooManyStates as e:
            log.info("dp: %s; solved with %s instead", e, mip)
            return dataclasses.replace(_solve_pulp(problem, mip, time_limit_s, None), solver=mip)
    if solver in ("cbc", "highs"):
        return _solve_pulp(problem, solver, time_limit_s, lp_path)
    raise UnknownNameError("solver", solver, SOLVERS)


# ---------------------------------------------------------------- PuLP model


def _variables(prob, problem: Problem, rows: tuple[np.ndarray, ...]):
    """One binary per row that can be part of a feasible choice, keyed by (stage index, row)."""
    import pulp

    return {(si, int(r)): prob.add_variable(f"x_{si}_{int(r)}", cat=pulp.LpBinary)
            for si, stage_rows in enumerate(rows) for r in stage_rows}


def _add_objective(prob, problem: Problem, x) -> None:
    import pulp

    prob += pulp.LpAffineExpression([(v, float(problem.options[si].score[r])) for (si, r), v in x.items()])


def _add_one_config(prob, problem: Problem, x) -> None:
    import pulp

    for si, stage in enumerate(problem.stages):
        row = pulp.LpAffineExpression([(v, 1.0) for (i, _), v in x.items() if i == si])
        prob += row == 1, f"one_config_{stage}"


def _add_constraints(prob, problem: Problem, x) -> None:
    """One row per named constraint: ``sla_end_to_end``, ``cluster_capacity``, ``gpu_memory`` ..."""
    import pulp

    for d, name in enumerate(problem.constraints):
        if problem.bounds[d] == np.inf:  # cannot bind (and PuLP refuses an infinite right-hand side)
            continue
        terms = [(v, float(problem.options[si].use[r, d])) for (si, r), v in x.items()]
        terms = [t for t in terms if t[1] != 0.0]
        if terms:  # a constraint no row uses holds or fails whatever is chosen: _trivially_broken
            prob += pulp.LpAffineExpression(terms) <= float(problem.bounds[d]), name


def _model(problem: Problem):
    """The PuLP model over the rows :meth:`Problem.alone` leaves (the others cannot be chosen)."""
    import pulp

    prob = pulp.LpProblem("varipipe", pulp.LpMaximize)
    x = _variables(prob, problem, tuple(np.flatnonzero(a) for a in problem.alone()))
    for add in (_add_objective, _add_one_config, _add_constraints):
        add(prob, problem, x)
    return prob, x


def _trivially_broken(problem: Problem) -> bool:
    """A constraint no allowed row uses, with a bound below 0 (say an accuracy floor above 1 in sum mode)."""
    unused = ~np.stack([(st.use[st.allowed] != 0).any(axis=0) for st in problem.options]).any(axis=0)
    return bool((unused & (problem.bounds < -TOLERANCE)).any())


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


def _pulp_solver(solver: str, time_limit_s: float, cbc_options: list[str] = _CBC_OPTIONS):
    import pulp

    if solver == "cbc":
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=_GAP_REL, gapAbs=_GAP_ABS,
                                 options=cbc_options)
    _highs_banner_to_stderr()
    return pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=_GAP_REL, gapAbs=_GAP_ABS,
                      log_to_console=False, output_flag=False, **_HIGHS_OPTIONS)


def _solve_pulp(problem: Problem, solver: str, time_limit_s: float, lp_path: str | None = None) -> Outcome:
    import pulp

    if solver not in available_solvers():
        raise SolverError(f"solver {solver!r} is not installed here; available: {', '.join(available_solvers())}")
    # A stage without a row that fits makes the program infeasible before any solve.
    if not all(a.any() for a in problem.alone()) or _trivially_broken(problem):
        return Outcome(None)
    prob, x = _model(problem)
    if lp_path is not None:
        prob.writeLP(lp_path)
    status = _run(prob, solver, time_limit_s)
    if status == pulp.LpStatusInfeasible:
        return Outcome(None)
    if status != pulp.LpStatusOptimal:
        if prob.sol_status == pulp.LpSolutionNoSolutionFound:
            return Outcome(None, timed_out=True)
        raise SolverError(f"{solver} returned status {pulp.LpStatus.get(status, status)!r}")
    return Outcome(_read(problem, x), timed_out=prob.sol_status == pulp.LpSolutionIntegerFeasible)


def _run(prob, solver: str, time_limit_s: float) -> int:
    """``prob.solve`` with one retry for CBC's crash on infeasible programs (``_CBC_RETRY_OPTIONS``)."""
    import pulp

    try:
        return prob.solve(_pulp_solver(solver, time_limit_s))
    except pulp.PulpSolverError as e:
        if solver == "cbc":
            try:
                if prob.solve(_pulp_solver(solver, time_limit_s, _CBC_RETRY_OPTIONS)) == pulp.LpStatusInfeasible:
                    return pulp.LpStatusInfeasible
            except pulp.PulpSolverError:
                pass
        raise SolverError(f"{solver} failed: {e}") from e


def _read(problem: Problem, x) -> tuple[int, ...]:
    """The chosen row of each stage, read back by key."""
    rows = []
    for si, stage in enumerate(problem.stages):
        picked = [r for (i, r), v in x.items() if i == si and (v.value() or 0) > 0.5]
        if len(picked) != 1:
            raise SolverError(f"solver chose {len(picked)} configurations for stage {stage!r}, expected 1")
        rows.append(picked[0])
    return tuple(rows)
