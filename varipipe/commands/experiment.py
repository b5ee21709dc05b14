"""``varipipe experiment``: compare adaptation policies on the same arrivals (sim or live)."""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from varipipe.adapter.configurations import DEFAULT_CLUSTER_CORES, DEFAULT_COST_MODE
from varipipe.adapter.policy import DEFAULT_INTERVAL_S
from varipipe.adapter.predictors import DEFAULT_PREDICTOR
from varipipe.commands._calibration import (
    add_calibration_arguments,
    add_host_speed_argument,
    calibration_settings,
    simulated_host,
)
from varipipe.commands.load import add_trace_arguments
from varipipe.records import ROUTINGS

NAME = "experiment"
HELP = "run several policies on the same trace (simulated or live) and write a table and plots"

DEFAULT_POLICIES = "ipa,fa2-low,fa2-high,rim,ray,oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default=None, help="scenario YAML, or a packaged scenario's name "
                        "(twitter-eval = loadgen/scenarios/twitter-eval.yaml); --start/--duration then "
                        "run only that part of its window")
    add_trace_arguments(parser, required=False)
    parser.set_defaults(seed=None)
    parser.add_argument("--policies", default=None, help=f"comma-separated (default: the scenario's, else {DEFAULT_POLICIES})")
    parser.add_argument("--mode", choices=("sim", "live"), default="sim")
    parser.add_argument("--out", required=True, help="output folder (results.csv, results.json, plots)")
    parser.add_argument("--profiles", default=None, help="profile JSON (default: the scenario's, else the shipped one)")
    parser.add_argument("--sla", default=None, help="SLA seconds without a scenario (comma-separated for several)")
    parser.add_argument("--cluster", default=None, metavar="ROW",
                        help="the scenario's cluster row (its clusters: list; default: the first)")
    parser.add_argument("--cost-mode", choices=("reserved", "shared"), default=None)
    parser.add_argument("--cluster-cores", type=float, default=None)
    parser.add_argument("--cluster-gpus", type=int, default=None,
                        help="sim mode: GPUs for gpu:<model> configurations (default: the scenario's, else 0)")
    parser.add_argument("--gpu-memory-mb", type=float, default=None, metavar="MIB",
                        help="sim mode: one GPU's memory (default: the scenario's, else the profile's record)")
    parser.add_argument("--interval", type=float, default=None, help="adaptation interval (s)")
    parser.add_argument("--predictor", default=None)
    parser.add_argument("--solver", default=None, help="solver of the ILP policies (dp, cbc, highs; default dp)")
    parser.add_argument("--jobs", type=int, default=1, help="simulations in parallel processes (default 1)")
    parser.add_argument("--pipeline", default=None, help="live mode: pipeline to serve (default: the scenario's)")
    parser.add_argument("--image", default="chelsea", help="live mode: image file or sample name to POST")
    add_calibration_arguments(parser)
    add_host_speed_argument(parser)


def _live_starter(pipeline: str, interval_s: float, cost_mode: str, cores: float, predictor: str,
                  profile: str, policy_options: dict[str, Any], calibration: bool = True,
                  calibration_options: dict[str, Any] | None = None):
    """``start(policy, sla_s)`` -> context manager yielding the live pipeline's endpoint (lazy import)."""
    from varipipe.adapter.policies import policy_options as options_for
    from varipipe.errors import VaripipeError

    try:
        from varipipe.pipelines.serve_config import AppOptions
        from varipipe.pipelines.server import LocalServer
    except ImportError as e:
        raise VaripipeError(f"live mode needs varipipe.pipelines.server.LocalServer, which is not available "
                            f"here ({e}); run with --mode sim") from e

    @contextlib.contextmanager
    def start(policy: str, sla_s: float) -> Iterator[str]:
        opts = AppOptions(pipeline=pipeline, policy=policy, sla_s=sla_s, interval_s=interval_s, cost_mode=cost_mode,
                          cluster_cores=cores, predictor=predictor, profile=profile,
                          policy_options=options_for(policy, policy_options),
                          # Deadline = the SLA; shed by the same rule as the simulator (varipipe.admission):
                          # at the stages only. The simulator has no ingress admission (issue 16) yet, so
                          # live runs leave it off to stay comparable.
                          deadline_sla_factor=1.0, admission=False, calibration=calibration,
                          calibration_settings=dict(calibration_options or {}))
        with LocalServer(opts, port=0) as server:
            yield server.endpoint

    return start


