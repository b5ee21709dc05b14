"""Apply a ``Decision`` to the running application through Serve's declarative path.

``ServeApplier.apply(decision)`` builds the full application config, hands it
to the Serve controller (one place that touches Ray's private API, so a future
Ray change is a one-place fix), waits until every changed stage reports the
new configuration, and, if a replica could not load its new variant, rolls the
config back to the previous decision and raises ``ReconfigurationError`` --
the old variant never stopped serving.

Every config handed to Serve carries a generation number used once: replicas
report the generation they run, and that is how an apply (or a roll-back) knows
its own config has arrived. (A roll-back once reused the failed generation, so
the failed replicas' own error reports "confirmed" it before Serve had delivered
it, and ``/config`` went on showing the failed decision; issue 16.)

The applier reads Serve through a ``ServeAccess`` (``LiveServe`` by default), so
its logic runs against a fake in unit tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from varipipe.errors import ReconfigurationError
from varipipe.pipelines.serve_config import (
    CONTROLLER,
    AppOptions,
    build_app_config,
    stage_deployment_name,
)
from varipipe.records import Decision

__all__ = ["ApplyResult", "AppView", "DeploymentView", "LiveServe", "ServeAccess", "ServeApplier", "poll_pauses",
           "deploy_config"]

log = logging.getLogger(__name__)

# How long an apply may take before it is reported as failed: a replica start is
# 2.3-8.2 s here (docs/ray-serve-facts.md) and a model load adds a few seconds more.
APPLY_TIMEOUT_S = 120.0
# Polls for the changed replicas: the first after POLL_S, each later one POLL_GROWTH times the
# one before, at most POLL_MAX_S apart. One poll (Serve's status and the controller's reports)
# costs the process 40-50 ms of CPU at nice 0, ahead of the stage replicas. Growing polls find
# a 2-s replica start in 7 instead of 20, at most POLL_MAX_S late, and took 0.13-0.34 CPU-s
# off a flagship replica start against polls every 0.1 s (benchmarks/replica_start_cpu.py).
POLL_S = 0.1
POLL_GROWTH = 1.5
POLL_MAX_S = 0.5
# ray.serve.schema.ApplicationStatus / DeploymentStatus values (str enums; ray is imported lazily here).
DELETING = "DELETING"
DEPLOY_FAILED = "DEPLOY_FAILED"
HEALTHY = "HEALTHY"


@dataclass(frozen=True)
class ApplyResult:
    generation: int
    changed_stages: tuple[str, ...]
    seconds: float  # from the call until every changed stage serves the new config


@dataclass(frozen=True)
class DeploymentView:
    status: str  # Serve's DeploymentStatus value: HEALTHY, UPDATING, ...
    running: int  # replicas in state RUNNING


@dataclass(frozen=True)
class AppView:
    """One application as ``serve.status()`` shows it, reduced to what the applier reads."""

    status: str  # Serve's ApplicationStatus value: RUNNING, DEPLOYING, DEPLOY_FAILED, DELETING, ...
    message: str
    deployments: Mapping[str, DeploymentView]


class ServeAccess(Protocol):
    """What the applier reads from Serve; ``LiveServe`` reads the running instance."""

    def app(self, app_name: str) -> AppView | None:
        """The application's status; None when Serve has no such application."""
        ...

    def controller_config(self, app_name: str) -> dict[str, Any]:
        """The application controller's ``/config`` view."""
        ...

    def controller_reports(self, app_name: str) -> tuple[list[Any], int]:
        """The replicas' status reports and the generation the controller was last given."""
        ...


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


class LiveServe:
    """``ServeAccess`` on the Serve instance this process is connected to."""

    def app(self, app_name: str) -> AppView | None:
        from ray import serve

        status = serve.status().applications.get(app_name)
        if status is None:
            return None
        deployments = {name: DeploymentView(_value(d.status), int(d.replica_states.get("RUNNING", 0)))
                       for name, d in status.deployments.items()}
        return AppView(_value(status.status), status.message, deployments)

    def _controller(self, app_name: str):
        from ray import serve

        return serve.get_deployment_handle(CONTROLLER, app_name)

    def controller_config(self, app_name: str) -> dict[str, Any]:
        return self._controller(app_name).config.remote().result()

    def controller_reports(self, app_name: str) -> tuple[list[Any], int]:
        controller = self._controller(app_name)
        reports = controller.replicas.remote().result()
        return reports, int(controller.config.remote().result()["generation"])


