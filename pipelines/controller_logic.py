"""The controller replica's state: metrics, the current decision, replicas, the loop.

One controller per application (DESIGN §4). Its decision comes in through its
``user_config`` (so the declarative config is the one source of truth: whoever
applies a decision, the loop here or an operator, the controller learns it the
same way). A background thread closes an observation window every interval
and, when a policy is configured, runs the adapter's control loop on it.

A decision that arrives is *deployed*, not yet *serving*: it becomes the
decision ``/config`` reports only when every stage it changed has a replica
reporting that stage's new generation without an error. A variant that fails to
load therefore never shows as serving (the replica keeps its old variant; issue
16: ``/config`` reported the failed decision while the old one served).

Online calibration (issue 18): the controller owns the application's
:class:`~varipipe.adapter.calibration.Calibrator` (unless ``--no-calibration``),
feeds it the batches of every window, hands it to the control loop (which plans
on the corrected profile), shows it at ``/config`` (``calibration``), in
``/metrics`` (``varipipe_calibration_factor`` and the profile's and observed p50
per stage and variant) and at ``/api/calibration`` (with the recent batches), and
keeps its batches beside the decision's ``--state-file`` across restarts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from varipipe.adapter.calibration import Calibrator, FileCalibrationStore, make_calibrator
from varipipe.errors import ReconfigurationError
from varipipe.pipelines.metrics import MetricsAggregator
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.stage import ReplicaStatus
from varipipe.records import Decision, Observation
from varipipe.spec import find_spec

__all__ = ["ControllerState", "HISTORY_LEN", "build_policy", "build_loop"]

log = logging.getLogger(__name__)

# Observation windows kept for /api/history: 30 minutes at a 1 s window (issue 9 default).
HISTORY_LEN = 1800
# Decisions kept in the log shown at /config.
DECISION_LOG_LEN = 200
# The metrics window is closed at least this often (s) even with a longer adapter interval,
# so the history and per-second rates stay fresh for dashboards.
WINDOW_S = 1.0
# Batches kept for GET /api/calibration (what each stage ran, with the profile's prediction):
# about an hour of three stages at 2 batches/s each.
BATCH_LOG_LEN = 20000


class ControllerState:
    def __init__(self, opts: AppOptions, clock: Callable[[], float], start_thread: bool = True,
                 running_replicas: Callable[[], Mapping[str, int]] | None = None) -> None:
        """``running_replicas()``: each stage's running replicas now (live: Serve's status);
        without it, the replicas of the decision in force."""
        self.opts = opts
        self.clock = clock
        self._running_replicas = running_replicas
        self.spec = find_spec(opts.pipeline)
        self.sla_s = opts.sla_s or self.spec.sla.latency_s
        self.started = clock()  # a new value means a new controller: the dashboard knows history restarted
        self.metrics = MetricsAggregator(self.spec.name, self.spec.stage_names, self.sla_s, self.started)
        self.decision: Decision | None = None  # the decision that serves (what /config reports)
        self.serving_generation = -1
        self._serving_stage_generation: dict[str, int] = {}
        # The config Serve was last given: the applier numbers from it and diffs against it.
        self.pending: Decision | None = None  # deployed, not (yet) confirmed by the replicas
        self.generation = -1
        self.stage_generation: dict[str, int] = {}
        self.decision_log: deque[dict[str, Any]] = deque(maxlen=DECISION_LOG_LEN)
        self.replicas: dict[str, ReplicaStatus] = {}
        self.history: deque[Observation] = deque(maxlen=HISTORY_LEN)
        self.points: deque[dict[str, Any]] = deque(maxlen=HISTORY_LEN)  # what /api/history serves
        self.lock = threading.RLock()
        self.loop = None  # the adapter's control loop, when a policy is configured
        self.poller = None  # what observes and steps it every interval
        self.loop_error = ""
        self._delegated = False  # the policy hands scaling to Ray Serve's autoscaler
        self._last_replicas: dict[str, int] = {}
        self._replicas_read_at = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_threads = start_thread
        self.calibration_error = ""
        self.calibrator: Calibrator | None = None
        self._calibration_store: FileCalibrationStore | None = None
        self._calibration_saved_at = self._calibrated_at = self.started
        self.batch_log: deque[dict[str, Any]] = deque(maxlen=BATCH_LOG_LEN)
        self._start_calibration()
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="varipipe-controller", daemon=True)
            self._thread.start()

    # --- decision ---------------------------------------------------------------
    def set_decision_config(self, user_config: dict[str, Any]) -> None:
        """A config was deployed (Serve calls ``reconfigure`` with its ``user_config``)."""
        decision = Decision.from_dict(user_config["decision"])
        with self.lock:
            first = self.decision is None
            self.generation = int(user_config.get("generation", 0))
            self.stage_generation = {k: int(v) for k, v in user_config.get("stage_generation", {}).items()}
            self.pending = decision
            if first:
                # This controller's first config (a new application, or a restarted
                # controller): the replicas were started with it; nothing to compare with.
                self._serve()
            else:
                self._settle()
        if first and self.opts.policy and self.loop is None and not self.loop_error:
            self._start_loop(decision)

    def _stage_gen(self, stage: str) -> int:
        return self.stage_generation.get(stage, self.generation)

    def _settle(self) -> None:
        """Promote the pending decision to serving once every stage it changed confirms it."""
        if self.pending is None:
            return
        for s in self.pending.stages:
            gen = self._stage_gen(s.stage)
            if gen == self._serving_stage_generation.get(s.stage, self.serving_generation):
                continue  # unchanged stage: serves as before
            reports = [r for r in self.replicas.values() if r.stage == s.stage and r.generation == gen]
            # With Ray's autoscaler (a delegating policy) the replica count is Ray's, not the decision's.
            needed = 1 if self._delegated else s.replicas
            if len(reports) < needed or any(r.error for r in reports):
                return  # not confirmed yet, or failed (the old config keeps serving)
        self._serve()

    def _serve(self) -> None:
        previous, decision = self.decision, self.pending
        assert decision is not None
        self.decision, self.pending = decision, None
        self.serving_generation = self.generation
        self._serving_stage_generation = dict(self.stage_generation)
        self.metrics.set_decision(decision, previous)
        self.decision_log.append({
            "time": self.clock(), "generation": self.generation,
            "from": _summary(previous), "to": _summary(decision),
            "policy": decision.policy, "status": decision.status.value,
            "reason": decision.reason, "explanation": decision.explanation,
            "binding_constraints": list(decision.binding_constraints),
            # what it was decided for and what it promises (0: not predicted, e.g. the default config)
            "load_rps": decision.load_rps, "predicted_accuracy": decision.predicted_accuracy,
        })
        log.info("decision %d serves: %s (%s)", self.generation, _summary(decision), decision.reason)

    # --- calibration --------------------------------------------------------------
    def _start_calibration(self) -> None:
        if not self.opts.calibration:
            return
        try:
            self.calibrator = make_calibrator(load_app_profile(self.opts, self.spec), self.opts)
            if self.opts.state_file and self.calibrator is not None:
                self._calibration_store = FileCalibrationStore.beside(self.opts.state_file)
                restored = self._calibration_store.load(self.calibrator)
                if restored:
                    log.info("calibration: %d batches restored from %s", restored, self._calibration_store.path)
        except Exception as e:  # noqa: BLE001 - serving goes on uncalibrated, and says why
            self.calibrator = None
            self.calibration_error = f"calibration off: {type(e).__name__}: {e}"
            log.error(self.calibration_error)

    def _calibrate(self, obs: Observation) -> None:
        """Feed the window's batches to the calibrator, log them, refresh the gauges, save now and then."""
        for b in obs.batches:
            for size, sec, t, tok in zip(b.sizes, b.seconds, b.ended_s, b.tokens, strict=True):
                self.batch_log.append({"t": t, "stage": b.stage, "variant": b.variant, "hardware": b.hardware,
                                       "size": size, "seconds": sec, "tokens": tok})
        if self.calibrator is None:
            return
        self._calibrated_at = obs.time_s
        self.calibrator.observe(obs)
        self.metrics.set_calibration(self.calibrator.calibration(obs.time_s))
        if self._calibration_store is not None and obs.time_s - self._calibration_saved_at >= self.opts.interval_s:
            self._calibration_saved_at = obs.time_s
            try:
                self._calibration_store.save(self.calibrator)
            except OSError as e:
                log.warning("could not save the calibration: %s", e)

    def calibration_view(self, since: float | None = None) -> dict[str, Any]:
        """The corrections in force (``/config``'s ``calibration``); with ``since``, also the batches
        logged after it (``GET /api/calibration?since=``)."""
        with self.lock:
            if self.calibrator is None:
                view: dict[str, Any] = {"enabled": False, "error": self.calibration_error
                                        or ("" if self.opts.calibration else "off (--no-calibration)")}
            else:
                view = {"enabled": True, **self.calibrator.calibration(self._calibrated_at).to_dict(),
                        "planning": self.loop.status().calibration if self.loop is not None else "no adapter loop"}
            if since is not None:
                view["batches"] = [b for b in self.batch_log if b["t"] > since]
            return view

    # --- the adapter --------------------------------------------------------------
    def _start_loop(self, initial: Decision) -> None:
        try:
            self.poller = build_loop(self.opts, self.spec, initial, self._apply, self._observe_interval, self.clock,
                                     self.calibrator)
        except Exception as e:  # noqa: BLE001 - a bad policy/profile must not stop serving
            self.loop_error = f"adapter not started: {type(e).__name__}: {e}"
            log.error(self.loop_error)
            return
        if self.poller is None:
            self._delegated = True
            return
        self.loop = self.poller.loop
        if self._start_threads:
            threading.Thread(target=self._run_loop, name="varipipe-adapter", daemon=True).start()

    def _run_loop(self) -> None:
        while not self._stop.wait(self.opts.interval_s):
            self.loop_step()

    def loop_step(self):
        entry = self.poller.poll()
        if entry.action == "failed":
            self.metrics.loop_error()
        return entry

    def _observe_interval(self) -> Observation:
        replicas = self._replicas()
        with self.lock:
            return self.metrics.observe_interval(self.clock(), replicas)

    def _apply(self, decision: Decision) -> None:
        from varipipe.pipelines.applier import ServeApplier

        applier = ServeApplier(self.opts, local=self._local_state, deploy=self._deploy_while_live)
        with self.lock:  # continue from the config deployed now, whoever applied it
            applier.sync(self.pending or self.decision, self.generation, self.stage_generation)
        applier.apply(decision, sync=False)

    def _deploy_while_live(self, app_config: dict[str, Any]) -> None:
        """Deploy, unless this application is gone or being deleted: a deploy would bring
        it back (and, before ``deploy_config`` kept the others, deleted the next app; CI)."""
        from varipipe.pipelines.applier import deploy_config

        if self._stop.is_set() or not deploy_config(app_config, only_if_live=True):
            self._stop.set()  # the application is going away: so does the adapter
            raise ReconfigurationError(f"application {self.opts.app_name!r} is being deleted; not applying")

    def _local_state(self) -> tuple[list[ReplicaStatus], int]:
        """Replica reports and the live generation, for an applier running in this replica."""
        with self.lock:
            return list(self.replicas.values()), self.generation

    # --- replicas -----------------------------------------------------------------
    def report_replica(self, status: ReplicaStatus) -> None:
        with self.lock:
            self.replicas[status.replica_id] = status
            self._settle()
        if status.error:
            log.error("replica %s: %s", status.replica_id[:8], status.error)

    def replica_statuses(self) -> list[ReplicaStatus]:
        with self.lock:
            return list(self.replicas.values())

    # --- views --------------------------------------------------------------------
    def config_view(self) -> dict[str, Any]:
        with self.lock:
            errors = sorted({r.error for r in self.replicas.values()
                             if r.error and r.generation == self._stage_gen(r.stage)})
            return {
                "pipeline": self.spec.name,
                "sla_s": self.sla_s,
                # the config Serve was last given: "pending" until its stages confirm it
                "generation": self.generation,
                "stage_generation": dict(self.stage_generation),
                "pending": self.pending.to_dict() if self.pending else None,
                # the decision that serves
                "decision": self.decision.to_dict() if self.decision else None,
                "serving_generation": self.serving_generation,
                "policy": self.opts.policy or None,
                "dry_run": self.loop.dry_run if self.loop is not None else self.opts.dry_run,
                "adapter": self._loop_status(),
                "replica_errors": errors,
                "decision_log": list(self.decision_log)[-20:],
                "calibration": self.calibration_view(),
            }

    def _loop_status(self) -> dict[str, Any]:
        if self.loop is None:
            return {"enabled": False, "error": self.loop_error}
        st = self.loop.status()
        return {
            "enabled": True, "policy": self.opts.policy, "predictor": self.opts.predictor,
            "interval_s": self.opts.interval_s, "dry_run": st.dry_run, "pins": dict(st.pins),
            "steps": st.steps, "applies": st.applies, "held_steps": st.held_steps,
            "last_step_time_s": st.last_step_time_s, "last_error": st.last_error,
            "last_error_time_s": st.last_error_time_s, "consecutive_failures": st.consecutive_failures,
            "calibration": st.calibration, "log": [e.to_dict() for e in self.loop.log()[-20:]],
        }

    def control(self, action: str, value: Any = None) -> dict[str, Any]:
        if self.loop is None:
            return {"ok": False, "error": "no adapter loop is running (start with --policy)"}
        args = value if isinstance(value, list | tuple) else [value]
        if action == "set_dry_run":  # ControlLoop keeps dry_run as a plain attribute
            self.loop.dry_run = bool(args[0])
        elif action in ("pin", "unpin"):
            getattr(self.loop, action)(*args)
        else:
            return {"ok": False, "error": f"unknown control action {action!r}"}
        return {"ok": True, "dry_run": self.loop.dry_run, "pins": dict(self.loop.pins)}

    # --- periodic work ------------------------------------------------------------
    def tick(self) -> Observation:
        """Close the current metrics window (called every WINDOW_S). Serve's status is asked for
        the running replicas once an adapter interval, not every window (and at each loop step)."""
        replicas = self._replicas(refresh=False)
        with self.lock:
            obs = self.metrics.observe(self.clock(), replicas)
            self._calibrate(obs)
            self.history.append(dataclasses.replace(obs, batches=()))  # the batches live in batch_log
            self.points.append(self._point(obs))
        return obs

    def _replicas(self, refresh: bool = True) -> Mapping[str, int]:
        """Each stage's running replicas (``running_replicas()``; without it, the decision's);
        ``refresh=False``: the counts last read, unless they are an adapter interval old."""
        if self._running_replicas is None:
            d = self.decision
            return {s.stage: s.replicas for s in d.stages} if d is not None else {}
        now = self.clock()
        if refresh or now - self._replicas_read_at >= self.opts.interval_s:
            self._replicas_read_at = now
            try:
                self._last_replicas = dict(self._running_replicas())
            except Exception as e:  # noqa: BLE001 - a status call that fails keeps the last counts
                log.warning("could not read the running replicas: %s", e)
        return self._last_replicas

    def _point(self, obs: Observation) -> dict[str, Any]:
        """One history point: load, latency, SLA and the configuration in force."""
        w = self.metrics.last_window
        d = self.decision
        forecast = self.loop.log()[-1].forecast_rps if self.loop is not None and self.loop.log() else None
        return {
            "t": round(obs.time_s, 3), "interval_s": round(obs.interval_s, 3),
            "arrival_rps": round(obs.arrival_rps, 3), "predicted_rps": forecast,
            "completed": w.completed if w else 0, "within_sla": w.within_sla if w else 0,
            "errors": w.errors if w else 0, "drops": w.drops if w else 0, "rejected": w.rejected if w else 0,
            "e2e_p50_s": round(w.e2e_p50_s, 4) if w else 0.0, "e2e_p99_s": round(obs.e2e_p99_s, 4),
            "generation": self.serving_generation,
            "stages": [{"stage": s.stage, "variant": s.variant, "batch": s.batch, "replicas": s.replicas}
                       for s in (d.stages if d else ())],
            "cost": d.predicted_cost if d else None, "accuracy": d.predicted_accuracy if d else None,
        }

    def history_view(self, since: float = 0.0) -> dict[str, Any]:
        """Points newer than ``since`` (a ``t`` from an earlier answer) for ``GET /api/history``."""
        with self.lock:
            points = [p for p in self.points if p["t"] > since]
            return {"pipeline": self.spec.name, "sla_s": self.sla_s, "window_s": WINDOW_S,
                    "now": self.clock(), "started": self.started, "points": points}

    def _run(self) -> None:
        while not self._stop.wait(WINDOW_S):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the controller must outlive any bug here
                log.exception("controller tick failed")

    def stop(self) -> None:
        self._stop.set()


