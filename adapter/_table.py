"""Every configuration of every stage at its load, as columns (DESIGN §5, collapsed formulation).

The constants :mod:`configurations` documents (replicas, batch wait, latency,
busy time, cost, what each row uses of the cores and the GPUs), computed with
numpy over all rows at once: the optimizer prices 1,458 configurations per solve
on the 9 × 9 × 6 × 3 instance, and building a :class:`Configuration` object for
each took longer than solving. A row becomes a :class:`Configuration` only when
asked (the chosen ones, the runners-up, :func:`configurations.stage_configurations`).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from varipipe.adapter.configurations import _CEIL_EPS, Configuration, Limits, is_gpu
from varipipe.adapter.latency_model import fit_latency_model
from varipipe.adapter.queueing import latency_cv2, wait_quantile_s
from varipipe.errors import UnknownNameError
from varipipe.records import Profile, ProfilePoint, hardware_cores, replica_price

__all__ = ["StageRows", "StageTable", "stage_rows", "stage_tables", "UTILISATION_LEVELS", "DEFAULT_PERCENTILE"]

# Replica counts a configuration is offered at besides the cheapest (``rho_max``): the
# counts that keep each replica at or below these utilisations, so the optimizer can buy
# a shorter queue with replicas instead of a cheaper variant (``queueing``). Their p99 wait
# for the vision-caption detector at 34 ms a request: 3.2 / 1.3 / 0.9 / 0.6 service times
# at 0.6 / 0.4 / 0.2 / 0.1 (adapter.queueing); below 0.1 it is little more than the batch's
# own time, so no lower level is offered.
UTILISATION_LEVELS = (0.6, 0.4, 0.2, 0.1)
# The percentile queueing waits are priced at when none is given: the SLA's default (p99).
DEFAULT_PERCENTILE = 99.0
# A p100 SLA: no Poisson queue has a finite largest wait, so its queues are priced at p99.9.
_MAX_WAIT_PERCENTILE = 99.9


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
    price: np.ndarray  # what a replica costs (records.replica_price)
    on_gpu: np.ndarray  # bool
    latency_cv2: np.ndarray  # squared coefficient of variation of a batch's time (queueing.latency_cv2)

    def take(self, idx: np.ndarray) -> StageRows:
        """The rows at positions ``idx`` (repeats allowed), every column alike."""
        cols = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return StageRows(**{k: (v if k == "stage" else tuple(v[i] for i in idx) if isinstance(v, tuple) else v[idx])
                            for k, v in cols.items()})

    def _replica_options(self, load: float, limits: Limits) -> tuple[StageRows, np.ndarray]:
        """Each row at the cheapest replica count that carries ``load`` at ``rho_max``, and at the
        larger counts that keep a replica at ``UTILISATION_LEVELS`` (distinct counts only, in
        that order, right after it); a fixed replica count (rim) is the only one offered."""
        fixed = limits.fixed_replicas.get(self.stage)
        if fixed is not None:
            return self, np.full(self.batch.size, fixed, dtype=int)
        levels = (limits.rho_max, *(r for r in UTILISATION_LEVELS if r < limits.rho_max))
        with np.errstate(divide="ignore"):
            counts = np.stack([np.maximum(1, np.ceil(load / (rho * self.throughput_rps) - _CEIL_EPS))
                               for rho in levels], axis=1).astype(int)  # (rows, levels), non-decreasing
        new = np.ones(counts.shape, dtype=bool)
        new[:, 1:] = counts[:, 1:] > counts[:, :-1]
        row, level = np.nonzero(new)  # row-major: each row's counts together, cheapest first
        if len(row) == self.batch.size:
            return self, counts[:, 0]
        return self.take(row), counts[row, level]

    def at(self, load: float, limits: Limits, percentile: float = DEFAULT_PERCENTILE) -> StageTable:
        """The rows priced at stage load ``load``: replicas, batch wait, the ``percentile`` of the
        queueing wait, and cost (module docstring)."""
        rows, replicas = self._replica_options(load, limits)
        return rows._priced(load, limits, replicas, min(percentile, _MAX_WAIT_PERCENTILE))

    def _priced(self, load: float, limits: Limits, replicas: np.ndarray, percentile: float) -> StageTable:
        if load <= 0:
            wait = np.where(self.batch <= 1, 0.0, limits.max_batch_wait_s)
        else:
            with np.errstate(over="ignore"):  # a load of 1e-300 rps waits the whole timeout
                wait = np.where(self.batch <= 1, 0.0,
                                np.minimum((self.batch - 1) * replicas / load, limits.max_batch_wait_s))
        busy = load * self.latency_mean_s / self.batch
        cost = self.price * (replicas if limits.cost_mode == "reserved" else busy)
        queue = wait_quantile_s(load, replicas, self.batch, self.latency_mean_s, self.latency_cv2, percentile)
        return StageTable(self, load, limits.cost_mode, replicas, wait, busy, cost, queue)


@dataclass(frozen=True, eq=False)
class StageTable(Sequence[Configuration]):
    """One stage's configurations at load ``load_rps``: row ``i`` is ``table[i]``."""

    rows: StageRows
    load_rps: float
    cost_mode: str
    replicas: np.ndarray  # int
    batch_wait_s: np.ndarray
    busy: np.ndarray  # seconds of its hardware busy per second, λ·l̄/b
    cost: np.ndarray
    queue_wait_s: np.ndarray  # a formed batch's wait for its replica at the percentile (queueing)

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
    def on_gpu(self) -> np.ndarray:
        return self.rows.on_gpu

    @property
    def latency_s(self) -> np.ndarray:
        """What each row adds to the end-to-end p99: batch latency, batch wait and queueing wait."""
        return self.rows.latency_p99_s + self.batch_wait_s + self.queue_wait_s

    @property
    def cpu_use(self) -> np.ndarray:
        """Use of the cores (``cluster_capacity``): cores reserved, or CPU-seconds per second."""
        return self.rows.cores * (self.replicas if self.cost_mode == "reserved" else self.busy)

    @property
    def gpu_use(self) -> np.ndarray:
        """Use of the GPUs (``gpu_count`` / ``gpu_time``): GPUs reserved, or GPU-seconds per second."""
        return np.where(self.on_gpu, self.replicas if self.cost_mode == "reserved" else self.busy, 0.0)

    @property
    def gpu_memory_use(self) -> np.ndarray:
        """GPU memory of all of a row's replicas, MiB (``gpu_memory``, shared mode)."""
        return np.where(self.on_gpu, self.replicas * self.rows.memory_mb, 0.0)

    def within(self, limits: Limits) -> np.ndarray:
        """Rows within the per-stage limits (:func:`configurations.within_stage_limits`)."""
        carried = limits.rho_max * self.throughput_rps * self.replicas >= self.load_rps * (1 - _CEIL_EPS)
        return (self.replicas <= limits.max_replicas) & carried & self.fits_gpu(limits)

    def fits_gpu(self, limits: Limits) -> np.ndarray:
        """False for GPU rows whose replica needs more memory than one GPU has."""
        if limits.gpu_memory_mb is None:
            return np.ones(len(self), dtype=bool)
        return ~self.on_gpu | (self.rows.memory_mb <= limits.gpu_memory_mb)

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
            int(self.replicas[i]), float(self.batch_wait_s[i]), float(self.cost[i]), bool(r.interpolated[i]),
            float(r.memory_mb[i]), float(self.queue_wait_s[i]))

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
    def of(cls, points: list[ProfilePoint], profile: Profile) -> _Columns:
        return cls([p.variant for p in points], [p.hardware for p in points], [p.batch for p in points],
                   [p.latency_p99_s for p in points], [p.mean_latency_s for p in points],
                   [p.throughput_rps for p in points], [profile.variant_accuracy(p.stage, p.variant) for p in points],
                   [p.memory_mb for p in points], [False] * len(points))

    def rows(self, stage: str) -> StageRows:
        labels = {h: (hardware_cores(h), replica_price(h), is_gpu(h)) for h in set(self.hardware)}
        return StageRows(stage, tuple(self.variant), tuple(self.hardware), np.array(self.batch, dtype=int),
                         np.array(self.p99, dtype=float), np.array(self.mean, dtype=float),
                         np.array(self.throughput, dtype=float), np.array(self.accuracy, dtype=float),
                         np.array(self.memory, dtype=float), np.array(self.interpolated, dtype=bool),
                         np.array([labels[h][0] for h in self.hardware], dtype=float),
                         np.array([labels[h][1] for h in self.hardware], dtype=float),
                         np.array([labels[h][2] for h in self.hardware], dtype=bool),
                         latency_cv2(np.array(self.mean, dtype=float), np.array(self.p99, dtype=float)))


