import pytest

from varipipe.profiler.stats import (
    LOW_SAMPLE_P99,
    coefficient_of_variation,
    percentile,
    relative_spread,
    summarize,
    window_stats,
)


def test_percentile_interpolates_between_order_statistics():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 90) == pytest.approx(4.6)


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_orders_percentiles_and_computes_throughput():
    samples = [0.010 + 0.001 * (i % 10) for i in range(200)]
    s = summarize(samples, batch=4)
    assert s.p50_s <= s.p95_s <= s.p99_s <= max(samples)
    assert s.samples == 200 and not s.p99_low_samples
    assert s.throughput_rps == pytest.approx(4 / s.mean_s)


def test_low_sample_flag():
    assert summarize([0.1] * (LOW_SAMPLE_P99 - 1), 1).p99_low_samples
    assert not summarize([0.1] * LOW_SAMPLE_P99, 1).p99_low_samples


@pytest.mark.parametrize("bad", [[], [0.0, 0.1], [-1.0], [float("inf")]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        summarize(bad, 1)


def test_window_stats_take_the_percentile_and_batch_over_mean():
    w = window_stats([0.1, 0.2, 0.3, 1.0], batch=4, q=50, seconds=1.6)
    assert w.latency_s == pytest.approx(0.25) and w.throughput_rps == pytest.approx(4 / 0.4)
    assert (w.batches, w.seconds) == (4, 1.6)


def test_relative_spread_is_perf_analyzers_max_over_min():
    assert relative_spread([1.0, 1.1, 1.05]) == pytest.approx(0.1)
    assert relative_spread([2.0]) == 0.0
    with pytest.raises(ValueError):
        relative_spread([0.0, 1.0])


def test_coefficient_of_variation_uses_the_sample_deviation():
    assert coefficient_of_variation([1.0, 2.0, 3.0]) == pytest.approx(1.0 / 2.0)  # std 1 (n-1), mean 2
    assert coefficient_of_variation([5.0]) == 0.0
    with pytest.raises(ValueError):
        coefficient_of_variation([])
