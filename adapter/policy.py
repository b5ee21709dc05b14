"""The one policy interface shared by the live control loop and the simulator.

A policy is handed what was observed over the last interval, the forecast for
the next one, and the decision currently applied; it returns the decision to
run next. It does no I/O, reads no clock and never imports Ray, so the code a
researcher compares in simulation is the code that steers the live pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from varipipe.adapter.configurations import (
    DEFAULT_CLUSTER_CORES,
    DEFAULT_COST_MODE,
    default_max_replicas,
    profile_gpu_memory_mb,
)
from varipipe.errors import ConfigError
from varipipe.records import SLA, Decision, Observation, PipelineSpec, Profile

__all__ = ["Forecast", "PolicyContext", "ContextOptions", "policy_context", "Policy", "delegates_to_ray",
           "DEFAULT_INTERVAL_S"]

# The adaptation interval when none is given: observe, predict and decide every 10 s, as
# IPA's adapter did; the hysteresis (loop.HOLD_INTERVALS) and the predictors' windows are
# counted in it.
DEFAULT_INTERVAL_S = 10.0


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
    replicas per stage (None: ``default_max_replicas(cluster_cores)``);
    ``cluster_gpus`` GPUs of ``gpu_memory_mb`` MiB each may take ``gpu:<model>``
    configurations (``configurations``: what reserved and shared mean for a GPU).
    Build it with :func:`policy_context`, as ``serve``, ``simulate`` and
    ``experiment`` do.
    """

    spec: PipelineSpec | None
    profile: Profile
    sla: SLA
    cost_mode: str = DEFAULT_COST_MODE
    cluster_cores: float = DEFAULT_CLUSTER_CORES
    max_replicas: int | None = None  # None: default_max_replicas(cluster_cores), set on construction
    interval_s: float = DEFAULT_INTERVAL_S
    cluster_gpus: int = 0
    gpu_memory_mb: float | None = None  # one GPU's memory, MiB

    def __post_init__(self) -> None:
        if self.max_replicas is None:
            object.__setattr__(self, "max_replicas", default_max_replicas(self.cluster_cores))


class ContextOptions(Protocol):
    """The settings a user gives ``serve`` (``AppOptions``), ``simulate`` and ``experiment``
    (``SimSettings``) that go into a policy's context."""

    @property
    def sla_s(self) -> float | None: ...  # None: the spec's SLA

    @property
    def cost_mode(self) -> str: ...

    @property
    def cluster_cores(self) -> float: ...

    @property
    def max_replicas(self) -> int | None: ...  # None: default_max_replicas(cluster_cores)

    @property
    def interval_s(self) -> float: ...

    @property
    def cluster_gpus(self) -> int: ...

    @property
    def gpu_memory_mb(self) -> float | None: ...  # None: what the profile recorded (metadata.device)


def policy_context(spec: PipelineSpec | None, profile: Profile, options: ContextOptions) -> PolicyContext:
    """The one way a policy's context is made, live and simulated, so both get the same
    defaults: the SLA given, else the spec's; the replica cap given, else the cluster's cores;
    one GPU's memory given, else the profile's record of it."""
    sla_s = options.sla_s if options.sla_s is not None else (spec.sla.latency_s if spec is not None else None)
    if sla_s is None:
        raise ConfigError("policy context", "sla_s", "no SLA given and no pipeline spec to take it from")
    memory = options.gpu_memory_mb if options.gpu_memory_mb is not None else profile_gpu_memory_mb(profile)
    if options.cluster_gpus > 0 and memory is None:
        raise ConfigError("policy context", "gpu_memory_mb", f"cluster_gpus={options.cluster_gpus} needs one GPU's "
                          "memory (MiB) and the profile records none (metadata.device.gpu_memory_mib)")
    return PolicyContext(spec=spec, profile=profile, sla=SLA(sla_s), cost_mode=options.cost_mode,
                         cluster_cores=options.cluster_cores, max_replicas=options.max_replicas,
                         interval_s=options.interval_s, cluster_gpus=options.cluster_gpus, gpu_memory_mb=memory)


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
