"""A stage's ladder: its rungs sorted by cost, and what the labelled set says about adjacent rungs. Pure.

Given each rung's per-item outcomes on the same inputs (``benchmarks/ladder_accuracy.py``
measures them), ``compare`` picks the paired test that fits the outcome
(``paired``): a paired bootstrap over images for a set-level metric (mAP), an
exact McNemar test for right/wrong outcomes (top-1, exact match), a paired
bootstrap over items for graded scores. ``ladder`` sorts the rungs by cost
(batch-1 latency) and compares each with the next costlier one; a difference
is *claimed* only when the test resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from varipipe.profiler.detection_map import ImageMatches, MatchTable
from varipipe.profiler.paired import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    BootstrapResult,
    bootstrap_interval,
    mcnemar,
    paired_bootstrap,
)

__all__ = ["Rung", "Comparison", "Ladder", "compare", "compare_detection", "compare_outcomes", "ladder", "describe",
           "rung_interval", "dominated_by", "degraded_settings", "candidate_ladders",
           "BOOTSTRAP_TEST", "MCNEMAR_TEST", "ITEM_BOOTSTRAP_TEST"]

BOOTSTRAP_TEST = "paired bootstrap over images (95% percentile interval)"
MCNEMAR_TEST = "exact McNemar test on the paired right/wrong outcomes"
ITEM_BOOTSTRAP_TEST = "paired bootstrap over items of the mean score (95% percentile interval)"


@dataclass(frozen=True)
class Rung:
    """One variant's measured figure and cost, with the per-item outcomes behind the figure."""

    stage: str
    variant: str
    accuracy: float  # the stage figure the profiler stores (same function: evaluate.stage_accuracy)
    items: int
    latency_s: float  # batch-1 latency on cpu:1, median of this run's calls
    declared: float | None = None  # the published figure, when the spec declares one
    # per-item outcomes in input order: a list of ImageMatches (detection) or of scores in [0, 1]
    outcomes: Sequence[Any] = field(default_factory=tuple, repr=False)
    breakdown: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """A rung against the next costlier one on the same items: costlier minus cheaper."""

    cheaper: str
    costlier: str
    test: str
    difference: float
    resolved: bool
    smallest_resolvable: float | None  # None: no difference is resolvable with these outcomes
    items: int
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    only_cheaper: int | None = None  # McNemar: items only the cheaper rung got right
    only_costlier: int | None = None

    @property
    def verdict(self) -> str:
        if not self.resolved:
            return "not resolved: the set cannot tell these two apart"
        return "costlier rung more accurate" if self.difference > 0 else "costlier rung LESS accurate"


@dataclass(frozen=True)
class Ladder:
    stage: str
    metric: str
    rungs: tuple[Rung, ...]  # cheapest first
    comparisons: tuple[Comparison, ...]  # rung i against rung i + 1

    @property
    def rises(self) -> bool:
        """Measured accuracy rises with cost at every step (point estimates)."""
        return all(c.difference > 0 for c in self.comparisons)

    @property
    def resolved_rises(self) -> bool:
        """Every step up is a resolved improvement."""
        return all(c.resolved and c.difference > 0 for c in self.comparisons)


