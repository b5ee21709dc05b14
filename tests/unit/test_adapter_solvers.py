"""The solver backends on raw programs: one contract, brute force as the reference.

Random multiple-choice programs with 0–4 named constraints (negative uses too, as
the accuracy floor's), rows outside the per-stage limits, ties and infeasible
bounds: every backend must reach brute force's optimum, or say infeasible.
"""

from __future__ import annotations

import itertools
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varipipe.adapter import _dp
from varipipe.adapter import _solvers as solvers
from varipipe.adapter._dp import TooManyStates, _Ladder, _padded, _pareto, solve_dp
from varipipe.adapter._solvers import SOLVERS, Problem, StageOptions, available_solvers, run_solver


def brute_force(problem: Problem) -> float | None:
    best = None
    for rows in itertools.product(*(range(o.score.size) for o in problem.options)):
        if problem.feasible(rows):
            value = problem.value(rows)
            best = value if best is None else max(best, value)
    return best


def _random_problem(draw, stages: tuple[int, int], constraints: tuple[int, int], rows: int, allowed: float,
                    bounds: tuple[float, float]) -> Problem:
    """A random multiple-choice program: per stage 1..``rows`` rows, each allowed with
    probability ``allowed``; bounds uniform in ``bounds`` × the stage count (the low end as is)."""
    n_stages = draw(st.integers(*stages))
    n_constraints = draw(st.integers(*constraints))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Coarse values make ties and exact boundaries common.
    grid = draw(st.sampled_from([None, 4]))

    def values(shape, low, high):
        v = rng.uniform(low, high, shape)
        return np.round(v * grid) / grid if grid else v

    options = []
    for _ in range(n_stages):
        n = int(rng.integers(1, rows + 1))
        use = values((n, n_constraints), -0.5, 2.0)
        options.append(StageOptions(score=values(n, -1.0, 1.0), use=use, allowed=rng.random(n) < allowed))
    low, high = bounds
    return Problem(stages=tuple(f"s{i}" for i in range(n_stages)), options=tuple(options),
                   constraints=tuple(f"c{d}" for d in range(n_constraints)),
                   bounds=np.asarray(values(n_constraints, low, high * n_stages), dtype=float))


@st.composite
def problems(draw) -> Problem:
    return _random_problem(draw, stages=(1, 4), constraints=(0, 4), rows=5, allowed=0.85, bounds=(-0.5, 2.0))


@pytest.mark.parametrize("solver", SOLVERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_every_backend_reaches_brute_force(problem, solver):
    assert solver in available_solvers(), f"solver {solver} is not available (all are dependencies)"
    best = brute_force(problem)
    rows = run_solver(problem, solver, time_limit_s=10.0).rows
    if best is None:
        assert rows is None
        return
    assert rows is not None and problem.feasible(rows)
    assert problem.value(rows) == pytest.approx(best, abs=1e-7)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(problem=problems())
def test_the_dp_hands_a_program_with_too_many_partial_choices_to_a_mip_solver(problem, monkeypatch):
    # With a cap of one partial choice per stage, a program with a choice to make goes to HiGHS
    # (the first MIP solver installed), which reaches the same optimum and says it solved it.
    monkeypatch.setattr(solvers, "MAX_CANDIDATES", 1)
    best = brute_force(problem)
    out = run_solver(problem, "dp", time_limit_s=10.0)
    assert (out.rows is None) == (best is None)
    if best is not None:
        assert problem.value(out.rows) == pytest.approx(best, abs=1e-7)
    if out.solver == "highs":
        with pytest.raises(TooManyStates, match="partial choices"):
            solve_dp(problem, max_candidates=1)
    else:
        assert out.solver == "" and solve_dp(problem, max_candidates=1) == out.rows


def test_a_dp_hand_over_names_the_solver_that_solved_it(monkeypatch):
    two = StageOptions(np.array([1.0, 0.5]), np.array([[1.0], [0.0]]), np.array([True, True]))
    problem = Problem(("a", "b"), (two, two), ("c",), np.array([1.0]))
    own = run_solver(problem, "dp", 10.0)  # a row of 1.0 in each stage breaks c: one of each
    assert own.solver == "" and problem.value(own.rows) == pytest.approx(1.5)
    monkeypatch.setattr(solvers, "MAX_CANDIDATES", 1)
    out = run_solver(problem, "dp", 10.0)
    assert out.solver == "highs" and problem.value(out.rows) == pytest.approx(1.5)


def test_a_stage_without_allowed_rows_is_infeasible_for_every_backend():
    ok = StageOptions(np.array([1.0]), np.zeros((1, 1)), np.array([True]))
    none = StageOptions(np.array([1.0, 2.0]), np.zeros((2, 1)), np.array([False, False]))
    problem = Problem(("a", "b"), (ok, none), ("c",), np.array([1.0]))
    for solver in available_solvers():
        assert run_solver(problem, solver, 10.0).rows is None


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_constraint_bounded_by_infinity_binds_nothing(solver):
    # An unbounded constraint (say --cores inf) is no constraint: the DP's multipliers had turned
    # its bound into NaN and called the program infeasible; PuLP refuses an infinite right-hand side.
    o = StageOptions(np.array([1.0, 0.5, 0.2]), np.array([[1.0, 3.0], [0.5, 1.0], [0.1, 0.0]]), np.ones(3, bool))
    unbounded = Problem(("a", "b"), (o, o), ("c", "d"), np.array([1.2, np.inf]))
    without = Problem(("a", "b"), tuple(StageOptions(o.score, o.use[:, :1], o.allowed) for o in (o, o)), ("c",),
                      np.array([1.2]))
    got, want = run_solver(unbounded, solver, 10.0).rows, run_solver(without, solver, 10.0).rows
    assert got is not None and unbounded.value(got) == pytest.approx(without.value(want))


def test_problem_rejects_use_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        Problem(("a",), (StageOptions(np.zeros(2), np.zeros((2, 2)), np.ones(2, bool)),), ("c",), np.zeros(1))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(0, 40), d=st.integers(0, 3), chunk=st.sampled_from([3, 7, 128]))
def test_pareto_keeps_exactly_the_undominated_states(seed, m, d, chunk):
    # Small chunks: states compared with the frontier of earlier chunks, not only their own.
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 4, m).astype(float)
    use = rng.integers(0, 4, (m, d)).astype(float)
    with mock.patch.object(_dp, "_PARETO_CHUNK", chunk):
        kept = set(_pareto(score, use).tolist())
    for j in range(m):
        equal = [i for i in range(m) if score[i] == score[j] and (use[i] == use[j]).all()]
        better = [i for i in range(m) if score[i] >= score[j] and (use[i] <= use[j]).all() and i not in equal]
        if better:  # strictly dominated: dropped
            assert j not in kept
        else:  # undominated: exactly one of its identical copies kept
            assert len(kept & set(equal)) == 1


