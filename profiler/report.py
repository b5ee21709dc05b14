"""Plain-text tables of a profile and of its latency-model fits (``varipipe profile show``). Pure."""

from __future__ import annotations

from collections.abc import Sequence

from varipipe.profiler.latency_model import LatencyFit
from varipipe.records import Profile, ProfilePoint

__all__ = ["points_table", "fit_table"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def points_table(profile: Profile) -> str:
    """One row per point: latencies in ms, throughput, memory, samples, accuracy and its kind."""
    meta = profile.metadata
    head = (f"profile {profile.pipeline}: {len(profile.points)} points, mode {meta.get('mode', '?')}, "
            f"{meta.get('host_cpu', '?')} ({meta.get('cpu_count', '?')} cores), {meta.get('date', '?')}")
    conditions = meta.get("conditions", {}) if isinstance(meta.get("conditions"), dict) else {}

    def share(p) -> str:
        c = conditions.get(f"{p.stage}/{p.variant}/{p.hardware}/b{p.batch}", {})
        return f"{c['cpu_share'] * 100:.0f}%" if "cpu_share" in c else "-"

    rows = [
        [f"{p.stage}/{p.variant}", p.hardware, str(p.batch), f"{p.latency_p50_s * 1e3:.1f}",
         f"{p.latency_p95_s * 1e3:.1f}", f"{p.latency_p99_s * 1e3:.1f}" + ("*" if p.p99_low_samples else ""),
         f"{p.throughput_rps:.1f}", f"{p.memory_mb:.0f}", str(p.samples), share(p), *_steadiness(p),
         f"{p.accuracy:.3f}", p.accuracy_kind]
        for p in profile.points
    ]
    header = ["stage/variant", "hw", "batch", "p50 ms", "p95 ms", "p99 ms", "rps", "MB", "n", "cpu", "win",
              "cv", "drift", "acc", "kind"]
    unstable = [p for p in profile.points if p.stable is False]
    return (head + "\n" + _table(header, rows) + "\n(* p99 from fewer than 100 samples; cpu: CPU time / wall "
            "time while timing, ~100% per thread on an idle host; win: measurement windows, ! = not stable "
            "(the time cap came before 3 windows agreed); cv: coefficient of variation of the final "
            "windows' p50; drift: the variant's fixed batch-1 reference after / before the point - 1)"
            + (f"\n{len(unstable)} of {len(profile.points)} points not stable: their figures are used as "
               "measured; read them with their cv and drift" if unstable else ""))


def _steadiness(p: ProfilePoint) -> list[str]:
    """win, cv and drift cells; '-' for points measured before windows."""
    win = "-" if p.windows is None else f"{p.windows}{'!' if p.stable is False else ''}"
    cv = "-" if p.latency_cv is None else f"{p.latency_cv * 100:.1f}%"
    drift = "-" if p.host_drift is None else f"{p.host_drift * 100:+.0f}%"
    return [win, cv, drift]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def fit_table(fits: Sequence[LatencyFit]) -> str:
    """Each fit's line and its leave-one-out error (the held-back batch predicted from the others)."""
    rows = [[f"{f.stage}/{f.variant}", f.hardware, f"{f.alpha_s * 1e3:.2f}", f"{f.beta_s * 1e3:.2f}",
             ",".join(map(str, f.batches)), _pct(f.fit_max_rel_error), _pct(f.loo_mean_rel_error),
             _pct(f.loo_max_rel_error)] for f in fits]
    header = ["latency model (p99)", "hw", "alpha ms", "beta ms/item", "batches", "fit max err",
              "LOO mean err", "LOO max err"]
    return _table(header, rows)
