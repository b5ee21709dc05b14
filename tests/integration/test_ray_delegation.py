"""A user's policy with an ``autoscaling_config()`` hands scaling to Ray Serve's autoscaler live,
as the built-in ``ray`` does (issue 18: it used to get no scaling at all)."""

from __future__ import annotations

import json

import httpx
import pytest

from varipipe.adapter.policies import SolverPolicy
from varipipe.pipelines.serve_config import AppOptions, stage_deployment_name
from varipipe.pipelines.server import LocalServer
from varipipe.profiler.store import profile_to_dict

from .test_adapter_live import identity_profile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 3, "upscale_delay_s": 1.0}


class Delegating:
    """The ILP's first decision for the variants; Serve's autoscaler for the replicas."""

    def __init__(self, ctx, **options) -> None:
        self.name = "delegating"
        self.inner = SolverPolicy(ctx, name="delegating")

    def autoscaling_config(self) -> dict:
        return dict(AUTOSCALING)

    def decide(self, observation, forecast, current):
        return self.inner.decide(observation, forecast, current)


def test_a_user_policy_with_autoscaling_config_is_scaled_by_serve(serve_port, png_bytes, tmp_path):
    from ray import serve
    from ray.serve.schema import ServeInstanceDetails

    path = tmp_path / "identity-chain.json"
    path.write_text(json.dumps(profile_to_dict(identity_profile())))
    opts = AppOptions(pipeline="identity-chain", app_name="delegating", policy=f"{__name__}:Delegating",
                      profile=str(path), interval_s=1.0)
    with LocalServer(opts, port=serve_port) as srv:
        assert httpx.post(srv.endpoint, content=png_bytes, timeout=60).status_code == 200
        config = httpx.get(srv.url + "/config").json()
        details = ServeInstanceDetails.model_validate(serve.context._get_global_client().get_serve_details())
        deployments = details.applications["delegating"].deployments
    for stage in ("first", "second"):
        scaling = deployments[stage_deployment_name(stage)].deployment_config.autoscaling_config
        assert scaling is not None, f"{stage}: no autoscaling_config reached Serve"
        assert (scaling["max_replicas"], scaling["target_ongoing_requests"]) == (2, 3)
    # No varipipe loop beside Serve's autoscaler, and nothing went wrong building the policy.
    assert config["adapter"] == {"enabled": False, "error": ""}
    assert config["decision"]["policy"] == "delegating"
