"""Every configuration of every stage at its load, as columns (DESIGN §5, collapsed formulation).

The same constants as :mod:`configurations` documents (replicas, batch wait,
latency, cost), computed with numpy over all rows at once: the optimizer prices
1,458 configurations per solve on the 9 × 9 × 6 × 3 instance, and building a
:class:`Configuration` object for each took longer than solving. A row becomes a
:class:`Configuration` only when asked (the chosen ones, the runners-up).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from varipipe.adapter.configurations import (
    _CEIL_EPS,
    Configuration,
    Limits,
    _group_points,
    _priced_group,
)
from varipipe.errors import UnknownNameError
from varipipe.records import Profile, ProfilePoint, hardware_cores

__all__ = ["StageRows", "StageTable", "stage_rows", "stage_tables"]


@dataclass(frozen=True, eq=False)
class StageRows:
    """A stage's configurations before its load is applied: the profile's columns, pins and
    hardware applied, in the order :func:`configurations.stage_configurations` lists them."""

    stage: str
    variant: tuple[str, ...]
    hardware: tuple[str, ...]
    batch: np.ndarray  # int
    latency_p99_s: np.ndarray
    latency_mean_s: np.ndarray
    throughput_rps: np.ndarray
    accuracy: np.ndarray
    memory_mb: np.ndarray
    interpolated: np.ndarray  # bool
    cores: np.ndarray  # what a replica reserves of the CPU (0 on a GPU)
    price: np.ndarray  # what a replica costs in reserved mode

    def at(self, load: float, limits: Limits) -> StageTable:
        """The rows priced at stage load ``load``: replicas, batch wait and cost (module docstring)."""
        fixed = limits.fixed_replicas.get(self.stage)
        if fixed is not None:
            replicas = np.full(self.batch.size, fixed, dtype=int)
        else:
            replicas = np.maximum(1, np.ceil(load / (limits.rho_max * self.throughput_rps) - _CEIL_EPS)).astype(int)
        if load <= 0:
            wait = np.where(self.batch <= 1, 0.0, limits.max_batch_wait_s)
        else:
            wait = np.where(self.batch <= 1, 0.0,
                            np.minimum((self.batch - 1) * replicas / load, limits.max_batch_wait_s))
        if limits.cost_mode == "reserved":
            cost = self.price * replicas
        else:
            cost = load * self.cores * self.latency_mean_s / self.batch
        return StageTable(self, load, replicas, wait, cost)


@dataclass(frozen=True, eq=False)
class StageTable(Sequence[Configuration]):
    """One stage's configurations at load ``load_rps``: row ``i`` is ``table[i]``."""

    rows: StageRows
    load_rps: float
    replicas: np.ndarray  # int
    batch_wait_s: np.ndarray
    cost: np.ndarray

    @property
    def stage(self) -> str:
        return self.rows.stage

    @property
    def batch(self) -> np.ndarray:
        return self.rows.batch

    @property
    def accuracy(self) -> np.ndarray:
        return self.rows.accuracy

    @property
    def throughput_rps(self) -> np.ndarray:
        return self.rows.throughput_rps

    @property
    def latency_s(self) -> np.ndarray:
        """What each row adds to the end-to-end p99: batch latency plus batch wait."""
        return self.rows.latency_p99_s + self.batch_wait_s

    def within(self, limits: Limits) -> np.ndarray:
        """Rows that carry the stage's load within the replica cap (:func:`within_replica_limit`)."""
        carried = limits.rho_max * self.throughput_rps * self.replicas >= self.load_rps * (1 - _CEIL_EPS)
        return (self.replicas <= limits.max_replicas) & carried

    def __len__(self) -> int:
        return len(self.rows.variant)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        r = self.rows
        return Configuration(
            r.stage, r.variant[i], int(r.batch[i]), r.hardware[i], float(r.latency_p99_s[i]),
            float(r.latency_mean_s[i]), float(r.throughput_rps[i]), float(r.accuracy[i]), self.load_rps,
            int(self.replicas[i]), float(self.batch_wait_s[i]), float(self.cost[i]), bool(r.interpolated[i]))

    def __iter__(self) -> Iterator[Configuration]:
        return (self[i] for i in range(len(self)))


