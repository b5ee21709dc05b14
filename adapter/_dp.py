"""The exact dynamic program over stages, pruned by Lagrangian bounds (the default backend).

Stage by stage it extends every kept partial choice by every allowed row of the
next stage and drops a partial choice when

* even the least each later stage can add breaks a constraint (suffix minima);
* its Lagrangian upper bound cannot reach the incumbent: for any multipliers
  μ ≥ 0, a completion whose use W keeps U + W ≤ B scores at most
  Σ_{later s} max_r (score_r − μ·use_r) + μ·(B − U) (weak duality), so the bound
  is valid whatever μ is; a good μ only makes it tighter;
* another kept partial choice has at most its use in every constraint and at
  least its score (Pareto dominance).

None of the three can drop the optimum, so the DP is exact. μ comes from a few
sweeps of coordinate bisection on the Lagrangian dual; the incumbent from
completing each partial choice with the stages' Lagrangian choices. On the
9 stages × 162 configurations instance of ``benchmarks/solve_time.py`` a few
states survived each stage; since configurations come at several replica counts
(the queueing wait, 2026-12-05) some instances keep hundreds and compare tens of
thousands, and past ``MAX_CANDIDATES`` the caller hands the program to a MIP
solver. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

from varipipe.adapter._problem import TOLERANCE, Problem

__all__ = ["solve_dp", "TooManyStates", "MAX_CANDIDATES"]

# Coordinate-bisection effort on the Lagrangian dual. Any μ gives a valid bound, so these
# trade solve time for tighter pruning only: 3 sweeps over the constraints, 20 halvings
# (μ to 1e-6 of its bracket). Measured: more of either did not shrink the kept states.
_SWEEPS = 3
_HALVINGS = 20
# Growth of the bracket while searching an upper end for one multiplier, and its cap.
_BRACKET_GROWTH = 8.0
_BRACKET_STEPS = 40
# Multiples of μ whose Lagrangian choices complete partial choices into incumbents:
# larger multiples choose rows that use less of every constraint (more likely feasible).
_INCUMBENT_SCALES = (1.0, 2.0, 4.0)
# Pareto pruning compares this many states at once (memory: chunk × frontier × D booleans).
_PARETO_CHUNK = 512
# A stage's extensions that pass the bounds, beyond which the DP gives the program up to a MIP
# solver (exact too): its Pareto step compares each with the frontier kept so far, so its time
# grows with both. On benchmarks/solve_time.py's 9-stage instances (2026-12-07), at 2,600-3,000
# extensions the DP took 160-245 ms and HiGHS 96-219 ms; at 6,600-47,000, 0.3-1.7 s against
# HiGHS's 74-111 ms.
MAX_CANDIDATES = 5000


class TooManyStates(Exception):
    """A stage of the DP would compare more than its ``max_candidates`` partial choices."""


def _padded(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, n) scores with −inf outside the rows that can be part of a feasible choice
    (:meth:`Problem.alone`), (S, n, D) use with 0 in the padding, (S, n) mask of those rows."""
    n = max(st.score.size for st in problem.options)
    d = len(problem.constraints)
    v = np.full((len(problem.stages), n), -np.inf)
    u = np.zeros((len(problem.stages), n, d))
    ok = np.zeros((len(problem.stages), n), dtype=bool)
    for i, (st, alone) in enumerate(zip(problem.options, problem.alone(), strict=True)):
        k = st.score.size
        ok[i, :k] = alone
        v[i, :k] = np.where(alone, st.score, -np.inf)
        u[i, :k] = st.use
    return v, u, ok


def _suffix(per_stage: np.ndarray) -> np.ndarray:
    """``out[i]`` = sum of ``per_stage[i+1:]`` (what the stages after i add), shape kept."""
    tail = np.cumsum(per_stage[::-1], axis=0)[::-1]
    return np.concatenate([tail[1:], np.zeros_like(tail[:1])])


