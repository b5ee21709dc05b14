"""Online calibration live (issue 18 part 2): forward error, estimator choice, noisy neighbour.

Subcommands (the live ones start Ray: run them under ``flock /tmp/varipipe-heavy.lock``):

``forward``  One steady live run (``static`` policy, batch 1, a constant rate, evenly spaced
             arrivals, the sample photos in turn so captions and crops vary). Every
             ``--poll`` s the script reads ``GET /api/calibration`` (the corrections in force
             and the batches since the last read). Then, per stage, at prediction times
             t = 120, 180, ... s: the **forward error** |predicted − observed| / observed of
             the p50 batch time of (t, t+60 s], where the prediction is the profile's p50 for
             each batch of the window times the correction in force at t; beside it the
             uncorrected profile (factor 1) and the "last window's p50" baseline (the p50 of
             (t−60, t]). Target: median over ≥ 10 windows within 15 % for every stage.
``replay``   Offline, on a ``forward`` result: the same forward errors for candidate
             estimators and half-lives (adapter.calibration, the one implementation), fed the
             recorded batches in order. The default settings were chosen here.
``tail``     Offline, on a ``forward`` result: at t = 120, 180, ... s, the share of each stage's
             batches of (t, t+60 s] that took longer than the batch p99 the planner used at t:
             the profile's, the profile's scaled by the median factor (``tail=False``), and
             with the measured tail (the default); 1 % is what a p99 promises.
``choose``   Simulated (no lock): the noisy-neighbour scenario on a grid of rates and SLAs,
             with and without calibration: where the hog genuinely matters. The hog is a
             slow spell of the host, or (``--hog-threads``) busy threads that keep their
             cores (loadgen.hostspeed.Neighbour: as the live hog at nice 0 beside the stages
             at nice 10); ``--level/--sigma/--tau`` describe the host (a fidelity tuning
             window's figures). Run before the paired live runs.
``summary``  Offline, on a ``hog`` result: the pairs again, with accuracy from the batches.
``hog``      Paired live runs, with and without calibration, interleaved (the order flips
             every pair): ``ipa`` on ``--pipeline`` (the flagship by default; ``--hardware``,
             ``--objective`` for its planner) at a constant rate; a CPU hog (one busy
             process) from ``HOG_START_S`` to ``HOG_END_S`` of every run, the schedule fixed
             here. Per run: SLA attainment, the measured cost (CPU-seconds per second of the
             stage replicas' processes, from /proc) and the decisions' profile-priced cost,
             accuracy (the profile's accuracy of the variants that served each request), and
             the forward error of the corrections in force.

    flock /tmp/varipipe-heavy.lock python benchmarks/calibration.py forward --out benchmarks/results/calibration_forward.json.gz
    python benchmarks/calibration.py replay benchmarks/results/calibration_forward.json.gz
    python benchmarks/calibration.py tail benchmarks/results/calibration_forward.json.gz --out benchmarks/results/calibration_tail.json
    python benchmarks/calibration.py choose
    flock /tmp/varipipe-heavy.lock python benchmarks/calibration.py hog --rps 1 --sla 0.8 --pairs 3 --out benchmarks/results/calibration_hog.json.gz
    python benchmarks/calibration.py summary benchmarks/results/calibration_hog.json.gz --out benchmarks/results/calibration_hog.json.gz
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from varipipe.adapter.calibration import CalibrationSettings, Calibrator
from varipipe.jsonfile import read_json, write_json_atomic
from varipipe.profiler.store import default_profile_path, load_profile
from varipipe.records import BatchTimes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The forward-error windows (issue 18): a prediction at t against the observed p50 of (t, t+60 s],
# over windows after the first 2 minutes; target median within 15 % for every stage.
WINDOW_S = 60.0
SKIP_S = 120.0
TARGET_FORWARD = 0.15
MIN_WINDOWS = 10
# Batches a window needs for its p50 to mean anything.
MIN_WINDOW_BATCHES = 5
# The noisy neighbour's schedule, fixed before any run: one busy process from 60 s to 180 s of
# each 240 s run (the first minute steady, two minutes hogged, the last minute after).
HOG_START_S = 60.0
HOG_END_S = 180.0
HOG_RUN_S = 240.0
# A hog run's forward windows: predictions every 30 s from 30 s (60 s windows, overlapping), so
# the hog's start and end are inside some.
HOG_WINDOWS = (30.0, 30.0)
# Targets (issue 18): attainment with calibration >= without + 5 points, at <= 10 % more cost.
TARGET_POINTS = 5.0
TARGET_COST = 0.10
# The candidates ``replay`` compares (adapter.calibration.ESTIMATORS) and half-lives (s).
CANDIDATE_ESTIMATORS = ("median", "trimmed", "mean")
CANDIDATE_HALF_LIVES = (15.0, 30.0, 60.0, 120.0)
CPU_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------- live


@dataclass
class Polls:
    """What the script read from the running app, times relative to the replay's start."""

    t0: float
    corrections: list[dict[str, Any]] = field(default_factory=list)  # {"t", "corrections": [...]}
    batches: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # {"t", "stages", "cost", "status", "load_rps"}
    cpu: dict[int, list[float]] = field(default_factory=dict)  # pid -> [first, last] CPU seconds
    cpu_stage: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CPU_TICKS  # utime + stime