@dataclass
class _Columns:
    """Rows gathered as lists, before they become a :class:`StageRows`."""

    variant: list[str]
    hardware: list[str]
    batch: list[int]
    p99: list[float]
    mean: list[float]
    throughput: list[float]
    accuracy: list[float]
    memory: list[float]
    interpolated: list[bool]

    @classmethod
    def of(cls, points: list[ProfilePoint]) -> _Columns:
        return cls([p.variant for p in points], [p.hardware for p in points], [p.batch for p in points],
                   [p.latency_p99_s for p in points], [p.mean_latency_s for p in points],
                   [p.throughput_rps for p in points], [p.accuracy for p in points], [p.memory_mb for p in points],
                   [False] * len(points))

    def rows(self, stage: str, limits: Limits) -> StageRows:
        labels = {h: (hardware_cores(h), hardware_cores(h) if h.startswith("cpu") else limits.gpu_cost)
                  for h in set(self.hardware)}
        return StageRows(stage, tuple(self.variant), tuple(self.hardware), np.array(self.batch, dtype=int),
                         np.array(self.p99, dtype=float), np.array(self.mean, dtype=float),
                         np.array(self.throughput, dtype=float), np.array(self.accuracy, dtype=float),
                         np.array(self.memory, dtype=float), np.array(self.interpolated, dtype=bool),
                         np.array([labels[h][0] for h in self.hardware], dtype=float),
                         np.array([labels[h][1] for h in self.hardware], dtype=float))


def _measured(points: list[ProfilePoint]) -> _Columns:
    """The profile's own points, grouped by (variant, hardware) in first-seen order, by batch within."""
    groups: dict[tuple[str, str], int] = {}
    for p in points:
        groups.setdefault((p.variant, p.hardware), len(groups))
    return _Columns.of(sorted(points, key=lambda p: (groups[p.variant, p.hardware], p.batch)))


def _with_batch_sizes(points: list[ProfilePoint], batch_sizes: tuple[int, ...]) -> _Columns:
    """Rows at the operator's batch sizes: measured, or priced by the fitted latency model."""
    out = _Columns([], [], [], [], [], [], [], [], [])
    for (variant, hardware), by_batch in _group_points(tuple(points)).items():
        for q in _priced_group(variant, hardware, by_batch, batch_sizes):
            # An unmeasured batch lies inside the measured range; memory grows with the batch, so
            # the next measured batch's memory bounds it from above.
            mem = by_batch[min(b for b in by_batch if b >= q.batch)].memory_mb
            row = (variant, hardware, q.batch, q.p99, q.mean, q.throughput, q.accuracy, mem, q.interpolated)
            for column, value in zip((getattr(out, f.name) for f in dataclasses.fields(out)), row, strict=True):
                column.append(value)
    return out


def _wanted(points: list[ProfilePoint], stage: str, limits: Limits) -> list[ProfilePoint]:
    pinned = limits.pinned.get(stage)
    if pinned is not None and pinned not in {p.variant for p in points}:
        raise UnknownNameError(f"variant of stage {stage!r} (pinned)", pinned, sorted({p.variant for p in points}))
    return [p for p in points if (pinned is None or p.variant == pinned)
            and (limits.hardware is None or p.hardware in limits.hardware)]


def stage_rows(profile: Profile, limits: Limits) -> dict[str, StageRows]:
    """Each stage's rows, pins and hardware applied (one pass over the profile's points)."""
    by_stage: dict[str, list[ProfilePoint]] = {s: [] for s in profile.stages}
    for p in profile.points:
        by_stage[p.stage].append(p)
    for stage in limits.pinned:
        if stage not in by_stage:
            raise UnknownNameError(f"stage in profile {profile.pipeline!r} (pinned)", stage, profile.stages)
    out = {}
    for stage, points in by_stage.items():
        wanted = _wanted(points, stage, limits)
        cols = _measured(wanted) if limits.batch_sizes is None else _with_batch_sizes(wanted, limits.batch_sizes)
        out[stage] = cols.rows(stage, limits)
    return out


def stage_tables(profile: Profile, loads: dict[str, float], limits: Limits) -> dict[str, StageTable]:
    """Each stage's table at its load ``loads[stage]``. Includes rows beyond the replica cap;
    :meth:`StageTable.within` marks them."""
    return {s: rows.at(loads[s], limits) for s, rows in stage_rows(profile, limits).items()}

