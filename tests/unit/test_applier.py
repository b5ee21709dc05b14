"""The applier and the controller's view of what serves, against a fake Serve (issue 16).

``FakeServe`` stands in for Ray Serve with the real ``ControllerState`` and real
``StageCore`` replicas of the ``identity-chain`` pipeline (whose ``broken``
variant fails to load). Serve delivers a deployed config to the replicas
asynchronously; the fake models that deterministically: a config handed to
``deploy`` reaches the replicas only when time passes, i.e. when the applier
sleeps between two polls. No real time passes.
"""

from __future__ import annotations

import pytest

from varipipe.errors import ReconfigurationError
from varipipe.pipelines.applier import HEALTHY, AppView, DeploymentView, ServeApplier
from varipipe.pipelines.controller_logic import ControllerState
from varipipe.pipelines.serve_config import CONTROLLER, INGRESS, AppOptions, stage_deployment_name
from varipipe.pipelines.stage import StageConfig, StageCore
from varipipe.records import Decision, StageDecision
from varipipe.spec import find_spec

APP = "fake-app"
STAGES = ("first", "second")


def decision(first="fast", second="fast", b2=4, r1=1) -> Decision:
    return Decision(stages=(StageDecision("first", first, 4, r1, "cpu:1", 0.005),
                            StageDecision("second", second, b2, 1, "cpu:1", 0.005)), policy="test")


def variants(view_decision: dict | None) -> list[str]:
    return [s["variant"] for s in view_decision["stages"]] if view_decision else []


class FakeServe:
    """Serve with one application: the real controller state and stage cores, no Ray."""

    def __init__(self, opts: AppOptions) -> None:
        self.spec = find_spec(opts.pipeline)
        self.controller = ControllerState(opts, clock=lambda: 0.0, start_thread=False)
        self.replicas: dict[str, list[StageCore]] = {s: [] for s in STAGES}
        self.user_configs: dict[str, dict] = {}
        self.queue: list[dict] = []  # deployed, not yet delivered to the replicas
        self.deployed_generations: list[int] = []
        self.config_reads_fail = False

    # --- what the applier calls -------------------------------------------------
    def deploy(self, app_config: dict) -> None:
        self.queue.append(app_config)
        controller = next(d for d in app_config["deployments"] if d["name"] == CONTROLLER)
        self.deployed_generations.append(controller["user_config"]["generation"])

    def sleep(self, _seconds: float) -> None:
        """Time passes: Serve delivers what was deployed."""
        while self.queue:
            self._deliver(self.queue.pop(0))

    def app(self, app_name: str) -> AppView | None:
        if not self.user_configs:
            return None
        deps = {INGRESS: DeploymentView(HEALTHY, 1), CONTROLLER: DeploymentView(HEALTHY, 1)}
        deps |= {stage_deployment_name(s): DeploymentView(HEALTHY, len(self.replicas[s])) for s in STAGES}
        return AppView("RUNNING", "", deps)

    def controller_config(self, app_name: str) -> dict:
        if self.config_reads_fail:
            raise TimeoutError("controller did not answer")
        return self.controller.config_view()

    def controller_reports(self, app_name: str):
        return self.controller.replica_statuses(), self.controller.generation

    # --- Serve's side -----------------------------------------------------------
    def _deliver(self, app_config: dict) -> None:
        for dep in app_config["deployments"]:
            name, user_config = dep["name"], dep.get("user_config")
            changed = user_config is not None and user_config != self.user_configs.get(name)
            self.user_configs[name] = user_config
            if name == CONTROLLER and changed:
                self.controller.set_decision_config(user_config)
            elif name.startswith("stage-"):
                self._stage(name.removeprefix("stage-"), dep["num_replicas"], user_config, changed)

    def _stage(self, stage: str, replicas: int, user_config: dict, changed: bool) -> None:
        cores = self.replicas[stage]
        cfg = StageConfig.from_user_config(user_config)
        while len(cores) < replicas:  # a new replica is configured as it starts
            core = StageCore(self.spec.stage(stage), replica_id=f"{stage}-{len(cores)}")
            cores.append(core)
            self._configure(core, cfg)
        del cores[replicas:]
        if changed:
            for core in cores:
                if core.config != cfg:
                    self._configure(core, cfg)

    def _configure(self, core: StageCore, cfg: StageConfig) -> None:
        core.configure(cfg)
        self.controller.report_replica(core.status(0.0))


@pytest.fixture
def serve():
    return FakeServe(AppOptions(pipeline="identity-chain", app_name=APP))


def applier_for(serve: FakeServe) -> ServeApplier:
    return ServeApplier(AppOptions(pipeline="identity-chain", app_name=APP), deploy=serve.deploy,
                        serve_access=serve, sleep=serve.sleep)


