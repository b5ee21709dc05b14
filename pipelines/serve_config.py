"""Decision -> Ray Serve declarative application config (pure; no Ray import).

Every change to the running pipeline goes through this one config, applied
with Serve's declarative path, which updates ``num_replicas``, ``user_config``
and ``max_ongoing_requests`` in place and touches only the deployments that
changed (docs/ray-serve-facts.md). ``args`` and ``ray_actor_options``
never change after the first deploy: changing them would restart replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from varipipe.adapter.configurations import DEFAULT_CLUSTER_CORES, DEFAULT_COST_MODE
from varipipe.adapter.policy import DEFAULT_INTERVAL_S
from varipipe.adapter.predictors import DEFAULT_PREDICTOR
from varipipe.admission import max_ongoing_for
from varipipe.pipelines.queues import slots_user_config
from varipipe.pipelines.stage import StageConfig
from varipipe.records import Decision, PipelineSpec, StageDecision

__all__ = [
    "APP_IMPORT_PATH",
    "INGRESS",
    "CONTROLLER",
    "AppOptions",
    "stage_deployment_name",
    "default_decision",
    "build_app_config",
    "max_ongoing_for",
    "DEFAULT_GPU_FRACTION",
    "parse_gpus",
    "stage_gpus",
]

APP_IMPORT_PATH = "varipipe.pipelines.app:build_app"
INGRESS = "ingress"
CONTROLLER = "controller"
# The ingress and controller hold many requests waiting on downstream stages.
INGRESS_MAX_ONGOING = 1000
# One ingress replica: it is then the only sender to the stages, so its own count of
# requests in flight per stage is the stages' queue (admission control, pipelines/queues.py).
INGRESS_REPLICAS = 1
# Default batch wait when a decision does not set one: 5 ms, a few per cent of the
# smallest variant's batch-1 latency in DESIGN §6 (28 ms), so it never dominates.
DEFAULT_BATCH_WAIT_S = 0.005
DEFAULT_BATCH = 4
# GPUs a replica reserves when a decision puts its stage on a GPU and no --gpus fraction says
# otherwise: a whole one (issue 19: in reserved mode a GPU replica costs one GPU's price).
DEFAULT_GPU_FRACTION = 1.0
# Nice of the stage replicas' threads. Linux weighs a nice-10 thread 110 against a nice-0
# thread's 1024 (kernel/sched/core.c sched_prio_to_weight), so a waking proxy or ingress
# runs ahead of a batch at once while the batch keeps every idle cycle; per-thread nice
# acts within one scheduler autogroup, and every Ray process of a node shares the raylet's.
STAGE_NICE = 10
# Ray starts its workers' Python threads at nice 15 (the RAY_worker_niceness setting), Serve's
# proxy, the ingress and the controller among them. varipipe's embedded Ray, the KubeRay
# manifest and deploy/ray/cluster.yaml start them at 0, with Ray's raylet and GCS, and the
# stage replicas then STAGE_NICE below.
WORKER_NICENESS_ENV = "RAY_worker_niceness"
WORKER_NICENESS = 0


def _gpu_amount(text: str, where: str) -> float:
    from varipipe.errors import ConfigError

    try:
        value = float(text)
    except ValueError:
        raise ConfigError("--gpus", where, f"expected a number of GPUs, got {text!r}") from None
    # Ray schedules fractions of one GPU, or whole GPUs (a replica cannot hold 1.5).
    if not (0 < value <= 1 or (value > 1 and value.is_integer())):
        raise ConfigError("--gpus", where, f"GPUs per replica must be in (0, 1] or a whole number, got {text!r}")
    return value


def parse_gpus(text: str, stages: tuple[str, ...]) -> dict[str, float]:
    """``--gpus``: ``"0.5"`` (every stage's replicas) or ``"llm=0.5,detector=0.25"`` -> {stage: GPUs}."""
    from varipipe.errors import ConfigError

    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        amount = _gpu_amount(text, "(all stages)")
        return dict.fromkeys(stages, amount)
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        stage, sep, amount = part.partition("=")
        if not sep or stage.strip() not in stages:
            raise ConfigError("--gpus", part, f"expected STAGE=GPUS with STAGE one of {list(stages)}")
        out[stage.strip()] = _gpu_amount(amount, stage.strip())
    return out


def stage_gpus(explicit: dict[str, float], decision: Decision | None) -> dict[str, float]:
    """GPUs per replica of each stage: ``explicit`` (--gpus), plus ``DEFAULT_GPU_FRACTION`` for every
    stage that ``decision`` places on a ``gpu:<model>`` and ``explicit`` does not name."""
    out = dict(explicit)
    for s in decision.stages if decision is not None else ():
        if s.hardware.startswith("gpu:"):
            out.setdefault(s.stage, DEFAULT_GPU_FRACTION)
    return out


def stage_deployment_name(stage: str) -> str:
    return f"stage-{stage}"


@dataclass(frozen=True)
class AppOptions:
    """Settings fixed for the life of an application (they travel as ``args``)."""

    pipeline: str  # bundled name or path to a spec YAML
    app_name: str = "varipipe"
    route_prefix: str = "/"
    policy: str = ""  # "" = no control loop
    policy_options: dict[str, Any] = field(default_factory=dict)
    predictor: str = DEFAULT_PREDICTOR
    interval_s: float = DEFAULT_INTERVAL_S
    sla_s: float | None = None  # None = the spec's SLA
    profile: str = ""  # profile store path; "" = the shipped default if any
    cost_mode: str = DEFAULT_COST_MODE
    cluster_cores: float = DEFAULT_CLUSTER_CORES
    max_replicas: int | None = None  # None = the policy context's default (the cluster's whole cores)
    cluster_gpus: int = 0  # GPUs the policy may plan gpu:<model> configurations on
    gpu_memory_mb: float | None = None  # one GPU's memory, MiB; None = the profile's record of it
    dry_run: bool = False
    pins: dict[str, str] = field(default_factory=dict)
    state_file: str = ""  # where the controller keeps the last decision across restarts
    stage_num_cpus: float | None = None  # override the spec's per-replica CPU reservation
    # Custom Ray resources each replica of a stage needs, {"stage": {"resource": amount}}:
    # places stages on labelled nodes of a cluster (`ray start --resources`); {} = anywhere.
    stage_resources: dict[str, dict[str, float]] = field(default_factory=dict)
    # GPUs (fractions allowed) each replica of a stage reserves, {"stage": 0.5}; such a stage's
    # replicas run its variants' GPU runtimes. Fixed for the application's life (ray_actor_options).
    stage_gpus: dict[str, float] = field(default_factory=dict)
    auth_token: str = ""  # required on control endpoints when set
    # Requests without an x-deadline-ms header get a deadline of this many SLAs; 0 = none.
    deadline_sla_factor: float = 0.0
    # Admission control at the ingress: a request with a deadline that the stages' queues
    # say it cannot meet is answered at once (503 + Retry-After). False: stages alone drop
    # late requests, after they queued (the behaviour before issue 16).
    admission: bool = True
    # The ingress's FIFO in front of each stage (pipelines/gate.py). False: requests beyond the
    # replicas' max_ongoing_requests wait in Serve's router (before issue 16's fix; for comparison,
    # benchmarks/router_backlog.py).
    stage_gate: bool = True
    # Admission keeps the measured time outside the stages in reserve (pipelines/queues.py
    # reserve_s). False: it keeps only REPLY_MARGIN_S (for comparison, benchmarks/admission_burst.py;
    # the rule before kept the ingress's median decoding time as well, about 2 ms there).
    admission_reserve: bool = True
    # Nice value of each stage replica's threads (pipelines/app.py lower_priority): the model
    # replicas yield a core to Serve's proxy, the ingress and the controller whenever these wake,
    # so a rejection is not answered behind a running batch. 0 = as started (for comparison,
    # benchmarks/rejection_tail.py).
    stage_nice: int = STAGE_NICE
    # Online calibration of the profile from the batches served (adapter.calibration); False:
    # --no-calibration. ``calibration_settings``: CalibrationSettings fields to override.
    calibration: bool = True
    calibration_settings: dict[str, Any] = field(default_factory=dict)

    def to_args(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AppOptions:
        return cls(**args)


def default_decision(spec: PipelineSpec, batch: int = DEFAULT_BATCH) -> Decision:
    """Every stage on its spec's ``default_variant``, one replica, a small batch: what ``serve``
    starts on before a policy decides (a policy that delegates to Ray's autoscaler starts on its
    own first decision instead, as in the simulator)."""
    return Decision(
        stages=tuple(
            StageDecision(s.name, s.default_variant, batch, 1, f"cpu:{s.threads}", DEFAULT_BATCH_WAIT_S)
            for s in spec.stages
        ),
        reason="default configuration",
        policy="default",
    )


def _stage_deployment(s: StageDecision, generation: int, autoscaling: dict[str, Any] | None) -> dict[str, Any]:
    cfg = StageConfig(s.variant, s.batch, _finite(s.batch_wait_s), generation)
    out: dict[str, Any] = {
        "name": stage_deployment_name(s.stage),
        "max_ongoing_requests": max_ongoing_for(s.batch),
        "user_config": cfg.to_user_config(),
    }
    if autoscaling:
        out["autoscaling_config"] = autoscaling
    else:
        out["num_replicas"] = max(1, int(s.replicas))
    return out


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) and x >= 0 else DEFAULT_BATCH_WAIT_S


def build_app_config(
    opts: AppOptions,
    decision: Decision,
    generation: int,
    stage_generation: dict[str, int] | None = None,
    autoscaling: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The full declarative config of one application for ``decision``.

    ``stage_generation`` is, per stage, the generation of its last change: a stage
    whose settings did not change keeps its ``user_config`` byte for byte, so Serve
    leaves its replicas alone. ``autoscaling`` maps stage -> Ray Serve
    ``autoscaling_config`` for the ``ray`` policy.
    """
    autoscaling = autoscaling or {}
    stage_generation = stage_generation or {}
    deployments = [
        {"name": INGRESS, "num_replicas": INGRESS_REPLICAS, "max_ongoing_requests": INGRESS_MAX_ONGOING,
         # Batch and replicas per stage, for admission control; an autoscaled stage counts
         # at its most replicas (the ingress cannot see how many Ray runs at the moment).
         "user_config": slots_user_config(decision, {s: int(a["max_replicas"]) for s, a in autoscaling.items()})},
        {
            "name": CONTROLLER,
            "num_replicas": 1,
            "max_ongoing_requests": INGRESS_MAX_ONGOING,
            "user_config": {"decision": decision.to_dict(), "generation": generation,
                            "stage_generation": dict(stage_generation)},
        },
        *(
            _stage_deployment(s, stage_generation.get(s.stage, generation), autoscaling.get(s.stage))
            for s in decision.stages
        ),
    ]
    return {
        "name": opts.app_name,
        "route_prefix": opts.route_prefix,
        "import_path": APP_IMPORT_PATH,
        "args": opts.to_args(),
        "deployments": deployments,
    }
