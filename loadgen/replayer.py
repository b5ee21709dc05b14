"""Open-loop trace replayer: send at the trace's schedule, whatever the server does.

Every request is its own asyncio task started at its scheduled time, so a slow
server never delays the next send (open loop); nothing is retried. Each request
becomes one JSON line (:class:`RequestRecord`); :class:`ReplaySummary` compares
the achieved with the intended rate and flags a client that could not keep up.
The HTTP client (aiohttp) is created inside :func:`replay`; tests point it at a
real server on 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from varipipe.errors import VaripipeError

__all__ = [
    "RequestRecord",
    "ReplaySummary",
    "replay",
    "replay_sync",
    "load_image",
    "read_records",
    "arrivals_from_log",
    "SAMPLE_IMAGES",
]

# Per-request client timeout (s): far above any SLA we serve, so a timeout is
# a server that stopped answering, recorded as an error (status 0), never retried.
REQUEST_TIMEOUT_S = 60.0
# Connection pool size: enough that the pool is never what limits an open-loop
# sender at the rates this machine sustains (500 req/s × ~0.1 s replies ≈ 50).
DEFAULT_MAX_CONNECTIONS = 1000
# A request whose send started more than this after its schedule counts as late;
# if the p99 send lag exceeds it the client (not the server) was the bottleneck.
SATURATION_LAG_S = 0.05
# Achieved/intended send rate below this fraction means the client is saturated
# (the acceptance bound for the replayer benchmark is 2%).
SATURATION_RATE_FRACTION = 0.98

# Bundled sample photos, taken from scikit-image's data module when present.
SAMPLE_IMAGES = ("chelsea", "astronaut", "coffee", "rocket", "camera", "synthetic")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; times in seconds from the replay start."""

    index: int
    scheduled_s: float
    sent_s: float
    latency_s: float
    status: int  # HTTP status; 0 when no reply came (connection error, timeout)
    variants: dict[str, str] = field(default_factory=dict)  # stage -> variant that served it
    stage_seconds: dict[str, float] = field(default_factory=dict)
    server_latency_s: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass(frozen=True)
