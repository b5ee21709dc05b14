"""Fuzz the HTTP API of a real app with hypothesis (issue 8, part 5).

Random bodies, wrong content types, truncated, corrupted, huge-header and
decompression-bomb images, random JSON and multipart, bad deadline headers,
random control requests. Every answer must be a 2xx/4xx, or varipipe's own
deliberate 503/504 (shed / deadline) with a message; never another 5xx, never a
dropped connection. Afterwards no replica has crashed (the same actor ids in
the GCS actor table) and their memory (RSS) has grown by less than a bound.

identity-chain never resizes, so image shapes are fuzzed on the real pipelines too
(issue 16): vision-caption-ci and doc-ocr-ci get PNGs and JPEGs from 1 x 1 to
10000 x 1 and 1 x 10000 with flat, noisy, photo and document content. A shape the
ingress rule accepts must be answered 200, any other 422; no replica may crash.

``VARIPIPE_FUZZ_EXAMPLES`` sets the number of cases per identity-chain test (CI: 60)
and ``VARIPIPE_FUZZ_SHAPE_EXAMPLES`` per real pipeline (CI: 20; each case runs the
models); ``VARIPIPE_FUZZ_REPORT`` names a JSON file to write the counts to
(``benchmarks/fuzz.py`` uses all three).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from varipipe.errors import BadInputError
from varipipe.pipelines.images import MAX_ASPECT, MIN_SIDE, SHAPE_STATUS, check_shape
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "fuzz-test"
EXAMPLES = int(os.environ.get("VARIPIPE_FUZZ_EXAMPLES", "60"))  # x 5 tests = 300 cases in CI
# Deliberate 5xx: 503 shed (overload), 504 deadline exceeded.
DELIBERATE_5XX = {503, 504}
# Replica memory may grow by this much over the run (allocator slack, caches), not per request.
RSS_GROWTH_LIMIT_MB = 150.0
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STATS: Counter = Counter()
# The real pipelines: each case runs the models (about a second here), so fewer cases.
SHAPE_EXAMPLES = int(os.environ.get("VARIPIPE_FUZZ_SHAPE_EXAMPLES", "20"))
REAL_PIPELINES = ("vision-caption-ci", "doc-ocr-ci")
SHAPE_SETTINGS = settings(SETTINGS, max_examples=SHAPE_EXAMPLES)
LONG_SIDE = 10_000  # the extremes: 10000 x 1 and 1 x 10000
# Generated images stay under a megapixel (the thin extremes are far below it): big
# images only cost the models time, the 40 Mpx limit is fuzzed on identity-chain.
MAX_SHAPE_PIXELS = 1_000_000
REAL_STATS: dict[str, Counter] = {p: Counter() for p in REAL_PIPELINES}


def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 20, 130)).save(buf, "JPEG")
    return buf.getvalue()


def png_header_bomb(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels (the data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def deflate_bomb() -> bytes:
    """A real 10,000 x 10,000 grey PNG: 100 Mpx from a few KB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, "PNG")
    return buf.getvalue()


GOOD = [_png(64, 48), _jpeg(80, 60), _png(8, 8)]
THIN = [_png(1, 1), _png(10_000, 1), _png(1, 10_000), _jpeg(3, 2000)]  # outside the shape rule: 422
BOMBS = [png_header_bomb(100_000, 100_000), png_header_bomb(2**31 - 1, 1), png_header_bomb(0, 0), deflate_bomb()]

# Header values a client can send at all (h11 refuses control characters and edge spaces).
header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)

images = st.one_of(
    st.sampled_from(GOOD),
    st.sampled_from(BOMBS),
    st.sampled_from(THIN),
    st.tuples(st.sampled_from(GOOD), st.floats(0, 1)).map(lambda t: t[0][: int(len(t[0]) * t[1])]),  # truncated
    st.tuples(st.sampled_from(GOOD), st.integers(0, 10_000), st.integers(0, 255)).map(  # one byte corrupted
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1:]),
    st.binary(max_size=4096),
    st.sampled_from(GOOD).map(lambda b: b * 50),  # an image followed by junk
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["image/png", "image/jpeg", "application/json", "multipart/form-data", "text/plain",
                     "application/octet-stream", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=xyz", "application/json; charset=utf-16", ""]),
    st.builds(lambda a, b: f"{a}/{b}", header_text, header_text),
)
deadlines = st.one_of(
    st.none(),
    st.sampled_from(["", "0", "-1", "nan", "inf", "-inf", "1e309", "3600001", "0.0001", "1", "50", "30000",
                     "1e3", "2 0", "0x10", "1_000"]),
    header_text,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
json_docs = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                         lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                    max_size=4), max_leaves=12)
json_bodies = st.one_of(
    json_docs.map(lambda d: json.dumps(d).encode()),
    images.map(lambda b: json.dumps({"image": base64.b64encode(b).decode()}).encode()),
    st.text(max_size=200).map(lambda s: json.dumps({"image": s}).encode()),
    st.binary(max_size=200),
)