def test_dp_handles_a_program_without_constraints():
    st_ = StageOptions(np.array([0.2, 0.9, 0.5]), np.zeros((3, 0)), np.array([True, True, True]))
    problem = Problem(("a", "b"), (st_, st_), (), np.zeros(0))
    assert solve_dp(problem) == (1, 1)


@st.composite
def larger_problems(draw) -> Problem:
    """2-5 stages of up to 7 rows and 1-3 constraints: room for partial choices to dominate,
    for the narrow pass to miss, and for a coarse ladder to round."""
    return _random_problem(draw, stages=(2, 5), constraints=(1, 3), rows=7, allowed=0.9, bounds=(0.0, 1.5))


@settings(max_examples=150, deadline=None)
@given(problem=larger_problems(), rungs=st.sampled_from([1, 2, 3, 7, 512]), width=st.sampled_from([1, 2, 16]))
def test_the_dp_reaches_brute_force_with_any_ladder_and_narrow_pass(problem, rungs, width):
    # A ladder of 1-7 steps rounds a lot, a narrow pass of 1-2 partial choices misses a lot: the
    # DP must stay exact whatever they give it.
    best = brute_force(problem)
    with mock.patch.object(_dp, "_RUNGS", rungs), mock.patch.object(_dp, "_BEAM_WIDTH", width):
        rows = solve_dp(problem)
    assert (rows is None) == (best is None)
    if best is not None:
        assert problem.feasible(rows) and problem.value(rows) == pytest.approx(best, abs=1e-7)


@settings(max_examples=150, deadline=None)
@given(problem=larger_problems(), rungs=st.sampled_from([1, 2, 3, 7, 512]), seed=st.integers(0, 2**32 - 1))
def test_the_ladder_bound_is_never_below_a_feasible_completion(problem, rungs, seed):
    # Any μ ≥ 0 gives a valid bound (not only the dual's): every prefix through stage i, against
    # brute force over the later stages' rows.
    packed = _padded(problem)
    if packed is None:
        return
    v, u, ok, _ = packed
    bounds = problem.bounds + 1e-9
    mu = np.random.default_rng(seed).exponential(1.0, bounds.size)
    with mock.patch.object(_dp, "_RUNGS", rungs):
        ladder = _Ladder.of(v, u, ok, bounds, mu)
        if ladder is None:
            return
        rows = [np.flatnonzero(ok[i]) for i in range(len(problem.stages))]
        for i in range(len(problem.stages)):
            for prefix in itertools.product(*rows[:i + 1]):
                score = sum(v[j, r] for j, r in enumerate(prefix))
                use = sum(u[j, r] for j, r in enumerate(prefix))
                best = -math.inf
                for rest in itertools.product(*rows[i + 1:]):
                    total = use + sum((u[i + 1 + j, r] for j, r in enumerate(rest)), np.zeros(bounds.size))
                    if (total <= bounds).all():
                        best = max(best, score + sum(v[i + 1 + j, r] for j, r in enumerate(rest)))
                if best > -math.inf:
                    assert ladder.bound(i, np.array([score]), use[None, :], bounds)[0] >= best - 1e-9
