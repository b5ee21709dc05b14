"""``varipipe solve``: one optimizer decision for a load and an SLA, explained."""

from __future__ import annotations

import argparse
import json

NAME = "solve"
HELP = "pick variant, batch and replicas per stage for a load and an SLA (the ILP)"
DESCRIPTION = (
    "Solve the adapter's integer program once: for --rps requests/s and an end-to-end "
    "--sla, choose each stage's variant, batch size, replicas and hardware from a profile, "
    "and explain the choice (latency vs SLA, binding constraints, runner-up per stage)."
)


def _pin(text: str) -> tuple[str, str]:
    stage, sep, variant = text.partition("=")
    if not sep or not stage or not variant:
        raise argparse.ArgumentTypeError(f"--pin expects stage=variant, got {text!r}")
    return stage, variant


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", metavar="FILE", help="profile store JSON (default: the shipped vision-caption profile)")
    p.add_argument("--rps", type=float, required=True, help="predicted load, requests/s")
    p.add_argument("--sla", type=float, default=None, metavar="SECONDS",
                   help="end-to-end p99 latency target (default: the SLA in the profiled pipeline's spec)")
    p.add_argument("--accuracy", choices=("multiply", "sum", "average"), default="multiply",
                   help="how stage accuracies combine (default: multiply)")
    p.add_argument("--objective", choices=("weighted", "min-cost", "max-accuracy"), default="weighted")
    p.add_argument("--min-accuracy", type=float, help="accuracy floor for --objective min-cost")
    p.add_argument("--max-cost", type=float, help="cost ceiling for --objective max-accuracy")
    p.add_argument("--cost-mode", choices=("shared", "reserved"), default="shared",
                   help="shared: one host's CPU (and GPU) time; reserved: cores (a whole GPU) reserved per replica")
    p.add_argument("--cluster-cores", type=float, default=None,
                   help="capacity limit in cores (default: this host's core count)")
    p.add_argument("--max-replicas", type=int, default=None,
                   help="replica cap per stage (default: the cluster's whole cores)")
    p.add_argument("--cluster-gpus", type=int, default=0,
                   help="GPUs the decision may use for gpu:<model> configurations (default 0: none)")
    p.add_argument("--gpu-memory-mb", type=float, default=None, metavar="MIB",
                   help="one GPU's memory, MiB (default: what a GPU profile recorded, metadata.device)")
    p.add_argument("--solver", choices=("dp", "cbc", "highs"), default="dp",
                   help="dp: the exact dynamic program (default, fastest); cbc, highs: the MIP solvers")
    p.add_argument("--pin", type=_pin, action="append", default=[], metavar="STAGE=VARIANT",
                   help="fix a stage's variant (repeatable)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--write-lp", metavar="FILE", help="also write the program as an .lp file (debugging)")


def decision_json(decision) -> dict:
    """The machine-readable shape of a decision (documented in the issue)."""
    return {
        "status": decision.status.value,
        "feasible": decision.feasible,
        "reason": decision.reason,
        "load_rps": decision.load_rps,
        "stages": [
            {"stage": s.stage, "variant": s.variant, "batch": s.batch, "replicas": s.replicas,
             "hardware": s.hardware, "batch_wait_s": s.batch_wait_s, "latency_s": s.latency_s,
             "accuracy": s.accuracy, "cost": s.cost}
            for s in decision.stages
        ],
        "predicted": {"latency_s": decision.predicted_latency_s, "accuracy": decision.predicted_accuracy,
                      "cost": decision.predicted_cost},
        "binding_constraints": list(decision.binding_constraints),
        "solve_time_s": decision.solve_time_s,
        "solver": decision.solver,
        "explanation": decision.explanation,
    }


def _load(args: argparse.Namespace):
    from pathlib import Path

    from varipipe.errors import ProfileError
    from varipipe.profiler.store import default_profile_path, load_profile

    if args.profiles:
        return load_profile(args.profiles)
    path = default_profile_path("vision-caption")
    if not Path(path).exists():
        raise ProfileError(str(path), "(file)", "the shipped vision-caption profile is not there yet;"
                           " run `varipipe profile` or pass --profiles FILE")
    return load_profile(path)


def _limits(args: argparse.Namespace, profile):
    import os

    from varipipe.adapter.configurations import Limits, profile_gpu_memory_mb
    from varipipe.errors import ConfigError

    cores = args.cluster_cores if args.cluster_cores is not None else float(os.cpu_count() or 1)
    memory = args.gpu_memory_mb if args.gpu_memory_mb is not None else profile_gpu_memory_mb(profile)
    try:
        return Limits(cost_mode=args.cost_mode, cluster_cores=cores, max_replicas=args.max_replicas,
                      pinned=dict(args.pin), cluster_gpus=args.cluster_gpus, gpu_memory_mb=memory)
    except ValueError as e:
        raise ConfigError("command line", "limits", str(e)) from e


def _spec_sla(pipeline: str):
    """The SLA written in the bundled spec of the profile's pipeline."""
    from varipipe.errors import ConfigError, VaripipeError
    from varipipe.spec import find_spec

    try:
        return find_spec(pipeline).sla
    except VaripipeError as e:
        raise ConfigError("command line", "--sla", f"no --sla given and the profile's pipeline {pipeline!r} has no "
                          f"bundled spec to take one from ({e}); pass --sla SECONDS") from e


def run(args: argparse.Namespace) -> int:
    from varipipe.adapter.optimizer import solve
    from varipipe.errors import ConfigError
    from varipipe.records import SLA

    profile = _load(args)
    try:
        sla = SLA(latency_s=args.sla) if args.sla is not None else _spec_sla(profile.pipeline)
        decision = solve(profile, args.rps, sla, _limits(args, profile), accuracy=args.accuracy, objective=args.objective,
                         min_accuracy=args.min_accuracy, max_cost=args.max_cost, solver=args.solver,
                         lp_path=args.write_lp)
    except ValueError as e:
        raise ConfigError("command line", "arguments", str(e)) from e
    if args.json:
        print(json.dumps(decision_json(decision), indent=1))
        return 0
    print(f"{decision.status.value.upper()} for {args.rps:g} rps, SLA {sla.latency_s:g}s ({decision.solver},"
          f" {decision.solve_time_s * 1e3:.1f} ms)")
    for s in decision.stages:
        print(f"  {s.stage:<12} {s.variant:<22} batch {s.batch:<3} x{s.replicas} {s.hardware:<8}"
              f" wait {s.batch_wait_s * 1e3:6.1f} ms  p99 {s.latency_s * 1e3:8.1f} ms")
    print(f"predicted: latency {decision.predicted_latency_s:.3f}s, accuracy {decision.predicted_accuracy:.4f},"
          f" cost {decision.predicted_cost:.3f}")
    print(decision.explanation)
    return 0
