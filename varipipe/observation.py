"""Observations: one builder for the live controller and the simulator (DESIGN §4).

Live (``pipelines/metrics.py``) and simulated (``loadgen/simulator.py``) runs
count the same things per stage over an interval in a :class:`StageCounters`:
the items that entered the stage (after fan-out, counted once, when they
enter), the items it shed, and how long the items that left it took there.
The counters also keep the batches the stage ran that ended in the interval
(per variant and hardware: size, service time, end, tokens generated), which
online calibration compares with the profile (``adapter.calibration``).
At the end of the interval :func:`observe` turns the counters, the stage's
state at that moment (its items queued or in a running batch, which is what a
Serve handle counts as ongoing requests, and its running replicas) and the
pipeline's arrivals into the :class:`Observation` a policy sees. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from varipipe.records import BatchTimes, Observation, StageObservation

__all__ = ["StageCounters", "StageState", "observe", "percentile", "HISTORY_S"]

# Per-second arrivals an observation carries for the predictors, newest last: the longest
# window any of them reads (the LSTM's 10 minutes, adapter/lstm.py; IPA's).
HISTORY_S = 600


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics (numpy's
    default, as the profiler and the simulator's results compute it); 0.0 for no values.
    By partial sort: the simulator takes it per stage every control period."""
    a = np.asarray(values, dtype=np.float64)
    n = len(a)
    if not n:
        return 0.0
    pos = (n - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    part = np.partition(a, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


@dataclass
class StageCounters:
    """What one stage counted since the interval began."""

    entered: int = 0  # items that entered the stage (after fan-out)
    drops: int = 0  # items shed (admission control) or lost
    _latencies: list[np.ndarray] = field(default_factory=list)  # time in the stage of the items that left it
    _single: list[float] = field(default_factory=list)
    _batches: dict[tuple[str, str], _BatchLog] = field(default_factory=dict)  # (variant, hardware) -> batches

    def left(self, latencies_s: np.ndarray) -> None:
        """Items left the stage done, after ``latencies_s`` each in it (queue + batch)."""
        self._latencies.append(latencies_s)

    def left_one(self, latency_s: float) -> None:
        self._single.append(latency_s)

    def latencies(self) -> np.ndarray:
        parts = [*self._latencies, np.asarray(self._single, dtype=np.float64)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def ran(self, variant: str, hardware: str, size: int, seconds: float, ended_s: float, tokens: int = 0) -> None:
        """One batch of ``size`` items ended at ``ended_s`` after ``seconds`` of service."""
        log = self._batches.setdefault((variant, hardware), _BatchLog())
        log.sizes.append(int(size))
        log.seconds.append(float(seconds))
        log.ended_s.append(float(ended_s))
        log.tokens.append(int(tokens))

    def ran_many(self, variant: str, hardware: str, sizes: np.ndarray, seconds: np.ndarray,
                 ended_s: np.ndarray) -> None:
        """Batches that generated no tokens, as arrays (the simulator's)."""
        log = self._batches.setdefault((variant, hardware), _BatchLog())
        log.chunks.append((np.asarray(sizes, dtype=np.int64), np.asarray(seconds, dtype=np.float64),
                           np.asarray(ended_s, dtype=np.float64)))

    def batch_times(self, stage: str) -> tuple[BatchTimes, ...]:
        return tuple(b.times(stage, variant, hardware) for (variant, hardware), b in self._batches.items() if b)


@dataclass
class _BatchLog:
    """Batches one at a time (live) or as arrays of batches without tokens (simulated)."""

    sizes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    ended_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sizes) or any(len(c[0]) for c in self.chunks)

    def times(self, stage: str, variant: str, hardware: str) -> BatchTimes:
        sizes, seconds, ended, tokens = self.sizes, self.seconds, self.ended_s, self.tokens
        if self.chunks:
            sizes = sizes + np.concatenate([c[0] for c in self.chunks]).tolist()
            seconds = seconds + np.concatenate([c[1] for c in self.chunks]).tolist()
            ended = ended + np.concatenate([c[2] for c in self.chunks]).tolist()
            tokens = tokens + [0] * (len(sizes) - len(tokens))
        return BatchTimes(stage, variant, hardware, tuple(sizes), tuple(seconds), tuple(ended), tuple(tokens))


@dataclass(frozen=True)
class StageState:
    """A stage at the moment of observing: what a Serve handle and Serve's status report."""

    in_system: int  # items queued or in a running batch
    replicas: int  # replicas serving


def observe(time_s: float, interval_s: float, arrivals: int, stages: Mapping[str, StageCounters],
            state: Mapping[str, StageState], e2e_latencies_s: Iterable[float] | np.ndarray = (),
            history_rps: Sequence[float] = ()) -> Observation:
    """The interval's :class:`Observation`: rates per second of ``interval_s``, p99s of the
    latencies counted, the pipeline's drops as the sum of the stages', the batches run."""
    per_stage = []
    for name, c in stages.items():
        now = state.get(name, StageState(0, 0))
        per_stage.append(StageObservation(
            stage=name, arrival_rps=c.entered / interval_s, queue_length=float(now.in_system),
            p99_latency_s=percentile(c.latencies(), 99), drops=c.drops, replicas=now.replicas))
    e2e = np.asarray(e2e_latencies_s if isinstance(e2e_latencies_s, np.ndarray) else list(e2e_latencies_s),
                     dtype=np.float64)
    return Observation(time_s=time_s, interval_s=interval_s, arrival_rps=arrivals / interval_s,
                       stages=tuple(per_stage), e2e_p99_s=percentile(e2e, 99),
                       drops=sum(s.drops for s in per_stage), history_rps=history_rps,
                       batches=tuple(b for name, c in stages.items() for b in c.batch_times(name)))