def _plan(args: argparse.Namespace, profile) -> dict[str, Any]:
    """Arrival schedule and settings from the scenario (rules resolved) or from the flags."""
    from varipipe.errors import VaripipeError
    from varipipe.loadgen.scenario import load_scenario, resolve
    from varipipe.loadgen.traces import read_trace

    if args.scenario:
        sc = load_scenario(args.scenario)
        rs = resolve(sc, profile, args.trace, args.cluster)
        live = args.mode == "live"
        start = rs.window_start_s + (sc.live.start_s if live else 0)
        duration = sc.live.duration_s if live else rs.window_duration_s
        trace = read_trace(rs.trace_path, start, duration)
        scale = (sc.live.peak_rps if live else sc.target_peak_rps) / max(trace.peak_rps, 1e-9)
        part = {}
        if args.start or args.duration is not None:
            # A part of the scenario's window (a quick check), at the full window's scale.
            trace = trace.window(args.start, args.duration)
            part = {"part_of_window_s": [args.start, trace.duration_s]}
        return dict(trace=trace.scaled(scale), slas=dict(rs.slas), policies=sc.policies, seed=sc.seed,
                    arrivals=sc.arrivals, interval=sc.interval_s, predictor=sc.predictor,
                    cost_mode=sc.live.cost_mode if live else sc.cost_mode,
                    cores=sc.live.cluster_cores if live else rs.cluster_cores, options=dict(sc.policy_options),
                    gpus=0 if live else sc.cluster_gpus, gpu_memory_mb=None if live else sc.gpu_memory_mb,
                    pipeline=sc.live.pipeline, per_policy={} if live else rs.per_policy,
                    resolved=rs.to_dict() | {"run_scale": scale} | part)
    if not (args.trace and args.sla):
        raise VaripipeError("give --scenario FILE, or --trace FILE with --sla SECONDS")
    trace = read_trace(args.trace, args.start, args.duration, args.scale)
    slas = {f"sla-{float(s):g}s": float(s) for s in args.sla.split(",")}
    return dict(trace=trace, slas=slas, policies=DEFAULT_POLICIES.split(","), seed=0, arrivals=args.arrivals,
                interval=DEFAULT_INTERVAL_S, predictor=DEFAULT_PREDICTOR, cost_mode=DEFAULT_COST_MODE,
                cores=DEFAULT_CLUSTER_CORES, options={}, gpus=0, gpu_memory_mb=None,
                pipeline="vision-caption", per_policy={}, resolved={})


def _profile_path(args: argparse.Namespace) -> str:
    from varipipe.loadgen.scenario import load_scenario, scenario_file
    from varipipe.profiler.store import default_profile_path

    if args.profiles:
        return args.profiles
    if args.scenario:
        sc = load_scenario(args.scenario)
        if sc.profile:
            return str(scenario_file(sc, sc.profile))
    return str(default_profile_path())


