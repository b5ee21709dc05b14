"""The deadline rule shared by the ingress, live stages and the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from varipipe.admission import (
    EWMA_WEIGHT,
    StageLoad,
    decide,
    item_weight,
    predict,
    update_expected,
    update_item_s,
    would_miss,
)


def test_first_batch_sets_the_estimate_then_it_moves_by_the_weight():
    assert update_expected(0.0, 0.4) == 0.4
    assert update_expected(0.4, 0.9) == pytest.approx(0.4 + EWMA_WEIGHT * (0.9 - 0.4))


def test_an_estimate_no_batch_refreshed_for_too_long_is_forgotten():
    from varipipe.admission import STALE_ESTIMATE_S, in_force

    assert in_force(2.0, 100.0, 100.0 + STALE_ESTIMATE_S) == 2.0
    assert in_force(2.0, 100.0, 100.0 + STALE_ESTIMATE_S + 0.1) == 0.0


def test_would_miss_only_when_the_expected_end_is_past_the_deadline():
    assert would_miss(1.0, 0.5, 1.4)
    assert not would_miss(1.0, 0.5, 1.5)
    assert not would_miss(1.0, 99.0, None)  # no deadline: never shed


# --- the ingress: the same rule, fed with the queues --------------------------------

def _line(q1, q2, item_s=0.05, batch=4, replicas=1):
    return [StageLoad("first", q1, item_s, batch, replicas), StageLoad("second", q2, item_s, batch, replicas)]


def test_one_batch_reported_by_each_of_its_requests_moves_the_average_as_one_batch():
    k = 4
    item = 0.1
    for _ in range(k):
        item = update_item_s(item, 0.8, k)  # a batch of 4 taking 0.8 s: 0.2 s per item
    assert item == pytest.approx(update_expected(0.1, 0.2))
    assert item_weight(1) == pytest.approx(EWMA_WEIGHT)
    assert update_item_s(0.0, 0.9, 3) == pytest.approx(0.3)  # the first report sets it


def test_empty_stages_predict_one_item_each():
    assert predict(_line(0, 0)).seconds == pytest.approx(0.1)
    assert predict(_line(0, 0)).stage == ""


def test_a_backlog_costs_its_drain_then_the_batch_it_leaves_with_and_names_its_stage():
    p = predict(_line(20, 0))
    # 20 items ahead at 50 ms and its own; then at the second stage its own item and the
    # 3 that left the first stage's batch with it, ahead of it
    assert p.seconds == pytest.approx(21 * 0.05 + 4 * 0.05)
    assert p.stage == "first"
    assert predict(_line(0, 20)).stage == "second"


def test_a_slow_second_stage_is_the_bottleneck_of_everything_ahead_of_it():
    loads = [StageLoad("first", 8, 0.01, 4, 1), StageLoad("second", 8, 0.1, 4, 1)]
    p = predict(loads)
    # 16 items ahead still need the second stage: 1.6 s, then its own item there
    assert p.seconds == pytest.approx(16 * 0.1 + 0.1) and p.stage == "second"


def test_a_simultaneous_burst_through_batching_stages():
    # Two stages of batch 4, 50 ms per item: the 8th request of a burst leaves the first
    # stage with the second batch (0.4 s) and is done after the second stage runs it (0.6 s).
    assert predict(_line(7, 0)).seconds == pytest.approx(0.6)
    assert predict(_line(3, 0)).seconds == pytest.approx(0.4)
    assert predict(_line(7, 0, batch=1)).seconds == pytest.approx(0.45)  # no batch to wait for


def test_replicas_share_the_backlog():
    assert predict(_line(8, 0, replicas=2)).seconds < predict(_line(8, 0, replicas=1)).seconds


def test_no_deadline_is_always_admitted():
    v = decide(0.0, None, _line(10_000, 10_000))
    assert v.admit and v.budget_s == float("inf")


def test_admitted_while_the_queues_leave_time():
    v = decide(100.0, 100.5, _line(1, 0))
    assert v.admit and v.predicted_s < 0.5 and v.stage == ""


def test_rejected_for_the_queue_is_overloaded_and_says_when_to_retry():
    v = decide(100.0, 100.5, _line(20, 0), margin_s=0.025)
    assert not v.admit and v.overloaded and v.stage == "first"
    assert v.budget_s == pytest.approx(0.475)
    assert v.retry_after_s == pytest.approx(v.predicted_s - 0.475)
    assert v.idle_s == pytest.approx(0.1)


def test_a_deadline_shorter_than_the_empty_pipeline_is_not_overload():
    v = decide(100.0, 100.07, _line(20, 3))  # empty stages need 100 ms: the second one runs out
    assert not v.admit and not v.overloaded and v.stage == "second" and v.retry_after_s == 0.0


def test_nothing_measured_yet_admits():
    assert decide(0.0, 0.001, _line(50, 50, item_s=0.0)).admit


loads = st.lists(st.builds(StageLoad, st.sampled_from("abcd"), st.integers(0, 200), st.floats(0, 2.0),
                           st.integers(1, 16), st.integers(1, 8)), min_size=1, max_size=4)


@given(loads, st.integers(0, 3), st.integers(1, 50), st.floats(0.001, 30.0))
def test_more_in_flight_never_turns_a_rejection_into_an_admission(ls, i, extra, budget):
    i = i % len(ls)
    more = [*ls[:i], StageLoad(ls[i].stage, ls[i].in_flight + extra, ls[i].item_s, ls[i].batch, ls[i].replicas),
            *ls[i + 1:]]
    assert predict(more).seconds >= predict(ls).seconds - 1e-12
    if not decide(0.0, budget, ls).admit:
        assert not decide(0.0, budget, more).admit


@given(loads, st.floats(0.001, 30.0), st.floats(0.0, 0.1))
def test_a_verdict_is_the_stage_rule_on_the_prediction(ls, budget, margin):
    v = decide(10.0, 10.0 + budget, ls, margin)
    assert v.admit == (not would_miss(10.0 + margin, predict(ls).seconds, 10.0 + budget))
    if not v.admit:
        assert v.stage in {x.stage for x in ls}
        assert v.overloaded == (v.retry_after_s > 0)
        if v.overloaded:
            assert v.idle_s <= v.budget_s + 1e-9 and v.budget_s < v.predicted_s
