"""Fuzz the HTTP API of a real app with hypothesis (issue 8, part 5).

Random bodies, wrong content types, truncated, corrupted, huge-header and
decompression-bomb images, random JSON and multipart, bad deadline headers,
random control requests. Every answer must be a 2xx/4xx, or varipipe's own
deliberate 503/504 (shed / deadline) with a message; never another 5xx, never a
dropped connection. Afterwards no replica has crashed (the same actor ids in
the GCS actor table) and their memory (RSS) has grown by less than a bound.

``VARIPIPE_FUZZ_EXAMPLES`` sets the number of cases per test (CI: a few
hundred); ``VARIPIPE_FUZZ_REPORT`` names a JSON file to write the counts to
(``benchmarks/fuzz.py`` uses both).
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


GOOD = [_png(64, 48), _jpeg(80, 60), _png(1, 1)]
BOMBS = [png_header_bomb(100_000, 100_000), png_header_bomb(2**31 - 1, 1), png_header_bomb(0, 0), deflate_bomb()]

# Header values a client can send at all (h11 refuses control characters and edge spaces).
header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)

images = st.one_of(
    st.sampled_from(GOOD),
    st.sampled_from(BOMBS),
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


def check(r: httpx.Response) -> None:
    STATS["cases"] += 1
    STATS[f"status_{r.status_code}"] += 1
    assert r.status_code < 500 or r.status_code in DELIBERATE_5XX, f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:  # a message saying what was wrong: ours ("error") or FastAPI's ("detail")
        body = r.json()
        assert body.get("error") or body.get("detail"), r.text[:300]
    if r.status_code == 504:
        assert "deadline" in r.json()["error"]


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def replicas() -> dict[str, int]:
    """actor id -> pid of every live replica of this app (GCS actor table)."""
    from ray._private.state import state

    return {aid: a["Pid"] for aid, a in state.actor_table(None).items()
            if a["State"] == "ALIVE" and a["ActorClassName"].startswith(f"ServeReplica:{APP}:")}


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
            report = os.environ.get("VARIPIPE_FUZZ_REPORT")
            if report:
                Path(report).write_text(json.dumps({"stats": dict(STATS), "replicas_before": len(before),
                                                    "replicas_after": len(after), "same_actors": after == before,
                                                    "rss_growth_mb": growth}, indent=1))
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
