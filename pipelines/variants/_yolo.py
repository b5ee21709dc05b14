"""Pure YOLO pre/post-processing: letterbox geometry, decoding, NMS.

No OpenCV network here, only numpy (and ``cv2.resize`` for the letterbox),
so the box arithmetic is unit tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from varipipe.pipelines.variants.outputs import Box

__all__ = ["Letterbox", "letterbox", "letterbox_geometry", "fitted_size", "decode", "nms", "iou"]

# Darknet pads letterboxed images with 0.5 grey (image.c, letterbox_image).
PAD_VALUE = 127
# Columns of a YOLO output row: cx, cy, w, h (fractions of the network input),
# objectness, then one score per class (OpenCV already multiplies it by objectness).
_BOX_COLUMNS = 4
_CLASS_OFFSET = 5


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed on the square network input: scale, then offset."""

    size: int  # network input side, pixels
    scale: float  # network pixels per image pixel
    pad_x: int
    pad_y: int
    width: int  # original image width
    height: int

    def to_image(self, box: Box) -> Box:
        """A box in network-input pixels -> original-image pixels, clipped to the image."""
        x1, y1, x2, y2 = box
        xs = np.clip([(x1 - self.pad_x) / self.scale, (x2 - self.pad_x) / self.scale], 0, self.width)
        ys = np.clip([(y1 - self.pad_y) / self.scale, (y2 - self.pad_y) / self.scale], 0, self.height)
        return (float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1]))


def fitted_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The image's width and height once scaled to fit a size x size square, each 1..size.

    A side that would round to 0 (an image over 2 x size times longer than wide, e.g. 10000 x 1)
    is kept at 1 px: cv2.resize refuses a 0 side. Boxes on that axis are clipped to the image.
    """
    scale = size / max(width, height)
    return min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale)))


def letterbox_geometry(width: int, height: int, size: int) -> Letterbox:
    """Aspect-preserving fit of a width x height image into a size x size square, centred."""
    scale = size / max(width, height)
    new_w, new_h = fitted_size(width, height, size)
    return Letterbox(size, scale, (size - new_w) // 2, (size - new_h) // 2, width, height)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The image resized into a grey size x size canvas, and the geometry to undo it."""
    import cv2

    h, w = image.shape[:2]
    geo = letterbox_geometry(w, h, size)
    new_w, new_h = fitted_size(w, h, size)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if geo.scale < 1 else cv2.INTER_LINEAR)
    canvas[geo.pad_y:geo.pad_y + new_h, geo.pad_x:geo.pad_x + new_w] = resized
    return canvas, geo


def decode(rows: np.ndarray, size: int, score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLO rows -> (boxes x1y1x2y2 in network pixels, class ids, scores) above the threshold."""
    scores_all = rows[:, _CLASS_OFFSET:]
    class_ids = scores_all.argmax(axis=1)
    scores = scores_all[np.arange(len(rows)), class_ids]
    keep = scores >= score_threshold
    cx, cy, w, h = (rows[keep, i] * size for i in range(_BOX_COLUMNS))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, class_ids[keep], scores[keep]


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1y1x2y2 box with each of ``others``."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, class_ids: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by per-class greedy non-maximum suppression, highest score first."""
    order = list(np.argsort(-scores, kind="stable"))
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        if not order:
            break
        rest = np.array(order)
        same = class_ids[rest] == class_ids[best]
        overlap = iou(boxes[best], boxes[rest]) > iou_threshold
        order = [int(i) for i in rest[~(same & overlap)]]
    return kept
