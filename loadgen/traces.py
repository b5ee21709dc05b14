"""Request-rate traces: reading, windowing, scaling, synthetic shapes, arrivals.

A trace is a per-second request rate (DESIGN §8): a text file of whitespace
separated numbers (the format IPA used), optionally gzip'd, or a CSV with an
``rps`` column. This module is pure apart from :func:`read_trace`, and it is the
one place the replayer, the locustfile and the simulator get their load from,
so all three follow exactly the same schedule for the same seed.

Traces that ship with the package have short names (``PACKAGED_TRACES``):
``read_trace("twitter")`` reads ``trace_data/twitter-train.txt.gz`` beside this
module from any working directory, in a checkout or after ``pip install``.
Provenance and licence: ``trace_data/README.md``.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from varipipe.errors import TraceError

__all__ = [
    "ARRIVAL_PROCESSES",
    "PACKAGED_TRACES",
    "locate_trace",
    "Trace",
    "read_trace",
    "parse_trace_text",
    "step_trace",
    "ramp_trace",
    "sinusoid_trace",
    "bursty_trace",
    "arrival_times",
    "counts_per_second",
    "shape_tick",
]

# How requests are placed within each second: Poisson process (exponential gaps),
# evenly spaced, or all of a second's requests at its start (a worst-case step).
ARRIVAL_PROCESSES = ("poisson", "uniform", "step")

# Traces shipped as package data (trace_data/README.md says where each comes from).
TRACE_DATA = Path(__file__).resolve().parent / "trace_data"
PACKAGED_TRACES = {"twitter": "twitter-train.txt.gz"}


@dataclass(frozen=True, eq=False)
class Trace:
    """Per-second request rates (req/s); ``offset_s`` is where the window starts in the source."""

    rates: np.ndarray
    source: str = "<memory>"
    offset_s: int = 0
    scale: float = 1.0

    @property
    def duration_s(self) -> int:
        return int(self.rates.shape[0])

    @property
    def peak_rps(self) -> float:
        return float(self.rates.max()) if self.duration_s else 0.0

    @property
    def mean_rps(self) -> float:
        return float(self.rates.mean()) if self.duration_s else 0.0

    def window(self, start_s: int = 0, duration_s: int | None = None) -> Trace:
        """Seconds ``[start_s, start_s + duration_s)`` of this trace (relative to its own start)."""
        if start_s < 0 or start_s >= max(self.duration_s, 1):
            raise TraceError(self.source, 0, f"window start {start_s} s is outside the trace (0..{self.duration_s - 1})")
        end = self.duration_s if duration_s is None else start_s + duration_s
        if duration_s is not None and (duration_s <= 0 or end > self.duration_s):
            raise TraceError(
                self.source, 0,
                f"window {start_s}+{duration_s} s does not fit in the trace's {self.duration_s} s",
            )
        return Trace(self.rates[start_s:end], self.source, self.offset_s + start_s, self.scale)

    def scaled(self, factor: float) -> Trace:
        """Every rate multiplied by ``factor`` (> 0)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise TraceError(self.source, 0, f"scale must be a positive number, got {factor!r}")
        return Trace(self.rates * factor, self.source, self.offset_s, self.scale * factor)


def _bad_token_line(text: str) -> tuple[int, str]:
    """Find the first line holding a token that is not a non-negative finite number."""
    for i, line in enumerate(text.splitlines(), start=1):
        for tok in line.split():
            try:
                v = float(tok)
            except ValueError:
                return i, f"not a number: {tok!r}"
            if not math.isfinite(v) or v < 0:
                return i, f"rate must be a finite number >= 0, got {tok!r}"
    return 0, "unparseable content"


def _parse_csv(text: str, source: str) -> np.ndarray:
    lines = text.splitlines()
    header = [h.strip().lower() for h in lines[0].split(",")]
    if "rps" not in header:
        raise TraceError(source, 1, f"CSV header has no 'rps' column: {lines[0]!r}")
    col = header.index("rps")
    out = np.empty(len(lines) - 1, dtype=np.float64)
    n = 0
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(",")
        try:
            v = float(cells[col])
        except (ValueError, IndexError):
            cell = cells[col] if col < len(cells) else "(missing)"
            raise TraceError(source, i, f"column 'rps': not a number: {cell!r}") from None
        if not math.isfinite(v) or v < 0:
            raise TraceError(source, i, f"column 'rps': rate must be a finite number >= 0, got {v!r}")
        out[n] = v
        n += 1
    return out[:n]


def parse_trace_text(text: str, source: str = "<string>") -> np.ndarray:
    """Per-second rates from a trace's text; errors name ``source`` and the line."""
    first = text.lstrip().split("\n", 1)[0]
    if "," in first or first.strip().lower() == "rps":
        rates = _parse_csv(text.lstrip(), source)
    else:
        try:
            rates = np.array(text.split(), dtype=np.float64)
        except ValueError:
            line, problem = _bad_token_line(text)
            raise TraceError(source, line, problem) from None
        if rates.size and (not np.isfinite(rates).all() or (rates < 0).any()):
            line, problem = _bad_token_line(text)
            raise TraceError(source, line, problem)
    if rates.size == 0:
        raise TraceError(source, 1, "the trace holds no rates")
    return rates


def locate_trace(trace: str | Path, base: Path | None = None) -> Path:
    """The file ``trace`` names: a path that exists as given, else one relative to ``base``
    (a scenario file's folder), else a packaged trace's short name (``twitter``).

    A path that exists nowhere is returned as given: reading it says so.
    """
    path = Path(trace)
    if path.is_absolute() or path.exists():
        return path
    if base is not None and (base / path).exists():
        return base / path
    if str(trace) in PACKAGED_TRACES:
        return TRACE_DATA / PACKAGED_TRACES[str(trace)]
    return path


