"""Darknet detector variants (YOLOv3-tiny, YOLOv4-tiny; any input size) on OpenCV DNN (GPU path: ``detector_torch``).

A batch is one forward call: every image is letterboxed to the variant's
square input and stacked by ``cv2.dnn.blobFromImages``. Boxes come back in
original-image pixels with COCO class ids (0-79, darknet's order in
``coco.names``) and names, after per-class NMS.

Spec params: ``model`` (weights, default yolov3-tiny), ``score_threshold``,
``nms_iou``, ``max_detections``, ``multiscale`` (also run a shrunk copy of each
image in the same batch and merge both views' boxes; see ``_multiscale``; the GPU path does the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from varipipe.errors import BadInputError
from varipipe.pipelines.models import model_files
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants import _multiscale, _yolo
from varipipe.pipelines.variants._base import ModelVariant
from varipipe.pipelines.variants.outputs import Detection, Detections
from varipipe.records import VariantSpec

__all__ = ["YoloDetector", "make", "SCORE_THRESHOLD", "NMS_IOU"]

# Darknet's defaults for `darknet detect` (-thresh 0.25; nms 0.45 in detector.c).
SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45
MAX_DETECTIONS = 20  # per image; a caption needs the few most confident objects
DEFAULT_INPUT = 416  # the resolution yolov3-tiny.cfg was trained at


class YoloDetector(ModelVariant):
    """One darknet model at one input size; ``infer`` runs the whole batch in one forward pass."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.size = int(spec.input_size or DEFAULT_INPUT)
        self.score_threshold = float(self.param("score_threshold", SCORE_THRESHOLD))
        self.nms_iou = float(self.param("nms_iou", NMS_IOU))
        self.max_detections = int(self.param("max_detections", MAX_DETECTIONS))
        self.multiscale = bool(self.param("multiscale", False))
        self.class_names: list[str] = []
        self._outputs: tuple[str, ...] = ()

    def load(self) -> None:
        import cv2

        files = model_files(str(self.param("model", "yolov3-tiny")))
        cv2.setNumThreads(self.threads)
        net = cv2.dnn.readNetFromDarknet(str(files.config), str(files.weights))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        assert files.labels is not None
        self.class_names = files.labels.read_text(encoding="utf-8").splitlines()
        self._outputs = tuple(net.getUnconnectedOutLayersNames())
        self._model = net

    def network_input(self, batch: Sequence[Payload]) -> tuple[np.ndarray, list[_yolo.Letterbox]]:
        """The batch's input blob (N x 3 x size x size, RGB in [0, 1]) and each image's letterbox.

        With ``multiscale`` every image has two views in a row (its letterbox, its shrunk
        copy), so the blob holds 2N inputs and the list 2N geometries.
        """
        import cv2

        placed = [v for p in batch for v in _multiscale.views(_image_of(p), self.size, self.multiscale)]
        blob = cv2.dnn.blobFromImages([c for c, _ in placed], 1 / 255.0, (self.size, self.size),
                                      swapRB=False, crop=False)
        return blob, [geo for _, geo in placed]

    def raw_outputs(self, blob: np.ndarray) -> np.ndarray:
        """The network's YOLO rows for a blob, before scoring and NMS: [N, rows, 5 + classes]."""
        net = self._require_loaded()
        net.setInput(blob)
        heads = net.forward(self._outputs)
        if len(blob) == 1:  # OpenCV drops the batch axis for a single image
            heads = [h[np.newaxis] for h in heads]
        return np.concatenate(heads, axis=1)

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        self._require_loaded()
        if not batch:
            return []
        blob, geos = self.network_input(batch)
        rows = self.raw_outputs(blob)
        if self.multiscale:
            n = len(geos) // len(batch)  # views per image, in order
            return [self._merged(rows[i:i + n], geos[i:i + n]) for i in range(0, len(geos), n)]
        return [self._detections(rows[i], geo) for i, geo in enumerate(geos)]

    def _detections(self, rows: np.ndarray, geo: _yolo.Letterbox) -> Detections:
        boxes, class_ids, scores = _yolo.decode(rows, self.size, self.score_threshold)
        keep = _yolo.nms(boxes, class_ids, scores, self.nms_iou)[: self.max_detections]
        items = tuple(
            Detection(geo.to_image(tuple(boxes[i])), int(class_ids[i]), self.class_names[class_ids[i]],
                      float(scores[i]))
            for i in keep
        )
        return Detections(items, (geo.width, geo.height))

    def _merged(self, rows: np.ndarray, geos: list[_yolo.Letterbox]) -> Detections:
        decoded = [_yolo.decode(r, self.size, self.score_threshold) for r in rows]
        kept = _multiscale.merge(decoded, geos, self.nms_iou)[: self.max_detections]
        items = tuple(Detection(box, c, self.class_names[c], score) for box, c, score in kept)
        return Detections(items, (geos[0].width, geos[0].height))


def _image_of(payload: Payload) -> np.ndarray:
    img = payload.image
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        shape = None if img is None else (img.shape, str(img.dtype))
        raise BadInputError(f"request {payload.request_id!r}: the detector needs an HxWx3 uint8 RGB image, got {shape}")
    return img


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> ModelVariant:
    """OpenCV DNN on the CPU; ``device="gpu"``: the PyTorch implementation (``detector_torch``) on CUDA."""
    if device == "gpu":
        from varipipe.pipelines.variants.detector_torch import TorchDetector

        return TorchDetector(spec, threads=threads, device=device)
    return YoloDetector(spec, threads=threads, device=device)
