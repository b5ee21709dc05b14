"""PNG plots of a profile: latency vs batch per variant, and accuracy vs latency per stage.

matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from varipipe.records import Profile, ProfilePoint

__all__ = ["pareto_front", "write_plots"]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(latency, accuracy) pairs no other pair beats on both (lower latency, higher accuracy)."""
    front: list[tuple[float, float]] = []
    for lat, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((lat, accuracy))
    return front


def _latency_plot(profile: Profile, stage: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[ProfilePoint]] = defaultdict(list)
    for p in profile.for_stage(stage):
        groups[(p.variant, p.hardware)].append(p)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (variant, hw), pts in sorted(groups.items()):
        pts.sort(key=lambda p: p.batch)
        ax.plot([p.batch for p in pts], [p.latency_p99_s * 1e3 for p in pts], marker="o",
                linestyle="-" if hw.endswith(":1") else "--", label=f"{variant} {hw}")
    ax.set(xlabel="batch size", ylabel="p99 batch latency (ms)", title=f"{profile.pipeline}: {stage}")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / f"{profile.pipeline}-{stage}-latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pareto_plot(profile: Profile, stage: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    pts = profile.for_stage(stage)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(p.variant for p in pts):
        mine = [p for p in pts if p.variant == variant]
        ax.scatter([p.latency_p99_s / p.batch * 1e3 for p in mine], [p.accuracy for p in mine],
                   label=f"{variant} ({mine[0].accuracy_kind})", s=18)
    front = pareto_front([(p.latency_p99_s / p.batch * 1e3, p.accuracy) for p in pts])
    ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="k", alpha=0.5, label="Pareto front")
    ax.set(xlabel="p99 batch latency per item (ms)", ylabel="accuracy", title=f"{profile.pipeline}: {stage}")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / f"{profile.pipeline}-{stage}-pareto.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(profile: Profile, out: Path) -> list[Path]:
    """Two PNGs per stage into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stage in profile.stages:
        paths.append(_latency_plot(profile, stage, out))
        paths.append(_pareto_plot(profile, stage, out))
    return paths