def load_app_profile(opts: AppOptions, spec):
    """The profile ``opts`` names, or the shipped one of the pipeline."""
    from varipipe.profiler.store import default_profile_path, load_profile

    return load_profile(opts.profile or default_profile_path(spec.name), pipeline=spec.name)


def build_policy(opts: AppOptions, spec):
    """The live policy of ``opts``: its context from the one factory the simulator uses
    (``adapter.policy.policy_context``), on the profile ``opts`` names or the shipped one."""
    from varipipe.adapter.policies import make_policy, policy_options
    from varipipe.adapter.policy import policy_context

    profile = load_app_profile(opts, spec)
    return make_policy(opts.policy, policy_context(spec, profile, opts), **policy_options(opts.policy,
                                                                                         opts.policy_options))


def build_loop(opts: AppOptions, spec, initial: Decision, apply, observe, clock, calibrator: Calibrator | None = None):
    """The adapter's ControlLoop for ``opts.policy`` and its Poller; None for a policy that hands
    scaling to Ray Serve's autoscaler (Serve scales the stages itself). ``calibrator``: the
    loop plans on the profile it corrects (the controller feeds it)."""
    from pathlib import Path

    from varipipe.adapter.loop import ControlLoop, FileDecisionStore, Poller
    from varipipe.adapter.policy import delegates_to_ray
    from varipipe.adapter.predictors import make_predictor

    policy = build_policy(opts, spec)
    if delegates_to_ray(policy):
        log.info("policy %s: Ray Serve's own autoscaler scales the stages; no varipipe loop", opts.policy)
        return None
    store = FileDecisionStore(Path(opts.state_file)) if opts.state_file else None
    loop = ControlLoop(policy, apply, clock=clock, store=store, initial=initial, dry_run=opts.dry_run,
                       pins=opts.pins, calibrator=calibrator)
    return Poller(loop, observe, make_predictor(opts.predictor), clock)


def _summary(d: Decision | None) -> str:
    if d is None:
        return "(none)"
    return ", ".join(f"{s.stage}={s.variant} b{s.batch} x{s.replicas}" for s in d.stages)
