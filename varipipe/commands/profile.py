"""``varipipe profile``: measure a pipeline's variants; ``varipipe profile show FILE``: read one.

    varipipe profile --pipeline vision-caption [--stages ...] [--variants ...]
                     [--batch 1,2,4,8,16] [--cores 1,2] [--gpu] [--quick]
                     [--max-seconds-per-point S] [--samples-out FILE] --out FILE
    varipipe profile show FILE [--plots DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

NAME = "profile"
# Linux shares the CPU fairly between sessions (autogroups); at nice -10 a measuring
# process weighs about 10x a nice-0 session (kernel weight 9548 vs 1024), so other
# sessions' jobs on a shared build host disturb the timings little. Needs root.
DEFAULT_NICE = -10
HELP = "measure latency, throughput, memory and accuracy of every variant (or: profile show FILE)"
DESCRIPTION = (
    "Measure each stage x variant x batch size x hardware unit of a pipeline and write a profile store "
    "(resumable: points already in --out are kept). 'varipipe profile show FILE' prints a profile, its "
    "latency-model fit errors, and writes plots."
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("show",), help="'show FILE': print a profile and plot it")
    parser.add_argument("file", nargs="?", help="the profile to show")
    parser.add_argument("--pipeline", help="bundled pipeline name or path to a spec YAML")
    parser.add_argument("--stages", type=_names, help="comma-separated stages (default: all)")
    parser.add_argument("--variants", type=_names, help="comma-separated variants (default: all)")
    parser.add_argument("--batch", type=_int_list, default=None, help="batch sizes (default 1,2,4,8,16)")
    parser.add_argument("--cores", type=_int_list, default=None, help="threads per replica (default 1,2)")
    parser.add_argument("--gpu", action="store_true",
                        help="also profile on CUDA device 0 with the PyTorch runtimes, points labelled "
                             "gpu:<model> (error if torch finds no GPU)")
    parser.add_argument("--quick", action="store_true",
                        help="windows of 10 batches and >= 0.25 s, at most 3 s a point (minutes, not hours); "
                             "default: windows of 50 batches and >= 1 s until 3 agree within 10 %%, at most "
                             "75 s a point")
    parser.add_argument("--max-seconds-per-point", type=float, default=None,
                        help="a point's time cap: past it a point that has not settled is stored stable=false "
                             "(default: 75 full, 3 quick)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process instead of one fresh process per variant (memory less exact)")
    parser.add_argument("--nice", type=int, default=DEFAULT_NICE,
                        help=f"autogroup nice of each measuring process (default {DEFAULT_NICE}; 0: as is): on a "
                             "host shared with other sessions, gives it the CPU share a dedicated replica has")
    parser.add_argument("--out", help="profile JSON to write (resumed if it exists)")
    parser.add_argument("--samples-out", help="also append every point's raw per-batch latencies to this JSON-lines "
                                              "file (for re-analysis; the profile keeps only percentiles)")
    parser.add_argument("--plots", help="show: folder to write PNG plots into")
    parser.add_argument("--json", action="store_true", help="show: print the fits as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _hardware(args: argparse.Namespace):
    from varipipe.errors import VaripipeError
    from varipipe.profiler.measure import Hardware, cpu_hardware
    from varipipe.profiler.plan import DEFAULT_CORES

    units = [cpu_hardware(c) for c in (args.cores or DEFAULT_CORES)]
    if args.gpu:
        import torch

        from varipipe.pipelines.variants._torch_runtime import gpu_label

        if not torch.cuda.is_available():
            raise VaripipeError(f"--gpu: torch {torch.__version__} finds no CUDA device (torch.cuda.is_available() "
                                "is False): the GPU runtimes are PyTorch's")
        # gpu:<model> from torch.cuda.get_device_name, normalised (e.g. gpu:h200); one replica thread.
        units.append(Hardware(gpu_label(), threads=1, device="gpu"))
    return tuple(units)


def _measure(args: argparse.Namespace) -> int:
    from varipipe.errors import VaripipeError
    from varipipe.profiler.plan import DEFAULT_BATCHES, FULL, QUICK
    from varipipe.profiler.run import ProfileRequest, run_profile
    from varipipe.spec import find_spec

    if not args.pipeline or not args.out:
        raise VaripipeError("profile: --pipeline and --out are required (or use 'profile show FILE')")
    policy = (QUICK if args.quick else FULL).with_max_seconds(args.max_seconds_per_point)
    req = ProfileRequest(
        spec=find_spec(args.pipeline), out=Path(args.out), batches=args.batch or DEFAULT_BATCHES,
        hardware=_hardware(args), policy=policy, command="varipipe " + shlex.join(sys.argv[1:]),
        stages=args.stages, variants=args.variants, isolate=not args.in_process, progress=not args.no_progress,
        nice=args.nice, samples_out=Path(args.samples_out) if args.samples_out else None,
    )
    summary = run_profile(req)
    print(f"{args.out}: {summary.measured} points measured, {summary.skipped} already there, "
          f"{len(summary.failed)} failed, {summary.seconds:.0f} s")
    for what, why in summary.failed.items():
        print(f"  failed {what}: {why}")
    return 1 if summary.failed else 0


def _show(args: argparse.Namespace) -> int:
    from varipipe.errors import VaripipeError
    from varipipe.profiler.latency_model import fit_profile, fits_to_metadata
    from varipipe.profiler.report import fit_table, points_table
    from varipipe.profiler.store import load_profile

    if not args.file:
        raise VaripipeError("profile show: name the profile FILE")
    profile = load_profile(args.file)
    fits = fit_profile(profile, "p99")
    if args.json:
        print(json.dumps(fits_to_metadata(fits), indent=1))
    else:
        print(points_table(profile))
        print()
        print(fit_table(fits))
    if args.plots:
        from varipipe.profiler.plots import write_plots

        for path in write_plots(profile, Path(args.plots)):
            print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        return _show(args)
    return _measure(args)
