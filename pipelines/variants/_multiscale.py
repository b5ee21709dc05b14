"""Two-scale test-time inference for the darknet detectors (spec param ``multiscale: true``).

YOLOv3/v4-tiny's largest anchors (about 344 x 319 px at the network input) and coarse
grid miss objects that fill the frame, which close-up photos are. The costlier rung runs
each image twice in the same forward batch: the usual letterbox, and a shrunk copy, the
image at ``SHRINK`` of its fitted size centred on a grey canvas of the same square, where
a frame-filling object is an ordinary-sized one. The boxes of both views are mapped back
to original-image pixels and merged by per-class NMS, so an object seen in both keeps
its best box. The batch doubles, so the cost is measured by the profiler like any other
variant's.

Pure numpy (and ``cv2.resize``), no network: unit tested on its own.
"""

from __future__ import annotations

import numpy as np

from varipipe.pipelines.variants import _yolo
from varipipe.pipelines.variants.outputs import Box

__all__ = ["SHRINK", "shrunk_fit", "shrunk_letterbox", "views", "merge"]

# The shrunk copy's scale: half the letterboxed size, so an object filling the photo spans
# half the network input, inside the anchors' range (the issue's check: astronaut, chelsea
# and coffee shrunk to half of a grey frame give person 0.88, cat 0.70, cup 0.41 at 416).
SHRINK = 0.5


def shrunk_fit(width: int, height: int, size: int, factor: float) -> tuple[float, int, int]:
    """The shrunk copy's scale (network pixels per image pixel) and its width and height, each >= 1 px.

    Pure geometry, shared with the GPU path (``detector_torch.shrunk_letterbox``), which resamples
    and pads with its own code; both centre the copy at ((size - new_w) // 2, (size - new_h) // 2).
    """
    scale = factor * size / max(width, height)
    return scale, max(1, round(width * scale)), max(1, round(height * scale))


def shrunk_letterbox(image: np.ndarray, size: int, factor: float) -> tuple[np.ndarray, _yolo.Letterbox]:
    """The image at ``factor`` of its letterboxed size, centred on a grey size x size canvas.

    The returned geometry maps network pixels back to image pixels like a letterbox's
    (its scale is the letterbox scale times ``factor``); each side is kept >= 1 px.
    """
    import cv2

    h, w = image.shape[:2]
    scale, new_w, new_h = shrunk_fit(w, h, size, factor)
    geo = _yolo.Letterbox(size, scale, (size - new_w) // 2, (size - new_h) // 2, w, h)
    canvas = np.full((size, size, 3), _yolo.PAD_VALUE, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas[geo.pad_y:geo.pad_y + new_h, geo.pad_x:geo.pad_x + new_w] = resized
    return canvas, geo


def views(image: np.ndarray, size: int, multiscale: bool) -> list[tuple[np.ndarray, _yolo.Letterbox]]:
    """The network inputs for one image: its letterbox, and with ``multiscale`` the shrunk copy too."""
    placed = [_yolo.letterbox(image, size)]
    if multiscale:
        placed.append(shrunk_letterbox(image, size, SHRINK))
    return placed


def merge(decoded: list[tuple[np.ndarray, np.ndarray, np.ndarray]], geos: list[_yolo.Letterbox],
          iou_threshold: float) -> list[tuple[Box, int, float]]:
    """Each view's (boxes in network pixels, class ids, scores) -> (image box, class id, score)
    after per-class NMS over all views together, highest score first."""
    boxes = [np.array([geo.to_image(tuple(b)) for b in view_boxes], dtype=np.float64).reshape(-1, 4)
             for (view_boxes, _, _), geo in zip(decoded, geos, strict=True)]
    all_boxes = np.concatenate(boxes)
    class_ids = np.concatenate([c for _, c, _ in decoded])
    scores = np.concatenate([s for _, _, s in decoded])
    keep = _yolo.nms(all_boxes, class_ids, scores, iou_threshold)
    return [(tuple(float(v) for v in all_boxes[i]), int(class_ids[i]), float(scores[i])) for i in keep]
