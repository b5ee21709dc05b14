"""Shared fixtures. Unit tests must never start Ray: ``ray.init`` raises there."""

from __future__ import annotations

import pytest
from hypothesis import settings

# `make test` (CI) runs the property tests on a fixed seed so that a landing run is
# reproducible; `make test-fast` and plain `pytest` keep exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)


@pytest.fixture(autouse=True)
def _no_ray_in_unit_tests(request, monkeypatch):
    if "tests/unit" not in str(request.node.fspath).replace("\\", "/"):
        yield
        return
    try:
        import ray
    except ImportError:
        yield
        return

    def _refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", _refuse)
    yield
