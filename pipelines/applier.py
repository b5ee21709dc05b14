"""Apply a ``Decision`` to the running application through Serve's declarative path.

``ServeApplier.apply(decision)`` builds the full application config, hands it
to the Serve controller (one place that touches Ray's private API, so a future
Ray change is a one-place fix), waits until every changed stage reports the
new configuration, and, if a replica could not load its new variant, rolls the
config back to the previous decision and raises ``ReconfigurationError`` --
the old variant never stopped serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from varipipe.errors import ReconfigurationError
from varipipe.pipelines.serve_config import (
    CONTROLLER,
    AppOptions,
    build_app_config,
    stage_deployment_name,
)
from varipipe.records import Decision

__all__ = ["ApplyResult", "ServeApplier", "deploy_config"]

log = logging.getLogger(__name__)

# How long an apply may take before it is reported as failed: a replica start is
# 2.3-8.2 s here (RAY_SERVE_FACTS) and a model load adds a few seconds more.
APPLY_TIMEOUT_S = 120.0
POLL_S = 0.1
# ray.serve.schema.ApplicationStatus.DELETING (a str enum; ray is imported lazily here).
DELETING = "DELETING"


@dataclass(frozen=True)
class ApplyResult:
    generation: int
    changed_stages: tuple[str, ...]
    seconds: float  # from the call until every changed stage serves the new config


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


class ServeApplier:
    """Keeps the config it last applied; applies the next decision as a diff."""

    def __init__(
        self,
        opts: AppOptions,
        deploy: Callable[[dict[str, Any]], object] = deploy_config,
        timeout_s: float = APPLY_TIMEOUT_S,
        autoscaling: dict[str, dict[str, Any]] | None = None,
        local: Callable[[], tuple[list[Any], int]] | None = None,
    ) -> None:
        self.opts = opts
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
        from ray import serve

        try:
            cfg = serve.get_deployment_handle(CONTROLLER, self.opts.app_name).config.remote().result()
        except Exception:  # noqa: BLE001 - no app yet: nothing to continue from
            return
        if cfg.get("decision") is not None:
            self.sync(Decision.from_dict(cfg["decision"]), int(cfg["generation"]),
                      {k: int(v) for k, v in cfg.get("stage_generation", {}).items()})

    def apply(self, decision: Decision, wait: bool = True, force: bool = False, sync: bool = True) -> ApplyResult:
        """Apply ``decision`` as a diff against the live config; ``sync=False`` trusts ``self.current``."""
        t0 = time.perf_counter()
        if sync and not force:
            self._sync_from_controller()
        changed = self._changed(decision)
        if not changed and not force:
            return ApplyResult(self.generation, (), 0.0)
        previous = (self.current, self.generation, dict(self.stage_generation))
        self.generation += 1
        for stage in changed:
            self.stage_generation[stage] = self.generation
        self._deploy(self.config_for(decision))
        self.current = decision
        if wait:
            errors = self._wait(decision, changed)
            if errors:
                self._roll_back(previous)
                raise ReconfigurationError("; ".join(errors) + " -- rolled back, the previous configuration serves")
        seconds = time.perf_counter() - t0
        log.info("applied generation %d (%s changed) in %.2fs", self.generation, ", ".join(changed), seconds)
        return ApplyResult(self.generation, changed, seconds)

    def _roll_back(self, previous) -> None:
        failed = self.current
        self.current, self.generation, self.stage_generation = previous
        if self.current is None or failed is None:
            return
        self.generation += 1
        changed = tuple(s.stage for s in self.current.stages if not s.same_config(failed.stage(s.stage)))
        for stage in changed:
            self.stage_generation[stage] = self.generation
        self._deploy(self.config_for(self.current))
        self._wait(self.current, changed)

    def _wait(self, decision: Decision, changed: tuple[str, ...]) -> list[str]:
        """Block until the changed stages run the new config; return replica errors."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            ready, errors = self._check(decision, changed)
            if errors:
                return errors
            if ready:
                return []
            time.sleep(POLL_S)
        raise ReconfigurationError(f"generation {self.generation} not serving after {self.timeout_s:.0f}s")

    def _check(self, decision: Decision, changed: tuple[str, ...]) -> tuple[bool, list[str]]:
        from ray import serve

        status = serve.status().applications.get(self.opts.app_name)
        if status is None:
            return False, []
        if status.status == "DEPLOY_FAILED":
            raise ReconfigurationError(f"application {self.opts.app_name} failed to deploy: {status.message}")
        ctrl = status.deployments.get(CONTROLLER)
        if ctrl is None or ctrl.replica_states.get("RUNNING", 0) < 1:
            return False, []
        if self._local is not None:
            reports, live = self._local()
        else:
            controller = serve.get_deployment_handle(CONTROLLER, self.opts.app_name)
            reports = controller.replicas.remote().result()
            live = controller.config.remote().result()["generation"]
        errors = []
        if live > self.generation:  # the adapter already applied a newer decision: ours is history
            log.info("generation %d superseded by %d before it was confirmed", self.generation, live)
            return True, []
        ready = live == self.generation
        for s in decision.stages:
            dep = status.deployments.get(stage_deployment_name(s.stage))
            running = dep.replica_states.get("RUNNING", 0) if dep else 0
            if self.autoscaling is None and (running != s.replicas or (dep and dep.status != "HEALTHY")):
                ready = False
            if s.stage not in changed:
                continue
            gen = self.stage_generation[s.stage]
            fresh = [r for r in reports if r.stage == s.stage and r.generation == gen]
            errors += [r.error for r in fresh if r.error]
            if len(fresh) < (s.replicas if self.autoscaling is None else 1):
                ready = False
        return ready, sorted(set(errors))
