"""Experiment runner: every policy on the same arrivals, simulated or live.

``run_sim`` simulates each (SLA, policy) pair on one array of arrivals (same
seed, so the same requests for every policy). ``run_live`` replays the same
schedule against a live pipeline that an injected ``start_live(policy, sla_s)``
context manager starts and yields the URL of: this module never imports the
pipelines or Ray. Both return :class:`RunOutcome` rows with the same metrics;
:func:`write_results` writes the CSV/JSON table and :mod:`.report` the plots.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import math
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from varipipe.errors import LiveMeasurementError
from varipipe.loadgen.replayer import RequestRecord, replay
from varipipe.loadgen.runs import SimSettings, run_policy
from varipipe.loadgen.simulator import RunMetrics, SimSeries
from varipipe.records import Decision, Profile, decision_cost

__all__ = ["RunOutcome", "variant_switches", "load_peaks", "run_sim", "run_live", "write_results", "metrics_from_records", "git_commit",
           "file_sha256", "checkout_relative", "StartLive", "SUMMARY_FIELDS", "timeline_rows"]

log = logging.getLogger(__name__)

StartLive = Callable[[str, float], AbstractContextManager[str]]

SUMMARY_FIELDS = ("policy", "sla", "sla_s", "mode", "requests", "completed", "dropped", "sla_attainment",
                  "p99_latency_s", "mean_latency_s", "mean_accuracy", "mean_cost", "cost_unit", "decisions",
                  "variant_switches", "load_peaks", "switches_per_peak", "wall_s")

# Load peaks are counted on the arrivals smoothed over an hour (the Twitter trace's diurnal
# peaks last hours; a shorter run is smoothed over a twentieth of its length).
PEAK_SMOOTH_S = 3600
PEAK_SMOOTH_FRACTION = 20
# A peak starts above 60 % of the smoothed rate's range and ends below 40 %.
PEAK_ENTER, PEAK_LEAVE = 0.6, 0.4


def variant_switches(timeline: Sequence[Decision]) -> int:
    """Decisions in force that changed some stage's variant from the one before (replica or batch
    changes alone do not count)."""
    switches, before = 0, None
    for d in timeline:
        variants = {s.stage: s.variant for s in d.stages}
        if before is not None and variants != before:
            switches += 1
        before = variants
    return switches


def load_peaks(arrivals: np.ndarray) -> int:
    """Load peaks of a per-second arrival count: times the smoothed rate rises above
    PEAK_ENTER of its range (lowest to highest), each counted once until it falls below PEAK_LEAVE
    (the gap keeps noise at one threshold from counting one peak twice)."""
    n = len(arrivals)
    if n == 0 or not np.any(arrivals):
        return 0
    width = max(1, min(PEAK_SMOOTH_S, n // PEAK_SMOOTH_FRACTION))
    smooth = np.convolve(arrivals.astype(float), np.ones(width) / width, mode="valid")
    low, high = smooth.min(), smooth.max()
    enter, leave = low + PEAK_ENTER * (high - low), low + PEAK_LEAVE * (high - low)
    peaks, inside = 0, False
    for x in smooth[::max(1, width // PEAK_SMOOTH_FRACTION)]:  # a few samples per smoothing width
        if not inside and x >= enter:
            peaks, inside = peaks + 1, True
        elif inside and x < leave:
            inside = False
    return peaks


@dataclass(frozen=True, eq=False)
class RunOutcome(RunMetrics):
    """One (policy, SLA) run: summary metrics and the per-second series."""

    policy: str
    sla: str
    sla_s: float
    mode: str
    wall_s: float
    series: SimSeries
    timeline: tuple[Decision, ...] = ()  # decisions in force over the run (time_s from its start)

    @property
    def variant_switches(self) -> int:
        return variant_switches(self.timeline)

    @property
    def load_peaks(self) -> int:
        return load_peaks(self.series.arrivals)

    @property
    def switches_per_peak(self) -> float:
        return self.variant_switches / self.load_peaks if self.load_peaks else math.nan

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SUMMARY_FIELDS}


def _sim_one(args: tuple[Profile, np.ndarray, str, str, SimSettings, Profile | None, Decision | None]) -> RunOutcome:
    profile, arrivals, policy, sla_name, settings, planned, initial = args
    r = run_policy(profile, arrivals, policy, settings, planned=planned, initial=initial)
    metrics = {f.name: getattr(r, f.name) for f in fields(RunMetrics)}
    return RunOutcome(**metrics, policy=policy, sla=sla_name, sla_s=settings.sla_s, mode="sim", wall_s=r.wall_s,
                      series=r.series, timeline=r.timeline)


def run_sim(profile: Profile, arrivals: np.ndarray, policies: Sequence[str], slas: Mapping[str, float],
            base: SimSettings, jobs: int = 1, on_done: Callable[[RunOutcome], None] | None = None,
            planned: Profile | None = None, initial: Decision | None = None) -> list[RunOutcome]:
    """Simulate every policy under every SLA on the same arrivals (``jobs`` processes). ``planned``:
    the profile the policies plan on when the simulated host is not ``profile``; ``initial``: what
    serves before the first decision (``run_policy``)."""
    work = [(profile, arrivals, p, name, replace(base, sla_s=s), planned, initial)
            for name, s in slas.items() for p in policies]
    out: list[RunOutcome] = []
    if jobs <= 1:
        for w in work:
            out.append(_sim_one(w))
            if on_done:
                on_done(out[-1])
        return out
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for res in pool.map(_sim_one, work):
            out.append(res)
            if on_done:
                on_done(res)
    return out


# ------------------------------------------------------------------------ live


def _accuracy(profile: Profile, stage: str, variant: str) -> float:
    """The profile's figure for a variant that served a request; NaN for one it never measured."""
    try:
        return profile.variant_accuracy(stage, variant)
    except KeyError:
        return math.nan


