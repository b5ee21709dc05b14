"""The LLM stage's task on vision-caption's labelled set: grounded questions (``profiler/qa.py``).

``QaTask`` is the set's LLM task: for a photo and its upstream outputs it makes
one LLM input per question of that photo in ``qa.json`` (the photo, the
upstream outputs, the question; request id = the question's id) and scores an
answer by exact match (``score_answer``).

The stage figure gives the LLM the ground truth in the shape the stage
receives in serving (``ground_truth_upstream``): the detector's output with
every labelled box (its label, box, score 1.0; crowd boxes too) and the
classifier's output naming the first ``max_crops`` boxes' crops by their COCO
class (what a perfect classifier read through the ImageNet->COCO mapping would
say; class id = the COCO class index). The end-to-end figure passes the real
upstream outputs instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.profiler.qa import KINDS, QaItem, QaSet, load_qa_set, score_answer

__all__ = ["QaTask", "METRIC", "ground_truth_upstream", "DETECTOR", "CLASSIFIER"]

DETECTOR, CLASSIFIER = "detector", "classifier"  # vision-caption's upstream stage names
METRIC = "exact match on grounded questions (count, category; profiler/evalset/qa.json)"
GROUND_TRUTH_CROPS = 3  # the classifier variants' max_crops (pipelines/specs/vision-caption.yaml)

GroundTruth = tuple[str, tuple[float, float, float, float], bool]  # label, box, crowd


def ground_truth_upstream(boxes: Sequence[GroundTruth], size: tuple[int, int], classes: Sequence[str],
                          max_crops: int = GROUND_TRUTH_CROPS) -> dict[str, StageOutput]:
    """What a perfect detector and classifier would hand the LLM for a photo with these labelled boxes."""
    from varipipe.pipelines.variants.outputs import (
        Classification,
        Classifications,
        Detection,
        Detections,
    )

    dets = tuple(Detection(tuple(float(v) for v in box), classes.index(label), label, 1.0)  # type: ignore[arg-type]
                 for label, box, _ in boxes)
    crops = tuple(Classification(d.class_id, d.label, 1.0, d.box) for d in dets[:max_crops])
    return {DETECTOR: Detections(dets, size), CLASSIFIER: Classifications(crops)}


class QaTask:
    """The ``LlmTask`` of vision-caption's evaluation set (profiler/vision_eval.py)."""

    metric = METRIC

    def __init__(self, qa: QaSet | None = None) -> None:
        self.qa = qa or load_qa_set()
        self.by_id = self.qa.by_id()

    def questions(self, image_id: str) -> list[QaItem]:
        return self.qa.of_image(image_id)

    def payloads(self, item, upstream: Mapping[str, StageOutput],  # type: ignore[no-untyped-def]
                 image: np.ndarray | None) -> list[Payload]:
        """One input per question about ``item`` (a labelled photo: its ``id``), carrying ``upstream``."""
        return [Payload(request_id=q.id, image=image, question=q.question, outputs=dict(upstream))
                for q in self.questions(item.id)]

    def score(self, item, payload: Payload, output: StageOutput) -> float | None:  # type: ignore[no-untyped-def]
        q = self.by_id.get(payload.request_id)
        text = getattr(output, "text", None)
        return None if q is None or not isinstance(text, str) else score_answer(q, text)

    def kind(self, request_id: str) -> str:
        return self.by_id[request_id].kind

    @staticmethod
    def kinds() -> tuple[str, ...]:
        return KINDS
