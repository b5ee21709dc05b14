"""``varipipe load``: replay a trace against a live pipeline over HTTP (open loop)."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "load"
HELP = "replay a request-rate trace against a URL, open loop, logging every request"


def add_trace_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--trace/--start/--duration/--scale/--arrivals/--seed, shared with simulate and experiment."""
    parser.add_argument("--trace", required=required, help="per-second rate file (.txt, .gz, or CSV with 'rps'), or a packaged trace's name (twitter)")
    parser.add_argument("--start", type=int, default=0, help="first second of the window (default 0)")
    parser.add_argument("--duration", type=int, default=None, help="window length in seconds (default: to the end)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every rate by this (default 1)")
    parser.add_argument("--arrivals", choices=("poisson", "uniform", "step"), default="poisson",
                        help="placement of requests within a second (default poisson)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for arrivals (default 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="pipeline endpoint, e.g. http://127.0.0.1:8000/vision-caption")
    add_trace_arguments(parser)
    parser.add_argument("--image", default="chelsea",
                        help="image file to POST, or a sample name (chelsea, astronaut, coffee, synthetic...)")
    parser.add_argument("--questions", choices=("qa", "none"), default="qa",
                        help="qa (default): to a vision-caption pipeline, each request carries a question about the "
                             "photo (header x-question) from profiler/evalset/qa.json's dev items, in turn, as the "
                             "profiler times it; none: images only (the stage captions)")
    parser.add_argument("--out", required=True, help="JSON-lines file: one record per request")
    parser.add_argument("--max-connections", type=int, default=None, help="HTTP connection pool size")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from varipipe.loadgen.questions import questions_for
    from varipipe.loadgen.replayer import (
        DEFAULT_MAX_CONNECTIONS,
        format_summary,
        load_image,
        replay_sync,
    )
    from varipipe.loadgen.traces import arrival_times, read_trace

    trace = read_trace(args.trace, args.start, args.duration, args.scale)
    times = arrival_times(trace, args.arrivals, args.seed)
    body, ctype = load_image(args.image)
    with tqdm(total=int(times.size), unit="req", disable=args.json or not sys.stderr.isatty()) as bar:
        summary, _ = replay_sync(
            args.url, times, body, ctype, args.out,
            max_connections=args.max_connections or DEFAULT_MAX_CONNECTIONS, on_progress=bar.update,
            questions=questions_for(args.url, args.image) if args.questions == "qa" else (),
        )
    print(json.dumps(summary.to_dict(), indent=1) if args.json else format_summary(summary))
    return 0
