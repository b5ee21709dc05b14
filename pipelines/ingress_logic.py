"""HTTP ingress: parse and validate requests, walk the stages, answer JSON.

Routes: ``POST /<pipeline>`` (raw image bytes, multipart field ``image``, or
JSON ``{"image": "<base64>"}``, each with an optional question about the image:
JSON field or multipart field ``question``, or header ``x-question``; for an
``input: text`` pipeline JSON ``{"text": ...}`` or a text/plain body), ``GET /healthz``, ``GET /config``,
``GET /metrics`` (Prometheus text), ``GET /api/replicas``. Every bad input is
a 4xx with a message saying what was wrong; nothing a client sends can crash
the replica.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from ray.exceptions import RayActorError

from varipipe.admission import Verdict, decide, would_miss
from varipipe.errors import BadInputError
from varipipe.pipelines.flusher import Flusher
from varipipe.pipelines.gate import FifoGate
from varipipe.pipelines.images import MAX_BYTES, decode_image
from varipipe.pipelines.metrics import RequestRecord, StageEntry, StageExit, StageTiming
from varipipe.pipelines.queues import StageQueues, StageSlots
from varipipe.pipelines.serve_config import default_decision, max_ongoing_for
from varipipe.pipelines.variant import Payload, StageTrace
from varipipe.question import MAX_QUESTION_CHARS, check_question
from varipipe.records import PipelineSpec

__all__ = ["IngressCore", "Answer", "DEADLINE_HEADER", "QUESTION_HEADER", "MAX_QUESTION_CHARS", "REPLY_MARGIN_S",
           "CONTROL_ACTIONS", "parse_control", "control_request", "check_question", "UNAUTHORIZED", "default_slots"]

log = logging.getLogger(__name__)

DEADLINE_HEADER = "x-deadline-ms"  # relative deadline in milliseconds from arrival
QUESTION_HEADER = "x-question"  # a question about the image, for raw-bytes uploads (ASCII: HTTP headers are latin-1)
# Time a request spends outside the ingress's view: the proxy hands it over, and the
# answer goes back through the proxy to the client. Admission and the final deadline
# check keep this much of the deadline for it, so a 200 reaches the client in time.
# Measured on the shared 2-core host (client latency minus the ingress's latency_s,
# benchmarks/overload.py): 7.6 ms median, 12.7 ms p99 at 18 req/s; at 37 req/s with other
# jobs running (load average 8-11), p99 31-48 ms and at most 59 ms. 50 ms covers the p99.
REPLY_MARGIN_S = 0.050
# A deadline longer than an hour is a client bug, not a plan (and would overflow nothing but patience).
MAX_DEADLINE_MS = 3_600_000
# JSON bodies carry base64 (4/3 of the bytes) plus a little structure.
MAX_JSON_BYTES = MAX_BYTES * 4 // 3 + 4096


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BadInputError(f"payload of {declared} bytes exceeds the limit of {limit} bytes", status=413)
        except ValueError as e:
            raise BadInputError(f"content-length {declared!r} is not a number") from e
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInputError(f"payload exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def image_request(request: Request) -> tuple[bytes, str | None]:
    """The image bytes of a request, whichever of the three encodings it used, and its question (or None).

    The question comes from the JSON field or multipart field ``question``, or the ``x-question``
    header (any encoding); both at once is an error, not a silent choice.
    """
    header = request.headers.get(QUESTION_HEADER)
    question = None if header is None else check_question(header, f"header {QUESTION_HEADER}")
    body_question: object = None
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        raw = await _read_body(request, MAX_JSON_BYTES)
        try:
            doc = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInputError(f"body is not valid JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("image"), str):
            raise BadInputError('JSON body must be an object with a base64 string field "image"')
        body_question = doc.get("question")
        try:
            data = base64.b64decode(doc["image"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise BadInputError(f'field "image" is not valid base64: {e}') from e
    elif ctype == "multipart/form-data":
        await _read_body_limit_only(request)
        try:
            form = await request.form()
        except Exception as e:  # noqa: BLE001 - starlette raises several types for bad multipart
            raise BadInputError(f"multipart body cannot be parsed: {e}") from e
        field = form.get("image")
        if field is None or isinstance(field, str):
            raise BadInputError('multipart body needs a file field named "image"')
        body_question = form.get("question")
        if body_question is not None and not isinstance(body_question, str):
            raise BadInputError('multipart field "question" must be a text field, not a file')
        data = await field.read()
    else:
        data = await _read_body(request, MAX_BYTES)
    if body_question is not None:
        if question is not None:
            raise BadInputError(f'the question is sent twice (header {QUESTION_HEADER} and field "question"): '
                                "send it once")
        question = check_question(body_question, 'field "question"')
    return data, question


async def image_bytes(request: Request) -> bytes:
    """The image bytes of a request, whichever of the three encodings it used."""
    data, _ = await image_request(request)
    return data


MAX_TEXT_CHARS = 4000  # a question or prompt; longer text only fills the LLM's context


async def request_text(request: Request) -> str:
    """The text of a request to an ``input: text`` pipeline: JSON ``{"text": ...}`` or a text/plain body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await _read_body(request, MAX_JSON_BYTES)
    if ctype == "application/json":
        try:
            doc = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInputError(f"body is not valid JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            raise BadInputError('JSON body must be an object with a string field "text"')
        text = doc["text"]
    elif ctype in ("text/plain", ""):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInputError(f"text/plain body is not UTF-8: {e}") from e
    else:
        raise BadInputError(f"this pipeline takes text: send JSON {{\"text\": ...}} or text/plain, not {ctype!r}",
                            status=415)
    if not text.strip():
        raise BadInputError('field "text" is empty')
    if len(text) > MAX_TEXT_CHARS:
        raise BadInputError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}", status=413)
    return text


