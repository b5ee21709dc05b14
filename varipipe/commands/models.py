"""``varipipe models prepare``: convert packaged weights into the model cache, once."""

from __future__ import annotations

import argparse
import sys

NAME = "models"
HELP = "prepare model weights (export classifiers to ONNX, assemble GGUF files) into the cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prep = sub.add_parser("prepare", help="make every model of a pipeline (default: all models) ready; idempotent")
    prep.add_argument("--pipeline", default=None,
                      help="pipeline name or spec YAML (default: every model varipipe knows)")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("list", help="list the known models and whether each is prepared")


def run(args: argparse.Namespace) -> int:
    from varipipe.pipelines import models

    if args.models_command == "list":
        cache = models.cache_dir()
        for name, source in models.SOURCES.items():
            state = "ready" if source.locate(cache) is not None else "not prepared"
            print(f"{name:32s} {state}")
        return 0
    target = None
    if args.pipeline:
        from varipipe.spec import find_spec

        target = find_spec(args.pipeline)
    files = models.prepare(target, progress=not args.quiet and sys.stderr.isatty())
    print(f"{len(files)} model(s) ready in {models.cache_dir()}")
    return 0