def _measured(points: list[ProfilePoint], profile: Profile) -> _Columns:
    """The profile's own points, grouped by (variant, hardware) in first-seen order, by batch within."""
    groups: dict[tuple[str, str], int] = {}
    for p in points:
        groups.setdefault((p.variant, p.hardware), len(groups))
    return _Columns.of(sorted(points, key=lambda p: (groups[p.variant, p.hardware], p.batch)), profile)


@dataclass(frozen=True)
class _Priced:
    """A profile point or a latency-model estimate at one batch size, before load is applied."""

    batch: int
    p99: float
    mean: float
    throughput: float
    memory: float
    interpolated: bool


def _group_points(points: list[ProfilePoint]) -> dict[tuple[str, str], dict[int, ProfilePoint]]:
    groups: dict[tuple[str, str], dict[int, ProfilePoint]] = {}
    for p in points:
        groups.setdefault((p.variant, p.hardware), {})[p.batch] = p
    return groups


def _priced_group(by_batch: dict[int, ProfilePoint], batch_sizes: tuple[int, ...]) -> list[_Priced]:
    """The wanted batch sizes of one (variant, hardware): measured ones as measured, missing
    ones inside the measured range from the fitted latency model (never extrapolated)."""
    measured = sorted(by_batch)
    wanted = sorted(set(batch_sizes))
    out = [_Priced(b, p.latency_p99_s, p.mean_latency_s, p.throughput_rps, p.memory_mb, False)
           for b in wanted if b in by_batch for p in (by_batch[b],)]
    missing = [b for b in wanted if b not in by_batch and measured[0] <= b <= measured[-1]]
    if missing and len(measured) >= 2:
        pts = [by_batch[b] for b in measured]
        p99 = fit_latency_model(measured, [p.latency_p99_s for p in pts])
        mean = fit_latency_model(measured, [p.mean_latency_s for p in pts])
        for b in missing:
            m = mean.latency(b)
            # Memory grows with the batch, so the next measured batch's memory bounds it from above.
            memory = by_batch[min(c for c in measured if c >= b)].memory_mb
            out.append(_Priced(b, max(p99.latency(b), m), m, b / m, memory, True))
    return sorted(out, key=lambda q: q.batch)


