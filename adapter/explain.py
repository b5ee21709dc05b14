"""Why a decision is what it is: latency vs SLA, binding constraints, runners-up.

For every stage we try each other configuration with the rest of the decision
held fixed. The best-scoring alternative that would have *improved* the
objective is the runner-up, and the constraints it breaks are binding; when no
alternative scores higher, the runner-up is the best of the rest and it lost on
the objective. Pure: text out, no logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from varipipe.adapter._problem import TOLERANCE, Problem
from varipipe.adapter.configurations import Configuration

__all__ = ["Explanation", "explain"]

# Why a configuration outside the per-stage limits was not allowed: (constraint name, text).
Exclusion = Callable[[Configuration], tuple[str, str]]


@dataclass(frozen=True)
class Explanation:
    binding: tuple[str, ...]
    text: str


def _why(name: str, total: float, bound: float) -> str:
    if name == "sla_end_to_end":
        return f"e2e latency would be {total:.3f}s > SLA {bound:.3f}s"
    if name == "cluster_capacity":
        return f"use of the cores would be {total:.3f} > capacity limit {bound:.3f}"
    if name == "gpu_count":
        return f"GPUs would be {total:.0f} > cluster_gpus {bound:.0f}"
    if name == "gpu_time":
        return f"GPU time would be {total:.3f} GPU-s/s > {bound:.3f} (rho_max x cluster_gpus)"
    if name == "gpu_memory":
        return f"GPU memory would be {total:.0f} MiB > {bound:.0f} MiB (cluster_gpus x gpu_memory_mb)"
    if name == "max_cost":
        return f"cost would be {total:.3f} > max cost {bound:.3f}"
    if name == "min_accuracy":
        return f"accuracy term would be {-total:.4f} < floor {-bound:.4f}"
    return f"{name} would be {total:.3f} > {bound:.3f}"


@dataclass(frozen=True)
class _Alternative:
    """Another row of one stage with the rest of the decision held fixed."""

    config: Configuration
    delta: float  # objective change
    violated: tuple[str, ...]  # constraint names it breaks
    reasons: tuple[str, ...]  # one text per broken constraint


def _alternative(problem: Problem, si: int, j: int, totals: np.ndarray, every: Sequence[Configuration],
                 delta: float, exclusion: Exclusion) -> _Alternative:
    st = problem.options[si]
    names: list[str] = []
    texts: list[str] = []
    if not st.allowed[j]:
        name, text = exclusion(every[j])
        names.append(name)
        texts.append(text)
    for d in np.flatnonzero(totals > problem.bounds + TOLERANCE):
        names.append(problem.constraints[d])
        texts.append(_why(problem.constraints[d], float(totals[d]), float(problem.bounds[d])))
    return _Alternative(every[j], delta, tuple(names), tuple(texts))


def _stage_line(problem: Problem, si: int, row: int, every: Sequence[Configuration], totals: np.ndarray,
                exclusion: Exclusion) -> tuple[str, tuple[str, ...]]:
    st = problem.options[si]
    me = every[row]
    gpu = f", GPU memory {me.memory_mb:.0f} MiB per replica" if me.on_gpu else ""
    head = (f"{me.stage}: {me.label()} (p99 {me.latency_p99_s * 1e3:.1f} ms + wait {me.batch_wait_s * 1e3:.1f} ms"
            f" + queue {me.queue_wait_s * 1e3:.1f} ms,"
            f" accuracy {me.accuracy:.3f}, cost {me.cost:.3f}, load {me.load_rps:.1f}/s{gpu})")
    if st.score.size == 1:
        return head + "; the only configuration", ()
    delta = st.score - st.score[row]
    delta[row] = -np.inf
    alt_totals = totals - st.use[row] + st.use  # (n, D): the totals with row j instead
    broken = ~st.allowed | (alt_totals > problem.bounds + TOLERANCE).any(axis=1)
    better = delta > TOLERANCE
    if better.any():  # every better row breaks something, or the decision would not be optimal
        j = int(np.argmax(np.where(better, delta, -np.inf)))
        alt = _alternative(problem, si, j, alt_totals[j], every, float(delta[j]), exclusion)
        why = "; ".join(alt.reasons) or "not chosen"
        return f"{head}; runner-up {alt.config.label()} (objective +{alt.delta:.4g}) lost: {why}", alt.violated
    j = int(np.argmax(delta))
    alt = _alternative(problem, si, j, alt_totals[j], every, float(delta[j]), exclusion)
    extra = f"; it would also break {', '.join(alt.violated)}" if broken[j] else ""
    return (f"{head}; runner-up {alt.config.label()} lost on the objective by {abs(alt.delta):.4g}"
            f" (accuracy {alt.config.accuracy:.3f}, cost {alt.config.cost:.3f}){extra}"), ()


# Summary line per constraint: what the decision uses of it, as "<use> of <bound>".
_USES = {"cluster_capacity": ("cores", "{:.3f} of capacity limit {:.3f}"),
         "gpu_count": ("GPUs", "{:.0f} of cluster_gpus {:.0f}"),
         "gpu_time": ("GPU time", "{:.3f} of {:.3f} GPU-s/s (rho_max x cluster_gpus)"),
         "gpu_memory": ("GPU memory", "{:.0f} of {:.0f} MiB")}


def _summary(problem: Problem, totals: np.ndarray, cost: float) -> list[str]:
    lines = []
    d = problem.index("sla_end_to_end")
    if d is not None:
        lines.append(f"predicted e2e p99 {totals[d]:.3f}s vs SLA {problem.bounds[d]:.3f}s"
                     f" (slack {(problem.bounds[d] - totals[d]) * 1e3:.1f} ms)")
    uses = [f"{what} {form.format(totals[d], problem.bounds[d])}" for name, (what, form) in _USES.items()
            for d in [problem.index(name)] if d is not None]
    lines.append(f"cost {cost:.3f}" + (f"; {'; '.join(uses)}" if uses else ""))
    return lines


def explain(problem: Problem, rows: Sequence[int], every: Mapping[str, Sequence[Configuration]],
            exclusion: Exclusion) -> Explanation:
    """Binding constraints and a line per stage; ``every`` holds each stage's rows, allowed or not,
    and ``exclusion`` says why a row outside the per-stage limits was not allowed."""
    totals = problem.totals(rows)
    lines = _summary(problem, totals, sum(every[s][r].cost for s, r in zip(problem.stages, rows, strict=True)))
    binding: list[str] = []
    stage_lines = []
    for si, (stage, row) in enumerate(zip(problem.stages, rows, strict=True)):
        line, violated = _stage_line(problem, si, row, every[stage], totals, exclusion)
        stage_lines.append(line)
        binding.extend(v for v in violated if v not in binding)
    lines.append("binding: " + (", ".join(binding) if binding else "none (each stage has its best configuration)"))
    return Explanation(tuple(binding), "\n".join(lines + stage_lines))
