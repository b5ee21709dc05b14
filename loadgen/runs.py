"""One simulated run of one policy: build the policy and forecaster, then simulate.

Shared by ``varipipe simulate`` and the experiment runner so both wire the
adapter's policies and predictors the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from varipipe.adapter.policies import policy_options
from varipipe.adapter.policy import Policy, PolicyContext
from varipipe.adapter.policy import policy_context as _context
from varipipe.adapter.predictors import DEFAULT_PREDICTOR
from varipipe.loadgen.simulator import (
    RequestTable,
    SimConfig,
    SimResult,
    predictor_forecaster,
    simulate,
)
from varipipe.records import Decision, Profile

__all__ = ["SimSettings", "policy_context", "run_policy", "write_request_table", "live_start", "DEFAULT_PREDICTOR",
           "LOOP_PHASE_SEED"]

# Mixed with a run's seed to draw the phase of its control loop, apart from the other seeded draws.
LOOP_PHASE_SEED = 20_000



@dataclass(frozen=True)
class SimSettings(SimConfig):
    """Everything a simulated run needs besides the profile, arrivals and policy name: the
    simulator's :class:`SimConfig` and how the policy and its forecaster are built."""

    max_replicas: int | None = None  # None: the policy context's default (the cluster's cores)
    gpu_memory_mb: float | None = None  # one GPU's memory, MiB; None: the profile's record of it
    predictor: str = DEFAULT_PREDICTOR
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    per_policy: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # policy -> extra options

    def sim_config(self) -> SimConfig:
        return SimConfig(**{f.name: getattr(self, f.name) for f in fields(SimConfig)})


def _policy_options(name: str, settings: SimSettings, arrivals: np.ndarray) -> dict[str, Any]:
    opts = policy_options(name, {**settings.policy_options, **settings.per_policy.get(name, {})})
    if name == "oracle":  # the true per-second arrivals of this very run
        seconds = int(np.ceil(arrivals[-1])) + 1 if len(arrivals) else 1
        opts["trace"] = np.bincount(arrivals.astype(np.int64), minlength=seconds).astype(np.float64)
    return opts


def policy_context(profile: Profile, settings: SimSettings) -> PolicyContext:
    """The context every simulated policy of a run is built with (the live one's factory)."""
    return _context(None, profile, settings)


def run_policy(profile: Profile, arrivals: np.ndarray, policy_name: str, settings: SimSettings,
               keep_table: bool = False, policy: Policy | None = None, planned: Profile | None = None,
               initial: Decision | None = None) -> SimResult:
    """Simulate ``arrivals`` under the adapter's policy ``policy_name`` (or ``policy``, built
    by the caller with :func:`policy_context`, e.g. to watch its internals). ``planned``: the
    profile the policy plans on and calibration corrects, when the host is not ``profile``'s
    (``profile`` then gives the service times). ``initial``: what serves before the first
    decision (``SimConfig.first_decision_s``)."""
    from varipipe.adapter.policies import make_policy
    from varipipe.adapter.predictors import make_predictor

    if policy is None:
        policy = make_policy(policy_name, policy_context(planned or profile, settings),
                             **_policy_options(policy_name, settings, arrivals))
    forecaster = predictor_forecaster(make_predictor(settings.predictor), horizon_s=settings.interval_s)
    return simulate(profile, arrivals, policy, forecaster, settings.sim_config(), keep_table=keep_table,
                    planned=planned, initial=initial)


def live_start(pipeline: str, interval_s: float, seed: int, lead_s: float = 0.0) -> tuple[float, Decision]:
    """A live start: when the control loop first steps (``lead_s`` idle seconds before the traffic,
    then a phase of its interval drawn from ``seed``) and what serves until then (the spec's
    default decision, as ``varipipe serve`` deploys it). For ``SimConfig.first_decision_s`` and
    ``run_policy(initial=...)``; the arrivals are shifted by ``lead_s`` by the caller."""
    from varipipe.pipelines.serve_config import default_decision
    from varipipe.spec import find_spec

    phase = float(np.random.default_rng([LOOP_PHASE_SEED, seed]).uniform(0.0, interval_s))
    return lead_s + phase, default_decision(find_spec(pipeline))


def write_request_table(table: RequestTable, path: str | Path) -> None:
    """One CSV row per request: arrival, completion or drop, accuracy, and per stage when it
    entered, when it finished and the batch it joined (for a fan-out stage: its first item's
    batch and its last item's completion)."""
    n = len(table.arrival_s)
    cols: dict[str, np.ndarray] = {"request": np.arange(n), "arrival_s": table.arrival_s, "done_s": table.done_s,
                                   "dropped": table.dropped.astype(int), "accuracy": table.accuracy}
    for name, parent, arr, done, batch in zip(table.stage_names, table.item_parent, table.item_arrival_s,
                                              table.item_done_s, table.item_batch, strict=True):
        first = np.searchsorted(parent, np.arange(n))
        has = first < len(parent)
        has[has] = parent[first[has]] == np.arange(n)[has]
        idx = np.minimum(first, max(len(parent) - 1, 0))
        last_done = np.full(n, -np.inf)
        np.maximum.at(last_done, parent, np.nan_to_num(done, nan=-np.inf))
        cols[f"{name}_in_s"] = np.where(has, arr[idx], np.nan)
        cols[f"{name}_done_s"] = np.where(has & np.isfinite(last_done), last_done, np.nan)
        cols[f"{name}_batch"] = np.where(has, batch[idx], -1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(cols))
        w.writerows(zip(*(c.tolist() for c in cols.values()), strict=True))
