"""Choosing a stage's accuracy figures from its variants' outputs (pure; real output records)."""

import pytest

from varipipe.errors import SpecError
from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants.outputs import (
    Caption,
    Classification,
    Classifications,
    Detection,
    Detections,
)
from varipipe.profiler.evaluate import StageAccuracy, items_per_request, output_kind, stage_accuracy
from varipipe.records import Accuracy, AccuracyKind, StageSpec, VariantSpec

_DECLARED = Accuracy(0.4, AccuracyKind.DECLARED, "COCO table 1")


def _variant(stage, name, size, accuracy=None):
    return VariantSpec(stage=stage, name=name, runtime="x", factory="m:f", input_size=size, accuracy=accuracy)


def _dets(*boxes):
    return Detections(tuple(Detection(b, 0, "cup", 0.9) for b in boxes), (100, 100))


def test_undeclared_detectors_get_agreement_times_the_reference_figure():
    stage = StageSpec("det", (_variant("det", "s", 320), _variant("det", "m", 416, _DECLARED),
                              _variant("det", "l", 608)), "m")
    payloads = [Payload(request_id="a"), Payload(request_id="b")]
    ref = [_dets((0, 0, 10, 10)), _dets((0, 0, 50, 50))]
    outputs = {"m": ref, "s": [_dets((0, 0, 10, 10)), _dets()], "l": ref}
    result = stage_accuracy(stage, payloads, outputs)
    assert result.reference == "m" and result.metric == "mAP@0.5"
    assert result.figures["m"] == _DECLARED
    assert result.figures["l"].value == pytest.approx(0.4) and result.figures["l"].kind is AccuracyKind.AGREEMENT
    assert result.figures["s"].value == pytest.approx(0.5 * 0.4)
    assert "reference m" in result.figures["s"].source
    assert StageAccuracy.from_metadata("det", result.to_metadata()) == result


def test_declared_classifiers_keep_their_figures_and_agreement_is_kept_as_a_check():
    a = Accuracy(0.7, AccuracyKind.DECLARED, "ImageNet top-1, table 2")
    b = Accuracy(0.8, AccuracyKind.DECLARED, "ImageNet top-1, table 3")
    stage = StageSpec("cls", (_variant("cls", "small", 224, a), _variant("cls", "big", 260, b)), "small")
    out = lambda *labels: Classifications(tuple(Classification(0, x, 0.9) for x in labels))  # noqa: E731
    outputs = {"small": [out("cat", "cup")], "big": [out("cat", "mug")]}
    result = stage_accuracy(stage, [Payload(request_id="x")], outputs)
    assert result.figures == {"small": a, "big": b}
    assert result.agreement == {"small": 0.5, "big": 1.0}


def test_captions_are_measured_against_the_eval_set():
    stage = StageSpec("llm", (_variant("llm", "tiny", None), _variant("llm", "small", None)), "tiny")
    payloads = [Payload(request_id="chelsea"), Payload(request_id="chelsea-mirrored"), Payload(request_id="x")]
    outputs = {"tiny": [Caption("A tabby cat with green eyes.", 8)] * 3,
               "small": [Caption("The photo shows a rocket.", 6)] * 3}
    result = stage_accuracy(stage, payloads, outputs)
    assert result.items == 2  # "x" has no reference caption
    assert result.figures["tiny"].kind is AccuracyKind.MEASURED
    assert result.figures["tiny"].value > result.figures["small"].value > 0


def test_a_variant_without_any_figure_is_a_spec_error_naming_it():
    stage = StageSpec("det", (_variant("det", "s", 320), _variant("det", "l", 608)), "s")
    with pytest.raises(SpecError, match=r"stages\.det\.variants\.s\.accuracy"):
        stage_accuracy(stage, [Payload()], {"s": [_dets((0, 0, 1, 1))], "l": [_dets((0, 0, 1, 1))]})


def test_output_kind_and_items_per_request():
    assert output_kind(_dets()) == "detections"
    assert output_kind(Caption("x", 1)) == "caption"
    assert items_per_request([Classifications((Classification(0, "a", 1.0),) * 3), Classifications(())]) == 2.0
