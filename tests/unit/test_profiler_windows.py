"""The window / stability logic of a point (plan.PointSampler), on a fake clock with scripted timings."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace

import pytest

from varipipe.profiler.plan import (
    FULL,
    QUICK,
    PointSampler,
    WindowPolicy,
    point_seconds,
    windows_agree,
)
from varipipe.profiler.stats import WindowStats, percentile

# A small policy so the scripted runs stay short: windows of >= 10 batches and >= 1 s, 3 within 10 %,
# 10 windows a trial, 60 s cap.
POLICY = WindowPolicy(name="test", window_batches=10, window_min_s=1.0, max_seconds=60.0)


def drive(policy: WindowPolicy, latencies: Iterable[float], batch: int = 1, gap_s: float = 0.0,
          window_batches: int | None = None) -> PointSampler:
    """Feed back-to-back batches on a fake clock (``gap_s`` between batches) until the sampler is done."""
    n = policy.window_batches if window_batches is None else window_batches
    sampler = PointSampler(policy, batch, n, start_s=100.0)
    now = 100.0
    for lat in latencies:
        now += lat + gap_s
        sampler.add(lat, now)
        if sampler.done:
            return sampler
    raise AssertionError("the timings ran out before the sampler was done")


def test_steady_timings_are_stable_after_three_windows_of_n_batches_and_one_second():
    s = drive(POLICY, itertools.repeat(0.2))  # 10 batches = 2 s: the count closes each window
    r = s.result()
    assert r.stable and s.stable and not s.capped
    assert [w.batches for w in r.windows] == [10, 10, 10]
    assert r.point_latencies_s == (0.2,) * 30 and r.latency_cv == pytest.approx(0.0, abs=1e-12)
    assert (r.final_from, r.final_to, r.widened, r.window_batches) == (0, 30, 0, 10)


def test_fast_batches_fill_a_window_until_its_minimum_time():
    r = drive(POLICY, itertools.repeat(0.01)).result()  # 10 batches = 0.1 s: the 1 s minimum closes it
    assert all(w.batches == 100 and w.seconds == pytest.approx(1.0) for w in r.windows)
    assert len(r.latencies_s) == 300


def test_figures_come_from_the_last_three_windows_after_a_step():
    # the host slows by 30 % after 2 windows; the first windows disagree with the later ones
    script = [0.10] * 20 + [0.13] * 100
    s = drive(POLICY, script)
    r = s.result()
    assert r.stable and len(r.windows) == 5
    assert r.point_latencies_s == (0.13,) * 30  # only the agreeing windows make the point
    assert percentile(sorted(r.point_latencies_s), 50) == pytest.approx(0.13)


def test_throughput_alone_can_make_windows_disagree():
    # p50 identical in every window, but every second window has a 1 s straggler: its mean, so its
    # throughput, is far off, and perf_analyzer's test needs both to agree
    def window(k):
        return [0.1] * 9 + [1.0 if k % 2 else 0.1]
    windows = [WindowStats(0.1, 1 / (sum(window(k)) / 10), 10, 1.0) for k in range(3)]
    assert not windows_agree(windows, 0.10)
    s = drive(replace(POLICY, max_seconds=20.0), itertools.chain.from_iterable(window(k) for k in itertools.count()))
    assert not s.stable and s.capped


def test_drift_never_settles_widens_after_ten_windows_and_stops_at_the_cap():
    # every window 15 % slower than the last: never 3 within 10 %
    def drifting():
        for k in itertools.count():
            yield from [0.2 * 1.15 ** k] * 10
    s = drive(POLICY, drifting())
    r = s.result()
    assert not r.stable and s.capped
    assert r.widened >= 1 and r.window_batches == 20  # 10 windows of 10, then windows of 20
    assert [w.batches for w in r.windows[:10]] == [10] * 10 and r.windows[10].batches >= 20
    sampled_s = sum(r.latencies_s)
    assert POLICY.max_seconds <= sampled_s < POLICY.max_seconds + r.latencies_s[-1] + 1e-9  # stops at the cap
    assert r.final_to - r.final_from == sum(w.batches for w in r.windows[-3:])  # last 3 windows still
    assert r.latency_cv > 0.05


def test_widened_windows_start_new_trials_and_can_settle():
    # 10 windows alternating 0.2 / 0.26 s per batch (never 3 alike), then steady: the wider windows settle
    script = list(itertools.chain.from_iterable([0.2 if k % 2 else 0.26] * 10 for k in range(10))) + [0.2] * 200
    r = drive(POLICY, script).result()
    assert r.stable and r.widened == 1 and len(r.windows) == 13
    assert [w.batches for w in r.windows[-3:]] == [20, 20, 20]


def test_the_cap_never_ends_a_point_before_its_first_three_windows():
    # windows of 2 batches that never agree: past the 1 s cap after the first window, yet 3 windows
    s = drive(replace(POLICY, max_seconds=1.0), itertools.cycle([0.5, 1.0, 0.5, 0.5, 2.0, 2.0]), window_batches=2)
    assert s.capped and not s.stable and len(s.result().windows) == 3


def test_slow_points_get_smaller_windows_so_five_fit_in_the_cap():
    assert FULL.window_count(0.01) == FULL.window_batches  # fast: perf_analyzer's 50
    assert FULL.window_count(2.0) == int(FULL.max_seconds / (5 * 2.0))  # LLM batch of 4: 7 batches
    assert FULL.window_count(60.0) == FULL.min_window_batches
    assert FULL.window_count(0.0) == FULL.window_batches  # no warm-up estimate: the policy's count
    assert FULL.sampler(4, 2.0, 0.0)._n == FULL.window_count(2.0)


def test_gaps_between_batches_count_toward_a_windows_time_not_its_latencies():
    r = drive(POLICY, itertools.repeat(0.01), gap_s=0.19).result()  # 10 batches span 2 s
    assert all(w.batches == 10 and w.seconds == pytest.approx(2.0) for w in r.windows)
    assert r.windows[0].throughput_rps == pytest.approx(100.0)  # batch / mean latency, not per wall second


def test_add_after_done_and_result_of_nothing_are_errors():
    s = drive(POLICY, itertools.repeat(0.2))
    with pytest.raises(RuntimeError):
        s.add(0.2, 1e6)
    with pytest.raises(ValueError):
        PointSampler(POLICY, 1, 10, 0.0).result()


def test_point_seconds_bounds_a_points_time_between_three_windows_and_the_cap():
    fast, slow = point_seconds(FULL, 0.02, 0.02)
    fixed = FULL.warmup_batches * 0.02 + FULL.reference_calls * 0.02
    assert fast == pytest.approx(fixed + 3 * FULL.window_min_s)  # 50 x 20 ms < 1 s
    assert slow == pytest.approx(fixed + FULL.max_seconds)
    llm_fast, llm_slow = point_seconds(FULL, 2.0, 0.5)
    assert llm_fast == pytest.approx(3 * 2.0 + 5 * 0.5 + 3 * FULL.window_count(2.0) * 2.0)
    assert llm_slow <= FULL.max_seconds + 3 * 2.0 + 5 * 0.5
    q_fast, q_slow = point_seconds(QUICK, 2.0, 0.5)  # a 2 s batch: 3 windows of 2 outlast the 3 s cap
    assert q_fast == q_slow == pytest.approx(2.0 + 3 * 0.5 + 3 * 2 * 2.0)