class _Dual:
    """The Lagrangian dual L(μ) = Σ_s max_r (v − U·μ) + μ·B of the padded problem."""

    def __init__(self, v: np.ndarray, u: np.ndarray, bounds: np.ndarray) -> None:
        self.v, self.u, self.b = v, u, bounds
        self.stage_rows = np.arange(v.shape[0])

    def choice(self, mu: np.ndarray) -> np.ndarray:
        """Each stage's row maximising the reduced score at ``mu``."""
        return (self.v - self.u @ mu).argmax(axis=1)

    def value(self, mu: np.ndarray) -> float:
        return float((self.v - self.u @ mu).max(axis=1).sum() + mu @ self.b)

    def slope(self, mu: np.ndarray, d: int) -> float:
        """A subgradient of L along μ_d: B_d less the use of the maximising choice."""
        return float(self.b[d] - self.u[self.stage_rows, self.choice(mu), d].sum())

    def scale(self, ok: np.ndarray, d: int) -> float:
        """A μ_d at which constraint d starts to matter: the largest score spread per unit of use."""
        col = np.where(ok, self.u[:, :, d], np.nan)
        spread_u = np.nanmax(col, axis=1) - np.nanmin(col, axis=1)
        vv = np.where(ok, self.v, np.nan)
        spread_v = np.nanmax(vv, axis=1) - np.nanmin(vv, axis=1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.where(spread_u > 0, spread_v / spread_u, 0.0)
        top = float(ratio.max())
        return top if top > 0 and math.isfinite(top) else 1.0

    def bisect(self, mu: np.ndarray, d: int, start: float) -> float:
        """μ_d minimising L along coordinate d, others fixed (to the bisection's precision)."""
        trial = mu.copy()

        def slope(x: float) -> float:
            trial[d] = x
            return self.slope(trial, d)

        if slope(0.0) >= 0:
            return 0.0
        hi = start
        for _ in range(_BRACKET_STEPS):
            if slope(hi) >= 0:
                break
            hi *= _BRACKET_GROWTH
        lo = 0.0
        for _ in range(_HALVINGS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        return hi

    def multipliers(self, ok: np.ndarray) -> np.ndarray:
        mu = np.zeros(self.b.size)
        best = self.value(mu)
        for _ in range(_SWEEPS):
            for d in range(self.b.size):
                mu[d] = self.bisect(mu, d, mu[d] if mu[d] > 0 else self.scale(ok, d))
            value = self.value(mu)
            if value >= best - TOLERANCE:
                break
            best = value
        return mu


def _pareto(score: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Indices of states that no other state dominates (≤ use everywhere, ≥ score); of equal
    states the first is kept.

    In order of score (best first), a state is dominated when an earlier one uses no more of
    anything; dominance is transitive, so the earlier states to compare with are those kept so
    far (the frontier) and the earlier ones of its own chunk. Comparing with every earlier
    state instead was quadratic in the states: 47,000 of them at one stage of a 9-stage
    instance took 50 s (benchmarks/README.md, "Solve time")."""
    m = score.size
    if m <= 1:
        return np.arange(m)
    order = np.lexsort((use.sum(axis=1), -score))  # best score first, then least use
    u = use[order]
    kept: list[np.ndarray] = []  # positions in ``order`` of the frontier so far, chunk by chunk
    frontier = u[:0]
    for start in range(0, m, _PARETO_CHUNK):
        stop = min(m, start + _PARETO_CHUNK)
        chunk = u[start:stop]
        dominated = (frontier[None, :, :] <= chunk[:, None, :]).all(axis=2).any(axis=1)
        covers = (chunk[None, :, :] <= chunk[:, None, :]).all(axis=2)  # [j, i]: chunk state i uses ≤ state j
        earlier = np.arange(stop - start)[None, :] < np.arange(stop - start)[:, None]
        dominated |= (covers & earlier).any(axis=1)
        new = np.flatnonzero(~dominated) + start
        kept.append(new)
        frontier = np.concatenate([frontier, u[new]])
    return order[np.concatenate(kept)]


def _completions(dual: _Dual, mu: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Suffix (score, use) of completing with each stage's Lagrangian choice at multiples of μ."""
    out = []
    for scale in _INCUMBENT_SCALES:
        rows = dual.choice(mu * scale)
        out.append((_suffix(dual.v[dual.stage_rows, rows]), _suffix(dual.u[dual.stage_rows, rows])))
    return out


def solve_dp(problem: Problem, max_candidates: int | None = None) -> tuple[int, ...] | None:
    """The optimal row per stage, or None when no choice meets every constraint. With
    ``max_candidates``, raises :class:`TooManyStates` rather than compare more partial choices
    than that at one stage (the caller hands the program to another exact solver)."""
    v, u, alone = _padded(problem)
    bounds = problem.bounds + TOLERANCE
    if not alone.any(axis=1).all():
        return None
    dual = _Dual(v, u, bounds)
    mu = dual.multipliers(alone)
    bound_rest = _suffix(np.where(alone, v - u @ mu, -np.inf).max(axis=1))
    least_rest = _suffix(np.where(alone[:, :, None], u, np.inf).min(axis=1))
    completions = _completions(dual, mu)
    incumbent = -math.inf
    score, use = np.zeros(1), np.zeros((1, bounds.size))
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(len(problem.stages)):
        cols = np.flatnonzero(alone[i])
        n_score = (score[:, None] + v[i, cols][None, :]).ravel()
        n_use = (use[:, None, :] + u[i, cols][None, :, :]).reshape(n_score.size, bounds.size)
        for rest_score, rest_use in completions:
            done = (n_use + rest_use[i] <= bounds).all(axis=1)
            if done.any():
                incumbent = max(incumbent, float((n_score[done] + rest_score[i]).max()))
        keep = np.flatnonzero((n_use + least_rest[i] <= bounds).all(axis=1)
                              & (n_score + bound_rest[i] + (bounds - n_use) @ mu >= incumbent - TOLERANCE))
        if keep.size == 0:
            return None
        if max_candidates is not None and keep.size > max_candidates:
            raise TooManyStates(f"stage {problem.stages[i]!r}: {keep.size} partial choices")
        keep = keep[_pareto(n_score[keep], n_use[keep])]
        score, use = n_score[keep], n_use[keep]
        back.append((keep // cols.size, cols[keep % cols.size]))
    state = int(np.argmax(score))
    rows: list[int] = []
    for parent, row in reversed(back):
        rows.append(int(row[state]))
        state = int(parent[state])
    return tuple(reversed(rows))
