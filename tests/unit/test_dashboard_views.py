"""What the dashboard reads, without a browser: the JSON of /api/history and /config, and the page."""

from __future__ import annotations

import json
import re

import pytest

from varipipe.pipelines.controller_logic import HISTORY_LEN, ControllerState
from varipipe.pipelines.dashboard import ASSETS, asset, dashboard_html, render_page
from varipipe.pipelines.metrics import RequestRecord
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.stage import ReplicaStatus
from varipipe.records import Decision, DecisionStatus, StageDecision

POINT_KEYS = {"t", "interval_s", "arrival_rps", "predicted_rps", "completed", "within_sla", "errors", "drops",
              "rejected", "e2e_p50_s", "e2e_p99_s", "generation", "stages", "cost", "accuracy"}
LOG_KEYS = {"time", "generation", "from", "to", "policy", "status", "reason", "explanation", "binding_constraints",
            "load_rps", "predicted_accuracy"}


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _decision(variant: str, binding: tuple[str, ...] = ()) -> Decision:
    return Decision(stages=(StageDecision("first", variant, 2, 1, "cpu:1", 0.01),
                            StageDecision("second", "fast", 2, 1, "cpu:1", 0.0)),
                    status=DecisionStatus.OPTIMAL, reason="optimal", predicted_cost=0.3, predicted_accuracy=0.45,
                    binding_constraints=binding, explanation="runner-up slow b1 x1 lost", policy="ipa")


def _deploy(st: ControllerState, d: Decision, generation: int) -> None:
    """Serve delivers the config, then every stage's replica reports it (how a decision starts serving)."""
    st.set_decision_config({"decision": d.to_dict(), "generation": generation})
    for s in d.stages:
        for i in range(s.replicas):
            st.report_replica(ReplicaStatus(f"{s.stage}-{i}", s.stage, s.variant, (s.variant,), generation, s.batch,
                                            s.batch_wait_s, 0.0, 0.0, "", 0, st.clock()))


@pytest.fixture
def state():
    clock = Clock()
    st = ControllerState(AppOptions(pipeline="identity-chain"), clock=clock, start_thread=False)
    st.test_clock = clock
    return st


def _second(st, n_ok=0, n_late=0, n_drop=0):
    t = st.test_clock.t
    recs = [RequestRecord(t + 0.1, 0.05, 200, ()) for _ in range(n_ok)]
    recs += [RequestRecord(t + 0.2, 5.0, 200, ()) for _ in range(n_late)]
    recs += [RequestRecord(t + 0.3, 0.0, 504, (), dropped_at="first") for _ in range(n_drop)]
    st.metrics.add_arrivals(r.time for r in recs)
    st.metrics.add_requests(recs)
    st.test_clock.t += 1.0
    st.tick()


def test_history_before_any_traffic_has_points_saying_so(state):
    view = state.history_view()
    assert view["points"] == [] and view["started"] == 1000.0 and view["sla_s"] == 0.5
    _second(state)
    (p,) = state.history_view()["points"]
    assert set(p) == POINT_KEYS
    assert p["completed"] == 0 and p["arrival_rps"] == 0 and p["stages"] == [] and p["cost"] is None
    json.dumps(state.history_view())  # the page reads it as JSON


def test_history_points_and_since(state):
    _deploy(state, _decision("fast"), 1)
    _second(state, n_ok=3, n_late=1, n_drop=1)
    _deploy(state, _decision("slow", ("sla_end_to_end",)), 2)
    _second(state, n_ok=2)
    view = state.history_view()
    a, b = view["points"]
    assert (a["completed"], a["within_sla"], a["drops"], a["generation"]) == (4, 3, 1, 1)
    assert a["stages"][0] == {"stage": "first", "variant": "fast", "batch": 2, "replicas": 1}
    assert b["stages"][0]["variant"] == "slow" and b["generation"] == 2 and b["accuracy"] == 0.45
    assert [p["t"] for p in state.history_view(since=a["t"])["points"]] == [b["t"]]


def test_history_is_bounded(state):
    for _ in range(HISTORY_LEN + 25):
        _second(state)
    points = state.history_view()["points"]
    assert len(points) == HISTORY_LEN and points[-1]["t"] == state.test_clock.t


def test_config_view_decision_log_and_adapter_off(state):
    _deploy(state, _decision("fast"), 1)
    _deploy(state, _decision("slow", ("sla_end_to_end",)), 2)
    cfg = state.config_view()
    assert cfg["adapter"] == {"enabled": False, "error": ""}  # the page says "adapter off: ... --policy"
    first, second = cfg["decision_log"]
    assert set(second) >= LOG_KEYS
    assert first["from"] == "(none)" and second["from"] == first["to"]
    assert second["to"].startswith("first=slow b2 x1") and second["binding_constraints"] == ["sla_end_to_end"]
    assert second["predicted_accuracy"] == 0.45 and second["load_rps"] == 0.0
    assert cfg["decision"]["predicted_cost"] == 0.3
    json.dumps(cfg)


def test_config_view_when_the_adapter_could_not_start():
    st = ControllerState(AppOptions(pipeline="identity-chain", policy="ipa", profile="/nonexistent/profile.json"),
                         clock=Clock(), start_thread=False)
    st.set_decision_config({"decision": _decision("fast").to_dict(), "generation": 0})
    adapter = st.config_view()["adapter"]
    assert adapter["enabled"] is False and "adapter not started" in adapter["error"]


def test_restart_is_visible_as_a_new_start_time():
    a = ControllerState(AppOptions(pipeline="identity-chain"), clock=Clock(1000.0), start_thread=False)
    b = ControllerState(AppOptions(pipeline="identity-chain"), clock=Clock(2000.0), start_thread=False)
    assert a.history_view()["started"] != b.history_view()["started"]


def test_page_is_one_file_with_everything_inline():
    page = dashboard_html()
    assert "{{" not in page and "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    assert "/api/history?since=" in page and '"/config"' in page
    for words in ("no requests yet", "adapter off: started without --policy", "adapter failing",
                  "cannot reach the server", "the server restarted", "bearer token"):
        assert words in page, words
    # Every element the script looks up exists in the page.
    ids = set(re.findall(r'id="([\w-]+)"', page))
    assert set(re.findall(r'\$\("([\w-]+)"\)', asset("dashboard.js"))) <= ids


def test_assets_are_safe_inline_and_known():
    for name in ASSETS:
        if name.endswith(".js"):
            assert "</script" not in asset(name).lower(), name
    with pytest.raises(ValueError, match="unknown dashboard asset"):
        asset("../app.py")
    assert "{{" not in render_page("report.html", ("charts.js", "report.js")).replace("{{TITLE}}", "")