def metrics_from_records(records: Sequence[RequestRecord], sla_s: float, profile: Profile, duration_s: float,
                         cost_samples: Sequence[tuple[float, float]] = (),
                         predicted: Sequence[tuple[float, float]] = (), cost_mode: str = "shared",
                         decisions: int = 0) -> tuple[dict[str, Any], SimSeries]:
    """The simulator's metrics (``RunMetrics.measure``) from a replayer log: attainment over
    *all* requests, p99 over answered ones, accuracy from the variants that served each reply
    (profile accuracies)."""
    n_sec = max(int(math.ceil(duration_s)), 1)
    sec = np.minimum(np.array([int(r.scheduled_s) for r in records], dtype=np.int64), n_sec - 1)
    ok = np.array([r.ok for r in records], dtype=bool)
    lat = np.array([r.latency_s for r in records])
    within = ok & (lat <= sla_s)
    acc = np.array([math.prod(_accuracy(profile, s, v) for s, v in r.variants.items()) if r.ok and r.variants
                    else math.nan for r in records])
    has_acc = ok & ~np.isnan(acc)
    cost = np.full(n_sec, np.nan)
    pred = np.zeros(n_sec)
    for samples, arr in ((cost_samples, cost), (predicted, pred)):
        for t, v in sorted(samples):
            arr[min(int(t), n_sec - 1):] = v
    series = SimSeries(
        arrivals=np.bincount(sec, minlength=n_sec), within_sla=np.bincount(sec, weights=within, minlength=n_sec),
        dropped=np.bincount(sec, weights=~ok, minlength=n_sec),
        accuracy_sum=np.bincount(sec[has_acc], weights=acc[has_acc], minlength=n_sec),
        completed=np.bincount(sec, weights=has_acc, minlength=n_sec), cost=cost, predicted_rps=pred,
        replicas=np.zeros(n_sec), p99_latency_s=np.full(n_sec, np.nan))
    answered = np.where(ok, lat, np.nan)
    return RunMetrics.measure(answered, sla_s, acc, cost, cost_mode, decisions), series


@dataclass
class _Polls:
    """What polling the app's /config gave: the decisions in force, and the polls that failed."""

    samples: list[tuple[float, Decision]]
    failed: list[str]


async def _poll_config(url: str, interval_s: float, t0: float, polls: _Polls) -> None:
    """GET ``url`` every interval and keep each Decision the app reports. A poll that gets no
    answer in time (the app busy or restarting) is counted and the next one tries again; an
    answer other than 200 (401: the app wants a token) raises: no later poll would differ."""
    import aiohttp

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=interval_s)) as resp:
                    if resp.status != 200:
                        hint = " (the app wants its bearer token)" if resp.status in (401, 403) else ""
                        raise LiveMeasurementError(f"GET {url} answered {resp.status}{hint}: "
                                                   f"{(await resp.text())[:200]!r}; the run's cost and "
                                                   "decisions cannot be read")
                    data = await resp.json()
            except (TimeoutError, aiohttp.ClientError, ValueError) as e:
                polls.failed.append(f"{type(e).__name__}: {e}")
            else:
                if isinstance(data, dict) and isinstance(data.get("decision"), dict):
                    data = data["decision"]  # the app's /config: {"decision": {...}, ...}
                if isinstance(data, dict) and data.get("stages"):
                    polls.samples.append((loop.time() - t0, Decision.from_dict(data)))
            await asyncio.sleep(interval_s)


async def _replay_and_poll(url: str, times: np.ndarray, body: bytes, ctype: str, config_url: str,
                           interval_s: float) -> tuple[list[RequestRecord], _Polls]:
    """Replay ``times`` while polling /config; a poller that fails stops the replay and raises."""
    polls = _Polls([], [])
    poller = asyncio.create_task(_poll_config(config_url, interval_s, asyncio.get_running_loop().time(), polls))
    from varipipe.loadgen.questions import questions_for

    replaying = asyncio.create_task(replay(url, times, body, ctype, questions=questions_for(url)))
    try:
        await asyncio.wait({poller, replaying}, return_when=asyncio.FIRST_COMPLETED)
        if poller.done():  # it only ends by raising
            poller.result()
        _, records = replaying.result()
    finally:
        for task in (poller, replaying):
            task.cancel()
        await asyncio.gather(poller, replaying, return_exceptions=True)
    return records, polls


