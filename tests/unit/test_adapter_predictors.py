"""Predictors on synthetic series: one interface, sane numbers, the LSTM ships."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from varipipe.adapter.predictors import (
    EWMA,
    PREDICTORS,
    MovingMax,
    Predictor,
    Reactive,
    make_predictor,
    peak_rate,
    since_first_arrival,
)
from varipipe.errors import UnknownNameError


def test_reactive_is_the_peak_of_the_last_window():
    assert Reactive(window_s=3).predict([100, 1, 5, 2]) == 5
    assert Reactive().predict([]) == 0.0


def _uniform_counts(rate: float, seconds: int, phase: float = 0.0) -> list[float]:
    """Per-second arrival counts of evenly spaced arrivals (as ``varipipe demo`` sends them)."""
    times = np.arange(phase, seconds, 1.0 / rate)
    return np.bincount(times.astype(int), minlength=seconds)[:seconds].astype(float).tolist()


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.45, 0.6, 0.9])
@pytest.mark.parametrize("phase", [0.0, 0.37, 0.81])
def test_reactive_resolves_rates_below_one_per_second(rate, phase):
    # The per-second max reads any of these as 1 req/s; the bucketed peak reads the rate, in steps
    # of 1 / bucket (about the rate itself: a bucket holds one arrival or two).
    counts = _uniform_counts(rate, 120, phase)
    assert max(counts[-10:]) == 1.0
    got = Reactive().predict(counts)
    assert rate * 0.9 <= got <= min(1.0, 2 * rate)
    if rate <= 0.5:  # buckets of >= 3 s: at most two arrivals, not 1 req/s
        assert got < 1.0


def test_reactive_on_poisson_arrivals_below_one_per_second():
    rng = np.random.default_rng(17)
    counts = rng.poisson(0.3, size=3600).astype(float)
    readings = [Reactive().predict(counts[:t]) for t in range(10, 3600, 5)]
    assert np.median(readings) < 0.75  # the per-second max reads 1 (or more) almost every interval
    assert np.median([max(counts[t - 10:t]) for t in range(10, 3600, 5)]) >= 1


@given(st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=80))
def test_peak_rate_is_the_per_second_max_at_one_per_second_or_more(counts):
    # Exactly today's reading wherever the window's mean is >= 1 req/s (twitter-eval, golden test).
    tail = counts[-10:]
    if sum(tail) >= len(tail):
        assert Reactive().predict(counts) == float(max(tail))
    tail = counts[-60:]
    if sum(tail) >= len(tail):
        assert MovingMax().predict(counts) == float(max(tail))


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=60))
def test_peak_rate_lies_between_the_mean_and_the_per_second_max(counts):
    got = peak_rate(counts)
    assert sum(counts) / len(counts) - 1e-12 <= got <= max(counts)


def test_peak_rate_on_empty_short_and_silent_histories():
    assert peak_rate([]) == 0.0 and Reactive().predict([]) == 0.0 and MovingMax().predict([]) == 0.0
    assert Reactive().predict([0.0] * 30) == 0.0
    assert Reactive().predict([1.0, 0.0, 0.0]) == pytest.approx(1 / 3)  # shorter than the window
    assert Reactive().predict([1.0] + [0.0] * 20 + [1.0]) == pytest.approx(1 / 10)  # one arrival in 10 s
    assert Reactive().predict(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)  # numpy, as the simulator


def test_seconds_before_the_first_arrival_are_not_load():
    # A live run: the server idles, then 3 req/s begins. Read as load, the idle seconds made the
    # window's mean 0.5 req/s, 2 s buckets, and a reading of 2.5 req/s where the peak is 3.
    onset = [0.0] * 8 + [2.0, 3.0]
    assert since_first_arrival(onset) == [2.0, 3.0]
    assert Reactive().predict(onset) == 3.0
    assert MovingMax().predict([0.0] * 50 + [1.0, 0.0]) == pytest.approx(0.5)  # not 1 / 52
    assert EWMA().predict([0.0] * 25 + [4.0] * 5) == 4.0  # the idle buckets folded in read 1.0
    # after the traffic began, a quiet spell is load again: the same last 10 s read over 5 s buckets
    assert Reactive().predict([1.0] + onset[:-2] + [0.0, 2.0]) == pytest.approx(2 / 5)
    assert len(since_first_arrival(np.zeros(5))) == 0 and list(since_first_arrival(np.array([0.0, 1.0]))) == [1.0]


def test_peak_rate_keeps_the_peak_of_a_mixed_window():
    # 1 req/s then quiet: the mean (0.6) gives 2 s buckets, and the busy part still reads 1 req/s.
    assert Reactive().predict([1.0] * 5 + [0.0, 0.0, 1.0, 0.0, 0.0]) == pytest.approx(1.0)
    # a burst shorter than the bucket is spread over it: 3 arrivals in one quiet second of 10
    assert Reactive().predict([1.0] + [0.0] * 8 + [3.0, 0.0]) == pytest.approx(3 / 4)


def test_moving_max_remembers_longer():
    series = [50] + [10] * 30
    assert MovingMax(window_s=60).predict(series) == 50
    assert Reactive(window_s=10).predict(series) == 10


def test_ewma_follows_a_step_and_stays_between_levels():
    series = [10.0] * 100 + [50.0] * 20
    got = EWMA(alpha=0.5, bucket_s=10).predict(series)
    assert 10 < got <= 50
    assert EWMA().predict([7.0] * 300) == pytest.approx(7.0)


@pytest.mark.parametrize("name", ["reactive", "moving-max", "ewma"])
def test_simple_predictors_are_constant_on_a_constant_series(name):
    p = make_predictor(name)
    assert isinstance(p, Predictor) and p.name == name
    assert p.predict([42.0] * 700) == pytest.approx(42.0)


def test_unknown_predictor_lists_known_names():
    with pytest.raises(UnknownNameError) as e:
        make_predictor("prophet")
    assert "reactive" in str(e.value) and "lstm" in str(e.value)
    assert set(PREDICTORS) == {"reactive", "moving-max", "ewma", "lstm"}


def test_lstm_loads_shipped_weights_and_tracks_level():
    p = make_predictor("lstm")
    assert isinstance(p, Predictor) and p.name == "lstm"
    assert p.meta["train_seconds"] == [0, 1_036_800]  # days 0-11 only
    low, high = p.predict([20.0] * 600), p.predict([200.0] * 600)
    assert 0 <= low < high
    assert high == pytest.approx(200.0, rel=0.35)
    assert p.predict([]) >= 0 and p.predict([30.0] * 5) >= 0  # short histories are padded


def test_lstm_aggregates_per_minute_peaks():
    from varipipe.adapter.lstm import aggregate

    series = [1.0] * 600
    series[59] = 9.0
    agg = aggregate(series)
    assert len(agg) == 10 and agg[0] == 9.0 and agg[1:] == [1.0] * 9
