"""Deadline admission control: one rule for the ingress, the live stages and the simulator.

The rule is ``start + expected > deadline``: a request is not worth starting
when it is expected to end after its deadline (:func:`would_miss`).

* A stage about to run a batch drops every request whose deadline would pass
  before the batch is expected to finish. The expectation is a moving average of
  the stage's recent batch compute times (``pipelines/stage.py`` per replica,
  ``loadgen/simulator.py`` per stage), so both shed the same requests for the
  same reason.
* The ingress applies the same rule when a request arrives, before any work,
  with the expectation fed by the queues (:func:`decide`): how many requests
  each stage holds now, the recent compute time per item, and each stage's batch
  size and replicas. A request that cannot finish in time is answered at once
  instead of queueing in Serve's router (issue 16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

__all__ = ["ONGOING_BATCHES", "MIN_MAX_ONGOING", "max_ongoing_for", "EWMA_WEIGHT", "STALE_ESTIMATE_S", "COLD_BATCHES", "fresh_estimate", "update_expected", "after_batch", "in_force", "would_miss", "item_weight", "update_item_s", "StageLoad",
           "Prediction", "Verdict", "predict", "decide"]

# Requests a stage replica may hold beyond its batch (its ``max_ongoing_requests``): one batch
# running plus one forming, so batches can fill (docs/ray-serve-facts.md: max_ongoing_requests must
# be >= batch size). The ingress's gate (pipelines/gate.py) lets no more than that into a stage's
# replicas, and the simulator's routed replicas hold as many.
ONGOING_BATCHES = 2
MIN_MAX_ONGOING = 8  # Ray Serve's own default for max_ongoing_requests is 5; a little headroom


def max_ongoing_for(batch: int) -> int:
    """A stage replica's ``max_ongoing_requests`` at ``batch``."""
    return max(MIN_MAX_ONGOING, ONGOING_BATCHES * batch)


# Weight of the newest batch in the moving average of batch time used to judge
# deadlines: about the last five batches count, so a variant switch shows up fast.
EWMA_WEIGHT = 0.2


def update_expected(expected_s: float, compute_s: float, weight: float = EWMA_WEIGHT) -> float:
    """The moving average after one more batch; the first batch sets it."""
    return compute_s if not expected_s else weight * compute_s + (1 - weight) * expected_s


# A model's first batches after it loads run its lazy set-up (OpenCV DNN builds its network on the
# first forward: yolov3-tiny-416's first call took 0.25 s against 0.08 s after it on a quiet host,
# 2026-12-07, and 1.2 s while a replica started beside it), so they do not set the estimate: one
# such batch, read as the model's time, shed every request of the stage until STALE_ESTIMATE_S
# (benchmarks/README.md, "Traffic that starts"). The stages (live and simulated) count them.
COLD_BATCHES = 1


def fresh_estimate() -> tuple[float, int]:
    """The estimate a stage starts a newly loaded model with, and the cold batches to leave out
    of it: none (the old model's batch times say nothing of the new one's), COLD_BATCHES."""
    return 0.0, COLD_BATCHES


def after_batch(expected_s: float, compute_s: float, cold: int) -> tuple[float, int]:
    """The estimate after a batch of ``compute_s`` that ran on ``expected_s`` (the one in force),
    and the cold batches left: while any are, the batch leaves the estimate as it was."""
    if cold > 0:
        return expected_s, cold - 1
    return update_expected(expected_s, compute_s), 0


# A stage that sheds every item runs no batch, so nothing measures its estimate again: one
# slow batch (a host hiccup, the model a switch replaced) would shed the stage for good. An
# estimate no batch has refreshed for this long is forgotten, and the next batch measures
# afresh. One adapter interval (adapter/policy.py DEFAULT_INTERVAL_S, 10 s): the time in
# which the adapter itself sees a change and answers it.
STALE_ESTIMATE_S = 10.0


def in_force(expected_s: float, last_batch_s: float, now_s: float, stale_s: float = STALE_ESTIMATE_S) -> float:
    """The estimate that judges a batch starting at ``now_s``: ``expected_s``, or 0 (none:
    nothing is shed, the batch measures) when no batch has run for more than ``stale_s``."""
    return 0.0 if now_s - last_batch_s > stale_s else expected_s


def would_miss(start_s: float, expected_s: float, deadline_s: float | None) -> bool:
    """True when a batch starting at ``start_s`` is expected to end after the deadline."""
    return deadline_s is not None and start_s + expected_s > deadline_s


def item_weight(batch_size: int) -> float:
    """Weight of one item's report such that the ``batch_size`` reports of one batch
    together move the average as one batch does (``EWMA_WEIGHT``): the ingress sees a
    batch once per request in it."""
    return 1.0 - (1.0 - EWMA_WEIGHT) ** (1.0 / max(1, batch_size))


