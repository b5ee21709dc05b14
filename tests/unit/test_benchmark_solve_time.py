"""``benchmarks/solve_time.py`` runs: its baseline model is built from the optimizer's rows, and
when their shape changed (several replica counts per configuration, 2026-12-05) it stopped with
a PuLP error for two days unnoticed. One instance of each family, baseline included."""

from __future__ import annotations

import random

from .benchmark_scripts import load_benchmark


def test_the_solve_time_benchmark_builds_and_solves_its_instances_and_baseline():
    st = load_benchmark("solve_time")
    rng = random.Random(0)
    [big] = st.big_instances(1, rng)
    _, [small] = st.small_instances(1, rng)
    assert st.full_formulation(big) > 0
    for inst in (big, small):
        values = {solver: st.objective(st.timed_solve(inst, solver)[1]) for solver in ("dp", "highs")}
        assert (values["dp"] is None) == (values["highs"] is None)
        if values["dp"] is not None:
            assert abs(values["dp"] - values["highs"]) <= st.OBJECTIVE_TOLERANCE
