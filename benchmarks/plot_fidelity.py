"""Live against simulated, per setting, for several simulated worlds: one picture of ``fidelity_loads.py``'s rows.

    python benchmarks/plot_fidelity.py [--set tail|lightest] --out benchmarks/results/fidelity_worlds.png

Reads result files of ``fidelity_loads.py`` (the live runs and the simulated means they hold)
for the same live runs re-simulated in different worlds (``--from-live``: host model, routing),
and draws, per figure (SLA attainment, p99 latency, mean latency) and per setting (load and
calibration), each live run, the live mean, and each world's simulated mean, with the target's
band around the live mean. No simulation here: it only reads the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from varipipe.jsonfile import read_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Per set of live runs, its simulated worlds: (label, [(which live runs, result file), ...]); every
# world of a set holds the same live runs.
WORLD_SETS = {
    # 2026-12-06: the pooled-tail rerun at 80 %, the tail run at 40 % and 80 %.
    "tail": (
        ("level host, central line", [("rerun", "fidelity_loads_pooled_tail_80.json"),
                                      ("tail run", "fidelity_loads_tail.json")]),
        ("level host, Serve's routing", [("rerun", "fidelity_loads_pooled_tail_80_replica.json"),
                                         ("tail run", "fidelity_loads_tail_replica.json")]),
        ("contention law at start, Serve's routing", [("rerun", "fidelity_loads_pooled_tail_80_contention_replica.json"),
                                                      ("tail run", "fidelity_loads_tail_contention_replica.json")]),
    ),
    # 2026-12-07: four live runs of both loads on the lightest fallback (the last two made with the
    # contention world and a live start as the benchmark's defaults, the first version of the law and
    # the anchored one), each simulated both ways.
    "lightest": (
        ("level host, warm start (before)", [("run 1", "fidelity_loads_lightest.json"),
                                             ("run 2", "fidelity_loads_lightest2.json"),
                                             ("run 3", "fidelity_loads_contention_level_warm.json"),
                                             ("run 4", "fidelity_loads_anchored_level_warm.json")]),
        ("contention law, live start", [("run 1", "fidelity_loads_lightest_contention_live.json"),
                                        ("run 2", "fidelity_loads_lightest2_contention_live.json"),
                                        ("run 3", "fidelity_loads_contention_anchored.json"),
                                        ("run 4", "fidelity_loads_anchored.json")]),
    ),
    # 2026-12-07: runs 5-7 (the host fitted before each load, a live start) and run 8, simulated with
    # a log-normal batch noise and batches gathered until a replica is free (before), and with the
    # window's residuals and batches formed as @serve.batch forms them.
    "batches": (
        ("log-normal noise, gathered batches (before)", [("run 5", "fidelity_loads_each_load_resim_replica_cpu.json"),
                                                          ("run 6", "fidelity_loads_start_hold_resim_replica_cpu.json"),
                                                          ("run 7", "fidelity_loads_replica_cpu.json"),
                                                          ("run 8", "fidelity_loads_batches_lognormal.json")]),
        ("residuals, Serve's batching", [("run 5", "fidelity_loads_each_load_resim_batches.json"),
                                         ("run 6", "fidelity_loads_start_hold_resim_batches.json"),
                                         ("run 7", "fidelity_loads_replica_cpu_resim_batches.json"),
                                         ("run 8", "fidelity_loads_batches.json")]),
    ),
}
FIGURES = (("sla_attainment", "SLA attainment", "attainment"), ("p99_latency_s", "p99 latency (s)", "p99"),
           ("mean_latency_s", "mean latency (s)", "mean_latency"))
MARKERS = ("o", "s", "^", "D")


def _settings(files: list[tuple[str, str]]) -> list[tuple[str, dict]]:
    """Every setting of the files, labelled: which live runs, load and calibration."""
    out = []
    for run, name in files:
        for row in read_json(RESULTS / name)["settings"]:
            out.append((f"{run}\n{row['load_fraction']:.0%} {'on' if row['calibration'] else 'off'}", row))
    return out


def _band(row: dict, key: str, field: str) -> tuple[float, float]:
    """The target's band around the live mean: attainment in points, latencies relative."""
    live, bound = row["live_mean"][key], row[field]["bound"]
    if key == "sla_attainment":
        return live - bound / 100, live + bound / 100
    return live * (1 - bound), live * (1 + bound)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(WORLD_SETS), default="tail", help="which live runs and their worlds")
    ap.add_argument("--out", default=str(RESULTS / "fidelity_worlds.png"))
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = [(label, _settings(files)) for label, files in WORLD_SETS[args.set]]
    names = [name for name, _ in worlds[0][1]]
    fig, axes = plt.subplots(len(FIGURES), 1, figsize=(max(11, 0.8 * len(names)), 9), sharex=True)
    x = np.arange(len(names))
    for ax, (key, title, field) in zip(axes, FIGURES, strict=True):
        first = worlds[0][1]
        for i, (_, row) in enumerate(first):
            lo, hi = _band(row, key, field)
            ax.fill_between([i - 0.4, i + 0.4], lo, hi, color="0.9", zorder=0,
                            label="target band around live" if i == 0 else None)
            runs = [r[key] for r in row["live_runs"]]
            ax.plot([i - 0.3] * len(runs), runs, "k.", label="live runs" if i == 0 else None)
            ax.plot([i - 0.3], [row["live_mean"][key]], "k_", markersize=18, label="live mean" if i == 0 else None)
        for w, (label, settings) in enumerate(worlds):
            assert [n for n, _ in settings] == names, f"{label}: other settings than {names}"
            ax.plot(x - 0.1 + 0.15 * w, [row["sim_mean"][key] for _, row in settings], MARKERS[w], linestyle="none",
                    label=f"simulated: {label}")
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best", ncol=2)
    axes[-1].set_xticks(x, names, fontsize=8)
    fig.suptitle("vision-caption-ci, ipa, 1 s SLA: live against simulated (fidelity_loads.py --from-live)")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
