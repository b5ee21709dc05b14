"""vision-caption's evaluation set (the spec's ``evaluation``): the labelled photos of profiler/evalset.

Each stage is scored on what isolates its own contribution (profiler/EVAL_SET.md):

- ``detector``: COCO-style mAP@0.5 (``detection_map``) of the detections *as
  served* (the variant's own confidence threshold and cap) on the split's
  photos; a set-level figure (``aggregate``), with AP per class beside it.
- ``classifier``: top-1 on crops of the ground-truth boxes. Each non-crowd box
  whose COCO class the ImageNet->COCO mapping covers (``label_mapping``) is
  one input: the photo with that box as the upstream detection, so the
  classifier's own crop and pre-processing (``classifier.select_crops``,
  ``crop``, ``preprocess``) is what is scored. Correct = the top-1 ImageNet
  class maps to the box's COCO class.
- ``llm``: scored by an ``LlmTask`` (the LLM stage's task and metric) on
  inputs built from the ground-truth labels; without one, this set does not
  score the LLM stage (``metric("llm") == ""``). The flagship's task is
  ``profiler/qa_task.QaTask``: the grounded questions of ``evalset/qa.json``,
  exact match (``llm_task``).

Each photo's payload carries one of its questions (``payloads``: the photo's
questions in turn, one per photo), so the LLM stage is *timed* on the
question-answering workload it serves; detector and classifier ignore it.

The profiler stores the **test** split's figures (``make``); every choice is
made on **dev** (``VisionCaptionEvaluation("dev")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from varipipe.pipelines.variant import Payload, StageOutput

# The classifier's own minimum crop side: labelled boxes are >= 10 px, so none is expected below it; a
# smaller one would be classified as the whole photo, so it is left out of the crops.
from varipipe.pipelines.variants.classifier import MIN_CROP_SIDE
from varipipe.profiler.detection_map import (
    IOU_THRESHOLD,
    MAX_DETECTIONS,
    ImageMatches,
    MapResult,
    Scored,
    Truth,
    accumulate,
    match_image,
)
from varipipe.profiler.evaluate import SetScore
from varipipe.profiler.label_mapping import MAPPING_FILE, LabelMapping, load_label_mapping
from varipipe.profiler.labelled import (
    GroundTruthBox,
    LabelledItem,
    LabelledSet,
    coco_label,
    load_labelled_set,
    read_image,
)

__all__ = [
    "VisionCaptionEvaluation",
    "LlmTask",
    "make",
    "evaluation_for",
    "llm_task",
    "DETECTOR",
    "CLASSIFIER",
    "LLM",
    "DEFAULT_SPLIT",
    "SET_NAME",
    "ground_truth_detections",
    "truths_of",
    "scored_detections",
]

DETECTOR, CLASSIFIER, LLM = "detector", "classifier", "llm"  # vision-caption's stage names
DEFAULT_SPLIT = "test"  # stored figures come from test; choices are made on dev
SET_NAME = "profiler/evalset"

METRICS = {
    DETECTOR: f"mAP@{IOU_THRESHOLD:g} (COCO-style)",
    CLASSIFIER: "top-1 on ground-truth crops (ImageNet->COCO)",
}


class LlmTask(Protocol):
    """The LLM stage's task on this set: its inputs from an image's upstream outputs, and its metric."""

    metric: str

    def payloads(self, item: LabelledItem, upstream: Mapping[str, StageOutput],
                 image: np.ndarray | None) -> list[Payload]:
        """The LLM's inputs for one photo, given upstream outputs (ground truth for the stage figure, real
        upstream outputs end to end); request ids unique across the set."""
        ...

    def score(self, item: LabelledItem, payload: Payload, output: StageOutput) -> float | None:
        """The task metric of one answer in [0, 1]; None where the input has no known answer."""
        ...


def ground_truth_detections(item: LabelledItem, classes: Sequence[str], include_crowd: bool = True) -> Any:
    """The item's ground truth as a detector output (score 1.0): what a perfect detector would pass on."""
    from varipipe.pipelines.variants.outputs import Detection, Detections

    boxes = [b for b in item.boxes if include_crowd or not b.crowd]
    return Detections(tuple(Detection(b.box, classes.index(b.label), b.label, 1.0) for b in boxes),
                      (item.width, item.height))


def truths_of(item: LabelledItem) -> list[Truth]:
    return [Truth(b.label, b.box, b.crowd) for b in item.boxes]


def scored_detections(output: Any) -> list[Scored]:
    """A detector output's detections for scoring, class names in COCO's spelling."""
    return [Scored(coco_label(d.label), tuple(d.box), d.score) for d in output.items]