def read_trace(
    path: str | Path, start_s: int = 0, duration_s: int | None = None, scale: float = 1.0
) -> Trace:
    """Read a trace file (text, .gz, or CSV with ``rps``) or a packaged trace by its short
    name (``PACKAGED_TRACES``), then window and scale it."""
    path = locate_trace(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        names = ", ".join(sorted(PACKAGED_TRACES))
        raise TraceError(str(path), 0, f"cannot read: {e.strerror or e} (a trace file, or a packaged "
                                       f"trace's name: {names})") from e
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise TraceError(str(path), 0, f"not a valid gzip file: {e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TraceError(str(path), line, "not UTF-8 text") from e
    trace = Trace(parse_trace_text(text, str(path)), str(path))
    if start_s or duration_s is not None:
        trace = trace.window(start_s, duration_s)
    return trace.scaled(scale) if scale != 1.0 else trace


# ---- synthetic shapes -------------------------------------------------------------


def step_trace(levels: list[float], step_s: int | list[int]) -> Trace:
    """Constant levels, each held for ``step_s`` seconds (e.g. [10, 40, 10]); a list
    gives each level its own length (e.g. [60, 120, 150])."""
    given = np.atleast_1d(np.asarray(step_s, dtype=np.int64))
    if given.size not in (1, len(levels)) or (given <= 0).any():
        raise TraceError("<step>", 0, f"step lengths must be positive seconds, one or one per level "
                                      f"({len(levels)}), got {given.tolist()}")
    lengths = np.broadcast_to(given, (len(levels),))
    return Trace(np.repeat(np.asarray(levels, dtype=np.float64), lengths), f"step{list(levels)}")


def ramp_trace(start_rps: float, end_rps: float, duration_s: int) -> Trace:
    """A straight line from ``start_rps`` to ``end_rps``."""
    return Trace(np.linspace(start_rps, end_rps, duration_s), f"ramp({start_rps}->{end_rps})")


def sinusoid_trace(mean_rps: float, amplitude_rps: float, period_s: float, duration_s: int) -> Trace:
    """``mean + amplitude·sin(2πt/period)``, clipped at 0."""
    t = np.arange(duration_s, dtype=np.float64)
    rates = np.clip(mean_rps + amplitude_rps * np.sin(2 * np.pi * t / period_s), 0, None)
    return Trace(rates, f"sinusoid({mean_rps}±{amplitude_rps}/{period_s}s)")


def bursty_trace(
    base_rps: float, burst_rps: float, duration_s: int, burst_every_s: float, burst_len_s: int, seed: int = 0
) -> Trace:
    """A base rate with bursts of ``burst_rps`` of length ``burst_len_s`` starting at random
    times, on average every ``burst_every_s`` seconds (exponential gaps, seeded)."""
    rng = np.random.default_rng(seed)
    rates = np.full(duration_s, float(base_rps))
    t = rng.exponential(burst_every_s)
    while t < duration_s:
        rates[int(t): int(t) + burst_len_s] = burst_rps
        t += burst_len_s + rng.exponential(burst_every_s)
    return Trace(rates, f"bursty({base_rps}/{burst_rps})")


# ---- arrivals ---------------------------------------------------------------------


def counts_per_second(trace: Trace, process: str = "poisson", seed: int = 0) -> np.ndarray:
    """How many requests start in each second of the trace."""
    if process not in ARRIVAL_PROCESSES:
        raise ValueError(f"arrival process must be one of {ARRIVAL_PROCESSES}, got {process!r}")
    if process == "poisson":
        return np.random.default_rng(seed).poisson(trace.rates).astype(np.int64)
    # Deterministic: carry fractions over so the total equals the trace's integral.
    cum = np.floor(np.cumsum(trace.rates) + 1e-9).astype(np.int64)
    return np.diff(cum, prepend=0)


def arrival_times(trace: Trace, process: str = "poisson", seed: int = 0) -> np.ndarray:
    """Sorted send times (s from the window start) following the trace, seeded.

    ``poisson``: a Poisson count per second with uniformly placed times (a
    Poisson process at that second's rate); ``uniform``: evenly spaced;
    ``step``: all at the start of their second.
    """
    counts = counts_per_second(trace, process, seed)
    total = int(counts.sum())
    seconds = np.repeat(np.arange(trace.duration_s, dtype=np.float64), counts)
    if process == "step":
        return seconds
    if process == "uniform":
        first = np.repeat(np.cumsum(counts) - counts, counts)
        rank = np.arange(total, dtype=np.float64) - first
        return seconds + rank / np.repeat(np.maximum(counts, 1), counts)
    rng = np.random.default_rng(seed + 1)
    return np.sort(seconds + rng.random(total))


# Users beyond the rate's need: a Poisson second can bring more requests than its rate,
# and a spare user sends the extra one at its time instead of after a reply.
SPARE_USERS = 1


def shape_tick(rates: np.ndarray, elapsed_s: float, per_user_rps: float) -> tuple[int, float] | None:
    """Locust ``LoadTestShape.tick`` for a trace whose send times are dispatched open loop
    (``loadgen/locustfile.py``): enough users that each sends at most ``per_user_rps``
    requests a second at the highest rate so far or the next second's, plus ``SPARE_USERS``,
    all spawned within a second; ``None`` ends the test.

    The count never falls during the run: locust stops a user by killing it, and a user
    killed with its request out loses that request (7 of 131 on a live run whose user
    count followed the trace down). Idle users only wait for the next send time.
    """
    i = int(elapsed_s)
    if i >= len(rates):
        return None
    peak = float(np.max(rates[:i + 2]))
    users = math.ceil(peak / per_user_rps - 1e-9) + SPARE_USERS
    return users, float(users)
