"""YOLO box arithmetic: letterbox geometry, decoding, NMS (pure numpy, no network)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from varipipe.pipelines.variants import _yolo


def test_letterbox_geometry_centres_the_long_side():
    geo = _yolo.letterbox_geometry(width=800, height=400, size=416)
    assert geo.scale == pytest.approx(416 / 800)
    assert geo.pad_x == 0
    assert geo.pad_y == (416 - 208) // 2


@given(st.integers(16, 2000), st.integers(16, 2000), st.sampled_from([320, 416, 608]))
def test_network_box_of_the_whole_image_maps_back_to_the_image(width, height, size):
    geo = _yolo.letterbox_geometry(width, height, size)
    net_box = (geo.pad_x, geo.pad_y, geo.pad_x + width * geo.scale, geo.pad_y + height * geo.scale)
    assert geo.to_image(net_box) == pytest.approx((0, 0, width, height), abs=1e-6)


def test_boxes_in_the_padding_are_clipped_to_the_image():
    geo = _yolo.letterbox_geometry(width=200, height=100, size=100)
    assert geo.to_image((-10, 0, 120, 100)) == (0.0, 0.0, 200.0, 100.0)


def test_letterbox_places_the_image_on_grey():
    img = np.zeros((50, 100, 3), np.uint8)
    canvas, geo = _yolo.letterbox(img, 64)
    assert canvas.shape == (64, 64, 3)
    assert canvas[0, 0, 0] == _yolo.PAD_VALUE
    assert canvas[32, 32, 0] == 0
    assert geo.pad_y == 16


def _row(cx, cy, w, h, class_id, score, n_classes=3):
    row = np.zeros(5 + n_classes, np.float32)
    row[:4] = (cx, cy, w, h)
    row[4] = score
    row[5 + class_id] = score
    return row


def test_decode_keeps_rows_above_threshold_in_network_pixels():
    rows = np.stack([_row(0.5, 0.5, 0.2, 0.4, 1, 0.9), _row(0.1, 0.1, 0.1, 0.1, 2, 0.1)])
    boxes, ids, scores = _yolo.decode(rows, size=100, score_threshold=0.25)
    assert boxes[0].tolist() == pytest.approx([40, 30, 60, 70])
    assert len(boxes) == 1
    assert ids.tolist() == [1]
    assert scores.tolist() == pytest.approx([0.9])


def test_nms_suppresses_overlaps_of_the_same_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    ids = np.array([0, 0, 1, 0])
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    kept = _yolo.nms(boxes, ids, scores, iou_threshold=0.45)
    assert kept == [1, 2, 3]  # box 0 overlaps the better box 1 of its class


def test_iou_of_identical_and_disjoint_boxes():
    box = np.array([0, 0, 10, 10], float)
    others = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10]], float)
    assert _yolo.iou(box, others).tolist() == pytest.approx([1.0, 0.0, 1 / 3])
