"""vision-caption's evaluation set on a synthetic labelled set: inputs per stage, scores, figures, sources."""

from __future__ import annotations

import pytest

from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants.classifier import select_crops
from varipipe.pipelines.variants.outputs import (
    Caption,
    Classification,
    Classifications,
    Detection,
    Detections,
)
from varipipe.profiler.detection_map import Scored, Truth, mean_average_precision
from varipipe.profiler.evaluate import StageAccuracy, accuracy_payloads, stage_accuracy
from varipipe.profiler.label_mapping import load_label_mapping
from varipipe.profiler.labelled import load_labelled_set
from varipipe.profiler.vision_eval import CLASSIFIER, DETECTOR, LLM, VisionCaptionEvaluation
from varipipe.records import Accuracy, AccuracyKind, StageSpec, VariantSpec
from varipipe.spec import find_spec

from .evalset_fixture import write_set

TABBY, GOLDEN, MUG, SPORTS_CAR = 281, 207, 504, 817  # ImageNet indices mapped to cat, dog, cup, car


@pytest.fixture
def ev(tmp_path):
    return VisionCaptionEvaluation("test", labelled=load_labelled_set(write_set(tmp_path)))


def _cls(index):
    return Classifications((Classification(index, "x", 0.9),))


def test_payloads_are_the_split_photos(ev):
    ps = ev.payloads()
    assert [p.request_id for p in ps] == ["kitchen-a", "street-b", "pets-c"]
    assert ps[1].image.shape == (60, 80, 3)
    assert VisionCaptionEvaluation("dev", labelled=ev.labelled).payloads()[0].request_id == "park-d"


def test_classifier_inputs_are_the_covered_non_crowd_ground_truth_boxes(ev):
    crops = accuracy_payloads(ev, CLASSIFIER, ev.payloads())
    # kitchen: cup + dining table; street: car (person not covered, crowd left out); pets: cat + dog
    assert [(p.request_id, ev.crop_label(p.request_id)) for p in crops] == [
        ("kitchen-a#0", "cup"), ("kitchen-a#1", "dining table"), ("street-b#2", "car"),
        ("pets-c#0", "cat"), ("pets-c#1", "dog")]
    # the classifier's own crop selection picks exactly the ground-truth box
    p = crops[3]
    assert select_crops(p.outputs, p.image.shape[1], p.image.shape[0], 3) == [(2.0, 2.0, 40.0, 40.0)]


def test_a_crop_is_right_when_the_imagenet_class_maps_to_the_boxs_coco_class(ev):
    crops = accuracy_payloads(ev, CLASSIFIER, ev.payloads())
    by_id = {p.request_id: p for p in crops}
    assert ev.score(CLASSIFIER, by_id["pets-c#0"], _cls(TABBY)) == 1.0
    assert ev.score(CLASSIFIER, by_id["pets-c#1"], _cls(TABBY)) == 0.0  # a dog called a tabby
    assert ev.score(CLASSIFIER, by_id["pets-c#1"], _cls(GOLDEN)) == 1.0
    assert ev.score(CLASSIFIER, Payload(request_id="elsewhere"), _cls(TABBY)) is None


def test_the_detector_figure_is_the_sets_map_not_a_mean_of_image_scores(ev):
    photos = ev.payloads()
    outs = [Detections((Detection((4, 4, 30, 30), 41, "cup", 0.9), Detection((0, 20, 64, 48), 60, "diningtable", 0.8)),
                       (64, 48)),
            Detections((Detection((10, 5, 30, 55), 0, "person", 0.7), Detection((41, 1, 79, 39), 0, "person", 0.95)),
                       (80, 60)),
            Detections((Detection((2, 2, 40, 40), 15, "cat", 0.6),), (60, 60))]
    score = ev.aggregate(DETECTOR, photos, outs)
    expected = mean_average_precision(
        [[Scored("cup", (4, 4, 30, 30), 0.9), Scored("dining table", (0, 20, 64, 48), 0.8)],
         [Scored("person", (10, 5, 30, 55), 0.7), Scored("person", (41, 1, 79, 39), 0.95)],
         [Scored("cat", (2, 2, 40, 40), 0.6)]],
        [[Truth(b.label, b.box, b.crowd) for b in ev.items[i].boxes] for i in ("kitchen-a", "street-b", "pets-c")])
    assert score.value == pytest.approx(expected.value) and score.items == 3
    # cup, dining table, person, cat found; car and dog missed; the crowd detection is ignored
    assert score.breakdown == pytest.approx({"car": 0.0, "cat": 1.0, "cup": 1.0, "dining table": 1.0, "dog": 0.0,
                                             "person": 1.0})
    assert score.value == pytest.approx(4 / 6)


