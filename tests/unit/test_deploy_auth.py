"""Control endpoints are not open to the world (issue 8, part 6): the pure parts."""

from __future__ import annotations

import pytest

from varipipe.cli import main
from varipipe.errors import BadInputError
from varipipe.pipelines.controller_logic import ControllerState
from varipipe.pipelines.ingress_logic import parse_control
from varipipe.pipelines.serve_config import AppOptions
from varipipe.spec import find_spec

SPEC = find_spec("identity-chain")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_serve_refuses_a_public_bind_without_a_token(host, capsys, monkeypatch):
    monkeypatch.delenv("VARIPIPE_TOKEN", raising=False)
    assert main(["serve", "--pipeline", "identity-chain", "--host", host, "--token", ""]) == 2
    err = capsys.readouterr().err
    assert "--host" in err and host in err and "--token" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_token(host):
    from varipipe.commands.serve import is_loopback

    assert is_loopback(host)


@pytest.mark.parametrize("doc,expected", [
    ({"action": "pin", "stage": "first", "variant": "slow"}, ("pin", ["first", "slow"])),
    ({"action": "unpin", "stage": "second"}, ("unpin", ["second"])),
    ({"action": "dry_run", "value": True}, ("set_dry_run", [True])),
    ({"action": "dry_run", "value": False}, ("set_dry_run", [False])),
])
def test_parse_control(doc, expected):
    assert parse_control(doc, SPEC) == expected


@pytest.mark.parametrize("doc,words", [
    (None, '"action"'),
    ([], '"action"'),
    ({"action": "apply"}, "'apply'"),
    ({"action": "pin", "stage": "nope", "variant": "fast"}, "'nope'"),
    ({"action": "pin", "stage": "first", "variant": "broken"}, "'broken'"),
    ({"action": "unpin"}, '"stage"'),
    ({"action": "dry_run", "value": "yes"}, "'yes'"),
])
def test_parse_control_rejects_with_the_bad_value(doc, words):
    with pytest.raises(BadInputError) as e:
        parse_control(doc, SPEC)
    assert words in str(e.value) and e.value.status == 400


class FakeLoop:
    """The ControlLoop surface ControllerState.control() uses."""

    def __init__(self) -> None:
        self.dry_run = False
        self.pins: dict[str, str] = {}

    def pin(self, stage, variant):
        self.pins[stage] = variant

    def unpin(self, stage):
        self.pins.pop(stage, None)


def test_controller_control_maps_every_action_onto_the_loop():
    state = ControllerState(AppOptions(pipeline="identity-chain"), clock=lambda: 0.0, start_thread=False)
    assert state.control("pin", ["first", "slow"])["ok"] is False  # no loop yet: says so
    state.loop = FakeLoop()
    assert state.control("pin", ["first", "slow"]) == {"ok": True, "dry_run": False, "pins": {"first": "slow"}}
    assert state.control("set_dry_run", [True])["dry_run"] is True
    assert state.loop.dry_run is True
    assert state.control("unpin", ["first"])["pins"] == {}
    assert state.control("reset", None)["ok"] is False