def _poll(url: str, polls: Polls, stop: threading.Event, every_s: float) -> None:
    import httpx

    since = 0.0
    while True:
        now = time.time()
        try:
            cal = httpx.get(f"{url}/api/calibration", params={"since": since}, timeout=10).json()
            cfg = httpx.get(f"{url}/config", timeout=10).json()
            reps = httpx.get(f"{url}/api/replicas", timeout=10).json()
        except Exception as e:  # noqa: BLE001 - a missed poll is recorded, the next one tries again
            polls.errors.append(f"{now - polls.t0:.1f}: {type(e).__name__}: {e}")
        else:
            for b in cal.get("batches", []):
                since = max(since, b["t"])
                polls.batches.append({**b, "t": b["t"] - polls.t0})
            polls.corrections.append({"t": now - polls.t0, "enabled": cal.get("enabled", False),
                                      "corrections": cal.get("corrections", [])})
            d = cfg.get("decision") or {}
            polls.decisions.append({"t": now - polls.t0, "cost": d.get("predicted_cost"),
                                    "status": d.get("status"), "load_rps": d.get("load_rps"),
                                    "stages": [(s["stage"], s["variant"], s["batch"], s["replicas"], s["hardware"])
                                               for s in d.get("stages", [])]})
            for r in reps:
                pid, cpu = int(r["pid"]), _proc_cpu_s(int(r["pid"]))
                if cpu is not None:
                    polls.cpu.setdefault(pid, [cpu, cpu])[1] = cpu
                    polls.cpu_stage[pid] = r["stage"]
        if stop.wait(every_s):
            return


def _bodies(names: list[str]) -> list[bytes]:
    from varipipe.loadgen.replayer import load_image

    return [load_image(n)[0] for n in names]


def live_run(opts, times: np.ndarray, bodies: list[bytes], poll_s: float,
             hog: tuple[float, float] | None = None) -> tuple[list, Polls, dict[str, Any]]:
    """Serve ``opts``, replay ``times`` (s) with ``bodies`` in turn, poll the app; with ``hog``,
    one busy process runs from hog[0] to hog[1] s of the replay."""
    from varipipe.loadgen.replayer import replay
    from varipipe.pipelines.server import LocalServer

    with LocalServer(opts, port=0) as server:
        polls = Polls(t0=time.time())
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(server.url, polls, stop, poll_s), daemon=True)
        hog_log: dict[str, Any] = {}
        timers = []
        if hog is not None:
            timers = _schedule_hog(hog, polls.t0, hog_log)
        poller.start()
        try:
            summary, records = asyncio.run(replay(server.endpoint, times, bodies))
        finally:
            stop.set()
            poller.join(timeout=30)
            for t in timers:
                t.cancel()
            _stop_hog(hog_log)
    return records, polls, {"replay": summary.to_dict(), "hog": {k: v for k, v in hog_log.items() if k != "proc"}}


def _schedule_hog(hog: tuple[float, float], t0: float, log: dict[str, Any]) -> list[threading.Timer]:
    log["t0"] = t0

    def start() -> None:
        log["proc"] = subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])
        log["started_s"] = time.time() - t0

    def end() -> None:
        _stop_hog(log)

    timers = [threading.Timer(hog[0], start), threading.Timer(hog[1], end)]
    for t in timers:
        t.start()
    return timers


def _stop_hog(log: dict[str, Any]) -> None:
    proc = log.pop("proc", None)
    if proc is not None:
        proc.kill()  # the process this script started, by its own handle
        proc.wait()
        log["ended_s"] = time.time() - log["t0"]