def _variant(stage, name, accuracy=None):
    return VariantSpec(stage=stage, name=name, runtime="x", factory="m:f", accuracy=accuracy)


def test_stage_figures_are_measured_with_declared_ones_beside_and_no_agreement(ev):
    declared = Accuracy(0.751, AccuracyKind.DECLARED, "ImageNet top-1, lite README")
    stage = StageSpec(CLASSIFIER, (_variant(CLASSIFIER, "small"), _variant(CLASSIFIER, "big", declared)), "small")
    crops = accuracy_payloads(ev, CLASSIFIER, ev.payloads())
    right = {"kitchen-a#0": MUG, "kitchen-a#1": 0, "street-b#2": SPORTS_CAR, "pets-c#0": TABBY, "pets-c#1": GOLDEN}
    outputs = {"small": [_cls(TABBY) for _ in crops], "big": [_cls(right[p.request_id]) for p in crops]}
    result = stage_accuracy(stage, crops, outputs, ev)
    assert result.measured == {"small": pytest.approx(1 / 5), "big": pytest.approx(4 / 5)}
    assert {f.kind for f in result.figures.values()} == {AccuracyKind.MEASURED}
    assert result.declared == {"big": declared} and result.agreement == {} and result.reference is None
    assert result.breakdown["big"] == {"car": 1.0, "cat": 1.0, "cup": 1.0, "dining table": 0.0, "dog": 1.0}
    assert "test split of profiler/evalset" in result.figures["big"].source
    assert "62 of 80 COCO classes" in result.figures["big"].source
    assert StageAccuracy.from_metadata(CLASSIFIER, result.to_metadata()) == result


def test_without_an_llm_task_the_set_does_not_score_the_llm_and_says_so(ev):
    assert ev.metric(LLM) == "" and accuracy_payloads(ev, LLM, ev.payloads())[0].request_id == "kitchen-a"
    stage = StageSpec(LLM, (_variant(LLM, "tiny"),), "tiny")
    with pytest.raises(Exception, match="does not score this stage"):
        stage_accuracy(stage, ev.payloads(), {"tiny": [Caption("The photo shows a cup.", 5)] * 3}, ev)


class _CountTask:
    """A stand-in LLM task: one question per photo, 'how many labelled objects'; exact match."""

    metric = "exact match (test task)"

    def payloads(self, item, upstream, image):
        return [Payload(request_id=f"{item.id}?count", image=image, text="How many objects?",
                        outputs=dict(upstream))]

    def score(self, item, payload, output):
        return float(output.text == str(len(upstream_items(payload))))


def upstream_items(payload):
    return payload.outputs[DETECTOR].items


def test_an_llm_task_gets_ground_truth_labels_upstream_and_scores_the_answers(tmp_path):
    ev = VisionCaptionEvaluation("test", labelled=load_labelled_set(write_set(tmp_path)), llm_task=_CountTask())
    qs = accuracy_payloads(ev, LLM, ev.payloads())
    assert [q.request_id for q in qs] == ["kitchen-a?count", "street-b?count", "pets-c?count"]
    street = qs[1].outputs[DETECTOR]
    assert [d.label for d in street.items] == ["person", "person", "car"] and {d.score for d in street.items} == {1.0}
    stage = StageSpec(LLM, (_variant(LLM, "t"),), "t")
    result = stage_accuracy(stage, qs, {"t": [Caption("2", 1), Caption("3", 1), Caption("9", 1)]}, ev)
    assert result.measured["t"] == pytest.approx(2 / 3) and result.metric == "exact match (test task)"


def test_the_flagship_specs_point_at_this_set():
    for name in ("vision-caption", "vision-caption-ci"):
        assert find_spec(name).evaluation == "varipipe.profiler.vision_eval:make"
    assert load_label_mapping().covered  # the shipped mapping loads as package data