class VisionCaptionEvaluation:
    """The ``EvaluationSet`` of vision-caption on one split (see ``varipipe.profiler.evaluate``)."""

    def __init__(self, split: str = DEFAULT_SPLIT, labelled: LabelledSet | None = None,
                 mapping: LabelMapping | None = None, llm_task: LlmTask | None = None) -> None:
        self.labelled = labelled or load_labelled_set()
        self.split = split
        self.items = {i.id: i for i in self.labelled.split(split)}
        if not self.items:
            raise ValueError(f"the labelled set has no {split!r} items")
        self.mapping = mapping or load_label_mapping()
        self.llm_task = llm_task
        self._crops: dict[str, tuple[LabelledItem, GroundTruthBox]] = {}
        self._llm_items: dict[str, LabelledItem] = {}

    # --- EvaluationSet -------------------------------------------------------------------------

    def payloads(self) -> list[Payload]:
        """The split's photos, decoded as the ingress decodes an upload; request id = item id. With an LLM task
        that asks questions, each photo carries one of its questions (the k-th photo its k-th, in turn), so the
        profiler times the LLM on questions, as served."""
        return [Payload(request_id=i.id, image=read_image(self.labelled, i), question=self._question(k, i))
                for k, i in enumerate(self.items.values())]

    def _question(self, k: int, item: LabelledItem) -> str | None:
        ask = getattr(self.llm_task, "questions", None)
        questions = ask(item.id) if ask is not None else []
        return questions[k % len(questions)].question if questions else None

    def metric(self, stage: str) -> str:
        if stage == LLM:
            return self.llm_task.metric if self.llm_task is not None else ""
        return METRICS.get(stage, "")

    def score(self, stage: str, payload: Payload, output: StageOutput) -> float | None:
        if stage == CLASSIFIER:
            crop = self._crops.get(payload.request_id)
            items = getattr(output, "items", ())
            if crop is None or not items:
                return None
            return float(self.mapping.correct(items[0].class_id, crop[1].label))
        if stage == LLM and self.llm_task is not None:
            item = self._llm_items.get(payload.request_id)
            return self.llm_task.score(item, payload, output) if item is not None else None
        return None

    # --- the optional extensions -----------------------------------------------------------------

    def stage_payloads(self, stage: str, served: Sequence[Payload]) -> list[Payload] | None:
        if stage == CLASSIFIER:
            return self.crop_payloads(served)
        if stage == LLM and self.llm_task is not None:
            return self.llm_payloads(served, {p.request_id: self.ground_truth_upstream(p.request_id) for p in served})
        return None

    def aggregate(self, stage: str, payloads: Sequence[Payload], outputs: Sequence[StageOutput]) -> SetScore | None:
        """Detector: mAP with AP per class. Classifier: the mean over crops, with top-1 per COCO class."""
        if stage == DETECTOR:
            result = accumulate(self.detection_matches(payloads, outputs))
            return SetScore(result.value, result.images, result.per_class)
        if stage == CLASSIFIER:
            by_class: dict[str, list[float]] = {}
            for p, o in zip(payloads, outputs, strict=True):
                if (s := self.score(stage, p, o)) is not None:
                    by_class.setdefault(self.crop_label(p.request_id), []).append(s)
            scores = [s for v in by_class.values() for s in v]
            if not scores:
                return None
            return SetScore(sum(scores) / len(scores), len(scores),
                            {c: sum(v) / len(v) for c, v in sorted(by_class.items())})
        return None

    def source(self, stage: str, items: int) -> str:
        where = f"the {self.split} split of {SET_NAME} ({len(self.items)} photos)"
        if stage == DETECTOR:
            return (f"{METRICS[DETECTOR]}: 101-point AP averaged over the classes with ground truth, crowd boxes "
                    f"ignored, <= {MAX_DETECTIONS} detections/image, on the {items} photos of {where}; "
                    f"detections as served")
        if stage == CLASSIFIER:
            return (f"top-1 on {items} ground-truth crops of {where}, correct when the ImageNet class maps to the "
                    f"box's COCO class (profiler/{MAPPING_FILE}: {len(self.mapping.covered)} of 80 COCO classes)")
        return f"mean {self.metric(stage)} on {items} inputs from the ground-truth labels of {where}"

    # --- building blocks (the ladder benchmark and the end-to-end harness use them too) ---------

    def crop_payloads(self, served: Sequence[Payload]) -> list[Payload]:
        """One input per covered, non-crowd ground-truth box: its photo with that box as the detection."""
        from varipipe.pipelines.variants.outputs import Detection, Detections

        out = []
        for p in served:
            item = self.items[p.request_id]
            for k, b in enumerate(item.boxes):
                if b.crowd or b.label not in self.mapping.covered:
                    continue
                if min(b.box[2] - b.box[0], b.box[3] - b.box[1]) < MIN_CROP_SIDE:
                    continue  # the classifier would take the whole photo instead (see MIN_CROP_SIDE)
                rid = f"{item.id}#{k}"
                self._crops[rid] = (item, b)
                det = Detections((Detection(b.box, self.labelled.classes.index(b.label), b.label, 1.0),),
                                 (item.width, item.height))
                out.append(Payload(request_id=rid, image=p.image, outputs={DETECTOR: det}))
        return out

    def crop_label(self, request_id: str) -> str:
        return self._crops[request_id][1].label

    def ground_truth_upstream(self, item_id: str) -> dict[str, StageOutput]:
        """The upstream outputs a perfect detector and classifier would give the LLM, in the shape it receives:
        every labelled box (crowd ones too) as a detection at score 1.0, and the first ``max_crops`` boxes'
        crops named by their COCO class (profiler/qa_task.ground_truth_upstream)."""
        from varipipe.profiler.qa_task import ground_truth_upstream

        item = self.items[item_id]
        return ground_truth_upstream([(b.label, tuple(b.box), b.crowd) for b in item.boxes],
                                     (item.width, item.height), self.labelled.classes)

    def llm_payloads(self, photos: Sequence[Payload],
                     upstream: Mapping[str, Mapping[str, StageOutput]]) -> list[Payload]:
        """The LLM task's inputs for each photo, given each photo's upstream outputs (by item id)."""
        if self.llm_task is None:
            raise ValueError("this evaluation set has no LLM task: it does not score the llm stage")
        out = []
        for p in photos:
            item = self.items[p.request_id]
            for q in self.llm_task.payloads(item, upstream[item.id], p.image):
                self._llm_items[q.request_id] = item
                out.append(q)
        return out

    def detection_matches(self, payloads: Sequence[Payload], outputs: Sequence[StageOutput]) -> list[ImageMatches]:
        """Each photo's detections matched to its ground truth (once; the bootstrap resamples these)."""
        return [match_image(scored_detections(o), truths_of(self.items[p.request_id]))
                for p, o in zip(payloads, outputs, strict=True)]

    def outcomes(self, stage: str, payloads: Sequence[Payload], outputs: Sequence[StageOutput]) -> list[Any]:
        """Per-input outcomes for the paired tests: image matches (detector), else each input's score
        (None where the input has no known answer)."""
        if stage == DETECTOR:
            return list(self.detection_matches(payloads, outputs))
        return [self.score(stage, p, o) for p, o in zip(payloads, outputs, strict=True)]

    def detection_result(self, payloads: Sequence[Payload], outputs: Sequence[StageOutput]) -> MapResult:
        return accumulate(self.detection_matches(payloads, outputs))


