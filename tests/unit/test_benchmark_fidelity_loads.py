"""``benchmarks/fidelity_loads.py --bracket``: two tuning windows, one before a load's live runs and
one after, are fitted as one timeline, so a host that drifted over the runs is fitted between
where it started and where it ended."""

from __future__ import annotations

import math

import numpy as np

from varipipe.loadgen.hostspeed import fit_contention
from varipipe.records import Profile

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
