"""Paired comparisons of two rungs on the same items, and what the set can resolve. Pure.

Two tests, both on outcomes of the *same* items under two variants:

- ``paired_bootstrap``: for a set-level metric (mAP) or a mean of graded
  scores. Items (images) are resampled with replacement, the same resample
  for both rungs, ``BOOTSTRAP_RESAMPLES`` times from a fixed seed; the 95 %
  interval of the difference is the 2.5th-97.5th percentile of the resampled
  differences (Efron & Tibshirani's percentile interval). The difference is
  resolved when the interval excludes 0; half its width is the smallest
  difference of this size the set can tell from zero.
- ``mcnemar``: for right/wrong outcomes (top-1, exact match). Exact
  (binomial) McNemar test on the discordant items: p = P(a count as lopsided
  as observed | each discordant item equally likely to go either way),
  two-sided. Resolved when p < ``ALPHA``. The smallest resolvable difference
  is the smallest lopsidedness of the observed discordant items that would
  reach p < ``ALPHA``, over the number of items.

Every comparison is reported at ``ALPHA`` on its own (no correction for the
few adjacent-rung comparisons of a stage); the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALPHA",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "BootstrapResult",
    "McNemarResult",
    "bootstrap_interval",
    "paired_bootstrap",
    "mcnemar",
    "mcnemar_p",
    "smallest_mcnemar_difference",
    "best_case_mcnemar_difference",
]

ALPHA = 0.05  # two-sided: 95 % intervals, p < 0.05
# Efron & Tibshirani (1993, ch. 13) suggest >= 1000 resamples for percentile intervals; 2000 keeps the
# interval ends stable to about the third decimal on sets of ~60 images.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 17  # fixed before any measurement


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float  # the statistic on the full set (a paired comparison's: b - a)
    ci_low: float
    ci_high: float
    resamples: int
    seed: int
    items: int

    @property
    def difference(self) -> float:
        return self.estimate

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (for a difference: the set tells the two apart)."""
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


@dataclass(frozen=True)
class McNemarResult:
    only_a: int  # items a got right and b wrong
    only_b: int  # items b got right and a wrong
    items: int
    p_value: float
    smallest_resolvable: float | None  # None: too few discordant items for any difference to reach ALPHA

    @property
    def difference(self) -> float:
        """Accuracy of b minus accuracy of a."""
        return (self.only_b - self.only_a) / self.items if self.items else 0.0

    @property
    def resolved(self) -> bool:
        return self.p_value < ALPHA


def bootstrap_interval(statistic: Callable[[np.ndarray], float], items: int,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> BootstrapResult:
    """``statistic(indices)`` on all items and its percentile interval over resamples of the items."""
    if items < 1:
        raise ValueError("a bootstrap needs at least one item")
    rng = np.random.default_rng(seed)
    full = statistic(np.arange(items))
    draws = np.array([statistic(rng.integers(0, items, size=items)) for _ in range(resamples)])
    low, high = np.percentile(draws, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return BootstrapResult(float(full), float(low), float(high), resamples, seed, items)


def paired_bootstrap(difference: Callable[[np.ndarray], float], items: int,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> BootstrapResult:
    """Interval of ``difference(indices)`` (b - a on the items at ``indices``): the same resample for both."""
    return bootstrap_interval(difference, items, resamples, seed)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: binomial(n = only_a + only_b, 1/2) tail at the smaller count, doubled."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = math.fsum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def smallest_mcnemar_difference(discordant: int, items: int, alpha: float = ALPHA) -> float | None:
    """Smallest |accuracy difference| that ``discordant`` discordant items out of ``items`` can resolve."""
    for smaller in range(discordant // 2, -1, -1):
        if mcnemar_p(smaller, discordant - smaller) < alpha:
            return (discordant - 2 * smaller) / items
    return None


def best_case_mcnemar_difference(items: int, alpha: float = ALPHA) -> float | None:
    """The least accuracy difference any McNemar comparison on ``items`` items can resolve: the fewest
    discordant items that can reach ``alpha``, all going one way (6 at 0.05), over ``items``."""
    found = [d for d in (smallest_mcnemar_difference(k, items, alpha) for k in range(1, items + 1)) if d is not None]
    return min(found) if found else None


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemarResult:
    """Exact McNemar test of two rungs' right/wrong outcomes on the same items (same order)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"{len(a_correct)} outcomes for a but {len(b_correct)} for b: not paired")
    only_a = sum(bool(x) and not bool(y) for x, y in zip(a_correct, b_correct, strict=True))
    only_b = sum(bool(y) and not bool(x) for x, y in zip(a_correct, b_correct, strict=True))
    n = len(a_correct)
    return McNemarResult(only_a, only_b, n, mcnemar_p(only_a, only_b),
                         smallest_mcnemar_difference(only_a + only_b, n) if n else None)
