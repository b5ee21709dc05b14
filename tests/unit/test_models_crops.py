"""Crop selection and preprocessing of the classifier (no model)."""

from __future__ import annotations

import numpy as np

from varipipe.pipelines.variants.classifier import preprocess, select_crops
from varipipe.pipelines.variants.outputs import Detection, Detections


def _dets(*items):
    return Detections(tuple(Detection(box, 0, label, score) for box, label, score in items), (100, 80))


def test_no_detector_output_means_the_whole_image():
    assert select_crops({}, 100, 80, max_crops=3) == [None]
    assert select_crops({"detector": _dets()}, 100, 80, max_crops=3) == [None]


def test_crops_are_the_best_detections_up_to_max_crops():
    dets = _dets(((0, 0, 20, 20), "a", 0.3), ((10, 10, 50, 50), "b", 0.9), ((30, 30, 90, 70), "c", 0.6))
    assert select_crops({"detector": dets}, 100, 80, max_crops=2) == [(10, 10, 50, 50), (30, 30, 90, 70)]


def test_tiny_boxes_are_skipped_and_boxes_are_clipped():
    dets = _dets(((0, 0, 3, 3), "tiny", 0.99), ((-5, -5, 120, 90), "big", 0.5))
    assert select_crops({"detector": dets}, 100, 80, max_crops=3) == [(0.0, 0.0, 100.0, 80.0)]


def test_only_tiny_boxes_fall_back_to_the_whole_image():
    dets = _dets(((0, 0, 3, 3), "tiny", 0.99))
    assert select_crops({"detector": dets}, 100, 80, max_crops=3) == [None]


def test_preprocess_gives_a_centre_square_in_pixel_range():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 140:160] = 255  # a bright band in the centre
    out = preprocess(img, 32)
    assert out.shape == (3, 32, 32)
    assert out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255
    assert out[:, :, 16].mean() > 200  # the centre survived the crop