def compare_detection(cheaper: Rung, costlier: Rung, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> Comparison:
    """Paired bootstrap over images of the mAP difference (both rungs on the same resampled images)."""
    a: Sequence[ImageMatches] = cheaper.outcomes
    b: Sequence[ImageMatches] = costlier.outcomes
    _check_paired(a, b)

    table_a, table_b = MatchTable(a), MatchTable(b)

    def diff(idx: np.ndarray) -> float:
        counts = np.bincount(idx, minlength=len(a))
        return table_b.map_value(counts) - table_a.map_value(counts)

    r = paired_bootstrap(diff, len(a), resamples, seed)
    return Comparison(cheaper.variant, costlier.variant, BOOTSTRAP_TEST, r.difference, r.resolved, r.half_width,
                      r.items, r.ci_low, r.ci_high)


def compare_outcomes(cheaper: Rung, costlier: Rung, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Comparison:
    """McNemar for right/wrong outcomes, else a paired bootstrap of the mean score."""
    a = np.asarray(cheaper.outcomes, dtype=float)
    b = np.asarray(costlier.outcomes, dtype=float)
    _check_paired(a, b)
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        m = mcnemar(a.astype(bool).tolist(), b.astype(bool).tolist())
        return Comparison(cheaper.variant, costlier.variant, MCNEMAR_TEST, m.difference, m.resolved,
                          m.smallest_resolvable, m.items, p_value=m.p_value, only_cheaper=m.only_a,
                          only_costlier=m.only_b)
    r = paired_bootstrap(lambda idx: float(b[idx].mean() - a[idx].mean()), len(a), resamples, seed)
    return Comparison(cheaper.variant, costlier.variant, ITEM_BOOTSTRAP_TEST, r.difference, r.resolved,
                      r.half_width, r.items, r.ci_low, r.ci_high)


def _check_paired(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired comparison needs the same non-empty items: {len(a)} vs {len(b)} outcomes")


def compare(cheaper: Rung, costlier: Rung, resamples: int = BOOTSTRAP_RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> Comparison:
    """The paired test that fits the rungs' outcomes (image matches -> bootstrap of mAP)."""
    if cheaper.outcomes and isinstance(cheaper.outcomes[0], ImageMatches):
        return compare_detection(cheaper, costlier, resamples, seed)
    return compare_outcomes(cheaper, costlier, resamples, seed)


def ladder(stage: str, metric: str, rungs: Sequence[Rung], resamples: int = BOOTSTRAP_RESAMPLES,
           seed: int = BOOTSTRAP_SEED) -> Ladder:
    """Rungs sorted by cost (batch-1 latency; ties by name), each compared with the next costlier one."""
    ordered = tuple(sorted(rungs, key=lambda r: (r.latency_s, r.variant)))
    comparisons = tuple(compare(a, b, resamples, seed) for a, b in zip(ordered, ordered[1:], strict=False))
    return Ladder(stage, metric, ordered, comparisons)


def describe(c: Comparison) -> str:
    """One line for the report: the difference, its interval or p-value, the verdict, the resolution."""
    if c.p_value is not None:
        stat = f"p = {c.p_value:.3g} ({c.only_cheaper} only cheaper right, {c.only_costlier} only costlier right)"
        discordant = (c.only_cheaper or 0) + (c.only_costlier or 0)
        resolution = (f"with {discordant} discordant items the smallest resolvable difference is "
                      f"{c.smallest_resolvable:.3f}" if c.smallest_resolvable is not None else
                      f"{discordant} discordant items cannot resolve any difference")
    else:
        stat = f"95% CI [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        resolution = f"half-width {c.smallest_resolvable:.3f}"
    return f"{c.cheaper} -> {c.costlier}: {c.difference:+.3f}, {stat}; {c.verdict} ({resolution}, alpha {ALPHA:g})"


# --- choosing a ladder among a stage's variants --------------------------------------------------


def rung_interval(rung: Rung, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> BootstrapResult:
    """The rung's own figure with a 95 % percentile interval over resampled items (images for mAP)."""
    if rung.outcomes and isinstance(rung.outcomes[0], ImageMatches):
        table = MatchTable(rung.outcomes)
        return bootstrap_interval(lambda idx: table.map_value(np.bincount(idx, minlength=table.images)),
                                  table.images, resamples, seed)
    scores = np.asarray(rung.outcomes, dtype=float)
    return bootstrap_interval(lambda idx: float(scores[idx].mean()), len(scores), resamples, seed)


def dominated_by(rungs: Sequence[Rung]) -> dict[str, str]:
    """Each dominated rung -> the cheapest rung that dominates it.

    Dominated: another rung costs no more and is at least as accurate, strictly better in one of the two
    (point estimates: whether the set *resolves* the accuracy side is the paired test's to say).
    """
    result: dict[str, str] = {}
    for r in rungs:
        better = [o for o in rungs if o is not r and o.latency_s <= r.latency_s and o.accuracy >= r.accuracy
                  and (o.latency_s < r.latency_s or o.accuracy > r.accuracy)]
        if better:
            result[r.variant] = min(better, key=lambda o: (o.latency_s, o.variant)).variant
    return result


def degraded_settings(variants: Sequence[str], model_of: Mapping[str, str]) -> int:
    """Rungs that run weights another rung of the ladder already runs (another input size, multi-scale).

    A ladder of n rungs over m distinct weights files has n - m such rungs: of the rungs sharing one
    model, one is that model's rung and every other is a degraded setting of it.
    """
    return len(variants) - len({model_of[v] for v in variants})


def candidate_ladders(rungs: Sequence[Rung], model_of: Mapping[str, str], min_rungs: int = 3,
                      max_degraded: int = 1) -> list[tuple[str, ...]]:
    """Every ladder of the non-dominated rungs with >= ``min_rungs`` rungs and <= ``max_degraded`` degraded settings.

    Cheapest first within a ladder; ladders with more rungs first, then more distinct models, then by name.
    The non-dominated rungs sorted by cost rise in accuracy, so every candidate does too.
    """
    losers = dominated_by(rungs)
    frontier = sorted((r for r in rungs if r.variant not in losers), key=lambda r: (r.latency_s, r.variant))
    names = [r.variant for r in frontier]
    found = [c for n in range(min_rungs, len(names) + 1) for c in combinations(names, n)
             if degraded_settings(c, model_of) <= max_degraded]
    return sorted(found, key=lambda c: (-len(c), -len({model_of[v] for v in c}), c))
