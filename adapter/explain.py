"""Why a decision is what it is: latency vs SLA, binding constraints, runners-up.

For every stage we try each other configuration with the rest of the decision
held fixed. The best-scoring alternative that would have *improved* the
objective is the runner-up, and the constraints it breaks are binding; when no
alternative scores higher, the runner-up is the best of the rest and it lost on
the objective. Pure: text out, no logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from varipipe.adapter._solvers import TOLERANCE, Problem
from varipipe.adapter.configurations import Configuration

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True)
class Explanation:
    binding: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class _Totals:
    latency: float
    cost: float
    acc: float


def _violations(problem: Problem, t: _Totals, alt: Configuration, within: bool) -> list[str]:
    out = [] if within else [f"max_replicas_{alt.stage}"]
    if problem.sla_s is not None and t.latency > problem.sla_s + TOLERANCE:
        out.append("sla_end_to_end")
    if problem.capacity_limit is not None and t.cost > problem.capacity_limit + TOLERANCE:
        out.append("cluster_capacity")
    if problem.cost_ceiling is not None and t.cost > problem.cost_ceiling + TOLERANCE:
        out.append("max_cost")
    if problem.accuracy_floor is not None and t.acc < problem.accuracy_floor - TOLERANCE:
        out.append("min_accuracy")
    return out


def _why(problem: Problem, name: str, t: _Totals, alt: Configuration, limit_replicas: int) -> str:
    if name == "sla_end_to_end":
        return f"e2e latency would be {t.latency:.3f}s > SLA {problem.sla_s:.3f}s"
    if name == "cluster_capacity":
        return f"cost would be {t.cost:.3f} > capacity limit {problem.capacity_limit:.3f}"
    if name == "max_cost":
        return f"cost would be {t.cost:.3f} > max cost {problem.cost_ceiling:.3f}"
    if name == "min_accuracy":
        return f"accuracy term would be {t.acc:.4f} < floor {problem.accuracy_floor:.4f}"
    return f"needs {alt.replicas} replicas for {alt.load_rps:.1f} items/s (max {limit_replicas})"


def _stage_line(problem: Problem, chosen: Mapping[str, Configuration], stage: str,
                every: list[Configuration], within: Callable[[Configuration], bool],
                score: Callable[[Configuration], float], totals: _Totals,
                max_replicas: int) -> tuple[str, list[str]]:
    me = chosen[stage]
    rows = []
    for alt in every:
        if alt.key == me.key:
            continue
        t = _Totals(totals.latency - me.latency_s + alt.latency_s, totals.cost - me.cost + alt.cost,
                    totals.acc - problem.acc_terms.get(me.key, 0.0) + problem.acc_terms.get(alt.key, 0.0))
        rows.append((score(alt) - score(me), alt, t, _violations(problem, t, alt, within(alt))))
    head = (f"{stage}: {me.label()} (p99 {me.latency_p99_s * 1e3:.1f} ms + wait {me.batch_wait_s * 1e3:.1f} ms,"
            f" accuracy {me.accuracy:.3f}, cost {me.cost:.3f}, load {me.load_rps:.1f}/s)")
    if not rows:
        return head + "; the only configuration", []
    better = [r for r in rows if r[0] > TOLERANCE]
    if better:
        delta, alt, t, viol = max(better, key=lambda r: r[0])
        why = "; ".join(_why(problem, v, t, alt, max_replicas) for v in viol) or "not chosen"
        return f"{head}; runner-up {alt.label()} (objective +{delta:.4g}) lost: {why}", viol
    delta, alt, t, viol = max(rows, key=lambda r: r[0])
    extra = f"; it would also break {', '.join(viol)}" if viol else ""
    return (f"{head}; runner-up {alt.label()} lost on the objective by {abs(delta):.4g}"
            f" (accuracy {alt.accuracy:.3f}, cost {alt.cost:.3f}){extra}"), []


def explain(problem: Problem, chosen: Mapping[str, Configuration], every: Mapping[str, list[Configuration]],
            within: Callable[[Configuration], bool], score: Callable[[Configuration], float],
            max_replicas: int) -> Explanation:
    """Binding constraints and a line per stage; ``every`` includes over-limit configurations."""
    totals = _Totals(sum(c.latency_s for c in chosen.values()), sum(c.cost for c in chosen.values()),
                     sum(problem.acc_terms.get(c.key, 0.0) for c in chosen.values()))
    lines = []
    if problem.sla_s is not None:
        lines.append(f"predicted e2e p99 {totals.latency:.3f}s vs SLA {problem.sla_s:.3f}s"
                     f" (slack {(problem.sla_s - totals.latency) * 1e3:.1f} ms)")
    if problem.capacity_limit is not None:
        lines.append(f"cost {totals.cost:.3f} of capacity limit {problem.capacity_limit:.3f}")
    binding: list[str] = []
    for stage in problem.stages:
        line, viol = _stage_line(problem, chosen, stage, every[stage], within, score, totals, max_replicas)
        lines.append(line)
        binding.extend(v for v in viol if v not in binding)
    lines.insert(len(lines) - len(problem.stages),
                 "binding: " + (", ".join(binding) if binding else "none (each stage has its best configuration)"))
    return Explanation(tuple(binding), "\n".join(lines))
