"""The exact dynamic program over stages, pruned by bounds (the default backend).

Before it starts, each stage keeps only the rows that fit with the least the other
stages use and that no other row of the stage dominates (≤ use of every
constraint, ≥ score). Stage by stage it then extends every kept partial choice by
every kept row of the next stage and drops a partial choice when

* even the least each later stage can add breaks a constraint (suffix minima);
* an upper bound on what it can complete to cannot reach the incumbent. Two bounds,
  the smaller counts: the Lagrangian one (for any multipliers μ ≥ 0, a completion
  whose use W keeps U + W ≤ B scores at most Σ_{later s} max_r (score_r − μ·use_r)
  + μ·(B − U), weak duality, so any μ gives a valid bound and a good one a tighter
  bound) and the ladder (:class:`_Ladder`: the same with the constraint of the
  largest multiplier, the SLA's latency on every instance measured, kept rather
  than priced);
* another kept partial choice has at most its use in every constraint and at
  least its score (Pareto dominance).

None of these can drop the optimum, so the DP is exact. μ comes from a few sweeps
of coordinate bisection on the Lagrangian dual. The incumbent comes from a narrow
pass first (the same DP keeping a few partial choices a stage, those of the
highest bounds: a feasible choice, often the best) and from completing each
partial choice with the stages' Lagrangian choices. On the 9-stage instances of
``benchmarks/solve_time.py`` (2026-12-07) the exact pass then keeps a few dozen
partial choices a stage and compares at most a few hundred; past
``MAX_CANDIDATES`` the caller hands the program to a MIP solver. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
# Pareto pruning compares this many states at once (memory: chunk × frontier booleans). On
# benchmarks/solve_time.py's 9-stage instances 64 and 128 solved alike, 512 ~1 ms slower.
_PARETO_CHUNK = 128
# A stage's extensions that pass the bounds, beyond which the DP gives the program up to a MIP
# solver (exact too): its Pareto step compares each with the frontier kept so far, so its time
# grows with both. Before the row dominance, the ladder and the narrow pass (2026-12-07,
# benchmarks/README.md "Solve time"), instances with 6,600-47,000 extensions took the DP
# 0.3-1.7 s against HiGHS's 74-111 ms; since, no stage of 80 instances (seeds 0 and 1) passes
# 1,000, so this is a guard against programs unlike them.
MAX_CANDIDATES = 5000
# Steps of the ladder bound (_Ladder): finer is tighter (rounding loses at most one step a
# stage) and slower to build (S × rows × steps). 256-512 solved the 9-stage instances fastest
# (2026-12-07: median 14-15 ms, p95 19 ms; 1,024 17 / 21 ms).
_RUNGS = 512
# Relative margin by which the ladder rounds a row's steps down and a partial choice's room
# up, so that float error cannot make the bound too tight.
_LADDER_EPS = 1e-9
# Partial choices per stage of the narrow pass that finds the exact pass's first incumbent
# (per ranking, _Search._widest). On the 9-stage instances: p95 27 ms without the pass,
# 18.5-18.7 ms at 8-32, 22 ms at 64.
_BEAM_WIDTH = 16


class TooManyStates(Exception):
    """A stage of the DP would compare more than its ``max_candidates`` partial choices."""


def _padded(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The rows a best choice needs, packed per stage: (S, n) scores with −inf in the padding,
    (S, n, D) use with 0 there, (S, n) mask of the real rows, (S, n) each one's row in the
    problem. None when a stage has no row that can be part of a feasible choice.

    A stage's rows are those that fit with the least the other stages use
    (:meth:`Problem.alone`) and that no other such row of the stage dominates (≤ use of every
    constraint, ≥ score): a choice through a dominated row stays feasible and scores no less
    through the row that dominates it. On benchmarks/solve_time.py's 9-stage instances that
    kept 25-70 of a stage's 150-420 rows."""
    kept = []
    for st, alone in zip(problem.options, problem.alone(), strict=True):
        rows = np.flatnonzero(alone)
        if rows.size == 0:
            return None
        kept.append(np.sort(rows[_pareto(st.score[rows], st.use[rows])]))
    n = max(r.size for r in kept)
    shape = (len(problem.stages), n)
    v = np.full(shape, -np.inf)
    u = np.zeros((*shape, len(problem.constraints)))
    ok = np.zeros(shape, dtype=bool)
    index = np.zeros(shape, dtype=int)
    for i, (st, rows) in enumerate(zip(problem.options, kept, strict=True)):
        k = rows.size
        v[i, :k], u[i, :k], ok[i, :k], index[i, :k] = st.score[rows], st.use[rows], True, rows
    return v, u, ok, index


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