async def _read_body_limit_only(request: Request) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_JSON_BYTES:
        raise BadInputError(f"payload of {declared} bytes exceeds the limit of {MAX_JSON_BYTES} bytes", status=413)


def parse_deadline(request: Request, now: float) -> float | None:
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError as e:
        raise BadInputError(f"header {DEADLINE_HEADER}: {raw!r} is not a number of milliseconds") from e
    if not 0 < ms <= MAX_DEADLINE_MS:
        raise BadInputError(f"header {DEADLINE_HEADER}: {raw!r} must be in (0, {MAX_DEADLINE_MS}] ms")
    return now + ms / 1000.0


# A control request is a few dozen bytes of JSON; a kilobyte leaves room for long names.
CONTROL_MAX_BYTES = 1024
# POST /api/control actions -> the controller's ControllerState.control() action names.
CONTROL_ACTIONS = {"pin": "pin", "unpin": "unpin", "dry_run": "set_dry_run"}
UNAUTHORIZED = {"error": "this endpoint needs the header 'Authorization: Bearer <token>' "
                         "(the token varipipe serve was started with)"}


def parse_control(doc: Any, spec: PipelineSpec) -> tuple[str, list[Any]]:
    """``{"action": "pin", "stage", "variant"}`` | ``{"action": "unpin", "stage"}`` |
    ``{"action": "dry_run", "value": bool}`` -> (controller action, arguments)."""
    if not isinstance(doc, dict) or doc.get("action") not in CONTROL_ACTIONS:
        raise BadInputError(f'body must be a JSON object with "action" one of {sorted(CONTROL_ACTIONS)}, '
                            f"got {doc.get('action') if isinstance(doc, dict) else doc!r}")
    action = doc["action"]
    if action == "dry_run":
        if not isinstance(doc.get("value"), bool):
            raise BadInputError(f'"value" must be true or false, got {doc.get("value")!r}')
        return CONTROL_ACTIONS[action], [doc["value"]]
    stage = doc.get("stage")
    if stage not in spec.stage_names:
        raise BadInputError(f'"stage" must be one of {list(spec.stage_names)}, got {stage!r}')
    if action == "unpin":
        return CONTROL_ACTIONS[action], [stage]
    variant = doc.get("variant")
    if variant not in spec.stage(stage).variant_names:
        raise BadInputError(f'"variant" of stage {stage!r} must be one of {list(spec.stage(stage).variant_names)}, '
                            f"got {variant!r}")
    return CONTROL_ACTIONS[action], [stage, variant]


