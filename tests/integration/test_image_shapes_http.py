"""Image shapes over HTTP on the real vision-caption-ci pipeline, and a genuine stage fault.

- Issue 16's regression: a 10000 x 1 PNG was a 500 (the detector's letterbox resized to
  a 0 px height). It is now a 422 from the ingress that names the shape and the rule,
  before any stage runs; so is 1 x 10000, in every body encoding.
- The corners of the rule (8 x 160, 160 x 8) and a thin photo are served: 200.
- A stage that raises still answers 5xx, not 4xx: the shape rule is a check of the
  input, not a blanket ``except`` (an injected fault: an identity variant whose every
  batch raises). The replica survives it and the ingress keeps answering.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from varipipe.pipelines.images import MAX_ASPECT, MIN_SIDE, SHAPE_STATUS
from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT_S = 120.0  # first requests load the models on a busy 2-core host
LONG_SIDE = 10_000

FAULTY_SPEC = """\
name: faulty-chain
description: An identity stage, then one whose every batch raises (an injected stage fault).
input: image
sla: {latency_s: 0.5}
stages:
  - name: first
    num_cpus: 0.25
    variants:
      - name: fast
        runtime: identity
        factory: varipipe.pipelines.variants.identity:make
        accuracy: {value: 0.5, kind: declared, source: "identity stage, nominal figure for tests"}
  - name: second
    num_cpus: 0.25
    variants:
      - name: raises
        runtime: identity
        factory: varipipe.pipelines.variants.identity:make
        accuracy: {value: 0.5, kind: declared, source: "identity stage, nominal figure for tests"}
        params: {fail_infer: true}
"""


def png(width: int, height: int, content: np.ndarray | None = None) -> bytes:
    img = Image.new("RGB", (width, height), (120, 90, 60)) if content is None else \
        Image.fromarray(content).resize((width, height))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def alive_replicas(app: str) -> dict[str, int]:
    """actor id -> pid of every live replica of an app (GCS actor table)."""
    from ray._private.state import state

    return {aid: a["Pid"] for aid, a in state.actor_table(None).items()
            if a["State"] == "ALIVE" and a["ActorClassName"].startswith(f"ServeReplica:{app}:")}


@pytest.fixture(scope="module")
def vision(serve_port):
    with LocalServer(AppOptions(pipeline="vision-caption-ci", app_name="shapes-vision"), port=serve_port) as srv:
        yield srv


def _encodings(body: bytes) -> list[dict]:
    return [{"content": body, "headers": {"content-type": "image/png"}},
            {"json": {"image": base64.b64encode(body).decode()}},
            {"files": {"image": ("thin.png", body, "image/png")}}]


@pytest.mark.parametrize("width,height", [(LONG_SIDE, 1), (1, LONG_SIDE)])
def test_a_10000x1_png_is_a_422_that_names_the_rule_not_a_500(vision, width, height):
    body = png(width, height)
    for kwargs in _encodings(body):
        r = httpx.post(vision.endpoint, timeout=TIMEOUT_S, **kwargs)
        assert r.status_code == SHAPE_STATUS, r.text
        error = r.json()["error"]
        assert f"{width}x{height}" in error and f"at least {MIN_SIDE} px" in error, error
    r = httpx.post(vision.endpoint, content=png(2 * MAX_ASPECT * 10, 10), timeout=TIMEOUT_S)
    assert r.status_code == SHAPE_STATUS and f"limit of {MAX_ASPECT}:1" in r.json()["error"], r.text


def test_the_corners_of_the_rule_and_a_thin_photo_are_served(vision, chelsea_jpeg):
    photo = np.asarray(Image.open(io.BytesIO(chelsea_jpeg)))
    for width, height, content in ((MIN_SIDE, MIN_SIDE * MAX_ASPECT, None), (MIN_SIDE * MAX_ASPECT, MIN_SIDE, None),
                                   (2000, 100, photo), (900, 300, photo)):
        r = httpx.post(vision.endpoint, content=png(width, height, content), timeout=TIMEOUT_S,
                       headers={"content-type": "image/png"})
        assert r.status_code == 200, (width, height, r.text[:500])
        assert [s["stage"] for s in r.json()["stages"]] == ["detector", "classifier", "llm"]


def test_a_stage_that_raises_answers_5xx_and_serving_continues(serve_port, tmp_path, png_bytes):
    spec = tmp_path / "faulty-chain.yaml"
    spec.write_text(FAULTY_SPEC)
    with LocalServer(AppOptions(pipeline=str(spec), app_name="faulty", route_prefix="/faulty"), port=serve_port) as srv:
        before = alive_replicas("faulty")
        for _ in range(3):
            r = httpx.post(srv.endpoint, content=png_bytes, headers={"content-type": "image/png"},
                           timeout=TIMEOUT_S)
            assert 500 <= r.status_code < 600, (r.status_code, r.text[:300])
        # The shape rule still answers first: a thin image never reaches the faulty stage.
        r = httpx.post(srv.endpoint, content=png(LONG_SIDE, 1), timeout=TIMEOUT_S)
        assert r.status_code == SHAPE_STATUS, r.text
        assert httpx.get(f"{srv.url}/healthz", timeout=TIMEOUT_S).status_code == 200
        assert alive_replicas("faulty") == before  # a raising batch does not kill the replica
