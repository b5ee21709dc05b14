"""Two-scale test-time inference: the shrunk copy's geometry and the merge of both views (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from varipipe.pipelines.variants import _multiscale, _yolo


@given(st.integers(8, 2000), st.integers(8, 2000), st.sampled_from([320, 416, 608]))
def test_the_shrunk_copy_maps_back_onto_the_whole_image(width, height, size):
    canvas, geo = _multiscale.shrunk_letterbox(np.zeros((height, width, 3), np.uint8), size, _multiscale.SHRINK)
    assert canvas.shape == (size, size, 3)
    assert geo.scale == pytest.approx(_multiscale.SHRINK * size / max(width, height))
    net_box = (geo.pad_x, geo.pad_y, geo.pad_x + width * geo.scale, geo.pad_y + height * geo.scale)
    assert geo.to_image(net_box) == pytest.approx((0, 0, width, height), abs=1e-6)


def test_the_shrunk_copy_sits_in_the_middle_of_grey():
    img = np.zeros((300, 450, 3), np.uint8)
    canvas, geo = _multiscale.shrunk_letterbox(img, 416, 0.5)
    ys, xs = np.nonzero(canvas[:, :, 0] != _yolo.PAD_VALUE)
    assert (xs.min(), xs.max() + 1) == (geo.pad_x, geo.pad_x + 208)  # 450 px -> 416/2 px wide
    assert (ys.min(), ys.max() + 1) == (geo.pad_y, geo.pad_y + 139)  # 300 * 208 / 450, rounded
    assert abs((xs.min() + xs.max() + 1) / 2 - 208) <= 1 and abs((ys.min() + ys.max() + 1) / 2 - 208) <= 1


@pytest.mark.parametrize("shape", [(8, 160), (160, 8), (8, 8), (1, 1)])
def test_extreme_shapes_keep_at_least_one_pixel(shape):
    canvas, geo = _multiscale.shrunk_letterbox(np.full((*shape, 3), 9, np.uint8), 320, 0.5)
    assert (canvas == 9).any()
    assert geo.to_image((0, 0, 320, 320)) == (0.0, 0.0, float(shape[1]), float(shape[0]))


def test_views_are_the_letterbox_then_the_shrunk_copy():
    img = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    (single,) = _multiscale.views(img, 320, multiscale=False)
    letterboxed, geo = _yolo.letterbox(img, 320)
    assert np.array_equal(single[0], letterboxed) and single[1] == geo
    both = _multiscale.views(img, 320, multiscale=True)
    assert len(both) == 2 and np.array_equal(both[0][0], letterboxed)
    assert both[1][1].scale == pytest.approx(geo.scale * _multiscale.SHRINK)


def _decoded(boxes, classes, scores):
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(classes), np.array(scores, np.float32)


def test_an_object_seen_in_both_views_keeps_its_best_box():
    image = _yolo.Letterbox(size=100, scale=1.0, pad_x=0, pad_y=0, width=100, height=100)
    shrunk = _yolo.Letterbox(size=100, scale=0.5, pad_x=25, pad_y=25, width=100, height=100)
    full = _decoded([[10, 10, 90, 90], [0, 0, 20, 20]], [15, 41], [0.4, 0.3])
    half = _decoded([[30, 30, 70, 70]], [15], [0.9])  # = (10, 10, 90, 90) in the image
    kept = _multiscale.merge([full, half], [image, shrunk], iou_threshold=0.45)
    assert [(c, round(s, 2)) for _, c, s in kept] == [(15, 0.9), (41, 0.3)]
    assert kept[0][0] == pytest.approx((10, 10, 90, 90))


def test_merge_keeps_different_classes_and_handles_empty_views():
    geo = _yolo.Letterbox(size=100, scale=1.0, pad_x=0, pad_y=0, width=100, height=100)
    a = _decoded([[10, 10, 90, 90]], [15], [0.5])
    b = _decoded([[10, 10, 90, 90]], [16], [0.6])
    empty = _decoded([], [], [])
    assert [c for _, c, _ in _multiscale.merge([a, b], [geo, geo], 0.45)] == [16, 15]
    assert _multiscale.merge([empty, empty], [geo, geo], 0.45) == []


def test_both_paths_build_the_multiscale_rung():
    from varipipe.pipelines.variants import detector
    from varipipe.records import VariantSpec

    spec = VariantSpec("detector", "yolov4-tiny-416-ms", "opencv_dnn", "varipipe.pipelines.variants.detector:make",
                       input_size=416, params={"model": "yolov4-tiny", "multiscale": True})
    gpu = detector.make(spec, device="gpu")  # the torch path runs both scales too (not loaded: no GPU needed)
    assert type(gpu).__name__ == "TorchDetector" and gpu.views_per_image() == 2
    assert detector.make(spec).multiscale  # the CPU path


@pytest.mark.parametrize("width, height", [(640, 480), (480, 640), (1, 1), (10_000, 1), (3, 5)])
def test_the_torch_shrunk_copy_has_the_opencv_paths_geometry(width, height):
    import torch

    from varipipe.pipelines.variants import detector_torch as dt

    canvas, geo = _multiscale.shrunk_letterbox(np.zeros((height, width, 3), np.uint8), 416, _multiscale.SHRINK)
    t_canvas, placed = dt.shrunk_letterbox(torch.zeros((height, width, 3), dtype=torch.uint8), 416, 0.5)
    assert (placed.scale, placed.offset_x, placed.offset_y) == (geo.scale, geo.pad_x, geo.pad_y)
    assert tuple(t_canvas.shape) == (3, 416, 416)
    # the image (black) sits where the OpenCV path puts it, grey everywhere else
    assert ((t_canvas[0] == 0).numpy() == (canvas[..., 0] == 0)).all()
