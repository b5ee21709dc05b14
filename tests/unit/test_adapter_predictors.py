"""Predictors on synthetic series: one interface, sane numbers, the LSTM ships."""

from __future__ import annotations

import pytest

from varipipe.adapter.predictors import (
    EWMA,
    PREDICTORS,
    MovingMax,
    Predictor,
    Reactive,
    make_predictor,
)
from varipipe.errors import UnknownNameError


def test_reactive_is_the_peak_of_the_last_window():
    assert Reactive(window_s=3).predict([100, 1, 5, 2]) == 5
    assert Reactive().predict([]) == 0.0


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
