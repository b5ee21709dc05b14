"""``varipipe deploy render``: a KubeRay RayService manifest for a pipeline and a decision."""

from __future__ import annotations

import argparse
import sys

NAME = "deploy"
HELP = "render deployment manifests (KubeRay RayService) for a pipeline"
DESCRIPTION = """Render a KubeRay RayService manifest to stdout. Its serveConfigV2 is the same
declarative Serve config the live applier uses, so applying a manifest rendered for a new
decision reconfigures the running pipeline in place. Without --decision, the optimizer's
choice for --rps on the shipped profile is used (or the spec's default configuration, with
a note on stderr, when no profile is shipped). Cluster launcher, Prometheus and Grafana
files live in deploy/."""

# Default load for a decision nobody gave: the median rate of the Twitter trace the
# project evaluates on (DESIGN §8: median 53 rps over days 0-13).
DEFAULT_LOAD_RPS = 53.0
# Cores the optimizer may plan with by default: two worker pods of ClusterShape's 4 CPUs.
DEFAULT_CLUSTER_CORES = 8.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="deploy_command", metavar="ACTION", required=True)
    p = sub.add_parser("render", help="print a KubeRay RayService manifest (YAML) to stdout")
    p.add_argument("--pipeline", required=True, help="pipeline name or spec YAML")
    p.add_argument("--decision", default=None, help="decision JSON (`varipipe solve --json` or GET /config's decision)")
    p.add_argument("--image", default=None, help="container image with varipipe installed (default: a placeholder)")
    p.add_argument("--rps", type=float, default=DEFAULT_LOAD_RPS,
                   help="load to solve for when no --decision is given (default: %(default)s)")
    p.add_argument("--profiles", default="", help="profile store JSON (default: the shipped profile of the pipeline)")
    p.add_argument("--cluster-cores", type=float, default=DEFAULT_CLUSTER_CORES,
                   help="cores the optimizer may reserve (default: %(default)s)")
    p.add_argument("--worker-cpus", type=int, default=4, help="CPUs per worker pod (default: %(default)s)")
    p.add_argument("--namespace", default="", help="metadata.namespace (default: none)")
    p.add_argument("--token-secret", default="varipipe-token",
                   help="Kubernetes secret holding the bearer token under key 'token' (default: %(default)s)")
    p.add_argument("--policy", default="none", help="adapter policy inside the app (default: %(default)s)")
    p.add_argument("--gpus", default="", metavar="GPUS",
                   help="GPUs each stage replica reserves, fractions allowed: '0.5' (every stage) or "
                        "'llm=0.5'; a stage the decision puts on a gpu:<model> reserves 1 unless named here. "
                        "GPU stages run on a gpu-workers group (default: none)")
    p.add_argument("--gpus-per-worker", type=int, default=1,
                   help="GPUs of one gpu-workers pod (default: %(default)s)")


def default_decision_for(spec, args: argparse.Namespace):
    """The solver's decision for ``--rps`` on the profile; the spec's default when none exists."""
    from pathlib import Path

    from varipipe.adapter.configurations import Limits
    from varipipe.adapter.optimizer import solve
    from varipipe.pipelines.serve_config import default_decision
    from varipipe.profiler.store import default_profile_path, load_profile
    from varipipe.records import SLA

    path = args.profiles or str(default_profile_path(spec.name))
    if not Path(path).exists():
        print(f"note: no profile at {path}; using the spec's default configuration "
              "(run `varipipe profile` or pass --profiles FILE for the optimizer's choice)", file=sys.stderr)
        return default_decision(spec)
    profile = load_profile(path, pipeline=spec.name)
    decision = solve(profile, args.rps, SLA(spec.sla.latency_s, spec.sla.percentile),
                     Limits(cost_mode="reserved", cluster_cores=args.cluster_cores))
    print(f"note: optimizer decision ({decision.status.value}) for {args.rps:g} rps from {path}", file=sys.stderr)
    return decision


def run(args: argparse.Namespace) -> int:
    from varipipe.commands.serve import check_decision, initial_decision
    from varipipe.errors import ConfigError
    from varipipe.pipelines.rayservice import ClusterShape, render_rayservice, to_yaml
    from varipipe.pipelines.serve_config import AppOptions, parse_gpus, stage_gpus
    from varipipe.spec import find_spec

    spec = find_spec(args.pipeline)
    gpus = parse_gpus(args.gpus, spec.stage_names)  # bad input fails before any solving
    decision = initial_decision(args, "") if args.decision else default_decision_for(spec, args)
    check_decision(spec, decision)
    if args.gpus_per_worker < 1:
        raise ConfigError("--gpus-per-worker", str(args.gpus_per_worker), "must be a whole number >= 1")
    shape = ClusterShape(worker_cpus=args.worker_cpus, namespace=args.namespace, token_secret=args.token_secret,
                         gpus_per_worker=args.gpus_per_worker, **({"image": args.image} if args.image else {}))
    policy = "" if args.policy in ("none", "") else args.policy
    opts = AppOptions(pipeline=spec.name, policy=policy, cost_mode="reserved", cluster_cores=args.cluster_cores,
                      stage_gpus=stage_gpus(gpus, decision))
    manifest = render_rayservice(spec, opts, decision, shape)
    sys.stdout.write(to_yaml(manifest))
    return 0
