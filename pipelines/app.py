"""The Ray Serve application: ingress -> one deployment per stage, plus a controller.

``build_app(args)`` is the import path that Serve's declarative API builds
(``serve_config.APP_IMPORT_PATH``). Deployments are thin: the logic lives in
``stage.StageCore``, ``ingress_logic`` and ``controller_logic``.
"""


import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from varipipe.errors import BadInputError
from varipipe.pipelines.controller_logic import ControllerState
from varipipe.pipelines.dashboard import dashboard_html
from varipipe.pipelines.flusher import Flusher
from varipipe.pipelines.ingress_logic import UNAUTHORIZED, IngressCore, control_request
from varipipe.pipelines.serve_config import CONTROLLER, INGRESS, AppOptions, stage_deployment_name
from varipipe.pipelines.stage import StageConfig, StageCore, batch_record
from varipipe.pipelines.variant import Payload
from varipipe.spec import find_spec

__all__ = ["build_app"]

log = logging.getLogger(__name__)

# Environment variable that carries the bearer token where the manifest must not (KubeRay).
TOKEN_ENV = "VARIPIPE_TOKEN"
# CPU reservation of the ingress and the controller (logical CPUs; they mostly wait).
LIGHT_NUM_CPUS = 0.1


def _running_replicas(app_name: str, spec):
    """Each stage's RUNNING replicas, as Serve's status reports them (what the simulator's
    stages serve with: a replica starting or gone does not count)."""

    def count() -> dict[str, int]:
        app_status = serve.status().applications.get(app_name)
        deployments = app_status.deployments if app_status is not None else {}
        return {s: deployments[d].replica_states.get("RUNNING", 0) if d in deployments else 0
                for s, d in ((s, stage_deployment_name(s)) for s in spec.stage_names)}

    return count


@serve.deployment(ray_actor_options={"num_cpus": LIGHT_NUM_CPUS})
class Controller:
    """Aggregates metrics, holds the current decision, runs the control loop."""

    def __init__(self, args: dict[str, Any]) -> None:
        opts = AppOptions.from_args(args)
        self.state = ControllerState(opts, clock=time.time,
                                     running_replicas=_running_replicas(opts.app_name, find_spec(opts.pipeline)))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.state.set_decision_config(user_config)

    async def record_requests(self, records: list) -> None:
        self.state.metrics.add_requests(records)

    async def record_arrivals(self, times: list[float]) -> None:
        self.state.metrics.add_arrivals(times)

    async def record_stage_events(self, events: list) -> None:
        self.state.metrics.add_stage_events(events)

    async def record_batches(self, records: list) -> None:
        self.state.metrics.add_batches(records)

    async def report_replica(self, status) -> None:
        self.state.report_replica(status)

    async def config(self) -> dict[str, Any]:
        return self.state.config_view()

    async def replicas(self) -> list:
        return self.state.replica_statuses()

    async def history(self, since: float = 0.0) -> dict[str, Any]:
        return self.state.history_view(since)

    async def metrics_text(self) -> bytes:
        return self.state.metrics.prometheus_text()

    async def calibration(self, since: float | None = None) -> dict[str, Any]:
        return self.state.calibration_view(since)

    async def control(self, action: str, value: Any = None) -> dict[str, Any]:
        return self.state.control(action, value)

    def __del__(self) -> None:
        self.state.stop()


# The largest nice Linux gives a thread (its lowest priority).
MAX_NICE = 19


def lower_priority(nice: int) -> int:
    """Add ``nice`` to every thread of this process; returns how many threads were changed.

    Linux keeps a nice per thread, and ``os.nice`` changes only the caller's, so each
    task under /proc/self/task is set; threads started later inherit their starter's.
    Raising a nice needs no privilege, so this never fails for want of one.
    """
    if nice <= 0:
        return 0
    changed = 0
    tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [str(os.getpid())]
    for task in tasks:
        tid = int(task)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + nice))
            changed += 1
        except OSError:  # the thread ended meanwhile
            continue
    return changed


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class StageServer:
    """One stage: a variant behind ``@serve.batch`` (bypassed at batch size 1); batches run on a worker thread."""

    def __init__(self, pipeline: str, stage: str, controller: DeploymentHandle, device: str = "cpu",
                 nice: int = 0) -> None:
        import ray

        lower_priority(nice)  # before any model thread starts: those inherit it
        spec = find_spec(pipeline)
        stage_spec = spec.stage(stage)
        self.core = StageCore(stage_spec, threads=stage_spec.threads,
                              replica_id=ray.get_runtime_context().get_actor_id(), device=device)
        self.controller = controller
        # One thread runs batches (one batch at a time, like @serve.batch's default);
        # configuration runs on another so a model load never stalls serving.
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{stage}-infer")
        self._config_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{stage}-config")
        self._batches: Flusher | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = StageConfig.from_user_config(user_config)
        await asyncio.get_running_loop().run_in_executor(self._config_pool, self.core.configure, cfg)
        applied = self.core.config or cfg
        self._batched.set_max_batch_size(max(1, applied.max_batch_size))
        self._batched.set_batch_wait_timeout_s(max(0.0, applied.batch_wait_timeout_s))
        await self._report()

    async def _report(self) -> None:
        try:
            await self.controller.report_replica.remote(self.core.status(time.time()))
        except Exception:  # noqa: BLE001
            log.exception("could not report replica status")

    async def status(self):
        return self.core.status(time.time())

    async def __call__(self, payload: Payload) -> Payload:
        arrival = time.time()
        cfg = self.core.config
        if cfg is not None and cfg.max_batch_size <= 1:
            # Batch size 1: nothing to gather, so skip @serve.batch's queue and task
            # switch. The single infer thread still runs one request at a time, as the
            # batcher would. (1-client p50 against plain Serve: 1.17x -> 0.95x; benchmarks/README.md)
            return (await self._run([payload], [arrival]))[0]
        return await self._batched((payload, arrival))

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self, items: list[tuple[Payload, float]]) -> list[Payload]:
        return await self._run([p for p, _ in items], [t for _, t in items])

    async def _run(self, payloads: list[Payload], arrivals: list[float]) -> list[Payload]:
        out = await asyncio.get_running_loop().run_in_executor(self._infer_pool, self.core.infer, payloads, arrivals)
        if self._batches is None:
            self._batches = Flusher(lambda recs: self.controller.record_batches.remote(recs))
        self._batches.add(batch_record(self.core.stage.name, out, time.time()))
        return out


