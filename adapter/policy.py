"""The one policy interface shared by the live control loop and the simulator.

A policy is handed what was observed over the last interval, the forecast for
the next one, and the decision currently applied; it returns the decision to
run next. It does no I/O, reads no clock and never imports Ray, so the code a
researcher compares in simulation is the code that steers the live pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from varipipe.records import SLA, Decision, Observation, PipelineSpec, Profile

__all__ = ["Forecast", "PolicyContext", "Policy", "delegates_to_ray"]


@dataclass(frozen=True)
class Forecast:
    """Predicted pipeline arrival rate (requests/s) for the next interval."""

    rps: float
    predictor: str = ""
    horizon_s: float = 0.0


@dataclass(frozen=True)
class PolicyContext:
    """What every policy is constructed with: the static facts of the problem.

    ``cost_mode`` is "shared" (one host, DESIGN §5) or "reserved" (a cluster);
    ``cluster_cores`` is the capacity limit in that mode; ``max_replicas`` caps
    replicas per stage.
    """

    spec: PipelineSpec | None
    profile: Profile
    sla: SLA
    cost_mode: str = "shared"
    cluster_cores: float = 2.0
    max_replicas: int = 8
    interval_s: float = 10.0


@runtime_checkable
class Policy(Protocol):
    """``decide(observation, forecast, current) -> Decision``."""

    name: str

    def decide(self, observation: Observation, forecast: Forecast, current: Decision) -> Decision: ...


def delegates_to_ray(policy: object) -> bool:
    """True when ``policy`` hands scaling to Ray Serve's own autoscaler: it has an
    ``autoscaling_config()`` (the built-in ``ray`` policy, or a user's). Live, Serve then
    scales the stages with that config and varipipe runs no control loop; simulated, its
    ``decide`` stands in for Ray's rule and every decision applies."""
    return callable(getattr(policy, "autoscaling_config", None))
