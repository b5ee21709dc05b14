"""The control loop: observe → predict → decide → apply, every interval (DESIGN §4).

:class:`ControlLoop` is the decision half: ``step(observation, forecast)``
asks the policy and applies its decision through the injected
``apply(decision)`` (live: a declarative Serve update; simulator: the model of
it); an optional ``store`` persists the applied decision across restarts. The
simulator calls ``step`` with what it computed. Live, a thin :class:`Poller`
adds the side that pulls: ``observe()`` returns the last interval's
:class:`Observation`, a predictor makes the forecast, ``clock()`` and
``sleep(s)`` pace the steps. No Ray here.

Behaviour:

* ``apply`` is called only when the decision differs from the applied one in
  a stage's variant, batch, replicas or hardware. A batch-wait change alone is
  not applied: at higher load batches fill before the old timeout, at lower
  load the old (shorter) timeout only fires smaller batches sooner; neither
  breaks the SLA, and re-applying every interval for it would churn.
* Hysteresis: a move to a decision sized for *less* load that is also no
  faster (a slower, more accurate or smaller configuration) waits until such
  a move has been proposed ``hold_intervals`` times in a row, or the forecast
  fell by ``load_drop_fraction`` of the load the applied decision was made
  for; a move to a faster or larger configuration happens at once, and so does
  a move from an infeasible decision to a feasible one. Between two infeasible
  decisions (overload fallbacks) the same rule holds.
* Pins (stage=variant) go to the policy when it supports ``set_pinned``;
  otherwise the decided variant is overridden.
* Calibration: with a ``calibrator`` (``adapter.calibration``), each step first
  hands the policy the profile corrected by what the host does now, through its
  ``set_profile`` (the built-in policies have one; a policy without it plans on
  its own profile, and :meth:`ControlLoop.status` says so). Whoever owns the
  calibrator feeds it the batches observed (the live controller every window,
  the simulator every interval); the loop only reads it. When the correction of a
  variant in force, or the p99 its tail plans for the variant's configuration, has moved by
  ``CALIBRATION_SHIFT`` since the applied decision
  was made, the hysteresis does not hold the next move: the applied decision's
  predictions were made on another basis, so "no faster" means nothing.
* Traffic that has just begun: with a decision in force that the loop did not make (the
  spec's default or a restored one), the loop keeps it (``held``) while no request has
  come and until the history since the first arrival holds ``START_ARRIVALS`` arrivals or
  ``START_WINDOW_S`` seconds. A plan on one or two arrivals was a plan for a fraction
  of the rate that had begun, and its reconfigurations (a replica start on a 2-core
  host) cost the first requests more than the default decision did.
* Dry run: decide and log, never apply.
* Failures of observe / predict / decide / apply are recorded, the last
  decision stays in force, and the next step runs as usual.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from varipipe.adapter.calibration import Calibrator
from varipipe.adapter.policy import Forecast, Policy
from varipipe.adapter.predictors import REACTIVE_WINDOW_S, Predictor, since_first_arrival
from varipipe.errors import ConfigError
from varipipe.jsonfile import write_json_atomic
from varipipe.records import Decision, Observation

__all__ = ["ControlLoop", "Poller", "LoopEntry", "LoopStatus", "DecisionStore", "FileDecisionStore", "MemoryDecisionStore",
           "HOLD_INTERVALS", "LOAD_DROP_FRACTION", "LOG_SIZE", "CALIBRATION_SHIFT", "START_ARRIVALS", "START_WINDOW_S"]

log = logging.getLogger(__name__)

# Hysteresis: three intervals (30 s at the default 10 s) of consistently lower
# load before giving capacity back; Ray Serve's own downscale delay is 600 s,
# IPA re-decided every interval with none. A fall of 30 % skips the wait.
HOLD_INTERVALS = 3
LOAD_DROP_FRACTION = 0.3
# Decision log entries kept in memory (a day of 10 s intervals is 8,640; the
# dashboard shows recent history, the JSON-lines log on disk keeps the rest).
LOG_SIZE = 1000
# A correction of a variant in force that moved by 10 % (twice the calibration's dead band) since
# the applied decision was made lifts the hysteresis for the next move (see the module docstring).
CALIBRATION_SHIFT = 0.1
# Traffic that has just begun (module docstring): the decision in force holds until the history
# since the first arrival holds this many arrivals (10: a Poisson count read within about ±30 %)
# or one reactive window (adapter.predictors.REACTIVE_WINDOW_S, 10 s), whichever comes first: at
# 1.55 req/s about 7 s, at 100 req/s the first second.
START_ARRIVALS = 10
START_WINDOW_S = REACTIVE_WINDOW_S
# Arrival rates a Poller keeps for its predictor when observations carry no history
# (an hour of 1 s steps; the predictors look back at most a few minutes).
HISTORY_LEN = 3600


class DecisionStore(Protocol):
    """Keeps the last applied decision across restarts."""

    def load(self) -> Decision | None: ...

    def save(self, decision: Decision) -> None: ...


@dataclass
class MemoryDecisionStore:
    decision: Decision | None = None

    def load(self) -> Decision | None:
        return self.decision

    def save(self, decision: Decision) -> None:
        self.decision = decision


@dataclass(frozen=True)
class FileDecisionStore:
    """Decision JSON in one file, written atomically (temp file + rename)."""

    path: Path

    def load(self) -> Decision | None:
        path = Path(self.path)
        if not path.exists():
            return None
        try:
            return Decision.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ConfigError(str(path), "(decision)", f"cannot read the saved decision: {e}") from e

    def save(self, decision: Decision) -> None:
        write_json_atomic(self.path, decision.to_dict(), indent=1)


@dataclass(frozen=True)
class LoopEntry:
    """One step of the loop, for the decision log and ``GET /config``."""

    time_s: float
    action: str  # applied | unchanged | held | dry-run | failed
    decision: Decision | None
    forecast_rps: float = 0.0
    apply_duration_s: float = 0.0
    note: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["decision"] = self.decision.to_dict() if self.decision is not None else None
        return d


@dataclass(frozen=True)
class LoopStatus:
    """Health of the loop: serving continues on ``applied`` whatever happens here."""

    applied: Decision | None
    last_step_time_s: float | None
    last_error: str
    last_error_time_s: float | None
    consecutive_failures: int
    steps: int
    applies: int
    dry_run: bool
    pins: Mapping[str, str] = field(default_factory=dict)
    held_steps: int = 0
    calibration: str = "off"  # off | applied (the policy plans on the corrected profile) | not-supported


def _same_shape(a: Decision, b: Decision | None) -> bool:
    """Same variant, batch, replicas and hardware in every stage (batch wait ignored)."""
    if b is None or len(a.stages) != len(b.stages):
        return False
    return all((x.stage, x.variant, x.batch, x.replicas, x.hardware) == (y.stage, y.variant, y.batch, y.replicas, y.hardware)
               for x, y in zip(a.stages, b.stages, strict=True))


class ControlLoop:
    """Decides and applies, one :meth:`step` per interval; see the module docstring.

    The simulator calls :meth:`step` with the observation and forecast it computed;
    live, a :class:`Poller` observes, predicts and sleeps around it.
    """

    def __init__(self, policy: Policy, apply: Callable[[Decision], None], *,
                 clock: Callable[[], float] = time.monotonic, store: DecisionStore | None = None,
                 initial: Decision | None = None, dry_run: bool = False, pins: Mapping[str, str] | None = None,
                 hold_intervals: int = HOLD_INTERVALS, load_drop_fraction: float = LOAD_DROP_FRACTION,
                 log_size: int = LOG_SIZE, verbose: bool = True, calibrator: Calibrator | None = None,
                 hold_start: bool = True) -> None:
        """``clock`` times ``apply`` (the log's apply duration); ``verbose=False`` keeps applies
        out of the INFO log (a simulated day applies thousands of times); ``calibrator``: hand the
        policy the profile it corrects before each decision; ``hold_start=False``: decide from the
        first step whatever the traffic (the simulator's warm start, whose first forecast is the
        first interval's own mean load)."""
        self.hold_start = hold_start
        self.policy, self.verbose = policy, verbose
        self.calibrator = calibrator
        self._applied_factors: dict[tuple[str, str], tuple[float, float]] = {}
        self._apply, self._clock = apply, clock
        self.store = store
        self.dry_run = dry_run
        self.hold_intervals, self.load_drop_fraction = hold_intervals, load_drop_fraction
        self.entries: deque[LoopEntry] = deque(maxlen=log_size)
        self._lock = threading.Lock()
        self._held = 0
        self._steps = self._applies = self._failures = 0
        self._last_error, self._last_error_t, self._last_step_t = "", None, None
        self.applied = initial if initial is not None else self._restore()
        self.pins: dict[str, str] = {}
        self.set_pins(pins or {})

    # ------------------------------------------------------------ controls

    def _restore(self) -> Decision | None:
        if self.store is None:
            return None
        try:
            return self.store.load()
        except Exception as e:  # a corrupt store must not stop serving
            self._record_error(f"restore failed: {e}", None)
            return None

    def set_pins(self, pins: Mapping[str, str]) -> None:
        """Pin stages to variants (replaces the previous pins); ``{}`` unpins all."""
        self.pins = dict(pins)
        if hasattr(self.policy, "set_pinned"):
            self.policy.set_pinned(self.pins)

    def pin(self, stage: str, variant: str) -> None:
        self.set_pins({**self.pins, stage: variant})

    def unpin(self, stage: str) -> None:
        self.set_pins({k: v for k, v in self.pins.items() if k != stage})

    def status(self) -> LoopStatus:
        return LoopStatus(self.applied, self._last_step_t, self._last_error, self._last_error_t, self._failures,
                          self._steps, self._applies, self.dry_run, dict(self.pins), self._held,
                          self._calibration_mode())

    def _calibration_mode(self) -> str:
        if self.calibrator is None:
            return "off"
        return "applied" if callable(getattr(self.policy, "set_profile", None)) else "not-supported"

    def log(self) -> list[LoopEntry]:
        return list(self.entries)

    # ---------------------------------------------------------------- step

    def _record_error(self, message: str, t: float | None) -> None:
        self._failures += 1
        self._last_error, self._last_error_t = message, t
        log.warning("control loop: %s (serving continues on the last decision)", message)

    def _pinned(self, d: Decision) -> Decision:
        if not self.pins or hasattr(self.policy, "set_pinned"):
            return d
        stages = tuple(dataclasses.replace(s, variant=self.pins.get(s.stage, s.variant)) for s in d.stages)
        return dataclasses.replace(d, stages=stages, explanation=d.explanation + f"\npinned by operator: {self.pins}")

    def _should_wait(self, new: Decision, t: float) -> str:
        """Empty when ``new`` may be applied now; otherwise why it is held."""
        cur = self.applied
        if cur is None or not cur.stages or (new.feasible and not cur.feasible):
            return ""  # nothing deployed yet, or a move that brings the SLA back: never held
        if self._calibration_moved(cur, t):
            return ""
        if new.load_rps >= cur.load_rps or new.predicted_latency_s < cur.predicted_latency_s:
            return ""
        if cur.load_rps > 0 and (cur.load_rps - new.load_rps) / cur.load_rps >= self.load_drop_fraction:
            return ""
        self._held += 1
        if self._held >= self.hold_intervals:
            return ""
        return f"slower move held {self._held}/{self.hold_intervals} (load {new.load_rps:.1f} vs {cur.load_rps:.1f})"

    def _traffic_too_new(self, obs: Observation) -> str:
        """Empty when the loop may decide; otherwise why the decision in force (not the loop's own)
        holds: traffic began fewer than START_WINDOW_S seconds ago with fewer than START_ARRIVALS arrivals."""
        if not self.hold_start or self.applied is None or not self.applied.stages or self._applies:
            return ""  # nothing deployed yet, or the loop has decided on traffic before: decide
        since = since_first_arrival(obs.history_rps)
        arrivals, seconds = float(sum(since)), len(since)
        if arrivals >= START_ARRIVALS or seconds >= START_WINDOW_S:
            return ""
        if arrivals == 0:  # an idle server: a plan for no load is replaced at the first arrivals
            return f"no traffic yet: the decision in force holds until {START_ARRIVALS} arrivals or {START_WINDOW_S} s"
        return (f"traffic began {seconds} s ago ({arrivals:.0f} arrivals): the decision in force holds until "
                f"{START_ARRIVALS} arrivals or {START_WINDOW_S} s")

    def step(self, observation: Observation, forecast: Forecast) -> LoopEntry:
        """Decide on ``observation`` and ``forecast`` and apply if the gates allow; never raises."""
        with self._lock:
            entry = self._step(observation, forecast)
            return self._log(entry)

    def failed(self, time_s: float, phase: str, error: Exception) -> LoopEntry:
        """Record a step that failed before deciding (observe / predict); the decision stays."""
        with self._lock:
            self._last_step_t = time_s
            self._record_error(f"{phase} failed: {type(error).__name__}: {error}", time_s)
            return self._log(LoopEntry(time_s, "failed", None, note=f"{phase}: {error}"))

    def _log(self, entry: LoopEntry) -> LoopEntry:
        self.entries.append(entry)
        self._steps += 1
        return entry

    def _calibrate(self, t: float) -> None:
        """Hand the policy the profile corrected at ``t`` (when there is a calibrator and the policy takes one)."""
        if self.calibrator is None:
            return
        set_profile = getattr(self.policy, "set_profile", None)
        if callable(set_profile):
            set_profile(self.calibrator.corrected(t))

    def _factors(self, d: Decision, t: float) -> dict[tuple[str, str], tuple[float, float]]:
        """Per variant of ``d``: its correction factor, and how far its tail in force lifts the planned
        p99 of ``d``'s configuration (1 where none): what a plan's SLA check rests on."""
        if self.calibrator is None:
            return {}
        cal = self.calibrator.calibration(t)
        tails = cal.tails()
        return {(s.stage, s.variant): (cal.factor(s.stage, s.variant),
                                       self.calibrator.p99_lift(s.stage, s.variant, s.hardware, s.batch,
                                                                tails.get((s.stage, s.variant), 1.0)))
                for s in d.stages}

    def _calibration_moved(self, cur: Decision, t: float) -> bool:
        """The correction of a variant of ``cur``, or its tail's lift of the p99, moved by CALIBRATION_SHIFT
        since ``cur`` was applied."""
        if self.calibrator is None:
            return False
        now = self._factors(cur, t)
        return any(abs(x / y - 1.0) >= CALIBRATION_SHIFT
                   for k, pair in now.items() for x, y in zip(pair, self._applied_factors.get(k, (1.0, 1.0)), strict=True))

    def _step(self, obs: Observation, forecast: Forecast) -> LoopEntry:
        t = obs.time_s
        self._last_step_t = t
        try:
            self._calibrate(t)
        except Exception as e:
            self._record_error(f"calibration failed: {type(e).__name__}: {e}", t)
            return LoopEntry(t, "failed", None, note=f"calibrate: {e}")
        wait = self._traffic_too_new(obs)
        if wait:
            self._failures = 0
            return LoopEntry(t, "held", None, forecast.rps, note=wait)
        try:
            new = self._pinned(self.policy.decide(obs, forecast, self.applied or Decision(stages=())))
        except Exception as e:
            self._record_error(f"decide failed: {type(e).__name__}: {e}", t)
            return LoopEntry(t, "failed", None, note=f"decide: {e}")
        if _same_shape(new, self.applied):
            self._held, self._failures = 0, 0
            return LoopEntry(t, "unchanged", new, forecast.rps)
        if self.dry_run:
            self._failures = 0
            log.info("control loop (dry run) would apply: %s", new.explanation.splitlines()[:1])
            return LoopEntry(t, "dry-run", new, forecast.rps, note=new.explanation)
        wait = self._should_wait(new, t)
        if wait:
            self._failures = 0
            return LoopEntry(t, "held", new, forecast.rps, note=wait)
        return self._do_apply(t, new, forecast)

    def _do_apply(self, t: float, new: Decision, forecast: Forecast) -> LoopEntry:
        started = self._clock()
        try:
            self._apply(new)
        except Exception as e:
            log.warning("control loop: apply failed", exc_info=True)
            self._record_error(f"apply failed: {type(e).__name__}: {e}", t)
            return LoopEntry(t, "failed", new, forecast.rps, self._clock() - started, note=f"apply: {e}")
        took = self._clock() - started
        self.applied, self._held, self._failures = new, 0, 0
        self._applied_factors = self._factors(new, t)
        self._applies += 1
        if self.verbose:
            log.info("control loop applied (%s, %.2fs): %s", new.status.value, took,
                     new.explanation.replace("\n", " | "))
        if self.store is not None:
            try:
                self.store.save(new)
            except Exception as e:
                self._record_error(f"saving the decision failed: {e}", t)
        return LoopEntry(t, "applied", new, forecast.rps, took, note=new.explanation)



class Poller:
    """The live side of the loop: observe, predict, :meth:`ControlLoop.step`, sleep.

    ``observe()`` returns the last interval's :class:`Observation`; ``predictor``
    turns its per-second history (or, when it has none, the arrival rates of the
    steps so far) into the forecast; ``clock`` and ``sleep`` pace the steps.
    """

    def __init__(self, loop: ControlLoop, observe: Callable[[], Observation], predictor: Predictor,
                 clock: Callable[[], float], sleep: Callable[[float], None] | None = None) -> None:
        self.loop, self.predictor = loop, predictor
        self._observe, self._clock, self._sleep = observe, clock, sleep
        self._history: deque[float] = deque(maxlen=HISTORY_LEN)  # one arrival rate per step

    def poll(self) -> LoopEntry:
        """One observe → predict → step round; never raises."""
        phase = "observe"
        try:
            obs = self._observe()
            phase = "predict"
            forecast = self.forecast(obs)
        except Exception as e:
            return self.loop.failed(self._clock(), phase, e)
        return self.loop.step(obs, forecast)

    def forecast(self, obs: Observation) -> Forecast:
        history = list(obs.history_rps)
        if not history:
            self._history.append(obs.arrival_rps)
            history = list(self._history)
        return Forecast(rps=float(self.predictor.predict(history)), predictor=self.predictor.name,
                        horizon_s=obs.interval_s)

    def run(self, stop_event: threading.Event, interval_s: float, max_steps: int | None = None) -> None:
        """Poll every ``interval_s`` (by the injected clock) until ``stop_event`` is set."""
        done = 0
        while not stop_event.is_set() and (max_steps is None or done < max_steps):
            started = self._clock()
            self.poll()
            done += 1
            remaining = max(0.0, interval_s - (self._clock() - started))
            if self._sleep is not None:
                self._sleep(remaining)
            else:
                stop_event.wait(remaining)