def update_item_s(item_s: float, compute_s: float, batch_size: int) -> float:
    """The moving average of compute time per item after one request's report of its batch."""
    k = max(1, batch_size)
    return update_expected(item_s, compute_s / k, item_weight(k))


@dataclass(frozen=True)
class StageLoad:
    """One stage as the ingress sees it when a request arrives."""

    stage: str
    in_flight: int  # requests sent to the stage and not back yet: in Serve's router, at a replica, running
    item_s: float  # recent compute time per item (0: nothing measured yet)
    batch: int  # largest batch a replica runs
    replicas: int

    def drain_s(self, ahead: int) -> float:
        """Time for the replicas to run ``ahead`` items: per-item time / replicas. Batches
        change the grouping, not the total, for the CPU stages here (batching buys
        x0.7-1.2 per item, benchmarks/README.md "Batch 1 vs batch 8")."""
        return self.item_s * ahead / max(1, self.replicas)


@dataclass(frozen=True)
class Prediction:
    seconds: float  # from now until the request is expected to leave the last stage
    stage: str  # the stage whose backlog sets it (the bottleneck); "" with no backlog anywhere


def predict(loads: Sequence[StageLoad]) -> Prediction:
    """Expected time through a line of FIFO stages for a request arriving now.

    Stage by stage, the request leaves stage ``s`` at the later of two times:

    * its backlog: ``s`` runs every item ahead of the request that still needs it
      (those in ``s`` and in the stages before it), then the request's own item;
    * its arrival: it left the stage before, and runs here together with the items
      that came out of that stage's batch with it, ahead of it (up to batch - 1;
      a backlog upstream means full batches).

    With empty stages it is one item per stage. Items are costed at the recent
    compute time per item: batching changes the grouping, not the total, for the CPU
    stages here (x0.7-1.2 per item, benchmarks/README.md "Batch 1 vs batch 8").
    A running batch counts whole though partly done, and items behind the request
    that join its batch do not count: the two errors pull opposite ways. Counting
    the request's own batch as full at every stage (an earlier version)
    over-predicted the real pipeline by 0.9 s at the median where its SLA is 1 s;
    leaving out the batch-mates from the stage before under-predicted a burst of
    simultaneous requests, which then all finished late.
    """
    ahead, left, stage = 0, 0.0, ""
    for i, load in enumerate(loads):
        mates = min(max(0, loads[i - 1].batch - 1), ahead) if i else 0  # `ahead` is still the previous stage's
        ahead += max(0, load.in_flight)
        arrival = left + load.item_s * (1 + mates)
        backlog = load.drain_s(ahead) + load.item_s
        if ahead and backlog >= arrival:
            stage = load.stage  # the last stage whose own backlog sets the time
        left = max(arrival, backlog)
    return Prediction(left, stage)


@dataclass(frozen=True)
class Verdict:
    """The ingress's answer to "can this request finish in time?"."""

    admit: bool
    predicted_s: float  # expected time through the stages with the queues as they are
    budget_s: float  # time left before the deadline, less the margin (inf: no deadline)
    stage: str  # rejected: the stage to blame (see ``overloaded``); "" when admitted
    # True: the queues make it miss (503; it would fit the empty pipeline, so retrying can help).
    # False: even empty stages could not meet the deadline (504; retrying cannot help).
    overloaded: bool = False
    retry_after_s: float = 0.0  # overloaded: the backlog beyond the budget, drained if nothing new came
    idle_s: float = 0.0  # rejected: expected time through the same stages with empty queues


def decide(now: float, deadline: float | None, loads: Sequence[StageLoad], margin_s: float = 0.0) -> Verdict:
    """Admit a request arriving at ``now`` unless it is expected to finish after ``deadline``.

    ``margin_s`` is time the request spends outside the stages' queues and batches (the
    reply's way back to the client, and what the ingress measured there recently:
    ``pipelines/queues.py`` ``reserve_s``); it is taken off the deadline. No deadline:
    always admitted.
    """
    if deadline is None:
        return Verdict(True, 0.0, math.inf, "")
    pred = predict(loads)
    budget = deadline - margin_s - now
    if not would_miss(now + margin_s, pred.seconds, deadline):
        return Verdict(True, pred.seconds, budget, "")
    idle = [replace(load, in_flight=0) for load in loads]
    idle_s = predict(idle).seconds
    if would_miss(now + margin_s, idle_s, deadline):
        return Verdict(False, pred.seconds, budget, _runs_out_at(idle, budget), idle_s=idle_s)
    return Verdict(False, pred.seconds, budget, pred.stage or loads[0].stage, overloaded=True,
                   retry_after_s=pred.seconds - budget, idle_s=idle_s)


def _runs_out_at(idle: Sequence[StageLoad], budget_s: float) -> str:
    """The first stage whose own item, after those before it, passes the budget."""
    spent = 0.0
    for load in idle:
        spent += load.item_s
        if spent > budget_s:
            return load.stage
    return idle[-1].stage
