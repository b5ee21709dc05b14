"""Start Ray (embedded or an existing cluster), Serve, and one varipipe application.

``LocalServer`` is what ``varipipe serve``, ``varipipe demo``, the live
experiment runner and the integration tests use::

    with LocalServer(AppOptions(pipeline="vision-caption-ci")) as srv:
        httpx.post(srv.url + "/vision-caption-ci", content=jpeg_bytes)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from varipipe.errors import VaripipeError
from varipipe.pipelines.applier import ApplyResult, ServeApplier
from varipipe.pipelines.serve_config import (
    WORKER_NICENESS,
    WORKER_NICENESS_ENV,
    AppOptions,
    default_decision,
)
from varipipe.records import Decision
from varipipe.spec import find_spec

__all__ = ["LocalServer", "free_port", "start_ray", "serve_session", "delegated_scaling", "DelegatedScaling",
           "EMBEDDED_LOGICAL_CPUS"]

log = logging.getLogger(__name__)

# Logical CPUs of the embedded Ray. On one host all replicas share the cores (the
# optimizer's "shared" cost mode, DESIGN §5); Ray's CPU count only gates placement,
# and with the real count (2) a third replica would wait forever (docs/ray-serve-facts.md).
EMBEDDED_LOGICAL_CPUS = 16
# Serve's cold start is ~3.8 s and a model load a few seconds more (DESIGN §7).
READY_TIMEOUT_S = 180.0
# Serve's controller kills an HTTP proxy that misses its readiness check 3 times (5 s each by
# default) and starts another; serve.start, waiting on the first, then fails with ActorDiedError.
# On this 2-core host with two CPU-bound processes beside a test, a proxy missed 3 x 5 s
# (2026-12-06). 20 s each gives it 60 s, as long as serve.start itself waits for its proxies
# (ray.serve's HTTP_PROXY_TIMEOUT). An embedded Ray only; a user's environment setting wins.
PROXY_READY_CHECK_S = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports. Every socket stays bound until all are drawn: ``free_port``
    called n times can draw one port twice (a fresh-clone ``make test`` once gave a Ray node's
    object manager and dashboard agent the same port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (``auto`` / ``ray://...``) or start an embedded Ray.

    Returns True when this call started Ray (and so should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": os.environ.get("VARIPIPE_RAY_LOGS", "0") == "1",
        "logging_level": logging.WARNING,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": always a new embedded instance. With no address Ray would join any
        # cluster that `ray start` left running on this machine (RAY_ADDRESS or
        # /tmp/ray/ray_current_cluster), and stopping that would stop someone else's.
        # The embedded Ray's processes inherit this environment: Serve's controller reads it.
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_CHECK_S))
        # Serve's proxy and the ingress ahead of the stage replicas (serve_config.WORKER_NICENESS).
        os.environ.setdefault(WORKER_NICENESS_ENV, str(WORKER_NICENESS))  # a user's setting wins
        ray.init(address="local", num_cpus=num_cpus or EMBEDDED_LOGICAL_CPUS, **kwargs)
    return True


@contextlib.contextmanager
def serve_session(host: str = "127.0.0.1") -> Iterator[int]:
    """Ray (embedded unless one runs already) and Serve's HTTP proxy on a free port of
    ``host``, for several applications in turn (``LocalServer(..., port=port)``); yields the
    port. On exit Serve and Ray are shut down if this call started Ray."""
    from ray import serve

    owns = start_ray()
    try:
        port = free_port(host)
        serve.start(http_options={"host": host, "port": port})
        yield port
    finally:
        if owns:
            import ray

            serve.shutdown()
            ray.shutdown()


@dataclass(frozen=True)
class DelegatedScaling:
    """A policy that hands scaling to Ray Serve's autoscaler (``adapter.policy.delegates_to_ray``):
    the ``autoscaling_config`` of each stage and the decision the stages start from."""

    autoscaling: dict[str, dict[str, Any]]
    start: Decision


def delegated_scaling(opts: AppOptions, spec) -> DelegatedScaling | None:
    """For a policy that delegates to Ray's autoscaler (the built-in ``ray`` or a user's), what
    Serve is deployed with: its ``autoscaling_config()`` on every stage, starting from the
    decision the simulator starts it from (its ``decide`` on an empty pipeline at t = 0). None
    for any other policy, or none; a policy that cannot be built here is left to the
    controller, which reports why (serving starts either way)."""
    if not opts.policy:
        return None
    from varipipe.adapter.policy import Forecast, delegates_to_ray
    from varipipe.pipelines.controller_logic import build_policy
    from varipipe.records import Observation

    try:
        policy = build_policy(opts, spec)
    except Exception as e:  # noqa: BLE001 - the controller builds it again and reports the error
        log.warning("policy %s not built here (%s); the controller will report it", opts.policy, e)
        return None
    if not delegates_to_ray(policy):
        return None
    config = policy.autoscaling_config()  # type: ignore[attr-defined]
    start = policy.decide(Observation(time_s=0.0, interval_s=opts.interval_s, arrival_rps=0.0), Forecast(0.0),
                          Decision(stages=()))
    return DelegatedScaling({s.name: dict(config) for s in spec.stages}, start)


class LocalServer:
    """Context manager: Ray + Serve + the application; ``.url`` once ready."""

    def __init__(
        self,
        opts: AppOptions,
        host: str = "127.0.0.1",
        port: int = 0,
        decision: Decision | None = None,
        address: str | None = None,
        on_ray_started: Callable[[], None] | None = None,
    ) -> None:
        self.opts = opts
        # Called once Ray runs, before the application is deployed: where a CLI installs
        # its signal handlers (ray.init installs Ray's own, which abort on SIGTERM).
        self.on_ray_started = on_ray_started
        self.host = host
        self.port = port  # 0: chosen in start(), after Ray has taken its own ports
        self.spec = find_spec(opts.pipeline)
        delegated = delegated_scaling(opts, self.spec)
        start = delegated.start if delegated is not None else default_decision(self.spec)
        self.decision = decision or start
        self.address = address
        self.applier = ServeApplier(opts, autoscaling=delegated.autoscaling if delegated is not None else None)
        self._owns_ray = False

    @property
    def url(self) -> str:
        """The application's base URL (its route prefix included): /healthz, /config ... hang off it."""
        return f"http://{self.host}:{self.port}{self.opts.route_prefix.rstrip('/')}"

    @property
    def endpoint(self) -> str:
        return f"{self.url}/{self.spec.name}"

    def start(self) -> LocalServer:
        from ray import serve

        self._owns_ray = start_ray(self.address)
        if self.on_ray_started is not None:
            self.on_ray_started()
        self.port = self.port or free_port(self.host)
        serve.start(http_options={"host": self.host, "port": self.port})
        self.applier.deploy_initial(self.decision)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise VaripipeError(f"application did not answer {self.url}/healthz within {READY_TIMEOUT_S:.0f}s")

    def apply(self, decision: Decision, wait: bool = True) -> ApplyResult:
        """Reconfigure the running application (the adapter's hook)."""
        return self.applier.apply(decision, wait=wait)

    def stop(self) -> None:
        from ray import serve

        try:
            serve.delete(self.opts.app_name)
        except Exception:  # noqa: BLE001 - best effort during teardown
            log.exception("could not delete application %s", self.opts.app_name)
        if self._owns_ray:
            import ray

            serve.shutdown()
            ray.shutdown()

    def __enter__(self) -> LocalServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

