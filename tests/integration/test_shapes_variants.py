"""Every image variant of vision-caption and doc-ocr, on real weights, in-process (no Ray),
answers a batch of extreme shapes: 1 x 1, 10000 x 1, 1 x 10000, the ingress rule's
corners (8 x 160, 160 x 8) and thin photos and documents with content in them.

The unit tests call the pre-processing functions under hypothesis; this runs the
variants themselves, so a resize or crop that a variant adds and no unit test names
would still be caught. The LLM stages read text only (labels, lines) and are left out.
"""

from __future__ import annotations

import numpy as np
import pytest

from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants.outputs import Detections
from varipipe.spec import find_spec

pytestmark = pytest.mark.slow

LONG_SIDE = 10_000
# (width, height): the extremes, the rule's corners, and thin strips the models can see
# things in (the content is resized into them, so boxes touch the borders).
SHAPES = [(1, 1), (LONG_SIDE, 1), (1, LONG_SIDE), (LONG_SIDE, 2), (8, 160), (160, 8), (2000, 100), (100, 2000),
          (3000, 40), (900, 300), (640, 480)]
# A box this close to the photo's edge makes the crop touch it (YOLOv10-N's boxes are not clipped
# to exactly 0: the default detector's cat box starts 2.1 px in).
BORDER_PX = 3.0
IMAGE_STAGES = {"vision-caption": ("detector", "classifier"), "doc-ocr": ("det", "cls", "rec")}


def _content(pipeline: str) -> np.ndarray:
    if pipeline == "doc-ocr":
        from varipipe.pipelines.variants.ocr_docs import DOCUMENTS, render

        return render("invoice", DOCUMENTS["invoice"]).image
    from skimage import data

    return data.chelsea()


def _payloads(pipeline: str) -> list[Payload]:
    import cv2

    content = _content(pipeline)
    return [Payload(request_id=f"{w}x{h}", image=np.ascontiguousarray(cv2.resize(content, (w, h))))
            for w, h in SHAPES]


def _cases() -> list[tuple[str, str, str]]:
    return [(pipeline, stage, v.name) for pipeline, stages in IMAGE_STAGES.items()
            for stage in stages for v in find_spec(pipeline).stage(stage).variants]


@pytest.fixture(scope="module")
def upstream() -> dict[tuple[str, str], list[Payload]]:
    """Per (pipeline, stage): the payloads carrying the default variants' outputs of the stages before it."""
    out = {}
    for pipeline, stages in IMAGE_STAGES.items():
        spec = find_spec(pipeline)
        payloads = _payloads(pipeline)
        for stage in stages:
            out[pipeline, stage] = [Payload(request_id=p.request_id, image=p.image, outputs=dict(p.outputs))
                                    for p in payloads]
            variant = build_variant(spec.stage(stage).variant(spec.stage(stage).default_variant))
            variant.load()
            for p, o in zip(payloads, variant.infer(payloads), strict=True):
                p.outputs[stage] = o
            variant.unload()
    return out


@pytest.mark.parametrize("pipeline,stage,name", _cases(), ids=lambda x: x)
def test_variant_answers_every_shape(pipeline, stage, name, upstream):
    variant = build_variant(find_spec(pipeline).stage(stage).variant(name))
    variant.load()
    try:
        payloads = upstream[pipeline, stage]
        outputs = variant.infer(payloads)
        assert len(outputs) == len(payloads)
        for p, o in zip(payloads, outputs, strict=True):
            o.to_json()  # serialisable: the ingress answers with it
            if isinstance(o, Detections):
                w, h = p.image.shape[1], p.image.shape[0]
                assert all(0 <= d.box[0] <= d.box[2] <= w and 0 <= d.box[1] <= d.box[3] <= h for d in o.items)
    finally:
        variant.unload()


def test_the_thin_strips_exercise_the_crops(upstream):
    """The content is visible in some squashed shapes, so the crop paths ran on boxes: text
    lines in strips of 10:1 or more, a cat box touching the border of the 3:1 photo."""
    lines = {p.request_id: p.outputs["det"] for p in upstream["doc-ocr", "rec"]}
    assert any(lines[f"{w}x{h}"].items for w, h in SHAPES if max(w, h) >= 10 * min(w, h))
    cats = upstream["vision-caption", "classifier"][SHAPES.index((900, 300))].outputs["detector"]
    assert any(d.box[0] <= BORDER_PX or d.box[2] >= 900 - BORDER_PX for d in cats.items), cats
