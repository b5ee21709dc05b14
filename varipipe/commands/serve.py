"""``varipipe serve``: start Ray (embedded or a cluster), the pipeline, and its adapter."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import threading
from pathlib import Path

from varipipe.adapter.configurations import DEFAULT_COST_MODE
from varipipe.adapter.policy import DEFAULT_INTERVAL_S
from varipipe.adapter.predictors import DEFAULT_PREDICTOR
from varipipe.commands._calibration import add_calibration_arguments, calibration_settings

NAME = "serve"
HELP = "serve a pipeline over HTTP on Ray Serve, adapted live by a policy"
DESCRIPTION = """Serve a pipeline over HTTP. By default an embedded Ray starts in this process
(no cluster, no Prometheus needed); --address connects to an existing Ray cluster.
Ctrl-C or SIGTERM stops the application and the Ray it started."""

TOKEN_ENV = "VARIPIPE_TOKEN"
# A default deadline beyond 100 SLAs is no deadline in practice: say 0 instead.
MAX_DEADLINE_SLAS = 100.0


def add_serving_arguments(parser: argparse.ArgumentParser, default_policy: str = "ipa",
                          sla_default: str = "the spec's") -> None:
    """Options shared by ``serve`` and ``demo`` (``sla_default``: what ``--sla``'s help says it defaults to)."""
    parser.add_argument("--pipeline", default="vision-caption", help="pipeline name or spec YAML (default: %(default)s)")
    parser.add_argument("--policy", default=default_policy,
                        help="adaptation policy: ipa, fa2-low, fa2-high, rim, static, ray, oracle, module:Class, "
                             "or 'none' for no adapter (default: %(default)s)")
    parser.add_argument("--predictor", default=DEFAULT_PREDICTOR,
                        help="load predictor: reactive, moving-max, ewma, lstm (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help="adapter interval in seconds (default: %(default)s)")
    parser.add_argument("--sla", type=float, default=None, help=f"end-to-end latency SLA in seconds (default: {sla_default})")
    parser.add_argument("--profiles", default="", help="profile store JSON (default: the shipped profile)")
    parser.add_argument("--cost-mode", choices=("shared", "reserved"), default=DEFAULT_COST_MODE,
                        help="shared: replicas share this host's cores; reserved: each reserves its cores")
    parser.add_argument("--cluster-cores", type=float, default=float(os.cpu_count() or 2),
                        help="cores the optimizer may use (default: this host's, %(default)s)")
    parser.add_argument("--max-replicas", type=int, default=None,
                        help="replicas per stage at most (default: the cluster's whole cores)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="weighted",
                        help="what the ILP policies optimise: weighted (accuracy against cost, IPA's objective) or "
                             "max-accuracy (the most accurate configuration the capacity allows: cheaper variants "
                             "only when the load needs them) (default: %(default)s)")
    parser.add_argument("--pin", action="append", default=[], metavar="STAGE=VARIANT",
                        help="keep a stage on one variant (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="the adapter decides and logs but does not apply")
    parser.add_argument("--decision", default=None, help="initial decision JSON (e.g. from `varipipe solve --json`)")
    parser.add_argument("--deadline", type=_deadline_factor, default=0.0, metavar="SLAS",
                        help="requests without an x-deadline-ms header get a deadline of SLAS times the SLA "
                             "(1 = the SLA); 0: they have none, wait as long as it takes and are never shed "
                             "(default: %(default)s)")
    parser.add_argument("--no-admission", dest="admission", action="store_false",
                        help="do not reject at the ingress requests that the queues say cannot meet their "
                             "deadline (503 + Retry-After); stages still drop them, after they queued")
    add_calibration_arguments(parser)


# --objective: the solver's objectives an operator picks when serving; max-accuracy is bounded by
# the capacity constraint alone.
OBJECTIVES = ("weighted", "max-accuracy")


def objective_options(objective: str) -> dict:
    """The ILP policies' options for ``--objective``."""
    from varipipe.adapter.configurations import NO_COST_CEILING

    return {"objective": "max-accuracy", "max_cost": NO_COST_CEILING} if objective == "max-accuracy" else {}


def _deadline_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"a number of SLAs, got {text!r}") from e
    if not (0 <= value <= MAX_DEADLINE_SLAS):
        raise argparse.ArgumentTypeError(f"must be between 0 (no default deadline) and {MAX_DEADLINE_SLAS}, "
                                         f"got {text!r}")
    return value


def _route_prefix(text: str) -> str:
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"a route prefix starts with '/' and has no spaces, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_serving_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join: 'auto' or ray://HOST:PORT (default: start an embedded Ray)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV, ""),
                        help=f"bearer token for control endpoints (or ${TOKEN_ENV}); required off loopback")
    parser.add_argument("--stage-resources", type=_resources, default={}, metavar="JSON",
                        help='custom Ray resources per stage replica, e.g. \'{"llm": {"gpu_node": 1}}\': '
                             "places stages on nodes started with `ray start --resources` (default: anywhere)")
    parser.add_argument("--gpus", default="", metavar="GPUS",
                        help="GPUs each stage replica reserves, fractions allowed: '0.5' (every stage) or "
                             "'llm=0.5,detector=0.25'; those stages run their GPU (PyTorch) runtimes "
                             "(default: none, all on the CPU)")
    parser.add_argument("--app-name", default="varipipe",
                        help="Serve application name; give each pipeline sharing a cluster its own "
                             "(default: %(default)s)")
    parser.add_argument("--route-prefix", type=_route_prefix, default="/",
                        help="URL prefix of this application, e.g. /ocr beside another pipeline on / "
                             "(default: %(default)s)")
    parser.add_argument("--state-file", default=None,
                        help="keep the last applied decision here across restarts, and the calibration's "
                             "batches beside it (<name>.calibration.json) "
                             "(default: ~/.cache/varipipe/state/<pipeline>.json)")


def _resources(text: str) -> dict[str, dict[str, float]]:
    try:
        doc = json.loads(text)
        out = {str(st): {str(r): float(n) for r, n in res.items()} for st, res in doc.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise argparse.ArgumentTypeError(f'expected JSON {{"stage": {{"resource": amount}}}}, got {text!r}') from e
    return out


def parse_pins(pins: list[str]) -> dict[str, str]:
    from varipipe.errors import ConfigError

    out = {}
    for p in pins:
        stage, sep, variant = p.partition("=")
        if not sep or not stage or not variant:
            raise ConfigError("--pin", p, "expected STAGE=VARIANT")
        out[stage] = variant
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_options(args: argparse.Namespace, state_file: str = "", gpus: dict[str, float] | None = None):
    from varipipe.pipelines.serve_config import AppOptions

    policy = "" if args.policy in ("none", "") else args.policy
    return AppOptions(
        pipeline=args.pipeline, policy=policy, predictor=args.predictor, interval_s=args.interval,
        sla_s=args.sla, profile=args.profiles, cost_mode=args.cost_mode, cluster_cores=args.cluster_cores,
        max_replicas=args.max_replicas, dry_run=args.dry_run, pins=parse_pins(args.pin), state_file=state_file,
        auth_token=getattr(args, "token", ""), stage_resources=getattr(args, "stage_resources", {}),
        app_name=getattr(args, "app_name", "varipipe"), route_prefix=getattr(args, "route_prefix", "/"),
        stage_gpus=dict(gpus or {}), deadline_sla_factor=args.deadline, admission=args.admission,
        calibration=getattr(args, "calibration", True), calibration_settings=calibration_settings(args),
        policy_options=objective_options(getattr(args, "objective", "weighted")),
    )


def initial_decision(args: argparse.Namespace, state_file: str):
    """--decision FILE, else the decision kept from the last run, else None (the default)."""
    from varipipe.errors import ConfigError
    from varipipe.records import Decision

    path = args.decision or (state_file if state_file and Path(state_file).exists() else None)
    if not path:
        return None
    try:
        return Decision.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(str(path), "(decision)", f"not a decision JSON: {e}") from e


def check_decision(spec, decision) -> None:
    from varipipe.errors import ConfigError

    if decision is None:
        return
    if tuple(s.stage for s in decision.stages) != spec.stage_names:
        raise ConfigError("--decision", "stages", f"{[s.stage for s in decision.stages]} do not match the "
                                                  f"pipeline's {list(spec.stage_names)}")
    for s in decision.stages:
        spec.stage(s.stage).variant(s.variant)


def gpu_requests(args: argparse.Namespace, spec, decision) -> dict[str, float]:
    """GPUs per stage replica from --gpus and the initial decision; checks that a local Ray can place them."""
    from varipipe.errors import ConfigError
    from varipipe.pipelines.serve_config import parse_gpus, stage_gpus

    gpus = stage_gpus(parse_gpus(getattr(args, "gpus", ""), spec.stage_names), decision)
    if gpus and not getattr(args, "address", None):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--gpus", ",".join(f"{k}={v:g}" for k, v in gpus.items()),
                              "this host has no CUDA device (torch.cuda.is_available() is False), so an "
                              "embedded Ray could never start those replicas; serve on the CPU, or join a "
                              "cluster with GPUs (--address)")
    return gpus


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``: the server then shuts down cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def wait_for_signal() -> None:
    stop = threading.Event()
    install_stop_handlers(stop)
    stop.wait()


def line_buffered_stdout() -> None:
    """A long-running server's status lines must show when printed, also through a pipe
    or into a log file (where Python would otherwise buffer them by the block)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)


def run(args: argparse.Namespace) -> int:
    from varipipe.errors import ConfigError, UnknownNameError
    from varipipe.pipelines.server import LocalServer
    from varipipe.spec import find_spec

    line_buffered_stdout()

    if not is_loopback(args.host) and not args.token:
        raise ConfigError("--host", args.host, f"binding beyond loopback needs --token (or ${TOKEN_ENV}): "
                                                "control endpoints must not be open to the world")
    spec = find_spec(args.pipeline)
    state_file = args.state_file or str(Path.home() / ".cache" / "varipipe" / "state" / f"{spec.name}.json")
    decision = initial_decision(args, state_file)
    try:
        check_decision(spec, decision)
    except (ConfigError, UnknownNameError) as e:
        if args.decision:  # the user's own file: refused, with why
            raise
        # A decision kept from an earlier run of a spec that has changed since (a variant dropped
        # from its ladder): start from the defaults instead of refusing to serve.
        print(f"ignoring the decision kept in {state_file}: {e}; starting from the spec's defaults")
        decision = None
    opts = app_options(args, state_file, gpu_requests(args, spec, decision))
    print(f"starting {spec.name} ({len(spec.stages)} stages) on {'Ray at ' + args.address if args.address else 'an embedded Ray'}...")
    # Handlers go in as soon as Ray runs (its own abort on SIGTERM): a signal that arrives
    # while the application deploys, or once /healthz answers, still stops it cleanly.
    stop = threading.Event()
    with LocalServer(opts, host=args.host, port=args.port, decision=decision, address=args.address,
                     on_ray_started=lambda: install_stop_handlers(stop)) as srv:
        print(f"serving {spec.name} at {srv.endpoint}")
        print(f"  try:     curl -s -X POST --data-binary @photo.jpg -H 'content-type: image/jpeg' {srv.endpoint}")
        print(f"  watch:   {srv.url}/dashboard" + (f"#token={opts.auth_token}" if opts.auth_token else ""))
        print(f"  config:  {srv.url}/config    metrics: {srv.url}/metrics    health: {srv.url}/healthz")
        print(f"  adapter: {opts.policy or 'off'}" + (" (dry run)" if opts.dry_run else ""))
        if opts.stage_gpus:
            print("  GPUs:    " + ", ".join(f"{k} {v:g} per replica" for k, v in opts.stage_gpus.items()))
        print("Ctrl-C to stop.")
        stop.wait()
        print("stopping...")
    return 0
