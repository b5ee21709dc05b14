"""The collapsed multiple-choice program every solver backend receives (DESIGN §5).

    max  Σ_s score_s[r_s]
    s.t. Σ_s use_s[r_s, d] ≤ bound_d      for every named constraint d
         r_s ∈ allowed_s                  one row (configuration) per stage

Each stage's configurations are rows of arrays: ``score`` (n,), ``use`` (n, D)
with one column per named constraint, ``allowed`` (n,) for the per-stage limits
(replica cap, one GPU's memory). A ``≥`` constraint (the accuracy floor) enters
negated. Pure data: no solver, no Configuration objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TOLERANCE", "StageOptions", "Problem"]

# Feasibility tolerance on every constraint sum (seconds, cores, GPUs, MiB, log-accuracy):
# a choice is feasible when Σ use ≤ bound + TOLERANCE, as the brute-force tests check.
TOLERANCE = 1e-9


@dataclass(frozen=True, eq=False)
class StageOptions:
    """One stage's configurations as columns: row ``i`` is the stage's ``i``-th configuration."""

    score: np.ndarray  # (n,) objective contribution
    use: np.ndarray  # (n, D) contribution to each constraint's sum
    allowed: np.ndarray  # (n,) bool: within the per-stage limits

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.allowed)


@dataclass(frozen=True, eq=False)
class Problem:
    """``max Σ score`` over one allowed row per stage, subject to ``Σ use[:, d] ≤ bounds[d]``."""

    stages: tuple[str, ...]
    options: tuple[StageOptions, ...]
    constraints: tuple[str, ...]  # names, one per column of ``use``
    bounds: np.ndarray  # (D,)

    def __post_init__(self) -> None:
        if len(self.options) != len(self.stages):
            raise ValueError(f"{len(self.options)} option tables for {len(self.stages)} stages")
        for st in self.options:
            if st.use.shape != (st.score.size, len(self.constraints)):
                raise ValueError(f"use has shape {st.use.shape}, expected ({st.score.size}, {len(self.constraints)})")

    @property
    def solvable(self) -> bool:
        """Every stage has at least one allowed row."""
        return all(st.allowed.any() for st in self.options)

    def totals(self, rows: Sequence[int]) -> np.ndarray:
        """Σ use of a complete choice, per constraint."""
        out = np.zeros(len(self.constraints))
        for st, r in zip(self.options, rows, strict=True):
            out += st.use[r]
        return out

    def value(self, rows: Sequence[int]) -> float:
        return float(sum(st.score[r] for st, r in zip(self.options, rows, strict=True)))

    def feasible(self, rows: Sequence[int]) -> bool:
        allowed = all(bool(st.allowed[r]) for st, r in zip(self.options, rows, strict=True))
        return allowed and bool((self.totals(rows) <= self.bounds + TOLERANCE).all())

    def alone(self) -> tuple[np.ndarray, ...]:
        """Per stage, the allowed rows that fit every bound together with the least every other
        stage adds (a necessary condition: no feasible choice uses another row)."""
        if not self.solvable:
            return tuple(np.zeros_like(st.allowed) for st in self.options)
        least = np.stack([st.use[st.allowed].min(axis=0) for st in self.options])
        rest = least.sum(axis=0) - least
        return tuple(st.allowed & (st.use + rest[i] <= self.bounds + TOLERANCE).all(axis=1)
                     for i, st in enumerate(self.options))

    def index(self, name: str) -> int | None:
        """The column of constraint ``name``, or None when the problem does not have it."""
        return self.constraints.index(name) if name in self.constraints else None