def _with_batch_sizes(points: list[ProfilePoint], batch_sizes: tuple[int, ...], profile: Profile) -> _Columns:
    """Rows at the operator's batch sizes: measured, or priced by the fitted latency model."""
    out = _Columns([], [], [], [], [], [], [], [], [])
    for (variant, hardware), by_batch in _group_points(points).items():
        accuracy = profile.variant_accuracy(points[0].stage, variant)
        for q in _priced_group(by_batch, batch_sizes):
            row = (variant, hardware, q.batch, q.p99, q.mean, q.throughput, accuracy, q.memory, q.interpolated)
            for column, value in zip((getattr(out, f.name) for f in dataclasses.fields(out)), row, strict=True):
                column.append(value)
    return out


def _wanted(points: list[ProfilePoint], stage: str, limits: Limits) -> list[ProfilePoint]:
    pinned = limits.pinned.get(stage)
    if pinned is not None and pinned not in {p.variant for p in points}:
        raise UnknownNameError(f"variant of stage {stage!r} (pinned)", pinned, sorted({p.variant for p in points}))
    out = [p for p in points if (pinned is None or p.variant == pinned)
           and (limits.hardware is None or p.hardware in limits.hardware)]
    if not out:
        raise UnknownNameError(f"hardware of stage {stage!r}" + (f" (variant {pinned!r})" if pinned else ""),
                               ", ".join(limits.hardware or ()), sorted({p.hardware for p in points}))
    return out


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
        cols = (_measured(wanted, profile) if limits.batch_sizes is None
                else _with_batch_sizes(wanted, limits.batch_sizes, profile))
        out[stage] = cols.rows(stage)
    return out


def stage_tables(profile: Profile, loads: dict[str, float], limits: Limits,
                 percentile: float = DEFAULT_PERCENTILE) -> dict[str, StageTable]:
    """Each stage's table at its load ``loads[stage]``. Includes rows beyond the replica cap;
    :meth:`StageTable.within` marks them."""
    return {s: rows.at(loads[s], limits, percentile) for s, rows in stage_rows(profile, limits).items()}