# ----------------------------------------------------------------------- forward error


def _batches_of(rows: list[dict[str, Any]]) -> list[BatchTimes]:
    """Recorded batches as BatchTimes, one per row (in time order), for a Calibrator."""
    return [BatchTimes(b["stage"], b["variant"], b["hardware"], (int(b["size"]),), (float(b["seconds"]),),
                       (float(b["t"]),), (int(b.get("tokens", 0)),)) for b in sorted(rows, key=lambda b: b["t"])]


def _predictor(profile) -> Calibrator:
    """A calibrator used only for the profile's p50 of a batch (its ``_predicted``)."""
    return Calibrator(profile)


def forward_errors(profile, batches: list[dict[str, Any]], factor_at, stages, t_end: float,
                   skip_s: float = SKIP_S, step_s: float = WINDOW_S) -> dict[str, Any]:
    """Per stage: errors at each prediction time (``skip_s``, then every ``step_s``) of the corrected
    prediction (``factor_at(t, stage, variant)``), the uncorrected profile and the last window's p50."""
    pred = _predictor(profile)
    out: dict[str, Any] = {}
    for stage in stages:
        rows = sorted((b for b in batches if b["stage"] == stage), key=lambda b: b["t"])
        t_arr = np.array([b["t"] for b in rows])
        windows = []
        t = skip_s
        while t + WINDOW_S <= t_end + 1e-9:
            nxt = [b for b, tb in zip(rows, t_arr, strict=True) if t < tb <= t + WINDOW_S]
            last = [b for b, tb in zip(rows, t_arr, strict=True) if t - WINDOW_S < tb <= t]
            if len(nxt) >= MIN_WINDOW_BATCHES and len(last) >= MIN_WINDOW_BATCHES:
                obs = float(np.median([b["seconds"] for b in nxt]))
                base = np.array([pred.predicted(stage, b["variant"], b["hardware"], np.array([int(b["size"])]))[0]
                                 for b in nxt])
                corrected = float(np.median(base * np.array([factor_at(t, stage, b["variant"]) for b in nxt])))
                windows.append({"t": t, "observed_p50_s": obs, "corrected_p50_s": corrected,
                                "profile_p50_s": float(np.median(base)),
                                "last_window_p50_s": float(np.median([b["seconds"] for b in last])),
                                "batches": len(nxt)})
            t += step_s
        for w in windows:
            for k in ("corrected", "profile", "last_window"):
                w[f"{k}_error"] = abs(w[f"{k}_p50_s"] - w["observed_p50_s"]) / w["observed_p50_s"]
        summary = {k: float(np.median([w[f"{k}_error"] for w in windows])) if windows else math.nan
                   for k in ("corrected", "profile", "last_window")}
        out[stage] = {"windows": windows, "n_windows": len(windows),
                      "median_error": summary,
                      "met": bool(len(windows) >= MIN_WINDOWS and summary["corrected"] <= TARGET_FORWARD)}
    return out


def _live_factor_at(polls: list[dict[str, Any]]):
    """The correction in force at t, as the app reported it at its last poll before t."""
    ts = [p["t"] for p in polls]

    def at(t: float, stage: str, variant: str) -> float:
        i = int(np.searchsorted(ts, t, side="right")) - 1
        if i < 0:
            return 1.0
        for c in polls[i]["corrections"]:
            if (c["stage"], c["variant"]) == (stage, variant):
                return float(c["factor"])
        return 1.0

    return at


def _replayed_factor_at(profile, batches: list[dict[str, Any]], settings: CalibrationSettings, use_estimate: bool):
    """The correction a calibrator with ``settings`` would have had at t, fed the recorded batches."""
    rows = sorted(batches, key=lambda b: b["t"])
    cache: dict[float, Any] = {}

    def at(t: float, stage: str, variant: str) -> float:
        if t not in cache:
            cal = Calibrator(profile, settings)
            cal.add(_batches_of([b for b in rows if b["t"] <= t]))
            cache[t] = cal.calibration(t)
        for c in cache[t].corrections:
            if (c.stage, c.variant) == (stage, variant):
                return c.estimate if use_estimate and c.samples else c.factor
        return 1.0

    return at


# ----------------------------------------------------------------------------- commands


