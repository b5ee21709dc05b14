"""Accuracy per variant: scoring functions and how a stage's figures are chosen. Pure.

Three kinds (``AccuracyKind``), preferred in this order for a stage's figure:

1. **measured** -- the stage's task metric on a labelled set this project
   built (``profiler/EVAL_SET.md``). The caption stage: content-word F1 of the
   caption against captions written for the bundled photos.
2. **declared** -- the published task metric of that exact model and input
   size, with its source, from the spec YAML (ImageNet top-1 of a classifier,
   COCO mAP@0.5 of YOLOv3-tiny at 416).
3. **agreement** -- for a variant with neither: its agreement with a named
   reference variant of the same stage on the bundled photos (detector: box
   matching at IoU 0.5, VOC-style AP averaged over classes; classifier: top-1
   agreement) *multiplied by the reference's own declared figure*, so that it
   is on the same scale as the reference's figure and comparable across the
   stage's variants. The reference is the largest variant that has a declared
   figure; by construction no agreement figure exceeds it.

Agreement figures are also computed for variants that have a declared figure
and kept in the profile metadata, as a check on the declared numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from varipipe.records import Accuracy, AccuracyKind, VariantSpec
from varipipe.text import content_words

__all__ = [
    "MIN_ACCURACY",
    "IOU_THRESHOLD",
    "Box",
    "Det",
    "iou",
    "average_precision",
    "detection_agreement",
    "top1_agreement",
    "caption_words",
    "CAPTION_STOPWORDS",
    "caption_f1",
    "choose_reference",
    "agreement_accuracy",
]

# A stored accuracy must lie in (0, 1] (Accuracy, the store); a variant that
# agrees on nothing gets this floor instead of 0 so log-accuracy stays finite.
MIN_ACCURACY = 1e-3
# Box matching threshold of PASCAL VOC and of COCO's mAP@0.5 (the YOLOv3-tiny figure).
IOU_THRESHOLD = 0.5

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Det:
    box: Box
    label: str
    score: float


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def average_precision(recalls: Sequence[float], precisions: Sequence[float]) -> float:
    """Area under the precision envelope (all-point interpolation, VOC 2010+)."""
    r = [0.0, *recalls, 1.0]
    p = [0.0, *precisions, 0.0]
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    return math.fsum((r[i + 1] - r[i]) * p[i + 1] for i in range(len(r) - 1))


def _class_ap(preds: list[tuple[int, Det]], truths: Mapping[int, list[Det]], n_truth: int,
              threshold: float) -> float:
    used: dict[int, set[int]] = defaultdict(set)
    tp_fp = []
    for image, d in sorted(preds, key=lambda x: -x[1].score):
        best, best_j = 0.0, -1
        for j, t in enumerate(truths.get(image, [])):
            if j not in used[image] and (o := iou(d.box, t.box)) > best:
                best, best_j = o, j
        hit = best >= threshold
        if hit:
            used[image].add(best_j)
        tp_fp.append(hit)
    recalls, precisions, tp = [], [], 0
    for i, hit in enumerate(tp_fp, start=1):
        tp += hit
        recalls.append(tp / n_truth)
        precisions.append(tp / i)
    return average_precision(recalls, precisions)


def detection_agreement(predicted: Sequence[Sequence[Det]], reference: Sequence[Sequence[Det]],
                        threshold: float = IOU_THRESHOLD) -> float | None:
    """mAP@``threshold`` of ``predicted`` taking ``reference``'s boxes as ground truth.

    Per image lists in the same order. Classes are those the reference found;
    None when the reference found nothing at all (no basis for a score).
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted images but {len(reference)} reference images")
    truths: dict[str, dict[int, list[Det]]] = defaultdict(lambda: defaultdict(list))
    preds: dict[str, list[tuple[int, Det]]] = defaultdict(list)
    for i, dets in enumerate(reference):
        for d in dets:
            truths[d.label][i].append(d)
    for i, dets in enumerate(predicted):
        for d in dets:
            preds[d.label].append((i, d))
    if not truths:
        return None
    aps = [_class_ap(preds[c], truths[c], sum(len(v) for v in truths[c].values()), threshold) for c in truths]
    return math.fsum(aps) / len(aps)


def top1_agreement(predicted: Sequence[str], reference: Sequence[str]) -> float | None:
    """Share of items whose top-1 label equals the reference's; None for no items."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted labels but {len(reference)} reference labels")
    if not reference:
        return None
    return sum(p == r for p, r in zip(predicted, reference, strict=True)) / len(reference)


# Function words carry no content: a caption is judged on what it names.
CAPTION_STOPWORDS = frozenset(
    "a an the of in on at to and or with by for from is are was were be been it its this that these those "
    "there here as into onto over under near next some one two three photo picture image shows show showing "
    "which who while has have his her their our your my we you he she they them very".split()
)


def caption_words(text: str) -> set[str]:
    """The caption metric's words of a text: lower-cased, crudely stemmed, function words removed."""
    return set(content_words(text, CAPTION_STOPWORDS, stemmed=True))


def caption_f1(caption: str, references: Sequence[str]) -> float:
    """Best content-word F1 of a caption against any of its reference captions."""
    got = caption_words(caption)
    best = 0.0
    for ref in references:
        want = caption_words(ref)
        common = len(got & want)
        if common:
            p, r = common / len(got), common / len(want)
            best = max(best, 2 * p * r / (p + r))
    return best


def choose_reference(variants: Sequence[VariantSpec]) -> VariantSpec | None:
    """The largest variant (by input size, then spec order) that has a declared figure."""
    declared = [(v.input_size or 0, i, v) for i, v in enumerate(variants) if v.accuracy is not None]
    return max(declared, key=lambda t: (t[0], t[1]))[2] if declared else None


def agreement_accuracy(agreement: float, reference: VariantSpec, metric: str, n_items: int) -> Accuracy:
    """``agreement x reference's declared figure``, with a source that says all of it."""
    assert reference.accuracy is not None
    ref = reference.accuracy
    value = max(agreement * ref.value, MIN_ACCURACY)
    source = (f"{metric} agreement {agreement:.3f} with reference {reference.name} on {n_items} bundled items "
              f"x reference's {ref.kind.value} {ref.value:g} ({ref.source})")
    return Accuracy(value, AccuracyKind.AGREEMENT, source)
