"""The deadline rule shared by live stages and the simulator."""

from __future__ import annotations

import pytest

from varipipe.admission import EWMA_WEIGHT, update_expected, would_miss


def test_first_batch_sets_the_estimate_then_it_moves_by_the_weight():
    assert update_expected(0.0, 0.4) == 0.4
    assert update_expected(0.4, 0.9) == pytest.approx(0.4 + EWMA_WEIGHT * (0.9 - 0.4))


def test_would_miss_only_when_the_expected_end_is_past_the_deadline():
    assert would_miss(1.0, 0.5, 1.4)
    assert not would_miss(1.0, 0.5, 1.5)
    assert not would_miss(1.0, 99.0, None)  # no deadline: never shed
