"""Deadline admission control, one rule for live stages and the simulator.

A stage about to run a batch drops every request whose deadline would pass
before the batch is expected to finish: ``start + expected > deadline``. The
expectation is a moving average of the stage's recent batch compute times
(``pipelines/stage.py`` per replica, ``loadgen/simulator.py`` per stage), so
both sides shed the same requests for the same reason.
"""

from __future__ import annotations

__all__ = ["EWMA_WEIGHT", "update_expected", "would_miss"]

# Weight of the newest batch in the moving average of batch time used to judge
# deadlines: about the last five batches count, so a variant switch shows up fast.
EWMA_WEIGHT = 0.2


def update_expected(expected_s: float, compute_s: float) -> float:
    """The moving average after one more batch; the first batch sets it."""
    return compute_s if not expected_s else EWMA_WEIGHT * compute_s + (1 - EWMA_WEIGHT) * expected_s


def would_miss(start_s: float, expected_s: float, deadline_s: float | None) -> bool:
    """True when a batch starting at ``start_s`` is expected to end after the deadline."""
    return deadline_s is not None and start_s + expected_s > deadline_s
