"""Image geometry of the PP-OCR models: resize, DB box decoding, line crops, reading order.

Re-implemented after RapidOCR (rapidocr_onnxruntime 1.4.4, Apache-2.0, itself
after PaddleOCR): the same constants and steps, without importing the package
(its ``__init__`` pulls in its own CLI and OpenCV build). Pure numpy/OpenCV
functions; the variants in ``ocr.py`` own the onnxruntime sessions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["det_input", "db_boxes", "reading_order", "crop_line", "line_input", "LINE_HEIGHT"]

# DB post-processing defaults of RapidOCR's config.yaml (Det section).
DB_THRESH = 0.3  # pixel probability that counts as text
DB_BOX_THRESH = 0.5  # mean probability inside a box to keep it
DB_UNCLIP_RATIO = 1.6  # DB shrinks text regions in training; grow them back by this much
DB_MAX_CANDIDATES = 1000
DB_MIN_SIZE = 3  # pixels: shorter side below this is noise
NET_STRIDE = 32  # the detector's input sides must be multiples of this
LINE_HEIGHT = 48  # the v2 classifier's and the recognisers' input height (rec_img_shape [3, 48, 320])
SAME_LINE_PX = 10  # boxes whose tops differ by less are on one line (RapidOCR's sorted_boxes)


def _normalise(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 3xHxW in [-1, 1] (mean 0.5, std 0.5 after /255)."""
    return ((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def det_input(bgr: np.ndarray, limit_side: int) -> np.ndarray:
    """The detector's 1x3xHxW input: longest side cut to ``limit_side``, both sides a multiple of 32."""
    import cv2

    h, w = bgr.shape[:2]
    ratio = min(1.0, limit_side / max(h, w))
    rh = max(NET_STRIDE, int(round(h * ratio / NET_STRIDE)) * NET_STRIDE)
    rw = max(NET_STRIDE, int(round(w * ratio / NET_STRIDE)) * NET_STRIDE)
    return _normalise(cv2.resize(bgr, (rw, rh)))[np.newaxis]


def _mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    rect = cv2.minAreaRect(contour)
    pts = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = sorted(pts[:2], key=lambda p: p[1])
    right = sorted(pts[2:], key=lambda p: p[1])
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32), min(rect[1])


def _box_score(prob: np.ndarray, box: np.ndarray) -> float:
    import cv2

    h, w = prob.shape
    x0, x1 = (int(np.clip(f(box[:, 0]), 0, w - 1)) for f in (lambda a: np.floor(a.min()), lambda a: np.ceil(a.max())))
    y0, y1 = (int(np.clip(f(box[:, 1]), 0, h - 1)) for f in (lambda a: np.floor(a.min()), lambda a: np.ceil(a.max())))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    cv2.fillPoly(mask, (box - [x0, y0]).reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0])


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    import cv2
    import pyclipper

    area, length = abs(cv2.contourArea(box)), cv2.arcLength(box, True)
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(area * ratio / max(length, 1e-6))
    return np.array(grown[0] if grown else box, dtype=np.float32).reshape(-1, 1, 2)


def db_boxes(prob: np.ndarray, width: int, height: int, box_thresh: float = DB_BOX_THRESH,
             unclip_ratio: float = DB_UNCLIP_RATIO) -> list[tuple[np.ndarray, float]]:
    """(4x2 quad in image pixels, score) per text region of a DB probability map (HxW)."""
    import cv2

    mask = cv2.dilate((prob > DB_THRESH).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    ph, pw = prob.shape
    out = []
    for contour in contours[:DB_MAX_CANDIDATES]:
        box, side = _mini_box(contour)
        if side < DB_MIN_SIZE:
            continue
        score = _box_score(prob, box)
        if score < box_thresh:
            continue
        box, side = _mini_box(_unclip(box, unclip_ratio))
        if side < DB_MIN_SIZE + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / pw * width), 0, width - 1)
        box[:, 1] = np.clip(np.round(box[:, 1] / ph * height), 0, height - 1)
        if np.linalg.norm(box[0] - box[1]) > DB_MIN_SIZE and np.linalg.norm(box[0] - box[3]) > DB_MIN_SIZE:
            out.append((box, score))
    return out


def reading_order(boxes: Sequence[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
    """Top to bottom; boxes on the same line (tops within SAME_LINE_PX) left to right."""
    ordered = sorted(boxes, key=lambda b: (float(b[0][0][1]), float(b[0][0][0])))
    for i in range(len(ordered) - 1):  # RapidOCR's one-pass bubble within a line
        for j in range(i, -1, -1):
            a, b = ordered[j], ordered[j + 1]
            if abs(b[0][0][1] - a[0][0][1]) < SAME_LINE_PX and b[0][0][0] < a[0][0][0]:
                ordered[j], ordered[j + 1] = b, a
            else:
                break
    return ordered


def crop_line(bgr: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The quad's pixels warped upright into a rectangle; tall crops turned to lie flat.

    The quad is clipped to the image first (db_boxes already does so), so a box from any
    detector gives a crop of 1 px to the image's size, never an unbounded one.
    """
    import cv2

    h_img, w_img = bgr.shape[:2]
    quad = np.nan_to_num(np.asarray(quad, dtype=np.float32))
    quad = np.clip(quad, 0, [w_img - 1, h_img - 1]).astype(np.float32)
    w = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    h = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    w, h = max(w, 1), max(h, 1)
    target = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(quad, target)
    crop = cv2.warpPerspective(bgr, m, (w, h), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(crop) if h / w >= 1.5 else crop


def line_input(crop: np.ndarray, width: int) -> np.ndarray:
    """3 x LINE_HEIGHT x ``width`` float32: aspect kept, right side zero-padded."""
    import cv2

    h, w = crop.shape[:2]
    rw = min(width, int(math.ceil(LINE_HEIGHT * w / max(h, 1))))
    out = np.zeros((3, LINE_HEIGHT, width), dtype=np.float32)
    out[:, :, :rw] = _normalise(cv2.resize(crop, (max(rw, 1), LINE_HEIGHT)))
    return out
