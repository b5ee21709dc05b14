"""``varipipe simulate``: run a policy on a trace in the discrete-event simulator."""

from __future__ import annotations

import argparse
import json
import math

from varipipe.adapter.configurations import DEFAULT_CLUSTER_CORES, DEFAULT_COST_MODE
from varipipe.adapter.policy import DEFAULT_INTERVAL_S
from varipipe.commands._calibration import (
    add_calibration_arguments,
    add_host_speed_argument,
    calibration_settings,
    simulated_host,
)
from varipipe.commands.load import add_trace_arguments

NAME = "simulate"
HELP = "simulate a policy on a trace with profiled service times (no models, no Ray)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiles", default=None, help="profile JSON (default: the shipped vision-caption profile)")
    add_trace_arguments(parser, required=False)
    parser.add_argument("--replay-log", default=None, help="take arrivals from a `varipipe load` log instead")
    parser.add_argument("--policy", default="ipa", help="ipa, fa2-low, fa2-high, rim, ray, static, oracle, module:Class")
    parser.add_argument("--predictor", default=None, help="load predictor (default: reactive)")
    parser.add_argument("--solver", default=None, help="solver option for ILP policies (dp, cbc, highs; default dp)")
    parser.add_argument("--sla", type=float, required=True, help="end-to-end latency SLA in seconds")
    parser.add_argument("--cost-mode", choices=("reserved", "shared"), default=DEFAULT_COST_MODE)
    parser.add_argument("--cluster-cores", type=float, default=DEFAULT_CLUSTER_CORES,
                        help="host cores (shared) or cluster cores (reserved) (default: %(default)s)")
    parser.add_argument("--max-replicas", type=int, default=None,
                        help="replicas per stage (default: the cluster's whole cores)")
    parser.add_argument("--cluster-gpus", type=int, default=0,
                        help="GPUs for gpu:<model> configurations: shared by their replicas (shared mode), one per"
                             " replica (reserved) (default: %(default)s)")
    parser.add_argument("--gpu-memory-mb", type=float, default=None, metavar="MIB",
                        help="one GPU's memory, MiB (default: what a GPU profile recorded, metadata.device)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help="adaptation interval in seconds (default: %(default)s)")
    parser.add_argument("--loop-start", choices=("warm", "live"), default="warm",
                        help="warm: the policy decides at t=0 on the first interval's load; live: as a server "
                             "starts, the spec's default decision serves until the loop first steps (at a phase "
                             "of its interval drawn from --seed) and holds it on scant traffic (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result (with the time series) as JSON")
    parser.add_argument("--series-step", type=int, default=1, help="seconds per time-series bucket in --json output")
    parser.add_argument("--dump-requests", default=None, help="CSV file: one row per simulated request")
    add_calibration_arguments(parser)
    add_host_speed_argument(parser)


def _arrivals(args: argparse.Namespace):
    from varipipe.errors import VaripipeError
    from varipipe.loadgen.replayer import arrivals_from_log
    from varipipe.loadgen.traces import arrival_times, read_trace

    if args.replay_log:
        return arrivals_from_log(args.replay_log)
    if not args.trace:
        raise VaripipeError("give --trace FILE (or --replay-log FILE)")
    return arrival_times(read_trace(args.trace, args.start, args.duration, args.scale), args.arrivals, args.seed)


def _profile(path: str | None):
    from varipipe.errors import ProfileError
    from varipipe.profiler.store import default_profile_path, load_profile

    p = path or default_profile_path()
    try:
        return load_profile(p)
    except ProfileError as e:
        if path is None:
            raise ProfileError(str(p), "(file)", f"{e.problem}; run `varipipe profile` or pass --profiles FILE") from e
        raise


def run(args: argparse.Namespace) -> int:
    from varipipe.loadgen.runs import (
        DEFAULT_PREDICTOR,
        SimSettings,
        live_start,
        run_policy,
        write_request_table,
    )

    profile = _profile(args.profiles)
    arrivals = _arrivals(args)
    seconds = int(math.ceil(arrivals[-1])) + 1 if len(arrivals) else 1
    first_s, initial = live_start(profile.pipeline, args.interval, args.seed) if args.loop_start == "live" else (0.0, None)
    settings = SimSettings(sla_s=args.sla, interval_s=args.interval, cost_mode=args.cost_mode,
                           cluster_cores=args.cluster_cores, max_replicas=args.max_replicas, seed=args.seed,
                           cluster_gpus=args.cluster_gpus, gpu_memory_mb=args.gpu_memory_mb,
                           predictor=args.predictor or DEFAULT_PREDICTOR,
                           policy_options={"solver": args.solver} if args.solver else {},
                           calibration=args.calibration, calibration_settings=calibration_settings(args),
                           first_decision_s=first_s, **simulated_host(args, seconds))
    result = run_policy(profile, arrivals, args.policy, settings, keep_table=bool(args.dump_requests), initial=initial)
    if args.dump_requests and result.table is not None:
        write_request_table(result.table, args.dump_requests)
    summary = result.summary()
    if args.json:
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
        out["series"] = result.series.to_dict(args.series_step)
        print(json.dumps(out))
    else:
        for k, v in summary.items():
            print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0