def _headers(ctype: str | None, deadline: str | None) -> dict[str, str]:
    h = {}
    if ctype is not None:
        h["content-type"] = ctype
    if deadline is not None:
        h["x-deadline-ms"] = deadline
    return h


def check(r: httpx.Response, stats: Counter = STATS) -> None:
    stats["cases"] += 1
    stats[f"status_{r.status_code}"] += 1
    assert r.status_code < 500 or r.status_code in DELIBERATE_5XX, f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:  # a message saying what was wrong: ours ("error") or FastAPI's ("detail")
        body = r.json()
        assert body.get("error") or body.get("detail"), r.text[:300]
    if r.status_code == 504:
        assert "deadline" in r.json()["error"]


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def replicas(app: str = APP) -> dict[str, int]:
    """actor id -> pid of every live replica of an app (GCS actor table)."""
    from ray._private.state import state

    return {aid: a["Pid"] for aid, a in state.actor_table(None).items()
            if a["State"] == "ALIVE" and a["ActorClassName"].startswith(f"ServeReplica:{app}:")}


def _report(**parts) -> None:
    """Merge ``parts`` into the JSON report, if one was asked for (the modules' fixtures end apart)."""
    report = os.environ.get("VARIPIPE_FUZZ_REPORT")
    if report:
        path = Path(report)
        doc = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**doc, **parts}, indent=1))


@pytest.fixture(scope="module")
def server(serve_port):
    with LocalServer(AppOptions(pipeline="identity-chain", app_name=APP), port=serve_port) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            for b in GOOD * 5:  # warm up: first requests allocate caches that are not leaks
                client.post("/identity-chain", content=b)
            before = replicas()
            rss_before = {aid: rss_mb(pid) for aid, pid in before.items()}
            srv.client = client
            yield srv
            after = replicas()
            growth = {aid: rss_mb(pid) - rss_before[aid] for aid, pid in after.items() if aid in rss_before}
            _report(stats=dict(STATS), replicas_before=len(before), replicas_after=len(after),
                    same_actors=after == before, rss_growth_mb=growth)
            assert after == before, "a replica crashed or was restarted during the fuzz run"
            assert max(growth.values()) < RSS_GROWTH_LIMIT_MB, growth


@SETTINGS
@given(body=images, ctype=content_types, deadline=deadlines)
def test_raw_bodies(server, body, ctype, deadline):
    check(server.client.post("/identity-chain", content=body, headers=_headers(ctype, deadline)))


@SETTINGS
@given(body=json_bodies, ctype=st.sampled_from(["application/json", "application/json; charset=utf-8"]),
       deadline=deadlines)
def test_json_bodies(server, body, ctype, deadline):
    check(server.client.post("/identity-chain", content=body, headers=_headers(ctype, deadline)))


@SETTINGS
@given(field=st.sampled_from(["image", "img", "", "image[]"]) | st.text(max_size=10), body=images,
       filename=st.text(max_size=20), deadline=deadlines)
def test_multipart_bodies(server, field, body, filename, deadline):
    files = {field: (filename or "x", body, "application/octet-stream")}
    check(server.client.post("/identity-chain", files=files, headers=_headers(None, deadline)))


@SETTINGS
@given(body=json_docs | st.fixed_dictionaries({"action": st.sampled_from(["pin", "unpin", "dry_run", "apply"]),
                                               "stage": st.text(max_size=8) | st.sampled_from(["first", "second"]),
                                               "variant": st.text(max_size=8) | st.sampled_from(["fast", "slow"]),
                                               "value": json_docs}))
def test_control_bodies(server, body):
    # json.dumps writes NaN/Infinity too (not strict JSON): the server must refuse those cleanly.
    check(server.client.post("/api/control", content=json.dumps(body).encode(),
                             headers={"content-type": "application/json"}))


@SETTINGS
@given(since=st.text(max_size=20) | st.floats().map(repr),
       path=st.sampled_from(["/config", "/api/history", "/api/replicas", "/healthz", "/metrics", "/nope"]))
def test_get_endpoints(server, since, path):
    check(server.client.get(path, params={"since": since}))


# ---- image shapes on the real pipelines -----------------------------------------------