def deploy_config(app_config: dict[str, Any], only_if_live: bool = False) -> bool:
    """Hand one application's full config to the running Serve controller (in process).

    Serve's ``apply_config`` takes the whole set of config-deployed applications and
    deletes those missing from it, so the others go along as they were last deployed
    (all but those being deleted). Without this, applying one varipipe application
    deleted every other one in the cluster (tests/integration/test_two_apps.py).

    ``only_if_live``: deploy only while this application exists and is not being
    deleted (a deploy would bring it back); returns False when it did not deploy.
    """
    from ray import serve
    from ray.serve.schema import ServeDeploySchema, ServeInstanceDetails

    client = serve.context._get_global_client()
    apps = ServeInstanceDetails.model_validate(client.get_serve_details()).applications
    name = app_config["name"]
    if only_if_live and (name not in apps or apps[name].status == DELETING):
        return False
    others = {n: a for n, a in apps.items() if n != name and a.status != DELETING}
    prefix = app_config.get("route_prefix", "/")
    clash = sorted(n for n, a in others.items() if a.route_prefix == prefix)
    if clash:
        raise ReconfigurationError(
            f"route prefix {prefix!r} is already served by application {clash[0]!r} in this Ray cluster; "
            f"give {name!r} another route prefix, or delete {clash[0]!r}")
    kept = [a.deployed_app_config.model_dump(exclude_unset=True) for a in others.values()
            if a.deployed_app_config is not None]
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [*kept, app_config]}))
    return True


def poll_pauses() -> Iterator[float]:
    """The pauses between an apply's polls: POLL_S, growing by POLL_GROWTH to POLL_MAX_S."""
    pause = POLL_S
    while True:
        yield pause
        pause = min(POLL_MAX_S, pause * POLL_GROWTH)