@pytest.fixture
def applier(serve):
    a = applier_for(serve)
    a.deploy_initial(decision())
    return a


def test_a_variant_that_fails_to_load_never_shows_as_serving_and_the_rollback_has_landed(serve, applier):
    with pytest.raises(ReconfigurationError, match="broken.*failed to load.*rolled back"):
        applier.apply(decision(second="broken"))
    view = serve.controller.config_view()
    assert variants(view["decision"]) == ["fast", "fast"]
    # The roll-back was delivered and confirmed before apply returned: nothing is left
    # in flight that could still change what /config says.
    assert serve.queue == [] and view["pending"] is None
    assert view["serving_generation"] == view["generation"] == applier.generation
    # every config handed to Serve had a generation of its own
    assert serve.deployed_generations == sorted(set(serve.deployed_generations))
    assert [c.variant.name for c in serve.replicas["second"]] == ["fast"]
    # and a good change still applies and then serves
    applier.apply(decision(b2=8))
    view = serve.controller.config_view()
    assert view["decision"]["stages"][1]["batch"] == 8 and view["pending"] is None


def test_a_second_applier_continues_from_the_deployed_config(serve, applier):
    with pytest.raises(ReconfigurationError):
        applier.apply(decision(second="broken"))
    other = applier_for(serve)  # another process (the CLI, the controller's adapter)
    assert other.apply(decision()).changed_stages == ()
    res = other.apply(decision(first="slow"))
    assert res.changed_stages == ("first",) and res.generation > applier.generation
    assert variants(serve.controller.config_view()["decision"]) == ["slow", "fast"]


def test_a_decision_shows_as_serving_only_once_its_changed_stages_confirm_it(serve, applier):
    applier.apply(decision(r1=2), wait=False)  # deployed, not delivered
    assert serve.controller.config_view()["decision"]["stages"][0]["replicas"] == 1
    serve.sleep(0)
    view = serve.controller.config_view()
    assert view["decision"]["stages"][0]["replicas"] == 2 and view["pending"] is None


def test_a_failed_stage_keeps_the_old_decision_serving_until_something_else_is_deployed(serve, applier):
    applier.apply(decision(second="broken"), wait=False)
    serve.sleep(0)
    view = serve.controller.config_view()
    assert variants(view["decision"]) == ["fast", "fast"]
    assert variants(view["pending"]) == ["fast", "broken"]
    assert any("broken" in e for e in view["replica_errors"])


def test_an_unreadable_controller_is_an_error_not_a_diff_against_a_stale_copy(serve, applier):
    serve.config_reads_fail = True
    with pytest.raises(ReconfigurationError, match="cannot read the deployed configuration.*TimeoutError"):
        applier.apply(decision(first="slow"))
    assert serve.queue == []


def test_no_application_yet_is_nothing_to_continue_from(serve):
    a = applier_for(serve)
    res = a.apply(decision())
    assert res.changed_stages == STAGES and variants(serve.controller.config_view()["decision"]) == ["fast", "fast"]


def test_with_rays_autoscaler_one_replica_confirms_a_stage():
    # The replica count is Ray's then, not the decision's: one report of the new generation suffices.
    from varipipe.pipelines.stage import ReplicaStatus

    st = ControllerState(AppOptions(pipeline="identity-chain", policy="ray"), clock=lambda: 0.0, start_thread=False)
    st.set_decision_config({"decision": decision().to_dict(), "generation": 1})
    assert st.loop_error == "" and st.loop is None  # Ray scales; no varipipe loop
    st.set_decision_config({"decision": decision(r1=3).to_dict(), "generation": 2, "stage_generation": {"second": 1}})
    assert st.config_view()["pending"] is not None
    st.report_replica(ReplicaStatus("first-0", "first", "fast", ("fast",), 2, 4, 0.005, 0.0, 0.0, "", 0, 0.0))
    view = st.config_view()
    assert view["pending"] is None and view["decision"]["stages"][0]["replicas"] == 3


def test_polls_grow_apart_to_a_cap_so_a_replica_start_costs_few():
    from itertools import islice

    from varipipe.pipelines.applier import POLL_MAX_S, POLL_S, poll_pauses

    pauses = list(islice(poll_pauses(), 12))
    assert pauses[0] == POLL_S and pauses[-1] == POLL_MAX_S
    assert all(b >= a for a, b in zip(pauses, pauses[1:], strict=False)) and max(pauses) == POLL_MAX_S
    # a 2-s replica start is seen within POLL_MAX_S, in a third of the polls at POLL_S apart
    elapsed, polls = 0.0, 1
    for p in pauses:
        if elapsed >= 2.0:
            break
        elapsed, polls = elapsed + p, polls + 1
    assert elapsed < 2.0 + POLL_MAX_S and polls <= 2.0 / POLL_S / 2