async def control_request(request: Request, spec: PipelineSpec) -> tuple[str, list[Any]]:
    """Read and check a ``POST /api/control`` body; every problem is a ``BadInputError``."""
    raw = await _read_body(request, CONTROL_MAX_BYTES)
    try:
        doc = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"body is not valid JSON: {e}") from e
    return parse_control(doc, spec)


@dataclass(frozen=True)
class Answer:
    """What the ingress answers one request: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def default_slots(spec: PipelineSpec) -> dict[str, StageSlots]:
    """Batch and replicas of the default decision: what a fresh application runs."""
    return {s.stage: StageSlots(s.batch, s.replicas) for s in default_decision(spec).stages}


def _stage_times(timing: StageTiming, trace: StageTrace) -> dict[str, Any]:
    """How one stage served a request, as replies show it: the ingress's round trip (``seconds``),
    and within it the replica's wait for its batch (``queue_s``) and the batch's run (``compute_s``)."""
    return {"stage": timing.stage, "variant": timing.variant, "batch_size": timing.batch_size,
            "seconds": round(timing.seconds, 6), "queue_s": round(trace.queue_s, 6),
            "compute_s": round(trace.compute_s, 6)}


def stage_capacity(slots: StageSlots) -> int:
    """Requests a stage's replicas accept at once: what its gate lets into Serve's router."""
    return slots.replicas * max_ongoing_for(slots.batch)


class IngressCore:
    """Walks a request through the stage deployments and records what happened.

    With ``admission`` on, a request with a deadline (its header's, or the server's
    default ``deadline_s``) is admitted only if the stages' queues say it can finish
    in time (``varipipe.admission.decide``); otherwise it is answered at once: 503
    with ``Retry-After`` when the queues are the reason, 504 when even idle stages
    could not make it. A request without a deadline is always admitted: it asked to
    wait however long it takes. A 200 is never sent past the deadline: a request
    that finishes too late is answered 504.
    """

    def __init__(self, spec: PipelineSpec, stages: dict, controller, auth_token: str = "",
                 deadline_s: float = 0.0, admission: bool = True,
                 slots: dict[str, StageSlots] | None = None, clock: Callable[[], float] = time.time,
                 gate: bool = True, reserve: bool = True) -> None:
        self.spec = spec
        self.clock = clock  # wall-clock seconds: arrivals and deadlines
        self.deadline_s = deadline_s  # default deadline when the request sets none; 0 = none
        self.admission = admission
        self.stages = stages
        self.controller = controller
        self.auth_token = auth_token
        self.queues = StageQueues(spec.stage_names, slots or default_slots(spec))
        self.reserve = reserve  # keep the measured time outside the stages (False: a benchmark's baseline)
        # In front of each stage's handle: Serve's router never holds a backlog (pipelines/gate.py).
        self.gates = {s: FifoGate(stage_capacity(self.queues.slots[s])) for s in spec.stage_names} if gate else {}
        self._records = Flusher(lambda recs: controller.record_requests.remote(recs))
        # Arrivals are counted when requests arrive, not when they are answered: under
        # overload answers lag, and the adapter must see the load, not the throughput.
        self._arrivals = Flusher(lambda times: controller.record_arrivals.remote(times))
        # Each request entering and leaving each stage, as this handle sees it: the stage's
        # arrivals (counted once, on entry) and its queue (sent and not back) for the adapter.
        self._stage_events = Flusher(lambda events: controller.record_stage_events.remote(events))
        self.started = clock()

    def configure(self, user_config: dict[str, Any]) -> None:
        """Batch size and replicas of every stage, from the decision in force: admission
        control's slots and each stage's gate."""
        self.queues.configure(user_config)
        for stage, gate in self.gates.items():
            gate.resize(stage_capacity(self.queues.slots[stage]))

    def authorized(self, request: Request) -> bool:
        if not self.auth_token:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got, f"Bearer {self.auth_token}")

    async def handle(self, request: Request) -> Answer:
        arrival = self.clock()
        t0 = time.perf_counter()
        self._arrivals.add(arrival)
        try:
            deadline = parse_deadline(request, arrival)
        except BadInputError as e:
            self._record(arrival, time.perf_counter() - t0, e.status, ())
            return Answer(e.status, {"error": str(e)})
        if deadline is None and self.deadline_s:
            deadline = arrival + self.deadline_s
        if self.admission and deadline is not None:
            reserve = self.queues.reserve_s(arrival) if self.reserve else 0.0
            verdict = decide(arrival, deadline, self.queues.loads(arrival), REPLY_MARGIN_S + reserve)
            if not verdict.admit:
                return self._reject(verdict, arrival, deadline, t0, reserve)
        # In the first stage's queue from now on: requests of a burst that are still being read
        # and decoded are ahead of the next one too, and each must see the others.
        first = self.spec.stage_names[0]
        self.queues.sent(first)
        try:
            image, text, question = None, None, None
            if self.spec.input_kind == "text":
                if QUESTION_HEADER in request.headers:
                    raise BadInputError(f"this pipeline takes text: send the question as its text, not in header "
                                        f"{QUESTION_HEADER}")
                text = await request_text(request)
            else:
                data, question = await image_request(request)
                image = await asyncio.get_running_loop().run_in_executor(None, decode_image, data)
        except BadInputError as e:
            self.queues.back(first)
            self._record(arrival, time.perf_counter() - t0, e.status, ())
            return Answer(e.status, {"error": str(e)})
        except BaseException:  # cancelled (the client went away) or a fault: out of the queue all the same
            self.queues.back(first)
            raise
        payload = Payload(request_id=uuid.uuid4().hex[:12], image=image, text=text, question=question,
                          deadline=deadline)
        return await self._walk(payload, arrival, t0)

    async def _walk(self, payload: Payload, arrival: float, t0: float) -> Answer:
        """Send the request through the stages in order; count it in flight at each (the first
        counts it already)."""
        timings = []
        gated = 0.0  # time held at the stages' gates: the admission rule's backlog counts it
        for i, stage in enumerate(self.spec.stage_names):
            s0 = time.perf_counter()
            if i:  # the first stage counted the request when it was admitted
                self.queues.sent(stage)
            self._stage_events.add(StageEntry(stage, self.clock()))
            trace = None  # the stage's trace, once it ran the request
            try:
                async with self.gates.get(stage) or contextlib.nullcontext():
                    gated += time.perf_counter() - s0
                    payload = await self.stages[stage].remote(payload)
                trace = None if payload.dropped_at else payload.trace[-1]
            except RayActorError as e:  # the replica died with this request inside (Serve replaces it)
                log.warning("stage %s: replica lost request %s: %s", stage, payload.request_id, e)
                self._stage_events.add(StageExit(stage, self.clock(), time.perf_counter() - s0, lost=True))
                self._record(arrival, time.perf_counter() - t0, 503, tuple(timings))
                return Answer(503, {"error": f"stage {stage!r}: the replica serving this request died "
                                             f"({type(e).__name__}); a replacement is starting, retry",
                                    "stage": stage})
            except BaseException:  # any other failure (or a cancelled request) also leaves the stage
                self._stage_events.add(StageExit(stage, self.clock(), time.perf_counter() - s0, lost=True))
                raise
            finally:
                self.queues.back(stage, trace.compute_s if trace else None, trace.batch_size if trace else 1,
                                 self.clock())
            self._stage_events.add(StageExit(stage, self.clock(), time.perf_counter() - s0,
                                             dropped=payload.dropped_at == stage))
            if trace is None:
                self._record(arrival, time.perf_counter() - t0, 504, tuple(timings), payload.dropped_at)
                return Answer(504, {"error": f"deadline exceeded: stage {payload.dropped_at!r} could not finish "
                                             "this request within its deadline "
                                             f"({(payload.deadline - arrival) * 1000:.0f} ms); dropped instead "
                                             "of queued", "dropped_at": payload.dropped_at})
            timings.append(StageTiming(stage, trace.variant, time.perf_counter() - s0, trace.batch_size))
        latency = time.perf_counter() - t0
        # What admission's model did not see: all but the gates, the replicas' queues and batches.
        self.queues.outside(latency - gated - sum(tr.queue_s + tr.compute_s for tr in payload.trace), self.clock())
        if self.admission and would_miss(self.clock(), REPLY_MARGIN_S, payload.deadline):
            return self._late(arrival, payload.deadline, latency, timings, payload.trace)
        self._record(arrival, latency, 200, tuple(timings))
        return Answer(200, self._reply(payload, timings, latency))

    def _reject(self, verdict: Verdict, arrival: float, deadline: float, t0: float, reserve_s: float) -> Answer:
        """Answer a request the queues say cannot finish in time, before any work; ``reserve_s``
        is the time admission kept for what happens outside the stages' queues and batches."""
        deadline_ms, predicted_ms = (deadline - arrival) * 1000, verdict.predicted_s * 1000
        outside_ms = (REPLY_MARGIN_S + reserve_s) * 1000
        body: dict[str, Any] = {"rejected_at": verdict.stage, "predicted_ms": round(predicted_ms, 1),
                                "deadline_ms": round(deadline_ms, 1), "outside_ms": round(outside_ms, 1),
                                "in_flight": dict(self.queues.in_flight)}
        if verdict.overloaded:
            status, retry = 503, max(1, math.ceil(verdict.retry_after_s))
            body["error"] = (f"overloaded: with {self.queues.in_flight[verdict.stage]} requests in stage "
                             f"{verdict.stage!r} and its recent service times, this request would finish about "
                             f"{predicted_ms:.0f} ms after arrival, and {outside_ms:.0f} ms are kept for its way "
                             f"outside the stages and back: past its deadline of {deadline_ms:.0f} ms; "
                             f"rejected at once instead of queued. Retry after {retry} s")
            body["retry_after_s"] = round(verdict.retry_after_s, 3)
            headers = {"retry-after": str(retry)}
        else:
            status, headers = 504, {}
            body["error"] = (f"deadline exceeded: the stages' recent service times alone (about "
                             f"{verdict.idle_s * 1000:.0f} ms with empty queues, running out at stage "
                             f"{verdict.stage!r}) and the {outside_ms:.0f} ms kept for its way outside the stages "
                             f"and back exceed this request's deadline of {deadline_ms:.0f} ms; rejected before any work")
            body["dropped_at"] = verdict.stage
        latency = time.perf_counter() - t0
        body["latency_s"] = round(latency, 6)  # the ingress's own time for it, as a 200's latency_s
        self._record(arrival, latency, status, (), rejected_at=verdict.stage)
        return Answer(status, body, headers)

    def _late(self, arrival: float, deadline: float, latency: float, timings: list[StageTiming],
              trace: list[StageTrace]) -> Answer:
        """A request that finished past its deadline is answered 504, never a late 200."""
        last = self.spec.stage_names[-1]
        self._record(arrival, latency, 504, tuple(timings), last)
        return Answer(504, {"error": f"deadline exceeded: finished {latency * 1000:.0f} ms after arrival, "
                                     f"past its deadline of {(deadline - arrival) * 1000:.0f} ms (less "
                                     f"{REPLY_MARGIN_S * 1000:.0f} ms for the reply); answered 504, not a late 200",
                            "dropped_at": last, "latency_s": round(latency, 6),
                            "stages": [_stage_times(t, tr) for t, tr in zip(timings, trace, strict=True)]})

    def _record(self, arrival: float, latency: float, status: int, timings: tuple, dropped_at: str = "",
                rejected_at: str = "") -> None:
        self._records.add(RequestRecord(arrival, latency, status, timings, dropped_at, rejected_at))

    def _reply(self, payload: Payload, timings: list[StageTiming], latency: float) -> dict[str, Any]:
        stages = []
        for t, tr in zip(timings, payload.trace, strict=True):
            out = payload.outputs[t.stage]
            stages.append({**_stage_times(t, tr), "output": out.to_json(), "summary": out.summary()})
        last = stages[-1]["summary"] if stages else ""
        reply = {"pipeline": self.spec.name, "request_id": payload.request_id, "latency_s": round(latency, 6),
                 "answer": last, "stages": stages}
        if payload.question is not None:
            reply["question"] = payload.question
        return reply

    async def replica_reports(self) -> list[dict[str, Any]]:
        from dataclasses import asdict

        return [asdict(s) for s in await self.controller.replicas.remote()]