class ServeApplier:
    """Keeps the config it last applied; applies the next decision as a diff."""

    def __init__(
        self,
        opts: AppOptions,
        deploy: Callable[[dict[str, Any]], object] = deploy_config,
        timeout_s: float = APPLY_TIMEOUT_S,
        autoscaling: dict[str, dict[str, Any]] | None = None,
        local: Callable[[], tuple[list[Any], int]] | None = None,
        serve_access: ServeAccess | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.opts = opts
        self._serve = serve_access or LiveServe()
        self._sleep = sleep
        # Inside the controller replica: its own replica reports and live generation, read
        # directly. A Serve handle call from the controller to itself sometimes failed in
        # ray.get with "owner is unknown" (Ray 2.60), which failed the whole apply.
        self._local = local
        self._deploy = deploy
        self.timeout_s = timeout_s
        self.autoscaling = autoscaling
        self.current: Decision | None = None
        self.generation = 0
        self.stage_generation: dict[str, int] = {}

    def config_for(self, decision: Decision) -> dict[str, Any]:
        return build_app_config(self.opts, decision, self.generation, self.stage_generation, self.autoscaling)

    def _changed(self, decision: Decision) -> tuple[str, ...]:
        if self.current is None:
            return tuple(s.stage for s in decision.stages)
        old = {s.stage: s for s in self.current.stages}
        return tuple(s.stage for s in decision.stages if s.stage not in old or not old[s.stage].same_config(s))

    def deploy_initial(self, decision: Decision, wait: bool = True) -> ApplyResult:
        """First deploy: every deployment is created."""
        return self.apply(decision, wait=wait, force=True)

    def sync(self, decision: Decision | None, generation: int, stage_generation: dict[str, int]) -> None:
        """Continue from the live config (whoever applied it: this object, the adapter, an operator)."""
        if generation >= self.generation:
            self.current, self.generation, self.stage_generation = decision, generation, dict(stage_generation)

    def _sync_from_controller(self) -> None:
        """Continue from the config deployed now; only a missing application means "nothing yet".

        Any other failure to read it raises: a diff against a stale ``current`` would leave
        out the stages that differ from what is deployed.
        """
        name = self.opts.app_name
        app = self._serve.app(name)
        if app is None or app.status == DELETING:
            return  # no application (yet): nothing to continue from
        try:
            cfg = self._serve.controller_config(name)
        except Exception as e:  # noqa: BLE001 - any cause: say which, and do not guess
            raise ReconfigurationError(
                f"cannot read the deployed configuration of application {name!r} from its controller "
                f"({type(e).__name__}: {e}); nothing applied") from e
        deployed = cfg.get("pending") or cfg.get("decision")
        if deployed is not None:
            self.sync(Decision.from_dict(deployed), int(cfg["generation"]),
                      {k: int(v) for k, v in cfg.get("stage_generation", {}).items()})

    def apply(self, decision: Decision, wait: bool = True, force: bool = False, sync: bool = True) -> ApplyResult:
        """Apply ``decision`` as a diff against the live config; ``sync=False`` trusts ``self.current``."""
        t0 = time.perf_counter()
        if sync and not force:
            self._sync_from_controller()
        changed = self._changed(decision)
        if not changed and not force:
            return ApplyResult(self.generation, (), 0.0)
        previous = (self.current, dict(self.stage_generation))
        self.generation += 1
        for stage in changed:
            self.stage_generation[stage] = self.generation
        self._deploy(self.config_for(decision))
        self.current = decision
        if wait:
            errors = self._wait(decision, changed)
            if errors:
                failed = self.generation
                self._roll_back(previous, decision)
                raise ReconfigurationError(
                    "; ".join(errors) + f" -- generation {failed} rolled back, the previous configuration "
                    f"serves (generation {self.generation})")
        seconds = time.perf_counter() - t0
        log.info("applied generation %d (%s changed) in %.2fs", self.generation, ", ".join(changed), seconds)
        return ApplyResult(self.generation, changed, seconds)

    def _roll_back(self, previous: tuple[Decision | None, dict[str, int]], failed: Decision) -> None:
        """Deploy ``previous`` again under a new generation and wait until it serves.

        The generation only grows: a number already handed to Serve carries the failed
        config's reports, which must never count as the roll-back's confirmation.
        """
        restored, stage_generation = previous
        self.current, self.stage_generation = restored, dict(stage_generation)
        if restored is None:
            return  # nothing was deployed before: the next apply redeploys every stage
        self.generation += 1
        changed = tuple(s.stage for s in restored.stages if not s.same_config(failed.stage(s.stage)))
        for stage in changed:
            self.stage_generation[stage] = self.generation
        self._deploy(self.config_for(restored))
        errors = self._wait(restored, changed)
        if errors:
            raise ReconfigurationError(f"rolling back to the previous configuration (generation {self.generation}) "
                                       f"failed too: {'; '.join(errors)}")

    def _wait(self, decision: Decision, changed: tuple[str, ...]) -> list[str]:
        """Block until the changed stages run the new config; return replica errors."""
        deadline = time.monotonic() + self.timeout_s
        for pause in poll_pauses():
            if time.monotonic() >= deadline:
                break
            ready, errors = self._check(decision, changed)
            if errors:
                return errors
            if ready:
                return []
            self._sleep(pause)
        raise ReconfigurationError(f"generation {self.generation} not serving after {self.timeout_s:.0f}s")

    def _check(self, decision: Decision, changed: tuple[str, ...]) -> tuple[bool, list[str]]:
        app = self._serve.app(self.opts.app_name)
        if app is None:
            return False, []
        if app.status == DEPLOY_FAILED:
            raise ReconfigurationError(f"application {self.opts.app_name} failed to deploy: {app.message}")
        ctrl = app.deployments.get(CONTROLLER)
        if ctrl is None or ctrl.running < 1:
            return False, []
        if self._local is not None:
            reports, live = self._local()
        else:
            reports, live = self._serve.controller_reports(self.opts.app_name)
        errors = []
        if live > self.generation:  # the adapter already applied a newer decision: ours is history
            log.info("generation %d superseded by %d before it was confirmed", self.generation, live)
            return True, []
        ready = live == self.generation
        for s in decision.stages:
            dep = app.deployments.get(stage_deployment_name(s.stage))
            running = dep.running if dep else 0
            if self.autoscaling is None and (running != s.replicas or (dep and dep.status != HEALTHY)):
                ready = False
            if s.stage not in changed:
                continue
            gen = self.stage_generation[s.stage]
            fresh = [r for r in reports if r.stage == s.stage and r.generation == gen]
            errors += [r.error for r in fresh if r.error]
            if len(fresh) < (s.replicas if self.autoscaling is None else 1):
                ready = False
        return ready, sorted(set(errors))
