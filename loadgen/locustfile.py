"""Locust load test that sends a request-rate trace's requests at their times (locust's UI and reports).

From the repository root, against ``varipipe serve`` (http://127.0.0.1:8000):

    locust -f loadgen/locustfile.py -H http://127.0.0.1:8000 --headless --only-summary \\
        --trace twitter --start 1036800 --duration 600 --scale 0.02 --path /vision-caption

Leave out ``--headless --only-summary`` for locust's web UI (http://127.0.0.1:8089).
Options, each also read from an environment variable (``--path`` from VARIPIPE_PATH,
and so on): ``--trace --start --duration --scale --arrivals --seed`` as for
``varipipe load``, ``--image`` (file or sample name), ``--path`` (the pipeline's route,
default /vision-caption), ``--per-user-rps`` (default 0.5). ``--varipipe-NAME`` is
accepted for every ``--NAME`` too.

How the rate is kept: the send times are ``varipipe load``'s (``traces.arrival_times``;
same trace, arrivals and seed, same times). A dispatcher releases each send when its
time comes; locust's users are the connection pool that takes them, a free user sending
at once. The shape (``traces.shape_tick``) keeps enough users that each sends at most
``--per-user-rps`` requests a second at the highest rate so far, and never lowers the
count mid-run (locust stops a user by killing it, request and all). So the trace's rate
is met whenever replies come back within ``1 / per-user-rps`` seconds (2 s by default).
When they are slower, sends wait for a free user and the rate falls behind: lower
``--per-user-rps`` for more users, or use ``varipipe load`` (open loop, no users). One
locust process only: the dispatcher lives with the shape, so ``--processes``/``--master``
is refused.
The trace parsing is :mod:`varipipe.loadgen.traces`, as for the replayer and the simulator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gevent
from gevent.queue import Queue
from locust import HttpUser, LoadTestShape, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

from varipipe.loadgen.replayer import load_image
from varipipe.loadgen.traces import ARRIVAL_PROCESSES, arrival_times, read_trace, shape_tick

# Each user is counted on for this many requests a second, i.e. replies within 1/x s:
# 0.5 tolerates 2 s replies (vision-caption's p99 on 2 cores is under 1.5 s).
DEFAULT_PER_USER_RPS = 0.5
DEFAULT_PATH = "/vision-caption"

# (option, default, help); each is also VARIPIPE_<OPTION> in the environment.
OPTIONS: tuple[tuple[str, str | None, str], ...] = (
    ("trace", None, "per-second rate file (.txt, .gz, CSV with 'rps'), as for varipipe load"),
    ("start", "0", "first second of the trace window"),
    ("duration", None, "window length in seconds (default: to the end)"),
    ("scale", "1", "multiply every rate by this"),
    ("arrivals", "poisson", f"placement of requests within a second: {', '.join(ARRIVAL_PROCESSES)}"),
    ("seed", "0", "random seed for the arrivals (same seed, same send times as varipipe load)"),
    ("image", "chelsea", "image file to POST, or a sample name (chelsea, astronaut, coffee, synthetic...)"),
    ("path", DEFAULT_PATH, "the pipeline's route on the host"),
    ("per-user-rps", str(DEFAULT_PER_USER_RPS), "requests a second each user is counted on for"),
)
# After the trace's last second, sends still queued behind slow replies get this long.
DRAIN_S = 10.0


class _Sends:
    """Send times that are due (the dispatcher releases each at its time), and those in flight."""

    def __init__(self) -> None:
        self.due: Queue = Queue()
        self.in_flight = 0
        self.dispatched_all = False

    def done(self) -> bool:
        return self.dispatched_all and self.due.empty() and self.in_flight == 0


SENDS = _Sends()


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:  # type: ignore[no-untyped-def]
    for name, default, text in OPTIONS:
        env = f"VARIPIPE_{name.upper().replace('-', '_')}"
        parser.add_argument(f"--{name}", f"--varipipe-{name}", dest=_dest(name), env_var=env, default=default,
                            help=f"varipipe: {text} (env {env})")


def _dest(name: str) -> str:
    return f"varipipe_{name.replace('-', '_')}"


@dataclass(frozen=True)
class Settings:
    """The locustfile's options, parsed."""

    trace: str
    start: int
    duration: int | None
    scale: float
    arrivals: str
    seed: int
    image: str
    path: str
    per_user_rps: float

    @classmethod
    def of(cls, options: object) -> Settings:
        def get(name: str) -> str | None:
            return getattr(options, _dest(name), None)

        trace = get("trace")
        if not trace:
            raise SystemExit("locustfile: name a trace with --trace FILE (or VARIPIPE_TRACE)")
        arrivals = get("arrivals") or "poisson"
        if arrivals not in ARRIVAL_PROCESSES:
            raise SystemExit(f"locustfile: --arrivals must be one of {ARRIVAL_PROCESSES}, got {arrivals!r}")
        per_user = float(get("per-user-rps") or DEFAULT_PER_USER_RPS)
        if per_user <= 0:
            raise SystemExit(f"locustfile: --per-user-rps must be > 0, got {per_user}")
        duration = get("duration")
        return cls(trace, int(get("start") or 0), int(duration) if duration else None, float(get("scale") or 1),
                   arrivals, int(get("seed") or 0), get("image") or "chelsea", get("path") or DEFAULT_PATH, per_user)


