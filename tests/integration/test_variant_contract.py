"""One contract for every variant of vision-caption, on real weights and bundled photos.

Every variant: implements the protocol, gives the same outputs for a batch of
3 as for 3 single calls, releases its memory on unload, and does its job on
skimage's chelsea (a cat): the detector finds a COCO 'cat', the classifier
names an ImageNet cat class, the LLM writes a sentence naming what it was given.

YOLOv3-tiny at 416 and 608 input finds nothing in chelsea as shipped: the cat's
face fills the frame, larger than the largest anchor box (344 x 319 px at the
network's input) covers, so only the 320 variant sees it. The detector contract
therefore uses chelsea at ordinary scale in a larger frame (``cat_in_room``);
the classifier falls back to the whole image when nothing is detected. (The
close-ups themselves are the regression test of the default detector:
``test_detector_closeups.py``.) The YOLOv4-tiny, multi-scale and YOLOv10-N
variants go through the same contract.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants.outputs import Caption, Classifications, Detections
from varipipe.records import VariantSpec
from varipipe.spec import find_spec

pytestmark = pytest.mark.slow

SPEC = find_spec("vision-caption")
VARIANTS = [v for s in SPEC.stages for v in s.variants]
# ImageNet-1k class ids of domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
IMAGENET_CATS = range(281, 286)
COCO_CAT = 15  # class id of 'cat' in darknet's coco.names (0-based)
# Share of the memory a load added that unload must give back (allocator slack allowed).
RELEASED_SHARE = 0.7
# What a model-free variant (the template rung) may add to the process's memory: allocator noise.
NO_MODEL_MB = 5.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cat_in_room(image: np.ndarray) -> np.ndarray:
    """The photo at its own scale in the middle of a frame twice its size (plain grey-beige)."""
    h, w = image.shape[:2]
    frame = np.full((2 * h, 2 * w, 3), (190, 180, 170), np.uint8)
    frame[h // 2:h // 2 + h, w // 2:w // 2 + w] = image
    return frame


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    from skimage import data

    return [data.chelsea(), data.coffee(), data.astronaut()]


def _run(spec: VariantSpec, payloads: list[Payload]) -> None:
    variant = build_variant(spec)
    variant.load()
    try:
        for p in payloads:
            (p.outputs[spec.stage],) = variant.infer([p])
    finally:
        variant.unload()


@pytest.fixture(scope="module")
def upstream(photos) -> dict[str, list[Payload]]:
    """Payloads for each stage: the photos carrying the outputs of the stages before it."""
    det = SPEC.stage("detector").variant("yolov10n-320")
    cls = SPEC.stage("classifier").variant("mobilenet-v2-160")
    full = [Payload(request_id=str(i), image=img) for i, img in enumerate(photos)]
    _run(det, full)
    _run(cls, full)
    return {
        "detector": [Payload(request_id=p.request_id, image=p.image) for p in full],
        "classifier": [Payload(request_id=p.request_id, image=p.image, outputs={"detector": p.outputs["detector"]})
                       for p in full],
        "llm": full,
    }


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v.stage}/{v.name}")
def loaded(request):
    variant = build_variant(request.param)
    variant.load()
    yield variant
    variant.unload()


def _same(a, b) -> bool:
    """Outputs equal up to float noise between batched and single runtime calls."""
    if isinstance(a, Detections):
        return len(a.items) == len(b.items) and all(
            x.class_id == y.class_id and math.isclose(x.score, y.score, abs_tol=1e-3)
            and np.allclose(x.box, y.box, atol=0.5) for x, y in zip(a.items, b.items, strict=True))
    if isinstance(a, Classifications):
        return len(a.items) == len(b.items) and all(
            x.class_id == y.class_id and math.isclose(x.score, y.score, abs_tol=1e-3)
            for x, y in zip(a.items, b.items, strict=True))
    return a == b


def test_protocol(loaded):
    assert loaded.name == loaded.spec.name
    assert loaded.hardware == "cpu:1"


def test_batch_of_three_equals_three_single_calls(loaded, upstream):
    payloads = upstream[loaded.spec.stage]
    batched = loaded.infer(payloads)
    singles = [loaded.infer([p])[0] for p in payloads]
    assert len(batched) == 3
    assert all(_same(a, b) for a, b in zip(batched, singles, strict=True)), (batched, singles)
    assert all(isinstance(o.to_json(), dict) and o.summary() for o in batched)


def test_does_its_job_on_chelsea(loaded, upstream, photos):
    stage = loaded.spec.stage
    if stage == "detector":
        (out,) = loaded.infer([Payload(image=cat_in_room(photos[0]))])
        assert COCO_CAT in [d.class_id for d in out.items], out.summary()
        cat = next(d for d in out.items if d.class_id == COCO_CAT)
        assert cat.label == "cat"
        x1, y1, x2, y2 = cat.box  # the photo sits at (w/2, h/2)-(3w/2, 3h/2) of the frame
        h, w = photos[0].shape[:2]
        assert x1 < w and y1 < h and x2 > w and y2 > h
    elif stage == "classifier":
        for payload in (upstream["classifier"][0], Payload(image=photos[0])):  # crops; whole image
            (out,) = loaded.infer([payload])
            assert out.items[0].class_id in IMAGENET_CATS, out.summary()
    else:
        (out,) = loaded.infer([upstream["llm"][0]])
        assert isinstance(out, Caption) and out.text.strip()
        if "max_tokens" in loaded.spec.params:  # a generating model; the template generates no tokens
            assert 0 < out.tokens <= loaded.spec.params["max_tokens"]
        words = {w.lower() for label in out.prompt_labels for w in (label, label.split()[-1])}
        assert any(w in out.text.lower() for w in words), (out.text, out.prompt_labels)


@pytest.mark.parametrize("spec", VARIANTS, ids=lambda v: f"{v.stage}/{v.name}")
def test_unload_releases_memory(spec, photos):
    variant = build_variant(spec)
    variant.load()  # first load pays one-time costs (library init, thread pools)
    variant.unload()
    before = _rss_mb()
    variant.load()
    variant.infer([Payload(image=photos[0])])
    grown = _rss_mb() - before
    variant.unload()
    kept = _rss_mb() - before
    if spec.runtime == "template":  # no model: loading holds nothing, and unloading must not leak
        assert grown < NO_MODEL_MB and kept < NO_MODEL_MB, (grown, kept)
        return
    assert grown > 0
    assert kept <= (1 - RELEASED_SHARE) * grown, f"load grew RSS by {grown:.0f} MB, unload kept {kept:.0f} MB"
