import pytest

from varipipe.profiler import accuracy as acc
from varipipe.profiler.accuracy import Det
from varipipe.records import Accuracy, AccuracyKind, VariantSpec


def test_iou():
    assert acc.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert acc.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert acc.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_identical_detections_agree_fully():
    ref = [[Det((0, 0, 10, 10), "cat", 0.9), Det((20, 20, 40, 40), "cup", 0.8)], [Det((5, 5, 9, 9), "cat", 0.7)]]
    assert acc.detection_agreement(ref, ref) == pytest.approx(1.0)


def test_missed_and_shifted_boxes_lower_the_score():
    ref = [[Det((0, 0, 10, 10), "cat", 0.9)], [Det((0, 0, 10, 10), "cat", 0.9)]]
    pred = [[Det((0, 0, 10, 10), "cat", 0.9)], [Det((6, 6, 16, 16), "cat", 0.95)]]  # 2nd: IoU < 0.5
    # ranked: the wrong box (0.95) first, then the right one: AP = 0.5 recall at precision 0.5
    assert acc.detection_agreement(pred, ref) == pytest.approx(0.25)
    assert acc.detection_agreement([[], []], ref) == 0.0


def test_wrong_class_does_not_match_and_empty_reference_gives_none():
    ref = [[Det((0, 0, 10, 10), "cat", 0.9)]]
    assert acc.detection_agreement([[Det((0, 0, 10, 10), "dog", 0.9)]], ref) == 0.0
    assert acc.detection_agreement([[Det((0, 0, 10, 10), "dog", 0.9)]], [[]]) is None
    with pytest.raises(ValueError):
        acc.detection_agreement([[]], [[], []])


def test_average_precision_of_a_perfect_ranking_is_one():
    assert acc.average_precision([0.5, 1.0], [1.0, 1.0]) == pytest.approx(1.0)


def test_top1_agreement():
    assert acc.top1_agreement(["a", "b", "c", "d"], ["a", "b", "x", "y"]) == 0.5
    assert acc.top1_agreement([], []) is None
    with pytest.raises(ValueError):
        acc.top1_agreement(["a"], [])


def test_caption_f1_counts_content_words():
    refs = ["A tabby cat with green eyes."]
    assert acc.caption_f1("The photo shows a tabby cat with green eyes.", refs) == pytest.approx(1.0)
    assert acc.caption_f1("The photo shows a rocket.", refs) == 0.0
    assert 0 < acc.caption_f1("The photo shows cats.", refs) < 1  # stemmed: cats -> cat
    assert acc.caption_words("The photo shows a cup") == {"cup"}


def _v(name, size, value=None):
    a = Accuracy(value, AccuracyKind.DECLARED, "paper table 1") if value else None
    return VariantSpec(stage="det", name=name, runtime="x", factory="m:f", input_size=size, accuracy=a)


def test_reference_is_the_largest_variant_with_a_declared_figure():
    vs = [_v("s", 320), _v("m", 416, 0.33), _v("l", 608)]
    assert acc.choose_reference(vs).name == "m"
    assert acc.choose_reference([_v("s", 320)]) is None


def test_agreement_figure_is_scaled_by_the_reference_and_names_it():
    ref = _v("m", 416, 0.4)
    a = acc.agreement_accuracy(0.5, ref, "mAP@0.5", 14)
    assert a.kind is AccuracyKind.AGREEMENT and a.value == pytest.approx(0.2)
    assert "reference m" in a.source and "paper table 1" in a.source and "14" in a.source
    assert acc.agreement_accuracy(0.0, ref, "top-1", 3).value == acc.MIN_ACCURACY
