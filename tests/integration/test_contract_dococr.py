"""The variant contract for every new doc-ocr variant, on the real PP-OCR weights.

Every variant: builds from the spec, loads, gives the same outputs for a batch
of 2 as for 2 single calls, unloads; and does its job on the rendered
documents: the detectors find every line, the classifier finds the upside-down
page, the recognisers read the clean invoice with under 5% character errors.
"""

from __future__ import annotations

import dataclasses

import pytest

from varipipe.pipelines.variant import Payload, StageOutput, build_variant
from varipipe.pipelines.variants import ocr_eval
from varipipe.spec import find_spec

pytestmark = pytest.mark.slow

SPEC = find_spec("doc-ocr")
OCR_STAGES = ("det", "cls", "rec")
MAX_CLEAN_CER = 0.05  # a clean rendered page: a few spacing errors at most


@pytest.fixture(scope="module")
def evaluation():
    return ocr_eval.make()


@pytest.fixture(scope="module")
def upstream(evaluation) -> dict[str, list[Payload]]:
    """invoice (upright) and ticket (upside down), carrying the default upstream outputs per stage."""
    full = [p for p in evaluation.payloads() if p.request_id in ("invoice", "ticket")]
    by_stage = {}
    for stage in OCR_STAGES:
        by_stage[stage] = [dataclasses.replace(p, outputs=dict(p.outputs)) for p in full]
        variant = build_variant(SPEC.stage(stage).variant(SPEC.stage(stage).default_variant))
        variant.load()
        for p in full:
            (p.outputs[stage],) = variant.infer([p])
        variant.unload()
    return by_stage


SCORE_TOLERANCE = 1e-3  # onnxruntime's kernels may differ in the last bits with the batch size


def _same(a: StageOutput, b: StageOutput) -> bool:
    """Same items (text, boxes, angles); confidences equal within SCORE_TOLERANCE."""
    ja, jb = a.to_json(), b.to_json()
    return _strip(ja) == _strip(jb) and all(abs(x - y) <= SCORE_TOLERANCE for x, y in zip(_scores(ja), _scores(jb), strict=True))


def _strip(j):  # type: ignore[no-untyped-def]
    if isinstance(j, dict):
        return {k: _strip(v) for k, v in j.items() if k != "score"}
    return [_strip(v) for v in j] if isinstance(j, list) else j


def _scores(j) -> list[float]:  # type: ignore[no-untyped-def]
    if isinstance(j, dict):
        own = [j["score"]] if "score" in j else []
        return own + [s for k, v in j.items() if k != "score" for s in _scores(v)]
    return [s for v in j for s in _scores(v)] if isinstance(j, list) else []


@pytest.mark.parametrize("vspec", [v for s in OCR_STAGES for v in SPEC.stage(s).variants], ids=lambda v: v.name)
def test_ocr_variant_contract(vspec, upstream, evaluation):
    payloads = upstream[vspec.stage]
    variant = build_variant(vspec)
    assert variant.name == vspec.name and variant.hardware == "cpu:1"
    variant.load()
    try:
        singles = [variant.infer([p])[0] for p in payloads]
        batched = variant.infer(payloads)
        assert len(batched) == len(payloads)
        assert all(_same(a, b) for a, b in zip(singles, batched, strict=True))
        for out in singles:
            assert isinstance(out.to_json(), dict) and isinstance(out.summary(), str)
        scores = {p.request_id: evaluation.score(vspec.stage, p, o) for p, o in zip(payloads, singles, strict=True)}
    finally:
        variant.unload()
    if vspec.stage == "det":
        assert scores == {"invoice": 1.0, "ticket": 1.0}
    elif vspec.stage == "cls":
        expected_ticket = 1.0 if vspec.params.get("enabled", True) else 0.0
        assert scores == {"invoice": 1.0, "ticket": expected_ticket}
    else:
        assert scores["invoice"] >= 1 - MAX_CLEAN_CER


def test_ocr_needs_an_image_and_upstream_boxes():
    from varipipe.errors import BadInputError

    rec = build_variant(SPEC.stage("rec").variant("ppocrv4-rec"))
    rec.load()
    with pytest.raises(BadInputError, match="no text detection output"):
        rec.infer([Payload(request_id="x", image=ocr_eval.make().payloads()[0].image)])
    det = build_variant(SPEC.stage("det").variant("ppocrv4-det-640"))
    det.load()
    with pytest.raises(BadInputError, match="image"):
        det.infer([Payload(request_id="x", text="not an image")])