app = FastAPI(title="varipipe", description="Multi-stage inference pipelines that adapt to load.")


@serve.deployment(ray_actor_options={"num_cpus": LIGHT_NUM_CPUS})
@serve.ingress(app)
class Ingress:
    """HTTP routes; the work is in ``ingress_logic.IngressCore``."""

    def __init__(self, args: dict[str, Any], stages: dict[str, DeploymentHandle],
                 controller: DeploymentHandle) -> None:
        opts = AppOptions.from_args(args)
        spec = find_spec(opts.pipeline)
        deadline_s = opts.deadline_sla_factor * (opts.sla_s or spec.sla.latency_s)
        # On a cluster (KubeRay) the token comes from the environment, never from the manifest.
        token = opts.auth_token or os.environ.get(TOKEN_ENV, "")
        self.core = IngressCore(spec, stages, controller, token, deadline_s, admission=opts.admission,
                                gate=opts.stage_gate, reserve=opts.admission_reserve)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch size and replicas of every stage, from the decision in force (admission control)."""
        self.core.configure(user_config)

    def _denied(self, request: Request) -> JSONResponse | None:
        """401 unless the request carries the bearer token (when one is set)."""
        if self.core.authorized(request):
            return None
        return JSONResponse(UNAUTHORIZED, status_code=401, headers={"www-authenticate": "Bearer"})

    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "pipeline": self.core.spec.name,
                "uptime_s": round(time.time() - self.core.started, 3)}

    @app.get("/dashboard")
    async def dashboard(self):
        """The live adaptation dashboard (static; it polls /api/history and /config)."""
        return HTMLResponse(dashboard_html())

    @app.get("/config")
    async def config(self, request: Request):
        if denied := self._denied(request):
            return denied
        return await self.core.controller.config.remote()

    @app.get("/metrics")
    async def metrics(self, request: Request):
        if denied := self._denied(request):
            return denied
        text = await self.core.controller.metrics_text.remote()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/replicas")
    async def replicas(self, request: Request):
        if denied := self._denied(request):
            return denied
        return await self.core.replica_reports()

    @app.get("/api/history")
    async def history(self, request: Request, since: float = 0.0):
        if denied := self._denied(request):
            return denied
        return await self.core.controller.history.remote(since)

    @app.get("/api/calibration")
    async def calibration(self, request: Request, since: float | None = None):
        """The profile's corrections in force; with ``since`` (a batch end time, s), also the batches
        the stages ran after it: variant, hardware, size, service seconds, tokens."""
        if denied := self._denied(request):
            return denied
        return await self.core.controller.calibration.remote(since)

    @app.post("/api/control")
    async def control(self, request: Request):
        """Pin a stage to a variant, unpin it, or turn the adapter's dry run on/off."""
        if denied := self._denied(request):
            return denied
        try:
            action, value = await control_request(request, self.core.spec)
        except BadInputError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        reply = await self.core.controller.control.remote(action, value)
        return JSONResponse(reply, status_code=200 if reply.get("ok") else 409)

    @app.post("/{pipeline}")
    async def infer(self, pipeline: str, request: Request):
        if pipeline != self.core.spec.name:
            return JSONResponse({"error": f"unknown pipeline {pipeline!r}; this server runs "
                                          f"{self.core.spec.name!r}", "known": [self.core.spec.name]},
                                status_code=404)
        answer = await self.core.handle(request)
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Build the application graph from ``AppOptions`` arguments (Serve's import path)."""
    opts = AppOptions.from_args(dict(args))
    spec = find_spec(opts.pipeline)
    controller = Controller.options(name=CONTROLLER).bind(opts.to_args())
    stages = {}
    for s in spec.stages:
        num_cpus = opts.stage_num_cpus if opts.stage_num_cpus is not None else s.num_cpus
        actor_options: dict[str, Any] = {"num_cpus": num_cpus, "resources": dict(opts.stage_resources.get(s.name, {}))}
        gpus = opts.stage_gpus.get(s.name, 0.0)
        if gpus > 0:  # the replica reserves (a share of) a GPU and runs its variants' GPU runtimes
            actor_options["num_gpus"] = gpus
        stages[s.name] = StageServer.options(
            name=stage_deployment_name(s.name), ray_actor_options=actor_options,
        ).bind(opts.pipeline, s.name, controller, "gpu" if gpus > 0 else "cpu", opts.stage_nice)
    return Ingress.options(name=INGRESS).bind(opts.to_args(), stages, controller)
