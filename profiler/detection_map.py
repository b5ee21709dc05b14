"""COCO-style mAP@0.5 of a detector on a labelled set. Pure (numpy only).

The computation is pycocotools' ``COCOeval`` (bbox, IoU 0.5, area "all")
restated, and a unit test checks it against pycocotools on random sets:

- **Matching, per image and class** (``match_image``): detections in score
  order (stable), each takes the unmatched ground-truth box of highest IoU
  >= 0.5; a crowd box (COCO's ``iscrowd``) can absorb any number of
  detections, its IoU is intersection / detection area, and it is tried only
  when no regular box matches. A detection matched to a crowd box is neither
  a true nor a false positive; crowd boxes do not count as ground truth.
- **At most 100 detections per image**, the most confident across classes
  (the COCO detection challenge's rule). pycocotools applies its ``maxDets``
  per image *and class* (cocodataset/cocoapi issues 222 and 321); after the
  per-image cap that one can no longer bind, so both agree.
- **AP per class**: the detections of all images in score order, precision
  made monotone from the right, sampled at the 101 recall points 0, 0.01,
  ..., 1 (the first detection reaching each recall; 0 past the last recall
  reached); AP = their mean. **mAP** = the mean over the classes that have at
  least one non-crowd ground-truth box in the images scored.

``match_image`` does the per-image work once; ``accumulate`` turns any list
of matched images (with repeats: a bootstrap resample) into the score, so a
paired bootstrap over images costs one matching per rung. ``MatchTable`` is
the same computation on arrays built once, for the bootstrap's thousands of
resamples (``map_value(counts)``: each image counted ``counts[i]`` times).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "IOU_THRESHOLD",
    "MAX_DETECTIONS",
    "RECALL_POINTS",
    "Scored",
    "Truth",
    "ClassMatches",
    "ImageMatches",
    "MapResult",
    "box_iou",
    "match_image",
    "accumulate",
    "mean_average_precision",
    "MatchTable",
]

# COCO's AP50 threshold (PASCAL VOC's too).
IOU_THRESHOLD = 0.5
# COCO's detection challenge scores at most 100 detections per image.
MAX_DETECTIONS = 100
# COCOeval's recall thresholds: np.linspace(0, 1, 101).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# pycocotools caps the threshold just below 1 so that IoU 1.0 still matches at t = 1.
_MAX_IOU = 1 - 1e-10

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Scored:
    """A detection to score: COCO class name, box, confidence."""

    label: str
    box: Box
    score: float


@dataclass(frozen=True)
class Truth:
    """A ground-truth box; ``crowd`` boxes are ignored in matching."""

    label: str
    box: Box
    crowd: bool = False


@dataclass(frozen=True)
class ClassMatches:
    """One image, one class: its kept detections in score order and what each matched."""

    scores: tuple[float, ...]
    matched: tuple[bool, ...]  # matched a ground-truth box (regular or crowd)
    ignored: tuple[bool, ...]  # matched a crowd box: neither TP nor FP
    n_truth: int  # non-crowd ground-truth boxes of the class in the image


@dataclass(frozen=True)
class ImageMatches:
    """Every class present (as truth or detection) in one image."""

    by_class: Mapping[str, ClassMatches]


@dataclass(frozen=True)
class MapResult:
    """mAP and AP per class (classes with non-crowd ground truth only), and what they cover."""

    value: float
    per_class: Mapping[str, float]
    images: int
    truths: int  # non-crowd ground-truth boxes
    detections: int  # detections scored (after the per-image cap)


def box_iou(d: Box, g: Box, crowd: bool = False) -> float:
    """IoU of a detection and a ground-truth box as pycocotools computes it (crowd: over the detection's area)."""
    dw, dh = d[2] - d[0], d[3] - d[1]
    gw, gh = g[2] - g[0], g[3] - g[1]
    w = min(d[0] + dw, g[0] + gw) - max(d[0], g[0])
    h = min(d[1] + dh, g[1] + gh) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = dw * dh if crowd else dw * dh + gw * gh - inter
    return inter / union if union > 0 else 0.0


def _match_class(dets: list[Scored], truths: list[Truth], threshold: float) -> ClassMatches:
    truths = sorted(truths, key=lambda t: t.crowd)  # regular boxes first, stable (COCOeval's gtind)
    dets = sorted(dets, key=lambda d: -d.score)  # stable (COCOeval's dtind)
    taken = [False] * len(truths)
    matched, ignored = [], []
    for d in dets:
        best, m = min(threshold, _MAX_IOU), -1
        for j, t in enumerate(truths):
            if taken[j] and not t.crowd:
                continue
            if m > -1 and not truths[m].crowd and t.crowd:
                break  # a regular match stands; crowd boxes come only after every regular one
            o = box_iou(d.box, t.box, t.crowd)
            if o < best:
                continue
            best, m = o, j
        if m > -1:
            taken[m] = True
        matched.append(m > -1)
        ignored.append(m > -1 and truths[m].crowd)
    return ClassMatches(tuple(d.score for d in dets), tuple(matched), tuple(ignored),
                        sum(not t.crowd for t in truths))


def match_image(detections: Sequence[Scored], truths: Sequence[Truth], threshold: float = IOU_THRESHOLD,
                max_detections: int = MAX_DETECTIONS) -> ImageMatches:
    """Match one image's detections to its ground truth, class by class (COCOeval's evaluateImg)."""
    kept = sorted(detections, key=lambda d: -d.score)[:max_detections]
    dets: dict[str, list[Scored]] = {}
    for d in kept:
        dets.setdefault(d.label, []).append(d)
    gts: dict[str, list[Truth]] = {}
    for t in truths:
        gts.setdefault(t.label, []).append(t)
    classes = list(dict.fromkeys([*gts, *dets]))
    return ImageMatches({c: _match_class(dets.get(c, []), gts.get(c, []), threshold) for c in classes})


def _class_ap(parts: list[ClassMatches]) -> float | None:
    """AP at the 101 recall points over the images' matches of one class; None without ground truth."""
    n_truth = sum(p.n_truth for p in parts)
    if n_truth == 0:
        return None
    scores = np.concatenate([np.asarray(p.scores, dtype=float) for p in parts]) if parts else np.zeros(0)
    matched = np.concatenate([np.asarray(p.matched, dtype=bool) for p in parts]) if parts else np.zeros(0, bool)
    ignored = np.concatenate([np.asarray(p.ignored, dtype=bool) for p in parts]) if parts else np.zeros(0, bool)
    return _ap(scores, matched & ~ignored, ~matched & ~ignored, n_truth)


def _ap(scores: np.ndarray, tp_flags: np.ndarray, fp_flags: np.ndarray, n_truth: float) -> float:
    """COCOeval's AP of one class from its detections (any order; sorted here, stably) and its truth count."""
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(tp_flags[order]).astype(float)
    fp = np.cumsum(fp_flags[order]).astype(float)
    recall = tp / n_truth
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone from the right
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(at < precision.size, precision[np.minimum(at, precision.size - 1)], 0.0)
    return float(np.mean(sampled))


def accumulate(images: Sequence[ImageMatches]) -> MapResult:
    """mAP over ``images`` (repeats count as separate images, in the given order; COCOeval's accumulate)."""
    parts: dict[str, list[ClassMatches]] = {}
    for img in images:
        for c, m in img.by_class.items():
            parts.setdefault(c, []).append(m)
    per_class = {c: ap for c, p in sorted(parts.items()) if (ap := _class_ap(p)) is not None}
    value = float(np.mean(list(per_class.values()))) if per_class else 0.0
    truths = sum(m.n_truth for p in parts.values() for m in p)
    detections = sum(len(m.scores) for p in parts.values() for m in p)
    return MapResult(value, per_class, len(images), truths, detections)


def mean_average_precision(detections: Sequence[Sequence[Scored]], truths: Sequence[Sequence[Truth]],
                           threshold: float = IOU_THRESHOLD,
                           max_detections: int = MAX_DETECTIONS) -> MapResult:
    """COCO-style mAP@``threshold`` of per-image detections against per-image ground truth (same order)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections but {len(truths)} of ground truth")
    return accumulate([match_image(d, t, threshold, max_detections) for d, t in zip(detections, truths, strict=True)])


class MatchTable:
    """Matched images as arrays, built once: mAP of any multiset of them without re-matching.

    ``map_value(counts)`` equals ``accumulate`` of the list holding image i ``counts[i]`` times, up to
    the order of detections with *equal* scores from different images (kept here in image order).
    """

    def __init__(self, images: Sequence[ImageMatches]) -> None:
        self.images = len(images)
        parts: dict[str, list[tuple[int, ClassMatches]]] = {}
        for i, img in enumerate(images):
            for c, m in img.by_class.items():
                parts.setdefault(c, []).append((i, m))
        self._classes = []
        for c, ps in sorted(parts.items()):
            truth = np.zeros(self.images)
            for i, m in ps:
                truth[i] += m.n_truth
            image = np.concatenate([np.full(len(m.scores), i, dtype=int) for i, m in ps])
            scores = np.concatenate([np.asarray(m.scores, dtype=float) for _, m in ps])
            matched = np.concatenate([np.asarray(m.matched, dtype=bool) for _, m in ps])
            ignored = np.concatenate([np.asarray(m.ignored, dtype=bool) for _, m in ps])
            self._classes.append((c, truth, image, scores, matched & ~ignored, ~matched & ~ignored))

    def map_value(self, counts: np.ndarray) -> float:
        """mAP with image i counted ``counts[i]`` times (all ones: the set itself)."""
        counts = np.asarray(counts, dtype=np.int64)
        aps = []
        for _, truth, image, scores, tp, fp in self._classes:
            n_truth = float(counts @ truth)
            if n_truth == 0:
                continue
            w = counts[image]
            aps.append(_ap(np.repeat(scores, w), np.repeat(tp, w), np.repeat(fp, w), n_truth))
        return float(np.mean(aps)) if aps else 0.0
