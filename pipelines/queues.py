"""What the ingress knows about each stage's queue: the input of its admission rule.

The ingress counts its own requests in flight per stage: it is the only sender
to the stages (one ingress replica, ``serve_config.INGRESS_REPLICAS``), so its
count is exact and current, at the cost of two integer updates per stage call.
The controller's figures are pushed about once a second (``flusher``) and would
let a burst through before they moved; Ray's own queue metrics are scraped every
few seconds (RAY_SERVE_FACTS). The compute time per item comes back with every
reply (the stage's trace), so it is as recent as the last answer. Batch sizes and
replicas come from the decision in force (the ingress's ``user_config``, which
the declarative config carries as it does the stages'). Free of Ray and clocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from varipipe.admission import STALE_ESTIMATE_S, StageLoad, in_force, update_item_s
from varipipe.errors import ConfigError
from varipipe.records import Decision

__all__ = ["StageSlots", "StageQueues", "slots_user_config", "RESERVE_SAMPLES", "RESERVE_OUTLIERS"]

# What the admission rule's model does not see is measured, not assumed: for every request
# that went through all the stages, its time outside the replicas' queues and batches (its own
# reading and decoding, Ray's hops to and from each replica, the ingress's event loop and the
# proxy under a burst). Admission keeps the RESERVE_OUTLIERS + 1-th largest of the last
# RESERVE_SAMPLES in reserve: the 90th percentile of a full window. Not a mean: with the mean
# kept, about half of the requests admitted on the edge of their deadline would finish late.
# Not the largest: a few outliers (a stage handle's first call, a pause of the host) must not
# shut the ingress: one warm-up request of 5.1 s outside, with two CPU hogs beside the test,
# made the largest of 8 reject a whole burst. 32 samples: a few seconds at the tens of
# requests/s these pipelines serve, so a burst's figures count soon and leave soon. On the
# shared 2-core host sequential requests put 14-26 ms there (the first 125-148 ms), an
# 80-request burst 50-210 ms (median 72-86 ms); with nothing kept for it, 5 of 20 such bursts
# had every admitted request finish late (benchmarks/README.md "Admission under a burst").
RESERVE_SAMPLES = 32
RESERVE_OUTLIERS = 3  # 32 - 3 = 29 = ceil(0.9 * 32): the 90th percentile of a full window


@dataclass(frozen=True)
class StageSlots:
    """How a stage runs: its largest batch and its replicas."""

    batch: int
    replicas: int


def slots_user_config(decision: Decision, replicas: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The ingress's ``user_config`` for a decision; ``replicas`` overrides a stage's count
    (an autoscaled stage: its most replicas)."""
    replicas = replicas or {}
    return {"stages": {s.stage: {"batch": int(s.batch), "replicas": int(replicas.get(s.stage, s.replicas))}
                       for s in decision.stages}}


class StageQueues:
    """Per stage: requests in flight, recent compute time per item, batch size and replicas."""

    def __init__(self, stages: Sequence[str], slots: Mapping[str, StageSlots]) -> None:
        self.stages = tuple(stages)
        self.in_flight = dict.fromkeys(self.stages, 0)
        self.item_s = dict.fromkeys(self.stages, 0.0)
        self.item_at = dict.fromkeys(self.stages, 0.0)  # when each estimate was last measured
        self.slots = {s: slots[s] for s in self.stages}
        self._outside: deque[tuple[float, float]] = deque(maxlen=RESERVE_SAMPLES)  # (when, seconds)

    def configure(self, user_config: Mapping[str, Any]) -> None:
        """Take the batch size and replicas of every stage from the ingress's ``user_config``."""
        raw = user_config.get("stages")
        if not isinstance(raw, Mapping) or set(raw) != set(self.stages):
            raise ConfigError("ingress user_config", "stages", f"must name exactly {list(self.stages)}, got {raw!r}")
        slots = {}
        for stage in self.stages:
            try:
                slots[stage] = StageSlots(int(raw[stage]["batch"]), int(raw[stage]["replicas"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ConfigError("ingress user_config", f"stages.{stage}",
                                  f"needs integer batch and replicas, got {raw[stage]!r}") from e
            if slots[stage].batch < 1 or slots[stage].replicas < 1:
                raise ConfigError("ingress user_config", f"stages.{stage}",
                                  f"batch and replicas must be >= 1, got {raw[stage]!r}")
        self.slots = slots

    def sent(self, stage: str) -> None:
        self.in_flight[stage] += 1

    def back(self, stage: str, compute_s: float | None = None, batch_size: int = 1, now: float = 0.0) -> None:
        """A stage answered at ``now``; ``compute_s`` is the batch time it reported (None: it did not run it)."""
        self.in_flight[stage] -= 1
        if compute_s is not None and compute_s >= 0:
            self.item_s[stage] = update_item_s(self.item_s[stage], compute_s, batch_size)
            self.item_at[stage] = now

    def outside(self, seconds: float, now: float) -> None:
        """One request's time outside the replicas' queues and batches, measured at ``now``:
        its time through the ingress less every stage's ``queue_s + compute_s`` (and its wait
        at the stage's gate, which the rule's backlog counts)."""
        self._outside.append((now, seconds))

    def reserve_s(self, now: float | None = None) -> float:
        """Time the admission rule keeps for what its model does not see: the recent
        :meth:`outside` measurements less their ``RESERVE_OUTLIERS`` largest, the largest of
        the rest; none older than ``admission.STALE_ESTIMATE_S`` at ``now`` (an ingress whose
        reserve made it reject everything measures nothing new; None: all of them). 0 until
        there are more than ``RESERVE_OUTLIERS``, and never below 0."""
        recent = sorted(s for t, s in self._outside if now is None or now - t <= STALE_ESTIMATE_S)
        if len(recent) <= RESERVE_OUTLIERS:
            return 0.0
        return max(0.0, recent[-1 - RESERVE_OUTLIERS])

    def loads(self, now: float | None = None) -> tuple[StageLoad, ...]:
        """Every stage as a request arriving at ``now`` sees it. An estimate no answer has
        measured for ``admission.STALE_ESTIMATE_S`` is forgotten (0): an ingress that rejects
        everything gets no answers to correct it (None: every estimate in force)."""
        return tuple(StageLoad(s, self.in_flight[s],
                               self.item_s[s] if now is None else in_force(self.item_s[s], self.item_at[s], now),
                               self.slots[s].batch, self.slots[s].replicas)
                     for s in self.stages)
