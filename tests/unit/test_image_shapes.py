"""Every image shape, from 1 x 1 to 10000 x 1 and 1 x 10000, through the ingress rule and
through every variant's pre-processing, in-process (no Ray, no model).

The ingress refuses shapes outside ``check_shape`` (422); the pre-processing is safe for
every shape anyway (``varipipe run`` on an array, the profiler, a variant called from
Python): a 1 px side must never become a 0 px resize (issue 16: a 10000 x 1 PNG was a
500 from the detector's letterbox), nor a thin image a huge one.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from varipipe.errors import BadInputError
from varipipe.pipelines.images import MAX_ASPECT, MIN_SIDE, SHAPE_STATUS, check_shape, decode_image
from varipipe.pipelines.variants import _ocr, _yolo, ocr
from varipipe.pipelines.variants.classifier import MIN_CROP_SIDE, crop, preprocess, select_crops
from varipipe.pipelines.variants.outputs import Detection, Detections

LONG_SIDE = 10_000  # the extremes: 10000 x 1 and 1 x 10000
# Hypothesis images stay under this many pixels (a 2 Mpx RGB array is 6 MB) so a run is fast;
# the thin extremes, which are what breaks resizes, are all below it.
MAX_TEST_PIXELS = 2_000_000
YOLO_SIZES = (320, 416, 608)  # the detector variants' inputs (pipelines/specs/vision-caption.yaml)
OCR_DET_SIDES = (640, 960)  # the PP-OCR detector variants' longest sides (pipelines/specs/doc-ocr.yaml)
# The finer of YOLOv3-tiny's two output grids has stride 16: the rule's reason for MAX_ASPECT.
YOLO_FINE_STRIDE = 16
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXTREMES = [(1, 1), (LONG_SIDE, 1), (1, LONG_SIDE), (LONG_SIDE, 2), (2, LONG_SIDE), (MIN_SIDE, MIN_SIDE * MAX_ASPECT),
            (MIN_SIDE * MAX_ASPECT, MIN_SIDE), (1217, 1)]


def _bounded_shapes() -> st.SearchStrategy[tuple[int, int]]:
    """(width, height), each 1..10000, at most MAX_TEST_PIXELS pixels; thin shapes are common."""
    def height_for(w: int) -> st.SearchStrategy[tuple[int, int]]:
        top = max(1, min(LONG_SIDE, MAX_TEST_PIXELS // w))
        return st.tuples(st.just(w), st.integers(1, 3) | st.integers(1, top))

    wide = st.integers(1, LONG_SIDE).flatmap(height_for)
    return wide | wide.map(lambda wh: (wh[1], wh[0]))


shapes = _bounded_shapes()


def _image(width: int, height: int) -> np.ndarray:
    """A cheap, non-uniform HxWx3 uint8 image (a diagonal pattern)."""
    y, x = np.indices((height, width), dtype=np.uint32)
    base = ((x * 7 + y * 13) % 256).astype(np.uint8)
    return np.stack([base, base[::-1] if height > 1 else base, 255 - base], axis=-1)


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


# ---- the ingress rule -------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(MIN_SIDE, MIN_SIDE), (MIN_SIDE * MAX_ASPECT, MIN_SIDE),
                                          (MIN_SIDE, MIN_SIDE * MAX_ASPECT), (640, 480), (4000, 200)])
def test_shapes_inside_the_rule_decode(width, height):
    assert decode_image(_png(width, height)).shape == (height, width, 3)


@pytest.mark.parametrize("width,height,words", [
    (LONG_SIDE, 1, "too small"), (1, LONG_SIDE, "too small"), (1, 1, "too small"), (MIN_SIDE - 1, 100, "too small"),
    (MIN_SIDE * MAX_ASPECT + 1, MIN_SIDE, "aspect ratio"), (LONG_SIDE, 100, "aspect ratio 100.0:1"),
])
def test_shapes_outside_the_rule_are_a_422_that_says_why(width, height, words):
    with pytest.raises(BadInputError) as e:
        decode_image(_png(width, height))
    assert e.value.status == SHAPE_STATUS and words in str(e.value) and f"{width}x{height}" in str(e.value)


@SETTINGS
@given(shapes)
@example((LONG_SIDE, 1))
@example((1, LONG_SIDE))
def test_the_rule_accepts_exactly_its_statement(shape):
    w, h = shape
    inside = min(w, h) >= MIN_SIDE and max(w, h) <= MAX_ASPECT * min(w, h)
    try:
        check_shape(w, h)
        accepted = True
    except BadInputError as e:
        assert e.status == SHAPE_STATUS
        accepted = False
    assert accepted == inside


@SETTINGS
@given(shapes)
def test_every_accepted_shape_leaves_the_detector_a_fine_grid_cell(shape):
    """The reason stated for MAX_ASPECT: at the smallest input the short side keeps 16 px."""
    w, h = shape
    try:
        check_shape(w, h)
    except BadInputError:
        return
    assert min(_yolo.fitted_size(w, h, min(YOLO_SIZES))) >= YOLO_FINE_STRIDE


# ---- detector: letterbox and the network blob ---------------------------------------


@SETTINGS
@given(shapes, st.sampled_from(YOLO_SIZES))
@example((LONG_SIDE, 1), 320)
@example((1, LONG_SIDE), 608)
@example((1, 1), 416)
def test_letterbox_places_any_shape_on_the_square(shape, size):
    import cv2

    w, h = shape
    canvas, geo = _yolo.letterbox(_image(w, h), size)
    new_w, new_h = _yolo.fitted_size(w, h, size)
    assert canvas.shape == (size, size, 3) and 1 <= new_w <= size and 1 <= new_h <= size
    assert 0 <= geo.pad_x and geo.pad_x + new_w <= size and 0 <= geo.pad_y and geo.pad_y + new_h <= size
    blob = cv2.dnn.blobFromImages([canvas], 1 / 255.0, (size, size), swapRB=False, crop=False)
    assert blob.shape == (1, 3, size, size)
    # Any network box, the whole square included, maps back inside the image.
    x1, y1, x2, y2 = geo.to_image((0.0, 0.0, float(size), float(size)))
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h


# ---- classifier: crops and the ImageNet transform -----------------------------------

coords = st.floats(-2.0, 2.0) | st.sampled_from([0.0, 1.0, -0.0])  # fractions of the side


@SETTINGS
@given(shapes, st.lists(st.tuples(coords, coords, coords, coords, st.floats(0, 1)), max_size=6),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1.5), st.floats(0, 1.5)), max_size=3))
@example((LONG_SIDE, 1), [(0.0, 0.0, 1.0, 1.0, 0.9)], [(0.0, 0.0, 0.0001, 1.0)])
@example((1, LONG_SIDE), [(0.5, 0.0, 0.5, 1.0, 0.9)], [(1.0, 1.0, 0.0, 0.0)])
def test_classifier_crops_and_preprocess_any_shape(shape, boxes, px_boxes):
    w, h = shape
    image = _image(w, h)
    dets = Detections(tuple(Detection((fx1 * w, fy1 * h, fx2 * w, fy2 * h), 0, "x", s)
                            for fx1, fy1, fx2, fy2, s in boxes), (w, h))
    chosen = select_crops({"detector": dets}, w, h, max_crops=3)
    assert chosen and len(chosen) <= 3
    for box in chosen:
        if box is not None:  # inside the image and big enough to classify
            assert 0 <= box[0] and box[2] <= w and 0 <= box[1] and box[3] <= h
            assert box[2] - box[0] >= MIN_CROP_SIDE and box[3] - box[1] >= MIN_CROP_SIDE
    # Boxes select_crops would drop (0-1 px wide, at or past the border) still crop to >= 1 px.
    raw = [(fx * w, fy * h, fx * w + dw, fy * h + dh) for fx, fy, dw, dh in px_boxes]
    for box in [*chosen, *raw]:
        pixels = crop(image, box)
        assert pixels.shape[0] >= 1 and pixels.shape[1] >= 1
        out = preprocess(pixels, 224)
        assert out.shape == (3, 224, 224) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("shape", EXTREMES)
def test_classifier_preprocess_of_a_thin_image_is_the_centre_square(shape):
    w, h = shape
    image = _image(w, h)
    out = preprocess(image, 224)
    side = max(1, round(min(w, h) * 0.875))
    centre = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    # A uniform-per-row/column source has the centre's value range: no pixel from elsewhere.
    assert out.min() >= centre.min() and out.max() <= centre.max()


# ---- OCR: detector input, DB boxes, line crops, classifier and recogniser inputs -----


@SETTINGS
@given(shapes, st.sampled_from(OCR_DET_SIDES))
@example((LONG_SIDE, 1), 640)
@example((1, LONG_SIDE), 960)
@example((1, 1), 960)
def test_ocr_detector_input_for_any_shape(shape, side):
    w, h = shape
    x = _ocr.det_input(_image(w, h)[:, :, ::-1].copy(), side)
    _, _, rh, rw = x.shape
    assert rh % _ocr.NET_STRIDE == 0 and rw % _ocr.NET_STRIDE == 0
    assert _ocr.NET_STRIDE <= rh and _ocr.NET_STRIDE <= rw
    assert max(rh, rw) <= max(side, _ocr.NET_STRIDE) + _ocr.NET_STRIDE // 2  # rounded to the stride
    assert np.isfinite(x).all()


@SETTINGS
@given(shapes, st.sampled_from(OCR_DET_SIDES), st.integers(0, 2**32 - 1))
@example((LONG_SIDE, 1), 640, 0)
@example((1, LONG_SIDE), 960, 1)
def test_ocr_boxes_crops_and_line_inputs_for_any_shape(shape, side, seed):
    """A probability map with text-like blobs at the detector's resolution, through the
    whole chain: DB boxes, line crops, angle-classifier input, recogniser input."""
    w, h = shape
    bgr = _image(w, h)[:, :, ::-1].copy()
    _, _, ph, pw = _ocr.det_input(bgr, side).shape
    rng = np.random.default_rng(seed)
    prob = np.zeros((ph, pw), np.float32)
    for _ in range(3):
        y0, x0 = rng.integers(0, ph), rng.integers(0, pw)
        prob[y0:y0 + rng.integers(1, 40), x0:x0 + rng.integers(1, 400)] = rng.uniform(0.5, 1.0)
    boxes = _ocr.reading_order(_ocr.db_boxes(prob, w, h))
    quads = [q for q, _ in boxes] + [np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)]
    for quad in quads:
        assert (quad[:, 0] >= 0).all() and (quad[:, 0] <= w - 1).all() and (quad[:, 1] <= h - 1).all()
        line = _ocr.crop_line(bgr, quad)
        assert line.shape[0] >= 1 and line.shape[1] >= 1 and line.shape[0] * line.shape[1] <= max(w, h) ** 2
        for flipped in (line, np.ascontiguousarray(line[::-1, ::-1])):  # the recogniser turns 180-degree lines
            assert _ocr.line_input(flipped, ocr.CLS_WIDTH).shape == (3, _ocr.LINE_HEIGHT, ocr.CLS_WIDTH)
            width = ocr._padded_width(flipped)
            assert ocr.REC_WIDTH <= width <= ocr.MAX_LINE_WIDTH and width % ocr.WIDTH_STEP == 0
            x = _ocr.line_input(flipped, width)
            assert x.shape == (3, _ocr.LINE_HEIGHT, width) and np.isfinite(x).all()


quad_points = st.tuples(st.floats(-1e6, 1e6) | st.just(float("nan")), st.floats(-1e6, 1e6))


@SETTINGS
@given(shapes, st.lists(quad_points, min_size=4, max_size=4))
@example((LONG_SIDE, 1), [(0, 0), (0, 0), (0, 0), (0, 0)])
@example((1, LONG_SIDE), [(-1e6, -1e6), (1e6, -1e6), (1e6, 1e6), (-1e6, 1e6)])
@example((50, 40), [(0, 0), (10, 0), (20, 0), (30, 0)])  # collinear
def test_ocr_line_crop_of_any_quad_stays_inside_the_image(shape, points):
    """A quad from any detector (not only db_boxes, which clips): degenerate, outside, NaN."""
    w, h = shape
    line = _ocr.crop_line(_image(w, h), np.array(points, np.float32))
    assert 1 <= line.shape[0] and 1 <= line.shape[1] and max(line.shape[:2]) <= w + h
    assert ocr._padded_width(line) <= ocr.MAX_LINE_WIDTH
