"""``varipipe`` command line: one subcommand per module in ``varipipe.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``, and imports heavy libraries inside ``run`` only, so
``varipipe --help`` stays fast. Expected errors (``VaripipeError``) print one
clear line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from varipipe.errors import VaripipeError

# Order shown in --help; each is varipipe/commands/<module>.py.
COMMAND_MODULES = (
    "models",
    "run",
    "serve",
    "demo",
    "profile",
    "solve",
    "load",
    "simulate",
    "experiment",
    "deploy",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varipipe",
        description="Serve multi-stage inference pipelines on Ray Serve and adapt them to load.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"varipipe.commands.{mod_name}")
        except ModuleNotFoundError as e:
            if e.name == f"varipipe.commands.{mod_name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # one line per HTTP call drowns the output people came for
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except VaripipeError as e:
        print(f"varipipe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
