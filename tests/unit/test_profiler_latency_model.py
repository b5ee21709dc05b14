import pytest

from varipipe.profiler.latency_model import (
    fit_line,
    fit_points,
    fit_profile,
    fits_from_metadata,
    fits_to_metadata,
    predict_latency,
)
from varipipe.records import Profile

from .profile_points import point


def _line(alpha, beta, batches=(1, 2, 4, 8, 16), **kw):
    return [point(batch=b, latency=alpha + beta * b, **kw) for b in batches]


def test_fit_recovers_an_exact_line_with_zero_error():
    f = fit_points(_line(0.005, 0.002), metric="p50")
    assert f.alpha_s == pytest.approx(0.005) and f.beta_s == pytest.approx(0.002)
    assert f.loo_max_rel_error == pytest.approx(0.0, abs=1e-9)
    assert f.latency(32) == pytest.approx(0.005 + 0.002 * 32)


def test_leave_one_out_error_sees_a_bent_curve():
    pts = _line(0.005, 0.002, batches=(1, 2, 4, 8))
    pts.append(point(batch=16, latency=0.2))  # far above the line of the others
    f = fit_points(pts, metric="p50")
    assert f.loo_max_rel_error > 0.5
    assert f.loo_max_rel_error >= f.loo_mean_rel_error > 0


def test_two_batches_fit_without_leave_one_out():
    f = fit_points(_line(0.01, 0.01, batches=(1, 2)), metric="mean")
    assert f.loo_mean_rel_error is None and f.fit_max_rel_error == pytest.approx(0, abs=1e-9)


def test_negative_coefficients_are_clamped():
    assert fit_line([1, 2, 4], [0.03, 0.02, 0.01]) == (pytest.approx(0.02), 0.0)  # falling -> flat at mean
    alpha, beta = fit_line([1, 2, 4], [0.001, 0.03, 0.07])  # OLS intercept < 0 -> through the origin
    assert alpha == 0.0 and beta > 0


def test_fit_line_needs_two_distinct_batches():
    with pytest.raises(ValueError):
        fit_line([2, 2], [0.1, 0.1])
    with pytest.raises(ValueError):
        fit_line([1, 2], [0.1])


def test_fit_points_rejects_mixed_groups_and_unknown_metric():
    with pytest.raises(ValueError):
        fit_points([point(batch=1), point(batch=2, hardware="cpu:2")])
    with pytest.raises(ValueError):
        fit_points(_line(0.1, 0.1), metric="p42")


def test_fit_profile_groups_and_metadata_round_trips():
    pts = _line(0.01, 0.001) + _line(0.02, 0.002, hardware="cpu:2") + [point(variant="lonely", batch=1)]
    fits = fit_profile(Profile("p", tuple(pts)), "p99")
    assert {(f.variant, f.hardware) for f in fits} == {("small", "cpu:1"), ("small", "cpu:2")}
    assert fits_from_metadata({"latency_model": fits_to_metadata(fits)}) == fits
    assert fits_from_metadata({}) == []


def test_predict_latency_uses_measured_points_then_the_line():
    prof = Profile("p", tuple(_line(0.01, 0.001, batches=(1, 2, 4))))
    assert predict_latency(prof, "det", "small", "cpu:1", 2, "p50") == pytest.approx(0.012)
    assert predict_latency(prof, "det", "small", "cpu:1", 8, "p50") == pytest.approx(0.018)
    with pytest.raises(KeyError):
        predict_latency(prof, "det", "nope", "cpu:1", 1)