def _opts(args, policy: str, calibration: bool, sla_s: float | None, policy_options: dict[str, Any]):
    from varipipe.commands._calibration import calibration_settings
    from varipipe.pipelines.serve_config import AppOptions

    shed = bool(sla_s) and getattr(args, "shed", False)
    return AppOptions(pipeline=args.pipeline, policy=policy, sla_s=sla_s, interval_s=args.interval,
                      profile=args.profiles or "", cost_mode="shared", cluster_cores=2.0,
                      policy_options=policy_options, deadline_sla_factor=1.0 if shed else 0.0,
                      # At the stages only, as the simulator sheds (the experiment runner's choice too).
                      admission=False,
                      calibration=calibration, calibration_settings=calibration_settings(args))


def _meta(args) -> dict[str, Any]:
    from varipipe.loadgen.experiment import git_commit

    return {"command": "python benchmarks/calibration.py " + shlex.join(sys.argv[1:]), "git_commit": git_commit(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_at_start": os.getloadavg()}


def cmd_forward(args) -> dict[str, Any]:
    profile = load_profile(args.profiles or default_profile_path(args.pipeline))
    times = np.arange(0.0, args.seconds, 1.0 / args.rps)
    opts = _opts(args, "static", True, None, {"batch": 1})
    started = time.perf_counter()
    records, polls, extra = live_run(opts, times, _bodies(args.images.split(",")), args.poll)
    stages = profile.stages
    live = forward_errors(profile, polls.batches, _live_factor_at(polls.corrections), stages, args.seconds)
    out = {"meta": _meta(args) | {"pipeline": args.pipeline, "rps": args.rps, "seconds": args.seconds,
                                  "images": args.images, "wall_s": time.perf_counter() - started,
                                  "settings": CalibrationSettings(**opts.calibration_settings).to_dict()},
           "replay": extra["replay"], "forward": live,
           "target_met": all(s["met"] for s in live.values()),
           "polls": polls.corrections, "batches": polls.batches, "decisions": polls.decisions,
           "poll_errors": polls.errors,
           "requests": {"sent": len(records), "ok": sum(r.ok for r in records)}}
    _print_forward(live)
    return out


def _print_forward(res: dict[str, Any]) -> None:
    for stage, r in res.items():
        m = r["median_error"]
        print(f"  {stage:>10}: {r['n_windows']} windows, median forward error corrected {100 * m['corrected']:.1f} %, "
              f"profile {100 * m['profile']:.1f} %, last window {100 * m['last_window']:.1f} % "
              f"{'OK' if r['met'] else 'MISS'}", flush=True)


def cmd_replay(args) -> dict[str, Any]:
    """Each candidate's forward errors on the recorded batches of a forward run (its windows) or
    of a hog run (every 60 s window after the first 2 minutes of each run, hog included)."""
    doc = read_json(args.result)
    profile = load_profile(args.profiles or default_profile_path(doc["meta"]["pipeline"]))
    runs = [(r["batches"], HOG_RUN_S) for r in doc["runs"]] if "runs" in doc else [(doc["batches"], doc["meta"]["seconds"])]
    rows = []
    for est in CANDIDATE_ESTIMATORS:
        for hl in CANDIDATE_HALF_LIVES:
            settings = CalibrationSettings(estimator=est, half_life_s=hl)
            for use_estimate in (False, True):
                errors: dict[str, list[float]] = {}
                for batches, seconds in runs:
                    at = _replayed_factor_at(profile, batches, settings, use_estimate)
                    for stage, r in forward_errors(profile, batches, at, profile.stages, seconds,
                                                   *HOG_WINDOWS if "runs" in doc else ()).items():
                        errors.setdefault(stage, []).extend(w["corrected_error"] for w in r["windows"])
                row = {"estimator": est, "half_life_s": hl, "figure": "estimate" if use_estimate else "in force",
                       "windows": {s: len(e) for s, e in errors.items()},
                       "median_error": {s: float(np.median(e)) if e else math.nan for s, e in errors.items()}}
                row["worst_stage"] = max((e for e in row["median_error"].values() if not math.isnan(e)),
                                         default=math.nan)
                rows.append(row)
                print(f"  {est:>8} half-life {hl:>5g} s ({row['figure']:>8}): "
                      + ", ".join(f"{s} {100 * e:.1f} %" for s, e in row["median_error"].items()), flush=True)
    return {"meta": _meta(args) | {"source": args.result}, "candidates": rows}


def cmd_tail(args) -> dict[str, Any]:
    """Per stage, the share of the next window's batches over the planned batch p99, three ways."""
    from varipipe.loadgen.service import service_model

    doc = read_json(args.result)
    profile = load_profile(args.profiles or default_profile_path(doc["meta"]["pipeline"]))
    rows = sorted(doc["batches"], key=lambda b: b["t"])
    planners = {"profile": None, "median factor only": Calibrator(profile, CalibrationSettings(tail=False)),
                "with the tail": Calibrator(profile)}
    over: dict[str, dict[str, list[float]]] = {}
    fed, t = 0, SKIP_S
    while t + WINDOW_S <= doc["meta"]["seconds"]:
        new = [r for r in rows[fed:] if r["t"] <= t]
        fed += len(new)
        for cal in planners.values():
            if cal is not None:
                cal.add(_batches_of(new))
        planned = {name: cal.corrected(t) if cal else profile for name, cal in planners.items()}
        for b in (b for b in rows if t < b["t"] <= t + WINDOW_S):
            for name, prof in planned.items():
                p99 = service_model(prof, b["stage"], b["variant"], b["hardware"], int(b["size"])).p99_s(int(b["size"]))
                over.setdefault(b["stage"], {}).setdefault(name, []).append(float(b["seconds"] > p99))
        t += WINDOW_S
    out = {stage: {name: {"batches": len(v), "share_over_p99": float(np.mean(v))} for name, v in by.items()}
           for stage, by in over.items()}
    for stage, by in out.items():
        print(f"  {stage:>10}: " + ", ".join(f"{name} {100 * r['share_over_p99']:.1f} %" for name, r in by.items())
              + f" of {next(iter(by.values()))['batches']} batches over the planned p99", flush=True)
    return {"meta": _meta(args) | {"source": args.result}, "stages": out}


def cmd_choose(args) -> dict[str, Any]:
    from varipipe.adapter.calibration import calibrate
    from varipipe.commands._calibration import calibration_settings
    from varipipe.loadgen.hostspeed import HostSpeed, Neighbour, Spell
    from varipipe.loadgen.runs import SimSettings, run_policy

    profile = load_profile(args.profiles or default_profile_path(args.pipeline))
    # The simulated host: the profile, or the profile corrected by what a live run measured (the
    # policy still plans on the profile, and calibration corrects that).
    host_factors = _measured_factors(args.host_factors) if args.host_factors else {}
    host = calibrate(profile, host_factors)
    settings = calibration_settings(args)
    # The hog: busy threads that keep their cores (--hog-threads, hostspeed.Neighbour), or a slow spell.
    spells = [] if args.hog_threads else [Spell(HOG_START_S, HOG_END_S, args.hog_factor)]
    neighbours = (Neighbour(HOG_START_S, HOG_END_S, args.hog_threads),) if args.hog_threads else ()
    rows = []
    for rps in [float(x) for x in args.rates.split(",")]:
        times = np.arange(0.0, HOG_RUN_S, 1.0 / rps)
        for sla in [float(x) for x in args.slas.split(",")]:
            row: dict[str, Any] = {"rps": rps, "sla_s": sla}
            for seed in range(args.seeds):
                speed = HostSpeed.generate(int(HOG_RUN_S) + 60, seed=seed, sigma=args.sigma, tau_s=args.tau,
                                           level=args.level, spells=spells)
                for cal in (False, True):
                    st = SimSettings(sla_s=sla, cost_mode="shared", cluster_cores=2.0, calibration=cal,
                                     calibration_settings=settings, host_speed=speed, seed=seed,
                                     neighbours=neighbours,
                                     interval_s=args.interval, shed_late=args.shed,
                                     policy_options=_policy_options(args))
                    r = run_policy(host, times, "ipa", st, planned=profile)
                    key = "with" if cal else "without"
                    row.setdefault(key, []).append({"attainment": r.sla_attainment, "cost": r.mean_cost,
                                                    "accuracy": r.mean_accuracy})
            for key in ("with", "without"):
                row[f"{key}_attainment"] = float(np.mean([x["attainment"] for x in row[key]]))
                row[f"{key}_cost"] = float(np.mean([x["cost"] for x in row[key]]))
            row["gain_points"] = 100 * (row["with_attainment"] - row["without_attainment"])
            row["cost_ratio"] = row["with_cost"] / row["without_cost"]
            rows.append(row)
            print(f"  {rps:g} req/s, SLA {sla:g} s: attainment without {row['without_attainment']:.3f}, with "
                  f"{row['with_attainment']:.3f} ({row['gain_points']:+.1f} pts), cost x{row['cost_ratio']:.2f}",
                  flush=True)
    return {"meta": _meta(args) | {"pipeline": args.pipeline, "hog_factor": args.hog_factor, "sigma": args.sigma,
                                   "hog_threads": args.hog_threads, "level": args.level, "tau_s": args.tau,
                                   "settings": CalibrationSettings(**settings).to_dict(),
                                   "shed": args.shed, "rates": args.rates, "slas": args.slas,
                                   "host_factors": {f"{s}/{v}": f for (s, v), f in host_factors.items()},
                                   "host_factors_from": args.host_factors},
            "grid": rows}


def _policy_options(args) -> dict[str, Any]:
    """The planner's options from the command line (hardware; ``--objective`` as serve takes it)."""
    from varipipe.commands.serve import objective_options

    return {"hardware": args.hardware.split(",")} | objective_options(args.objective)


def _measured_factors(path: str) -> dict[tuple[str, str], float]:
    """Each (stage, variant)'s estimate at the last poll of a live run (its own, or its stage's)."""
    doc = read_json(path)
    polls = doc["polls"] if "polls" in doc else doc["runs"][0]["corrections"]
    last = polls[-1]["corrections"]
    return {(c["stage"], c["variant"]): float(c["estimate"]) for c in last if c["source"] != "none"}


def cmd_hog(args) -> dict[str, Any]:
    profile = load_profile(args.profiles or default_profile_path(args.pipeline))
    times = np.arange(0.0, HOG_RUN_S, 1.0 / args.rps)
    bodies = _bodies(args.images.split(","))
    runs = []
    for pair in range(args.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        if args.only_with:
            order = (True,)
        for calibration in order:
            opts = _opts(args, "ipa", calibration, args.sla, _policy_options(args))
            started = time.perf_counter()
            records, polls, extra = live_run(opts, times, bodies, args.poll, hog=(HOG_START_S, HOG_END_S))
            runs.append(_hog_run(profile, args, pair, calibration, records, polls, extra,
                                 time.perf_counter() - started))
    pairs = _pairs(runs)
    from varipipe.commands._calibration import calibration_settings

    return {"meta": _meta(args) | {"pipeline": args.pipeline, "rps": args.rps, "sla_s": args.sla, "shed": args.shed,
                                   "settings": CalibrationSettings(**calibration_settings(args)).to_dict(),
                                   "hog": {"start_s": HOG_START_S, "end_s": HOG_END_S, "run_s": HOG_RUN_S,
                                           "process": "one busy Python loop"}},
            "runs": runs, "pairs": pairs}


def _hog_run(profile, args, pair: int, calibration: bool, records, polls: Polls, extra, wall_s: float) -> dict:
    from varipipe.loadgen.experiment import _accuracy

    ok = np.array([r.ok for r in records])
    lat = np.array([r.latency_s for r in records])
    within = ok & (lat <= args.sla)
    acc = [math.prod(_accuracy(profile, s, v) for s, v in r.variants.items()) for r in records if r.ok and r.variants]
    unprofiled = sum(math.isnan(a) for a in acc)  # served by a variant the profile has no figure for
    acc = [a for a in acc if not math.isnan(a)]
    cpu = sum(last - first for last, first in ((v[1], v[0]) for v in polls.cpu.values()))
    costs = [d["cost"] for d in polls.decisions if d["cost"] is not None]
    in_hog = np.array([HOG_START_S <= r.scheduled_s < HOG_END_S for r in records], dtype=bool)
    fwd = forward_errors(profile, polls.batches, _live_factor_at(polls.corrections), profile.stages, HOG_RUN_S,
                         *HOG_WINDOWS)
    run = {"pair": pair, "calibration": calibration, "requests": len(records), "ok": int(ok.sum()),
           "sla_attainment": float(within.mean()) if len(records) else math.nan,
           "sla_attainment_hog": float(within[in_hog].mean()) if in_hog.any() else math.nan,
           "sla_attainment_outside_hog": float(within[~in_hog].mean()) if (~in_hog).any() else math.nan,
           "p99_latency_s": float(np.percentile(lat[ok], 99)) if ok.any() else math.nan,
           "mean_accuracy": float(np.mean(acc)) if acc else math.nan, "unprofiled_requests": unprofiled,
           "batch_accuracy": batch_accuracy(profile, polls.batches),
           "switches": _switches(polls.decisions),
           "measured_cpu_s_per_s": cpu / HOG_RUN_S,
           "decision_cost_mean": float(np.mean(costs)) if costs else math.nan,
           "decisions": polls.decisions, "corrections": polls.corrections, "forward": fwd, "batches": polls.batches,
           "poll_errors": polls.errors, "wall_s": wall_s, **extra}
    print(f"  pair {pair} {'with' if calibration else 'without'} calibration: attainment {run['sla_attainment']:.3f} "
          f"(hog {run['sla_attainment_hog']:.3f}, outside it {run['sla_attainment_outside_hog']:.3f}), p99 "
          f"{run['p99_latency_s']:.2f} s, cpu {run['measured_cpu_s_per_s']:.2f} "
          f"CPU-s/s, accuracy {run['mean_accuracy']:.4f}", flush=True)
    return run


def batch_accuracy(profile, batches: list[dict[str, Any]]) -> float:
    """The profile's accuracy of the variants that ran, weighted by the items each stage's
    batches served, multiplied over the stages (variants the profile lacks left out): a run's
    accuracy from its batches when its requests' variants were not kept."""
    from varipipe.loadgen.experiment import _accuracy

    out = 1.0
    for stage in profile.stages:
        rows = [(_accuracy(profile, stage, b["variant"]), int(b["size"])) for b in batches if b["stage"] == stage]
        rows = [(a, n) for a, n in rows if not math.isnan(a)]
        if not rows:
            return math.nan
        out *= float(np.average([a for a, _ in rows], weights=[n for _, n in rows]))
    return out


def _switches(decisions: list[dict[str, Any]]) -> int:
    """Configuration changes the polls saw after the policy's first decision (the app starts on
    the spec's defaults; the move off them is not counted)."""
    shapes = [tuple(map(tuple, d["stages"])) for d in decisions if d["stages"]]
    first = next((i for i, s in enumerate(shapes) if s != shapes[0]), len(shapes))
    rest = shapes[first:]
    return sum(a != b for a, b in zip(rest, rest[1:], strict=False))


def cmd_summary(args) -> dict[str, Any]:
    """A hog result's pairs again, with the batch-weighted accuracy and switch counts (for a
    result written before they were recorded)."""
    doc = read_json(args.result)
    profile = load_profile(args.profiles or default_profile_path(doc["meta"]["pipeline"]))
    for r in doc["runs"]:
        r["batch_accuracy"] = batch_accuracy(profile, r["batches"])
        r["switches"] = _switches(r["decisions"])
        fwd = {s: round(100 * f["median_error"]["corrected"], 1) for s, f in r["forward"].items()}
        print(f"  pair {r['pair']} {'with' if r['calibration'] else 'without'}: attainment {r['sla_attainment']:.3f} "
              f"(hog {r['sla_attainment_hog']:.3f}), p99 {r['p99_latency_s']:.2f} s, cpu "
              f"{r['measured_cpu_s_per_s']:.3f} CPU-s/s, decision cost {r['decision_cost_mean']:.3f}, accuracy "
              f"{r['batch_accuracy']:.4f} (batches), {r['switches']} switches, forward error % {fwd}", flush=True)
    doc["pairs"] = _pairs(doc["runs"])
    for row in doc["pairs"]["rows"]:
        print(f"  pair {row['pair']}: {row['gain_points']:+.1f} points, cost x{row['cost_ratio']:.3f}, "
              f"accuracy x{row['batch_accuracy_ratio']:.3f}", flush=True)
    p = doc["pairs"]
    print(f"  mean {p['mean_gain_points']:+.1f} points, cost x{p['mean_cost_ratio']:.3f}; target "
          f"{'met' if p['target_met'] else 'not met'}", flush=True)
    return doc


def _pairs(runs: list[dict]) -> dict[str, Any]:
    by = {}
    for r in runs:
        by.setdefault(r["pair"], {})[r["calibration"]] = r
    rows = []
    for pair, d in sorted(by.items()):
        if True in d and False in d:
            w, wo = d[True], d[False]
            rows.append({"pair": pair, "gain_points": 100 * (w["sla_attainment"] - wo["sla_attainment"]),
                         "cost_ratio": w["measured_cpu_s_per_s"] / wo["measured_cpu_s_per_s"],
                         "decision_cost_ratio": w["decision_cost_mean"] / wo["decision_cost_mean"],
                         "accuracy_ratio": w["mean_accuracy"] / wo["mean_accuracy"],
                         "batch_accuracy_ratio": w.get("batch_accuracy", math.nan) / wo.get("batch_accuracy", math.nan)})
    gain = float(np.mean([r["gain_points"] for r in rows])) if rows else math.nan
    cost = float(np.mean([r["cost_ratio"] for r in rows])) if rows else math.nan
    return {"rows": rows, "mean_gain_points": gain, "mean_cost_ratio": cost,
            "target_met": bool(rows and gain >= TARGET_POINTS and cost <= 1 + TARGET_COST)}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, pipeline: str) -> None:
        p.add_argument("--pipeline", default=pipeline)
        p.add_argument("--calibration-setting", action="append", default=[], metavar="NAME=VALUE",
                       help="a CalibrationSettings field for the live runs (repeatable)")
        p.add_argument("--profiles", default=None, help="profile JSON (default: the pipeline's shipped one)")
        p.add_argument("--interval", type=float, default=10.0, help="adapter interval (s)")
        p.add_argument("--hardware", default="cpu:1", help="hardware the planner may use, comma-separated")
        p.add_argument("--objective", default="weighted", choices=("weighted", "max-accuracy"),
                       help="ipa's objective, as serve's --objective")
        p.add_argument("--out", default=None, help="result JSON (default: print only)")
        p.add_argument("--shed", action="store_true",
                       help="deadline shedding at the stages (varipipe.admission; default off here: a stage "
                            "whose expected batch time jumps past the SLA, as at the hog's start, sheds every "
                            "item from then on and never runs a batch to bring its expectation back)")

    f = sub.add_parser("forward", help="a steady live run: forward error of the corrections")
    common(f, "vision-caption-ci")
    f.add_argument("--rps", type=float, default=1.0)
    f.add_argument("--seconds", type=float, default=SKIP_S + MIN_WINDOWS * WINDOW_S + 15)
    f.add_argument("--poll", type=float, default=10.0)
    f.add_argument("--images", default="chelsea,astronaut,coffee,rocket,camera")
    r = sub.add_parser("replay", help="offline: candidate estimators on a forward run's batches")
    common(r, "")
    r.add_argument("result")
    t = sub.add_parser("tail", help="offline: a forward run's batches over the planned p99, with and without the tail")
    common(t, "")
    t.add_argument("result")
    c = sub.add_parser("choose", help="simulated: where the hog matters (rates x SLAs)")
    common(c, "vision-caption")
    c.add_argument("--rates", default="0.5,0.75,1.0,1.25")
    c.add_argument("--slas", default="1.0,1.25,1.5,2.0")
    c.add_argument("--hog-factor", type=float, default=2.0, help="the hog as a slow spell of this factor")
    c.add_argument("--hog-threads", type=float, default=0.0,
                   help="the hog as this many busy threads that keep their cores (loadgen.hostspeed.Neighbour; "
                        "then --hog-factor is unused)")
    c.add_argument("--sigma", type=float, default=0.1, help="the host's own drift (log sd)")
    c.add_argument("--tau", type=float, default=30.0, help="the host's drift's correlation time (s)")
    c.add_argument("--level", type=float, default=1.0,
                   help="the host's speed level (service time / the profile's; fidelity_loads.py's tuning measures it)")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--host-factors", default=None,
                   help="a forward/hog result: simulate a host whose service times are the profile's times the "
                        "estimates measured there (the policy plans on the profile)")
    h = sub.add_parser("hog", help="paired live runs with and without calibration under a CPU hog")
    common(h, "vision-caption")
    h.add_argument("--rps", type=float, required=True)
    h.add_argument("--sla", type=float, required=True)
    h.add_argument("--pairs", type=int, default=3)
    h.add_argument("--poll", type=float, default=5.0)
    h.add_argument("--images", default="chelsea,astronaut,coffee,rocket,camera")
    h.add_argument("--only-with", action="store_true", help="runs with calibration only (a tuning run)")
    m = sub.add_parser("summary", help="offline: a hog result's pairs with accuracy from its batches")
    common(m, "")
    m.add_argument("result")
    return ap.parse_args()


def main() -> int:
    args = _args()
    run = {"forward": cmd_forward, "replay": cmd_replay, "tail": cmd_tail, "choose": cmd_choose, "hog": cmd_hog,
           "summary": cmd_summary}[args.command]
    out = run(args)
    if args.out:
        write_json_atomic(args.out, out, indent=1, default=float)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