def llm_task(labelled: LabelledSet | None = None) -> LlmTask | None:
    """The LLM stage's task and metric on this set: grounded questions with exact answers (profiler/qa.py).
    The shipped set's questions are ``evalset/qa.json``; another set's (``labelled``, a folder without its
    own qa.json) are generated from its labels by the same generator."""
    from varipipe.profiler.qa import QA_FILE, QaSet, generate, load_qa_set, load_supercategories
    from varipipe.profiler.qa_task import QaTask

    if labelled is None or labelled.root is None:
        return QaTask()
    own = labelled.root / QA_FILE
    if own.is_file():
        return QaTask(load_qa_set(own))
    photos = [{"id": i.id, "split": i.split, "boxes": [{"label": b.label, "crowd": b.crowd} for b in i.boxes]}
              for i in labelled.items]
    return QaTask(QaSet(tuple(generate({"items": photos}, load_supercategories()))))


def evaluation_for(split: str, root: Any = None) -> VisionCaptionEvaluation:
    """The set on one split, with the LLM task: what the profiler (test) and the benchmarks (dev|test) use.
    ``root``: another folder in the same format (tests, smoke runs); default the shipped set."""
    labelled = load_labelled_set(root)
    return VisionCaptionEvaluation(split, labelled=labelled, llm_task=llm_task(labelled if root is not None else None))


def make() -> VisionCaptionEvaluation:
    """The profiler's set: the test split (every stored figure comes from test)."""
    return evaluation_for(DEFAULT_SPLIT)
