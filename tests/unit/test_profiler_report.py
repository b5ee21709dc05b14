"""``varipipe profile show``'s table: steadiness columns and the unstable-point note."""

from varipipe.profiler.report import points_table
from varipipe.records import Profile

from .profile_points import point


def _row(text: str, batch: int) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.startswith("det/small") and
                line.split()[2] == str(batch))


def test_points_table_shows_windows_cv_drift_and_counts_the_unstable_points():
    pts = (point(batch=1, windows=3, stable=True, latency_cv=0.021, reference_before_s=0.010,
                 reference_after_s=0.0125),
           point(batch=2, windows=17, stable=False, latency_cv=0.15),
           point(batch=4))  # measured before windows
    text = points_table(Profile("p", pts))
    assert _row(text, 1)[10:13] == ["3", "2.1%", "+25%"]
    assert _row(text, 2)[10:13] == ["17!", "15.0%", "-"]
    assert _row(text, 4)[10:13] == ["-", "-", "-"]
    assert "1 of 3 points not stable" in text


def test_points_table_of_a_steady_profile_has_no_unstable_note():
    assert "not stable:" not in points_table(Profile("p", (point(windows=3, stable=True),)))