class ReplaySummary:
    """Achieved vs intended load, and what the server answered."""

    intended: int
    sent: int
    ok: int
    errors: int
    duration_s: float
    intended_rps: float
    achieved_rps: float
    send_lag_p50_s: float
    send_lag_p99_s: float
    send_lag_max_s: float
    latency_p50_s: float
    latency_p99_s: float
    saturated: bool
    status_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_reply(body: bytes) -> tuple[dict[str, str], dict[str, float], float | None]:
    """Variants, per-stage seconds and server latency from the app's JSON reply, if present."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}, {}, None
    if not isinstance(data, dict):
        return {}, {}, None
    variants: dict[str, str] = {}
    seconds: dict[str, float] = {}
    stages = data.get("stages")
    for st in stages if isinstance(stages, list) else ():
        if not isinstance(st, dict) or not isinstance(st.get("stage"), str):
            continue
        if isinstance(st.get("variant"), str):
            variants[st["stage"]] = st["variant"]
        if isinstance(st.get("seconds"), int | float):
            seconds[st["stage"]] = float(st["seconds"])
    lat = data.get("latency_s")
    return variants, seconds, float(lat) if isinstance(lat, int | float) else None


async def _one(session: Any, url: str, body: bytes, headers: dict[str, str], index: int,
               scheduled: float, t0: float, timeout: Any) -> RequestRecord:
    loop = asyncio.get_running_loop()
    sent = loop.time() - t0
    try:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            payload = await resp.read()
            latency = loop.time() - t0 - sent
            variants, seconds, server = _parse_reply(payload) if resp.status < 300 else ({}, {}, None)
            error = "" if resp.status < 300 else payload[:200].decode("utf-8", "replace")
            return RequestRecord(index, scheduled, sent, latency, resp.status, variants, seconds, server, error)
    except Exception as e:  # noqa: BLE001 -- every failure is recorded, none retried
        return RequestRecord(index, scheduled, sent, loop.time() - t0 - sent, 0, error=f"{type(e).__name__}: {e}")


def _summarise(records: Sequence[RequestRecord], intended: int, schedule_span_s: float) -> ReplaySummary:
    if not records:
        return ReplaySummary(intended, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, intended > 0)
    sent = np.array([r.sent_s for r in records])
    lag = np.maximum(sent - np.array([r.scheduled_s for r in records]), 0.0)
    lat = np.array([r.latency_s for r in records if r.ok]) if any(r.ok for r in records) else np.zeros(1)
    span = max(schedule_span_s, 1e-9)
    # Rate over the schedule's own span, so both rates count the same requests.
    sent_span = max(float(sent.max() - sent.min()), 1e-9) if len(records) > 1 else span
    intended_rps = (intended - 1) / span if intended > 1 else float(intended)
    achieved_rps = (len(records) - 1) / sent_span if len(records) > 1 else float(len(records))
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    p99_lag = float(np.percentile(lag, 99))
    ok = sum(r.ok for r in records)
    return ReplaySummary(
        intended=intended, sent=len(records), ok=ok, errors=len(records) - ok,
        duration_s=float(sent.max()), intended_rps=intended_rps, achieved_rps=achieved_rps,
        send_lag_p50_s=float(np.percentile(lag, 50)), send_lag_p99_s=p99_lag,
        send_lag_max_s=float(lag.max()), latency_p50_s=float(np.percentile(lat, 50)),
        latency_p99_s=float(np.percentile(lat, 99)),
        saturated=p99_lag > SATURATION_LAG_S or achieved_rps < SATURATION_RATE_FRACTION * intended_rps,
        status_counts=statuses,
    )


async def replay(
    url: str,
    send_times: Sequence[float] | np.ndarray,
    body: bytes | Sequence[bytes],
    content_type: str = "image/jpeg",
    out: TextIO | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    on_progress: Callable[[int], None] | None = None,
    questions: Sequence[str] = (),
) -> tuple[ReplaySummary, list[RequestRecord]]:
    """POST ``body`` to ``url`` at each time in ``send_times`` (s from now), open loop; with
    several bodies, request ``i`` sends ``body[i % len(body)]`` (inputs that vary, as traffic does);
    request ``i`` carries ``questions[i % len(questions)]`` in the ``x-question`` header when
    questions are given (``loadgen.questions``)."""
    import aiohttp

    from varipipe.loadgen.questions import question_headers

    bodies = [body] if isinstance(body, bytes | bytearray) else list(body)
    if not bodies:
        raise ValueError("replay needs at least one request body")
    times = np.asarray(send_times, dtype=np.float64)
    headers = {"Content-Type": content_type}
    records: list[RequestRecord] = []

    def _done(task: asyncio.Task) -> None:
        rec = task.result()
        records.append(rec)
        if out is not None:
            out.write(rec.to_json() + "\n")
        if on_progress is not None:
            on_progress(1)

    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = set()
        for i, st in enumerate(times.tolist()):
            delay = st - (loop.time() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(session, url, bodies[i % len(bodies)],
                                            {**headers, **question_headers(questions, i)}, i, st, t0, timeout))
            task.add_done_callback(_done)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
    records.sort(key=lambda r: r.index)
    span = float(times[-1] - times[0]) if times.size > 1 else 0.0
    return _summarise(records, int(times.size), span), records


def replay_sync(url: str, send_times: np.ndarray, body: bytes, content_type: str = "image/jpeg",
                out_path: str | Path | None = None, **kw: Any) -> tuple[ReplaySummary, list[RequestRecord]]:
    """:func:`replay` in a fresh event loop, writing JSON lines to ``out_path`` if given."""
    if out_path is None:
        return asyncio.run(replay(url, send_times, body, content_type, None, **kw))
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        return asyncio.run(replay(url, send_times, body, content_type, f, **kw))


def read_records(path: str | Path) -> list[RequestRecord]:
    """Read a replayer log back; errors name the file and line."""
    from varipipe.errors import TraceError

    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(RequestRecord(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise TraceError(str(path), i, f"not a replayer record: {e}") from e
    return out


def _synthetic_jpeg() -> bytes:
    """A small deterministic test card (gradient + squares), JPEG-encoded."""
    from PIL import Image

    y, x = np.mgrid[0:240, 0:320]
    img = np.stack([x * 255 // 320, y * 255 // 240, ((x // 40 + y // 40) % 2) * 255], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def load_image(spec: str | None) -> tuple[bytes, str]:
    """Request body and content type from a file path or a sample name (``chelsea``...)."""
    if spec is None or spec == "synthetic":
        return _synthetic_jpeg(), "image/jpeg"
    p = Path(spec)
    if p.exists():
        ctype = "image/png" if p.suffix.lower() == ".png" else "image/jpeg"
        return p.read_bytes(), ctype
    if spec not in SAMPLE_IMAGES:
        raise VaripipeError(f"--image {spec!r}: no such file, and not a sample name ({', '.join(SAMPLE_IMAGES)})")
    try:
        from PIL import Image
        from skimage import data as skdata
    except ImportError as e:
        raise VaripipeError(f"--image {spec!r}: sample images need scikit-image ({e})") from e
    arr = getattr(skdata, spec)()
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue(), "image/jpeg"


def _fmt_rate(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else "n/a"


def format_summary(s: ReplaySummary) -> str:
    """Human-readable one-screen summary."""
    flag = "  ** CLIENT SATURATED: the sender fell behind its schedule **" if s.saturated else ""
    return (
        f"sent {s.sent}/{s.intended} in {s.duration_s:.1f} s: intended {_fmt_rate(s.intended_rps)} req/s, "
        f"achieved {_fmt_rate(s.achieved_rps)} req/s (send lag p99 {s.send_lag_p99_s * 1e3:.1f} ms){flag}\n"
        f"ok {s.ok}, errors {s.errors} {s.status_counts}; latency p50 {s.latency_p50_s * 1e3:.1f} ms, "
        f"p99 {s.latency_p99_s * 1e3:.1f} ms"
    )


def arrivals_from_log(path: str | Path) -> np.ndarray:
    """Send times of a replayer log, sorted and shifted to start at 0: simulator arrivals."""
    sent = np.sort(np.array([r.sent_s for r in read_records(path)], dtype=np.float64))
    return sent - sent[0] if len(sent) else sent