@events.init.add_listener
def _check(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Refuse bad options and distributed runs at start-up, before any user runs."""
    Settings.of(environment.parsed_options)
    if isinstance(environment.runner, (MasterRunner, WorkerRunner)):
        raise SystemExit("locustfile: run it as one process (no --processes/--master/--worker): the send "
                         "times are dispatched where the shape runs")


@functools.lru_cache(maxsize=4)
def _body(image: str) -> tuple[bytes, str]:
    return load_image(image)


class PipelineUser(HttpUser):
    """Takes the next due send time and POSTs the image; waits for a free send otherwise."""

    wait_time = constant(0)  # the pace is the dispatcher's, not the user's

    def on_start(self) -> None:
        settings = Settings.of(self.environment.parsed_options)
        self.body, ctype = _body(settings.image)
        self.headers = {"Content-Type": ctype}
        self.path = settings.path

    @task
    def send(self) -> None:
        SENDS.due.get()
        SENDS.in_flight += 1
        try:
            with self.client.post(self.path, data=self.body, headers=self.headers, catch_response=True) as r:
                if r.status_code >= 300:
                    r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
        finally:
            SENDS.in_flight -= 1


class TraceShape(LoadTestShape):
    """Users over time for the trace's rate; starts the dispatcher of its send times. The test
    ends when every send has been answered, or ``DRAIN_S`` after the trace's last second."""

    def __init__(self) -> None:
        super().__init__()
        self._rates = None
        self._per_user = DEFAULT_PER_USER_RPS
        self._last: tuple[int, float] | None = None

    def _start(self) -> None:
        s = Settings.of(self.runner.environment.parsed_options if self.runner else None)
        trace = read_trace(s.trace, s.start, s.duration, s.scale)
        self._rates, self._per_user = trace.rates, s.per_user_rps
        gevent.spawn(self._dispatch, arrival_times(trace, s.arrivals, s.seed))

    def _dispatch(self, times) -> None:  # type: ignore[no-untyped-def]
        for t in times:
            wait = float(t) - self.get_run_time()
            if wait > 0:
                gevent.sleep(wait)
            SENDS.due.put(float(t))
        SENDS.dispatched_all = True

    def tick(self):  # type: ignore[no-untyped-def]
        if self._rates is None:
            self._start()
        elapsed = self.get_run_time()
        now = shape_tick(self._rates, elapsed, self._per_user)
        if now is None and not SENDS.done() and elapsed < len(self._rates) + DRAIN_S:
            return self._last  # the trace is over; its last sends are still out
        self._last = now
        return now