@pytest.fixture(scope="module", params=REAL_PIPELINES)
def real_server(request, serve_port):
    """A real CI pipeline on its own route prefix (identity-chain's fuzz app holds "/")."""
    pipeline = request.param
    app = f"fuzz-{pipeline}"
    with LocalServer(AppOptions(pipeline=pipeline, app_name=app, route_prefix=f"/{app}"), port=serve_port) as srv:
        with httpx.Client(base_url=srv.url, timeout=120) as client:
            assert client.post(f"/{pipeline}", content=_png(64, 48)).status_code == 200  # models loaded
            before = replicas(app)
            srv.client, srv.pipeline = client, pipeline
            yield srv
            after = replicas(app)
            _report(**{f"shapes_{pipeline}": {"stats": dict(REAL_STATS[pipeline]), "replicas": len(after),
                                               "same_actors": after == before}})
            assert after == before, f"{pipeline}: a replica crashed or was restarted during the shape fuzz"


def _side_pairs() -> st.SearchStrategy[tuple[int, int]]:
    """(long, short) sides: anything up to a megapixel, thin strips, the rule's edges, and
    shapes inside the rule (about half the cases: those must come back 200)."""
    any_long = st.integers(1, LONG_SIDE)
    anything = any_long.flatmap(lambda n: st.tuples(st.just(n), st.integers(1, max(1, min(n, MAX_SHAPE_PIXELS // n)))))
    thin = st.tuples(any_long, st.integers(1, 3))
    edge = st.tuples(st.integers(MIN_SIDE - 1, 40), st.integers(-1, 1)).map(
        lambda t: (t[0] * MAX_ASPECT + t[1], t[0]))
    small = st.tuples(st.integers(MIN_SIDE - 1, MIN_SIDE + 1), st.integers(1, MIN_SIDE + 1))
    inside = st.integers(MIN_SIDE, 1000).flatmap(lambda short: st.tuples(
        st.integers(short, max(short, min(MAX_ASPECT * short, LONG_SIDE, MAX_SHAPE_PIXELS // short))), st.just(short)))
    return st.one_of(inside, anything, inside, thin, inside, edge, small)


shapes = st.tuples(_side_pairs(), st.booleans()).map(lambda t: (t[0][1], t[0][0]) if t[1] else t[0])
CONTENTS = ("flat", "noise", "photo", "document")


def _content(kind: str):  # -> np.ndarray | None
    import numpy as np

    if kind == "photo":
        from skimage import data

        return data.chelsea()
    if kind == "document":
        from varipipe.pipelines.variants.ocr_docs import DOCUMENTS, render

        return render("invoice", DOCUMENTS["invoice"]).image
    if kind == "noise":
        return np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    return None


def shaped_image(width: int, height: int, kind: str, fmt: str) -> bytes:
    """A ``width`` x ``height`` image of the given content (resized into the shape), encoded."""
    from PIL import Image

    content = _content(kind)
    img = Image.new("RGB", (width, height), (40, 160, 90)) if content is None else \
        Image.fromarray(content).resize((width, height))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _accepted(width: int, height: int) -> bool:
    try:
        check_shape(width, height)
    except BadInputError:
        return False
    return True


@SHAPE_SETTINGS
@given(shape=shapes, kind=st.sampled_from(CONTENTS), fmt=st.sampled_from(["PNG", "JPEG"]))
@example(shape=(LONG_SIDE, 1), kind="photo", fmt="PNG")
@example(shape=(1, LONG_SIDE), kind="document", fmt="PNG")
@example(shape=(1, 1), kind="flat", fmt="JPEG")
@example(shape=(MIN_SIDE * MAX_ASPECT, MIN_SIDE), kind="document", fmt="PNG")
@example(shape=(MIN_SIDE, MIN_SIDE * MAX_ASPECT), kind="photo", fmt="JPEG")
def test_image_shapes_on_real_pipelines(real_server, shape, kind, fmt):
    width, height = shape
    r = real_server.client.post(f"/{real_server.pipeline}", content=shaped_image(width, height, kind, fmt),
                                headers={"content-type": f"image/{fmt.lower()}"})
    check(r, REAL_STATS[real_server.pipeline])
    if _accepted(width, height):
        assert r.status_code == 200, f"{width}x{height} {kind} {fmt}: {r.status_code} {r.text[:300]}"
        assert [s["stage"] for s in r.json()["stages"]], r.text[:300]
    else:
        assert r.status_code == SHAPE_STATUS, f"{width}x{height}: {r.status_code} {r.text[:300]}"
        assert f"{width}x{height}" in r.json()["error"]