def _covered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out[j, i]``: ``b[i]`` uses no more than ``a[j]`` of every constraint. One constraint at a
    time: a (j, i, D) comparison reduced over D took several times longer than D (j, i) ones."""
    out = np.ones((a.shape[0], b.shape[0]), dtype=bool)
    for d in range(a.shape[1]):
        out &= b[None, :, d] <= a[:, None, d]
    return out


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
        dominated = _covered(chunk, frontier).any(axis=1)
        covers = _covered(chunk, chunk)  # [j, i]: chunk state i uses ≤ state j
        covers &= np.arange(stop - start)[None, :] < np.arange(stop - start)[:, None]  # i earlier
        dominated |= covers.any(axis=1)
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


@dataclass(frozen=True)
class _Ladder:
    """A tighter bound on what the later stages add: the Lagrangian relaxation of every
    constraint but one, ``d``, which is kept on a ladder of ``_RUNGS`` steps.

    ``best[i, g]`` is the most Σ_{j>i} (score − μ'·use) (μ' is μ with μ_d = 0) over the later
    stages' rows whose use of d above each stage's least, counted in whole steps rounded down,
    sums to at most g. A completion that keeps Σ use_d within the budget sums its rounded-down
    steps within the budget's steps (Σ⌊x⌋ ≤ ⌊Σx⌋), so the bound is valid; rounding costs at most
    one step a stage. On benchmarks/solve_time.py's instances, kept on the SLA's latency, it
    halved the partial choices the exact pass keeps."""

    d: int
    step: float
    least: np.ndarray  # (S,) what the later stages use of d at the least
    best: np.ndarray  # (S, _RUNGS + 1)
    mu: np.ndarray  # μ'

    @classmethod
    def of(cls, v: np.ndarray, u: np.ndarray, ok: np.ndarray, bounds: np.ndarray, mu: np.ndarray) -> _Ladder | None:
        least = np.where(ok[:, :, None], u, np.inf).min(axis=1)  # (S, D)
        room = bounds - least.sum(axis=0)
        weight = mu * np.where(room > 0, room, 0.0)
        if not (weight > 0).any():
            return None  # no constraint has a multiplier: the Lagrangian bound is already exact
        d = int(np.argmax(weight))
        step = room[d] / _RUNGS
        mu_other = mu.copy()
        mu_other[d] = 0.0
        reduced = np.where(ok, v - u @ mu_other, -np.inf)
        best = np.full((v.shape[0], _RUNGS + 1), -np.inf)
        best[-1] = 0.0  # nothing after the last stage
        rungs = np.arange(_RUNGS + 1)
        for i in range(v.shape[0] - 1, 0, -1):
            cols = np.flatnonzero(ok[i])
            # A row's steps rounded down, a hair lower still, so that float error cannot round up.
            k = np.floor((u[i, cols, d] - least[i, d]) / step * (1 - _LADDER_EPS)).astype(int)
            k = np.maximum(k, 0)
            below = rungs[None, :] - k[:, None]
            reach = np.where(below >= 0, best[i][np.maximum(below, 0)] + reduced[i, cols][:, None], -np.inf)
            best[i - 1] = reach.max(axis=0)
        return cls(d, step, _suffix(least[:, d]), best, mu_other)

    def bound(self, i: int, score: np.ndarray, use: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """The most a partial choice through stage ``i`` (``score``, ``use``) can complete to."""
        steps = (bounds[self.d] - use[:, self.d] - self.least[i]) / self.step * (1 + _LADDER_EPS)
        g = np.clip(np.floor(steps + _LADDER_EPS), -1, _RUNGS).astype(int)
        rest = np.where(g >= 0, self.best[i][np.maximum(g, 0)], -np.inf)
        return score + rest + (bounds - use) @ self.mu


@dataclass(frozen=True)
class _Search:
    """One problem's padded rows, multipliers and bounds: what every pass of the DP reads."""

    v: np.ndarray
    u: np.ndarray
    ok: np.ndarray
    bounds: np.ndarray
    mu: np.ndarray
    # At each of _INCUMBENT_SCALES × μ, (S,): the Lagrangian bound on what the stages after i add, less μ·B.
    scaled_rest: list[np.ndarray]
    least_rest: np.ndarray  # (S, D) the least the stages after i use
    completions: list[tuple[np.ndarray, np.ndarray]]
    stages: tuple[str, ...]
    index: np.ndarray  # (S, n) the problem's row of each packed row
    ladder: _Ladder | None

    @classmethod
    def of(cls, problem: Problem) -> _Search | None:
        """None when some stage has no row that can be part of a feasible choice."""
        packed = _padded(problem)
        if packed is None:
            return None
        v, u, ok, index = packed
        finite = np.isfinite(problem.bounds)  # a constraint bounded by +inf cannot bind: left out
        u, bounds = u[:, :, finite], problem.bounds[finite] + TOLERANCE
        dual = _Dual(v, u, bounds)
        mu = dual.multipliers(ok)
        scaled_rest = [_suffix(np.where(ok, v - u @ (mu * k), -np.inf).max(axis=1)) for k in _INCUMBENT_SCALES]
        return cls(v, u, ok, bounds, mu, scaled_rest,
                   _suffix(np.where(ok[:, :, None], u, np.inf).min(axis=1)), _completions(dual, mu),
                   problem.stages, index, _Ladder.of(v, u, ok, bounds, mu))

    @property
    def bound_rest(self) -> np.ndarray:
        """The Lagrangian bound at μ itself (the scale 1 of ``scaled_rest``)."""
        return self.scaled_rest[_INCUMBENT_SCALES.index(1.0)]

    def _widest(self, keep: np.ndarray, reach: np.ndarray, n_score: np.ndarray, n_use: np.ndarray, i: int,
                width: int) -> np.ndarray:
        """Of the partial choices ``keep``, the ``width`` of the highest bound ``reach`` and the
        ``width`` of the highest Lagrangian bound at each multiple of μ the completions use
        (larger multiples favour choices that use less: more of them complete feasibly)."""
        out = [keep[np.argsort(-reach[keep], kind="stable")[:width]]]
        for scale, rest in zip(_INCUMBENT_SCALES, self.scaled_rest, strict=True):
            scaled = n_score[keep] + rest[i] + (self.bounds - n_use[keep]) @ (self.mu * scale)
            out.append(keep[np.argsort(-scaled, kind="stable")[:width]])
        return np.unique(np.concatenate(out))

    def run(self, incumbent: float, width: int | None = None,
            max_candidates: int | None = None) -> tuple[float, tuple[int, ...]] | None:
        """The best complete choice scoring at least ``incumbent`` (to the tolerance), with its
        score; None when there is none. With ``width``, only the few partial choices
        :meth:`_widest` picks go on from each stage: a heuristic pass whose result is a feasible
        choice, not necessarily the best (nor, when it finds none, proof that there is none)."""
        bounds, mu = self.bounds, self.mu
        score, use = np.zeros(1), np.zeros((1, bounds.size))
        back: list[tuple[np.ndarray, np.ndarray]] = []
        for i, stage in enumerate(self.stages):
            cols = np.flatnonzero(self.ok[i])
            n_score = (score[:, None] + self.v[i, cols][None, :]).ravel()
            n_use = (use[:, None, :] + self.u[i, cols][None, :, :]).reshape(n_score.size, bounds.size)
            for rest_score, rest_use in self.completions:
                done = (n_use + rest_use[i] <= bounds).all(axis=1)
                if done.any():
                    incumbent = max(incumbent, float((n_score[done] + rest_score[i]).max()))
            reach = n_score + self.bound_rest[i] + (bounds - n_use) @ mu
            if self.ladder is not None:
                reach = np.minimum(reach, self.ladder.bound(i, n_score, n_use, bounds))
            keep = np.flatnonzero((n_use + self.least_rest[i] <= bounds).all(axis=1)
                                  & (reach >= incumbent - TOLERANCE))
            if keep.size == 0:
                return None
            if max_candidates is not None and keep.size > max_candidates:
                raise TooManyStates(f"stage {stage!r}: {keep.size} partial choices")
            if width is not None and keep.size > width:
                keep = self._widest(keep, reach, n_score, n_use, i, width)
            keep = keep[_pareto(n_score[keep], n_use[keep])]
            score, use = n_score[keep], n_use[keep]
            back.append((keep // cols.size, cols[keep % cols.size]))
        state = int(np.argmax(score))
        best = float(score[state])
        rows: list[int] = []
        for i, (parent, col) in reversed(list(enumerate(back))):
            rows.append(int(self.index[i, col[state]]))
            state = int(parent[state])
        return best, tuple(reversed(rows))


def solve_dp(problem: Problem, max_candidates: int | None = None) -> tuple[int, ...] | None:
    """The optimal row per stage, or None when no choice meets every constraint. With
    ``max_candidates``, raises :class:`TooManyStates` rather than compare more partial choices
    than that at one stage (the caller hands the program to another exact solver).

    A narrow pass first (``_BEAM_WIDTH`` partial choices a stage) finds a good choice; the
    exact pass then prunes against its score from the first stage on (the Lagrangian
    completions alone found the optimum's score only at the last stages)."""
    search = _Search.of(problem)
    if search is None:
        return None
    narrow = search.run(-math.inf, width=_BEAM_WIDTH)
    exact = search.run(-math.inf if narrow is None else narrow[0], max_candidates=max_candidates)
    return None if exact is None else exact[1]