def run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from tqdm import tqdm

    from varipipe.loadgen.experiment import (
        checkout_relative,
        file_sha256,
        git_commit,
        run_live,
        run_sim,
        write_results,
    )
    from varipipe.loadgen.report import plot_all
    from varipipe.loadgen.report_html import write_report
    from varipipe.loadgen.runs import SimSettings
    from varipipe.loadgen.traces import arrival_times
    from varipipe.profiler.store import load_profile

    profile_path = _profile_path(args)
    profile = load_profile(profile_path)
    plan = _plan(args, profile)
    seed = plan["seed"] if args.seed is None else args.seed
    policies = args.policies.split(",") if args.policies else list(plan["policies"])
    interval = args.interval or plan["interval"]
    cost_mode = args.cost_mode or plan["cost_mode"]
    cores = args.cluster_cores or plan["cores"]
    gpus = args.cluster_gpus if args.cluster_gpus is not None else plan["gpus"]
    gpu_memory_mb = args.gpu_memory_mb if args.gpu_memory_mb is not None else plan["gpu_memory_mb"]
    if args.mode == "live" and gpus:
        from varipipe.errors import ConfigError

        raise ConfigError("command line", "--cluster-gpus", "live experiments serve on this host's CPUs; plan GPUs"
                          " in --mode sim")
    predictor = args.predictor or plan["predictor"]
    times = arrival_times(plan["trace"], plan["arrivals"], seed)
    total = len(policies) * len(plan["slas"])
    with tqdm(total=total, unit="run", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        finished = [0]

        def done(o) -> None:
            finished[0] += 1
            bar.update(1)
            bar.set_postfix_str(f"{o.sla}/{o.policy}")
            if bar.disable:  # no terminal: one log line per finished run instead of the bar
                print(f"[{finished[0]}/{total}] {o.sla}/{o.policy}: attainment {o.sla_attainment:.4f}, "
                      f"cost {o.mean_cost:.2f}, {o.wall_s:.0f} s", file=sys.stderr, flush=True)

        if args.mode == "sim":
            seconds = int(math.ceil(times[-1])) + 1 if len(times) else 1
            base = SimSettings(sla_s=1.0, interval_s=interval, cost_mode=cost_mode, cluster_cores=cores, seed=seed,
                               cluster_gpus=gpus, gpu_memory_mb=gpu_memory_mb,
                               predictor=predictor, per_policy=plan["per_policy"],
                               policy_options=plan["options"] | ({"solver": args.solver} if args.solver else {}),
                               calibration=args.calibration, calibration_settings=calibration_settings(args),
                               **simulated_host(args, seconds))
            outcomes = run_sim(profile, times, policies, plan["slas"], base, jobs=args.jobs, on_done=done)
        else:
            from varipipe.loadgen.replayer import load_image

            if args.host_speed or args.neighbour:
                from varipipe.errors import VaripipeError

                raise VaripipeError("--host-speed and --neighbour model the host in simulation; a live run has the "
                                    "host it has")
            if args.routing != ROUTINGS[0]:
                from varipipe.errors import VaripipeError

                raise VaripipeError("--routing models how replicas get their work in simulation; a live run is "
                                    "routed by Serve")
            start = _live_starter(args.pipeline or plan["pipeline"], interval, cost_mode, cores, predictor,
                                  profile_path, plan["options"] | ({"solver": args.solver} if args.solver else {}),
                                  args.calibration, calibration_settings(args))
            body, ctype = load_image(args.image)
            outcomes = run_live(start, profile, times, body, ctype, policies, plan["slas"], cost_mode, interval,
                                on_done=done, records_dir=Path(args.out) / "records")
    meta = {"git_commit": git_commit(), "profile": checkout_relative(profile_path),
            "profile_sha256": file_sha256(profile_path), "seed": seed, "mode": args.mode, "policies": policies, "slas": plan["slas"], "predictor": predictor,
            "interval_s": interval, "cost_mode": cost_mode, "cluster_cores": cores, "cluster_gpus": gpus,
            "requests": int(len(times)),
            "scenario": args.scenario, "resolved": plan["resolved"], "command": "varipipe " + shlex.join(sys.argv[1:]),
            "calibration": {"enabled": args.calibration, "settings": calibration_settings(args),
                            "host_speed": args.host_speed, "neighbours": args.neighbour},
            "routing": args.routing if args.mode == "sim" else "serve",  # live: Serve's own router
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds")}
    paths = write_results(args.out, outcomes, meta)
    plots = plot_all(outcomes, args.out)
    _print_table(outcomes)
    print(f"wrote {paths['csv']}, {paths['json']}, " + ", ".join(str(p) for p in plots))
    print(f"report (opens offline): {write_report(args.out)}")
    return 0


def _print_table(outcomes) -> None:
    print(f"{'sla':>14} {'policy':>9} {'attain':>7} {'p99 s':>7} {'acc':>6} {'cost':>8} {'drops':>7} {'chg':>5} {'sw/pk':>6}")
    for o in outcomes:
        def f(x: float, spec: str) -> str:
            return format(x, spec) if isinstance(x, float) and math.isfinite(x) else "n/a"

        print(f"{o.sla:>14} {o.policy:>9} {f(o.sla_attainment, '.4f'):>7} {f(o.p99_latency_s, '.3f'):>7} "
              f"{f(o.mean_accuracy, '.3f'):>6} {f(o.mean_cost, '.2f'):>8} {o.dropped:>7} {o.decisions:>5} "
              f"{f(o.switches_per_peak, '.1f'):>6}")
