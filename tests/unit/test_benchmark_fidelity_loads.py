"""``benchmarks/fidelity_loads.py``: with ``--bracket`` two tuning windows, one before a load's live
runs and one after, are fitted as one timeline, so a host that drifted over the runs is fitted
between where it started and where it ended; the batch match moves each stage's contention law
until the simulated window runs its batches where the live windows ran them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from varipipe.loadgen.hostspeed import Contention, ContentionLaw, fit_contention
from varipipe.records import BatchTimes, Profile

from .benchmark_scripts import load_benchmark
from .profile_points import point

PROFILE = Profile("one", (point("llm", "v", 1, latency=0.5),))
WINDOW_S = 60


def _window(fl, slowdown: float):
    """A window of one batch every 2 s, each ``slowdown`` times the profile's 0.5 s (none overlap)."""
    batches = [{"t": t, "stage": "llm", "variant": "v", "hardware": "cpu:1", "size": 1, "seconds": 0.5 * slowdown}
               for t in np.arange(2.0, WINDOW_S, 2.0)]
    return fl._Window(batches, [{"t": 1.0, "stages": [["llm", "v", 1, 1]]}], 1.0)


def test_windows_lie_apart_on_one_timeline_and_their_gap_is_cut_from_a_series_over_it():
    fl = load_benchmark("fidelity_loads")
    w = _window(fl, 1.0)
    batches, decisions, seconds = fl._pooled([w, w], WINDOW_S)
    assert seconds == 2 * WINDOW_S + fl.BRACKET_GAP_S
    assert len(batches) == 2 * len(w.batches)
    shift = WINDOW_S + fl.BRACKET_GAP_S
    assert batches[len(w.batches)]["t"] == w.batches[0]["t"] + shift
    assert [d["t"] for d in decisions] == [1.0, 1.0 + shift]
    assert w.batches[0]["t"] == 2.0  # the window itself is left as it was
    cut = fl._without_gaps(np.arange(seconds, dtype=float), 2, WINDOW_S)
    assert len(cut) == 2 * WINDOW_S and cut[WINDOW_S - 1] == WINDOW_S - 1 and cut[WINDOW_S] == shift


def test_a_host_that_slowed_between_the_windows_is_fitted_between_its_two_speeds():
    fl = load_benchmark("fidelity_loads")
    before, after = _window(fl, 1.0), _window(fl, 1.21)

    def level(windows) -> float:
        batches, decisions, seconds = fl._pooled(windows, WINDOW_S)
        fit = fit_contention(PROFILE, fl._batches_of(batches), seconds, fl.SPEED_STEP_S,
                             fl._replicas_from(decisions), "during")
        return fit.contention.laws["llm"].factor(0.0)

    assert math.isclose(level([before]), 1.0) and math.isclose(level([after]), 1.21)
    assert math.isclose(level([before, after]), math.sqrt(1.21), rel_tol=0.01)


def _world(fl, a: float):
    return fl._World(contention=Contention({"llm": ContentionLaw(a, 0.0, 10)}, reading="during"))


def _ran(seconds: list[float]) -> SimpleNamespace:
    """A simulated run as the batch match reads it: only its batches."""
    n = len(seconds)
    return SimpleNamespace(batches=(BatchTimes("llm", "v", "cpu:1", (1,) * n, tuple(seconds), tuple(range(n)), (0,) * n),))


def test_stage_levels_are_the_geometric_mean_time_over_the_profile_and_skip_what_it_cannot_predict():
    fl = load_benchmark("fidelity_loads")
    other = BatchTimes("llm", "unprofiled", "cpu:1", (1,), (9.0,), (0.0,), (0,))
    levels = fl._stage_levels(PROFILE, [*_ran([0.25, 1.0]).batches, other])
    assert levels.keys() == {"llm"} and math.isclose(levels["llm"], 0.0, abs_tol=1e-12)  # 0.5x and 2x the 0.5 s


def test_the_batch_match_moves_a_law_until_the_simulated_batches_run_at_the_live_level():
    fl = load_benchmark("fidelity_loads")
    live = {"llm": math.log(1.2)}
    worlds = []

    def simulate(world):
        """A simulator whose batches run at the law's factor raised to 1.5 (they slow each other
        more than the law alone says), a little spread around it."""
        worlds.append(world)
        level = 0.5 * math.exp(1.5 * world.contention.laws["llm"].a)
        return [_ran([level * 0.9, level / 0.9])]

    runs, world, record = fl._matched(PROFILE, _world(fl, math.log(1.2)), live, simulate)
    assert record["met"] and 2 <= len(record["rounds"]) <= fl.MATCH_ROUNDS + 1
    assert math.isclose(record["rounds"][0]["llm"], 1.2 ** 0.5, rel_tol=1e-3)  # 1.2^1.5 / 1.2 before any move
    assert abs(math.log(record["rounds"][-1]["llm"])) <= math.log1p(fl.MATCH_TOL)
    assert world is worlds[-1] and runs[0].batches[0].seconds[0] < 0.5 * 1.2
    assert math.isclose(world.contention.laws["llm"].a, math.log(1.2) + math.log(record["law_factor"]["llm"]), abs_tol=1e-4)
    assert world.contention.reading == "during" and world.contention.laws["llm"].gamma == 0.0


def test_the_batch_match_stops_after_its_rounds_and_says_so():
    fl = load_benchmark("fidelity_loads")
    runs, world, record = fl._matched(PROFILE, _world(fl, 0.0), {"llm": 0.0}, lambda w: [_ran([0.5 * 1.5])])
    assert not record["met"] and len(record["rounds"]) == fl.MATCH_ROUNDS + 1  # a law move that changes nothing
