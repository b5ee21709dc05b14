"""Locust load test following a request-rate trace (for locust's UI and reports).

    VARIPIPE_TRACE=../shared/traces/twitter-train.txt VARIPIPE_SCALE=0.02 \\
    VARIPIPE_START=1036800 VARIPIPE_DURATION=600 \\
    locust -f loadgen/locustfile.py -H http://127.0.0.1:8000 --path /vision-caption

Settings come from environment variables or the matching ``--varipipe-*``
options: VARIPIPE_TRACE, VARIPIPE_START, VARIPIPE_DURATION, VARIPIPE_SCALE,
VARIPIPE_IMAGE (file or sample name), VARIPIPE_PATH (the pipeline route);
VARIPIPE_PER_USER_RPS from the environment only. The shape runs ``rate / per_user_rps`` users, each pacing
itself at ``per_user_rps`` with locust's ``constant_throughput``: locust users
wait for their reply, so a user whose reply takes longer than
``1 / per_user_rps`` falls behind. Lower VARIPIPE_PER_USER_RPS when replies are
slow, or use ``varipipe load`` (open loop) where exact rates matter.
The trace parsing is :mod:`varipipe.loadgen.traces`, as for the replayer and
the simulator.
"""

from __future__ import annotations

import os

from locust import HttpUser, LoadTestShape, constant_throughput, events, task

from varipipe.loadgen.replayer import load_image
from varipipe.loadgen.traces import read_trace, shape_tick

# Each simulated user sends at most this many requests per second (a reply must
# come back within 1/x s for the user to keep pace): 0.5 tolerates 2 s replies.
DEFAULT_PER_USER_RPS = 0.5
# Read once from the environment so the users' pacing and the shape's user count agree.
PER_USER_RPS = float(os.environ.get("VARIPIPE_PER_USER_RPS", DEFAULT_PER_USER_RPS))


def _setting(options: object, name: str, default: str | None = None) -> str | None:
    value = getattr(options, f"varipipe_{name}", None) if options is not None else None
    return value or os.environ.get(f"VARIPIPE_{name.upper()}", default)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    for name, text in (("trace", "trace file"), ("start", "window start (s)"), ("duration", "window length (s)"),
                       ("scale", "rate multiplier"), ("image", "image file or sample name"),
                       ("path", "route to POST to")):
        parser.add_argument(f"--varipipe-{name.replace('_', '-')}", default=None, help=f"varipipe: {text}")


def _options_of(environment: object) -> object:
    return getattr(environment, "parsed_options", None)


class PipelineUser(HttpUser):
    """POSTs the image to the pipeline route at ``per_user_rps``."""

    wait_time = constant_throughput(PER_USER_RPS)

    def on_start(self) -> None:
        opts = _options_of(self.environment)
        self.body, ctype = load_image(_setting(opts, "image", "chelsea"))
        self.headers = {"Content-Type": ctype}
        self.path = _setting(opts, "path", "/vision-caption") or "/vision-caption"

    @task
    def infer(self) -> None:
        with self.client.post(self.path, data=self.body, headers=self.headers, catch_response=True) as r:
            if r.status_code >= 300:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")


class TraceShape(LoadTestShape):
    """Users over time so that the request rate follows the (windowed, scaled) trace."""

    def __init__(self) -> None:
        super().__init__()
        self._rates = None
        self._per_user = PER_USER_RPS

    def _load(self) -> None:
        opts = _options_of(getattr(self, "runner", None) and self.runner.environment)
        path = _setting(opts, "trace")
        if not path:
            raise SystemExit("locustfile: set VARIPIPE_TRACE (or --varipipe-trace) to a trace file")
        duration = _setting(opts, "duration")
        trace = read_trace(path, int(_setting(opts, "start", "0") or 0), int(duration) if duration else None,
                           float(_setting(opts, "scale", "1") or 1))
        self._rates = trace.rates
        self._per_user = PER_USER_RPS

    def tick(self):
        if self._rates is None:
            self._load()
        return shape_tick(self._rates, self.get_run_time(), self._per_user)
