"""PNG plots of an experiment: load, per-policy metrics over time, a summary chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from varipipe.loadgen.experiment import RunOutcome

__all__ = ["plot_all", "bucket_for"]

# About this many points per line: a 2-day run is drawn in 10-minute buckets.
TARGET_POINTS = 300


def bucket_for(seconds: int) -> int:
    """Bucket width (s) so a run of ``seconds`` gives about TARGET_POINTS points."""
    return max(1, int(round(seconds / TARGET_POINTS)))


def _sums(a: np.ndarray, step: int) -> np.ndarray:
    n = len(a) // step * step
    return np.nansum(a[:n].reshape(-1, step), axis=1) if n else np.zeros(0)


def _means(a: np.ndarray, step: int) -> np.ndarray:
    n = len(a) // step * step
    if not n:
        return np.zeros(0)
    r = a[:n].reshape(-1, step)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(r).all(1), np.nan, np.nanmean(np.where(np.isnan(r), np.nan, r), axis=1))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)


def _hours(n: int, step: int) -> np.ndarray:
    return (np.arange(n) * step + step / 2) / 3600.0


def plot_load(outcomes: Sequence[RunOutcome], path: Path) -> None:
    import matplotlib.pyplot as plt

    first = outcomes[0].series
    step = bucket_for(len(first.arrivals))
    fig, ax = plt.subplots(figsize=(10, 3.5))
    load = _sums(first.arrivals.astype(float), step) / step
    ax.plot(_hours(len(load), step), load, color="black", lw=1.2, label="load (arrivals)")
    seen = set()
    for o in outcomes:
        if o.policy in seen or not np.any(o.series.predicted_rps):
            continue
        seen.add(o.policy)
        pred = _means(o.series.predicted_rps.astype(float), step)
        ax.plot(_hours(len(pred), step), pred, lw=0.8, alpha=0.8, label=f"predicted ({o.policy})")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("requests/s")
    ax.set_title(f"load and predicted load ({step} s buckets; prediction = peak the policy planned for)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_over_time(outcomes: Sequence[RunOutcome], sla: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    runs = [o for o in outcomes if o.sla == sla]
    step = bucket_for(len(runs[0].series.arrivals))
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for o in runs:
        s = o.series
        arr = _sums(s.arrivals.astype(float), step)
        cost = _means(s.cost.astype(float), step)
        acc = _ratio(_sums(s.accuracy_sum, step), _sums(s.completed.astype(float), step))
        att = _ratio(_sums(s.within_sla.astype(float), step), arr)
        x = _hours(len(arr), step)
        axes[0].plot(x, cost, lw=0.9, label=o.policy)
        axes[1].plot(x, acc, lw=0.9, label=o.policy)
        axes[2].plot(x, att, lw=0.9, label=o.policy)
    axes[0].set_ylabel(f"cost ({runs[0].cost_unit})")
    axes[1].set_ylabel("end-to-end accuracy")
    axes[2].set_ylabel("SLA attainment")
    axes[2].set_xlabel("time (h)")
    axes[0].set_title(f"SLA {sla} = {runs[0].sla_s:.3g} s, {runs[0].mode}, {step} s buckets")
    axes[0].legend(fontsize=8, ncol=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_summary(outcomes: Sequence[RunOutcome], path: Path) -> None:
    import matplotlib.pyplot as plt

    slas = list(dict.fromkeys(o.sla for o in outcomes))
    policies = list(dict.fromkeys(o.policy for o in outcomes))
    metrics = (("sla_attainment", "SLA attainment"), ("mean_cost", f"mean cost ({outcomes[0].cost_unit})"),
               ("mean_accuracy", "mean end-to-end accuracy"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / max(len(slas), 1)
    x = np.arange(len(policies))
    for j, sla in enumerate(slas):
        by = {o.policy: o for o in outcomes if o.sla == sla}
        for ax, (key, label) in zip(axes, metrics, strict=True):
            vals = [getattr(by[p], key) if p in by else np.nan for p in policies]
            ax.bar(x + (j - (len(slas) - 1) / 2) * width, vals, width, label=sla)
            ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.set_xticks(x, policies, rotation=30, fontsize=8)
    axes[0].set_ylim(min(0.9, min(o.sla_attainment for o in outcomes) - 0.01), 1.0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(outcomes: Sequence[RunOutcome], out_dir: str | Path) -> list[Path]:
    """Write load.png, over_time_<sla>.png per SLA and summary.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "load.png"]
    plot_load(outcomes, paths[0])
    for sla in dict.fromkeys(o.sla for o in outcomes):
        p = out / f"over_time_{sla}.png"
        plot_over_time(outcomes, sla, p)
        paths.append(p)
    paths.append(out / "summary.png")
    plot_summary(outcomes, paths[-1])
    return paths
