"""Two varipipe applications in one Ray: applying one never deletes or revives the other.

Serve's declarative ``apply_config`` replaces the *whole* set of config-deployed
applications, so an applier that sent only its own application deleted every
other one (and an adapter still running in a deleted app's controller brought
that app back; CI saw the next test's app vanish that way).
"""

from __future__ import annotations

import httpx
import pytest

from varipipe.errors import ReconfigurationError
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

from .identity_chain import decision

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def batch(n: int):
    return decision(b1=n, b2=n)


def apps() -> dict[str, str]:
    from ray import serve

    return {name: str(a.status) for name, a in serve.status().applications.items()}


def test_applying_one_app_leaves_the_other_serving(serve_port, png_bytes):
    one = AppOptions(pipeline="identity-chain", app_name="two-apps-one", route_prefix="/one")
    two = AppOptions(pipeline="identity-chain", app_name="two-apps-two", route_prefix="/two")
    with LocalServer(one, port=serve_port, decision=batch(1)) as a:
        with LocalServer(two, port=serve_port, decision=batch(1)) as b:
            b.apply(batch(4))
            a.apply(batch(2))
            assert {"two-apps-one", "two-apps-two"} <= set(apps())
            for srv in (a, b):
                r = httpx.post(srv.endpoint, content=png_bytes, timeout=30)
                assert r.status_code == 200, r.text
            sizes = {srv.opts.app_name: [s["batch"] for s in httpx.get(srv.url + "/config", timeout=10).json()
                                         ["decision"]["stages"]] for srv in (a, b)}
            assert sizes == {"two-apps-one": [2, 2], "two-apps-two": [4, 4]}
        assert "two-apps-two" not in apps()
        # the survivor still serves and still takes changes
        a.apply(batch(1))
        assert httpx.post(a.endpoint, content=png_bytes, timeout=30).status_code == 200
    assert "two-apps-one" not in apps()


def test_a_second_app_on_a_taken_route_prefix_is_a_clear_error(serve_port):
    first = AppOptions(pipeline="identity-chain", app_name="prefix-first", route_prefix="/same")
    second = AppOptions(pipeline="identity-chain", app_name="prefix-second", route_prefix="/same")
    with LocalServer(first, port=serve_port, decision=batch(1)):
        with pytest.raises(ReconfigurationError, match="'/same' is already served by application 'prefix-first'"):
            with LocalServer(second, port=serve_port, decision=batch(1)):
                pass
        assert "prefix-first" in apps() and "prefix-second" not in apps()