def _decisions(polls: _Polls, url: str, interval_s: float) -> list[tuple[float, Decision]]:
    """The decisions polled; a run in which no poll was answered cannot report a cost: it raises."""
    if polls.failed:
        log.warning("GET %s: %d of %d polls got no answer (first: %s)", url, len(polls.failed),
                    len(polls.failed) + len(polls.samples), polls.failed[0])
    if not polls.samples:
        raise LiveMeasurementError(f"GET {url} gave no decision during the whole run (polled every {interval_s:g} s; "
                                   f"{len(polls.failed)} polls failed, first: {polls.failed[0] if polls.failed else '-'})")
    return polls.samples


def _config_url(url: str) -> str:
    """The app's /config beside its inference endpoint (``.../<pipeline>``), route prefix kept."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/").rsplit("/", 1)[0] + "/config", "", ""))


def run_live(start_live: StartLive, profile: Profile, times: np.ndarray, body: bytes, ctype: str,
             policies: Sequence[str], slas: Mapping[str, float], cost_mode: str, interval_s: float,
             on_done: Callable[[RunOutcome], None] | None = None,
             records_dir: Path | None = None) -> list[RunOutcome]:
    """Start the live pipeline per (SLA, policy), replay ``times`` against it, measure from the records.

    ``records_dir``: also write every request record there, ``<sla>-<policy>.jsonl``
    (the replayer's format: ``varipipe simulate --replay-log`` and ``read_records`` take it)."""
    import time

    duration = float(np.ceil(times[-1])) if len(times) else 1.0
    out = []
    for sla_name, sla_s in slas.items():
        for policy in policies:
            started = time.perf_counter()
            with start_live(policy, sla_s) as url:
                records, polls = asyncio.run(
                    _replay_and_poll(url, times, body, ctype, _config_url(url), interval_s))
            if records_dir is not None:
                records_dir.mkdir(parents=True, exist_ok=True)
                (records_dir / f"{sla_name}-{policy}.jsonl").write_text(
                    "".join(r.to_json() + "\n" for r in records), encoding="utf-8")
            decisions = _decisions(polls, _config_url(url), interval_s)
            cost = [(t, decision_cost(d, cost_mode)) for t, d in decisions]
            pred = [(t, d.load_rps) for t, d in decisions]
            changes = sum(1 for (_, a), (_, b) in zip(decisions, decisions[1:], strict=False) if not b.same_config(a))
            m, series = metrics_from_records(records, sla_s, profile, duration, cost, pred, cost_mode, changes)
            res = RunOutcome(**m, policy=policy, sla=sla_name, sla_s=sla_s, mode="live",
                             wall_s=time.perf_counter() - started, series=series,
                             timeline=tuple(replace(d, time_s=t) for t, d in decisions))
            out.append(res)
            if on_done:
                on_done(res)
    return out


# --------------------------------------------------------------------- output


def git_commit(repo: Path | None = None) -> str:
    """The checkout's HEAD commit, with ``+dirty`` when tracked files differ from it; '' outside git."""
    try:
        cwd = repo or Path(__file__).resolve().parents[1]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        return head + "+dirty" if head and changed else head
    except (OSError, subprocess.SubprocessError):
        return ""


def checkout_relative(path: str | Path) -> str:
    """``path`` relative to this checkout when it lies inside it (results name no machine's paths)."""
    root = Path(__file__).resolve().parents[1]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def timeline_rows(timeline: Sequence[Decision]) -> list[dict[str, Any]]:
    """The configuration changes of a run (for the report's per-stage view): time, stages, cost, accuracy."""
    rows: list[dict[str, Any]] = []
    for d in timeline:
        stages = [{"stage": s.stage, "variant": s.variant, "batch": s.batch, "replicas": s.replicas} for s in d.stages]
        if not rows or rows[-1]["stages"] != stages:
            rows.append({"t": d.time_s, "stages": stages, "cost": _clean(d.predicted_cost),
                         "accuracy": _clean(d.predicted_accuracy), "status": d.status.value})
    return rows


def write_results(out_dir: str | Path, outcomes: Sequence[RunOutcome], meta: Mapping[str, Any],
                  series_step_s: int = 60) -> dict[str, Path]:
    """results.csv, results.json (rows + metadata), series/<sla>/<policy>.json and, where the run
    kept its decisions, series/<sla>/<policy>.timeline.json (configuration changes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json"}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(SUMMARY_FIELDS))
        w.writeheader()
        for o in outcomes:
            w.writerow(o.row())
    doc = {"meta": dict(meta), "results": [{k: _clean(v) for k, v in o.row().items()} for o in outcomes]}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for o in outcomes:
        p = out / "series" / o.sla / f"{o.policy.replace(':', '_')}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(o.series.to_dict(series_step_s)), encoding="utf-8")
        if o.timeline:
            p.with_suffix(".timeline.json").write_text(json.dumps(timeline_rows(o.timeline)), encoding="utf-8")
    return paths
