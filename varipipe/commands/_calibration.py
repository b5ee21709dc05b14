"""Command-line options of online calibration, shared by ``serve``, ``demo``, ``simulate`` and ``experiment``."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from varipipe.records import ROUTINGS

__all__ = ["add_calibration_arguments", "calibration_settings", "add_host_speed_argument", "simulated_host"]


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-calibration", dest="calibration", action="store_false",
                        help="plan on the profile as it is: no online calibration from the batches served "
                             "(default: calibrate)")
    parser.add_argument("--calibration-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a calibration setting (repeatable): estimator=median|trimmed|mean, half_life_s, "
                             "min_samples, min_factor, max_factor, dead_band, z, per_token=true|false, tail=true|false")


def calibration_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--calibration-setting`` values as ``CalibrationSettings`` fields, checked."""
    from varipipe.adapter.calibration import CalibrationSettings
    from varipipe.errors import ConfigError

    types = {f.name: f.type for f in dataclasses.fields(CalibrationSettings)}
    out: dict[str, Any] = {}
    for item in getattr(args, "calibration_setting", []):
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise ConfigError("--calibration-setting", item, f"expected NAME=VALUE with NAME one of {', '.join(types)}")
        kind = types[name]
        try:
            if kind == "bool":
                if value.lower() not in ("true", "false"):
                    raise ValueError("true or false")
                out[name] = value.lower() == "true"
            elif kind == "int":
                out[name] = int(value)
            elif kind == "float":
                out[name] = float(value)
            else:
                out[name] = value
        except ValueError as e:
            raise ConfigError("--calibration-setting", item, f"{name} must be a {kind}: {e}") from None
    try:
        CalibrationSettings(**out)
    except ValueError as e:
        raise ConfigError("--calibration-setting", ", ".join(args.calibration_setting), str(e)) from None
    return out


def add_host_speed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host-speed", default=None, metavar="FILE|generate:...",
                        help="the simulated host's slowness over time, a multiplier on service times per second: "
                             "a file of numbers, or generate:seed=N,sigma=S,tau=T[,level=L][,spell=START-END*FACTOR] "
                             "(default: steady, the profile's host)")
    parser.add_argument("--neighbour", action="append", default=[], metavar="START-END[*THREADS]",
                        help="a noisy neighbour in the simulated host (shared cost mode): THREADS busy threads "
                             "(default 1) from START to END s that keep their cores, as a CPU hog does beside the "
                             "stage replicas (repeatable)")
    parser.add_argument("--routing", choices=ROUTINGS, default=ROUTINGS[0],
                        help="how the simulated stages' replicas get their work: one line per stage that any free "
                             "replica takes its next batch from (default), or each replica its own line, an arrival "
                             "going to the less loaded of two replicas, as Serve's router does live "
                             "(closer to live at load: benchmarks/README.md, 'Fidelity at two loads')")


def simulated_host(args: argparse.Namespace, seconds: int) -> dict[str, Any]:
    """``--host-speed``, ``--neighbour`` and ``--routing`` as the simulator's settings (``host_speed``,
    ``neighbours``, ``routing``) for a run of ``seconds``."""
    from varipipe.loadgen.hostspeed import parse_host_speed, parse_neighbour

    return {"host_speed": parse_host_speed(args.host_speed, seconds) if args.host_speed else None,
            "neighbours": tuple(parse_neighbour(n) for n in args.neighbour), "routing": args.routing}
