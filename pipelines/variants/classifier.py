"""ImageNet classifier variants (MobileNetV2, EfficientNet-Lite0/1/2) on onnxruntime (GPU: ``classifier_torch``).

Applied to the detector's crops found in ``payload.outputs`` (the whole image
when nothing was detected), at most ``max_crops`` per image, most confident
detections first. All crops of all requests in a batch go into ONE
onnxruntime call (the ONNX graph has a dynamic batch axis).

Spec params: ``model`` (weights name in the model cache), ``max_crops``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from varipipe.errors import BadInputError
from varipipe.pipelines.models import model_files
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants._base import ModelVariant
from varipipe.pipelines.variants.outputs import Box, Classification, Classifications, Detections
from varipipe.records import VariantSpec

__all__ = ["OnnxClassifier", "make", "select_crops", "crop", "preprocess", "MAX_CROPS"]

MAX_CROPS = 3  # default crops per image: a caption needs the few main objects
# ImageNet evaluation transform: resize the short side to size / 0.875 then take the
# centre size x size (224 from 256: He et al. 2016 and torchvision's reference scripts).
CROP_FRACTION = 0.875
MIN_CROP_SIDE = 8  # pixels; smaller boxes carry no information worth classifying
DEFAULT_INPUT = 224
# Longest side the short-side resize may produce (8192 x 256 x 3 bytes = 6 MB): every image
# the ingress accepts (aspect <= 20, pipelines/images.py) and every crop up to 32:1 stays on
# the standard transform; thinner ones take the crop-first path in ``preprocess``.
MAX_RESIZED_SIDE = 8192


def select_crops(outputs: Mapping[str, object], width: int, height: int, max_crops: int) -> list[Box | None]:
    """Boxes to classify for one image: the latest upstream detections, best first; [None] = whole image."""
    detections = next((o for o in reversed(list(outputs.values())) if isinstance(o, Detections)), None)
    boxes: list[Box | None] = []
    for d in sorted(detections.items if detections else (), key=lambda d: -d.score):
        x1, y1, x2, y2 = max(0.0, d.box[0]), max(0.0, d.box[1]), min(float(width), d.box[2]), min(float(height), d.box[3])
        if x2 - x1 >= MIN_CROP_SIDE and y2 - y1 >= MIN_CROP_SIDE:
            boxes.append((x1, y1, x2, y2))
        if len(boxes) == max_crops:
            break
    return boxes or [None]


def crop(image: np.ndarray, box: Box | None) -> np.ndarray:
    """The box's pixels (the whole image for ``None``): at least 1 x 1, whatever the box.

    ``select_crops`` only passes boxes of 8 px or more inside the image; a box at the
    border or under 1 px wide after rounding still gives the pixel it touches.
    """
    if box is None:
        return image
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) if np.isfinite(v) else 0 for v in box)
    x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
    return image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3 x size x size float32 in [0, 255]: short side resize, centre crop.

    A thin image's resized long side would be huge (a 10000 x 1 image: 2,560,000 x 256 px,
    2 GB and 25 s), so past ``MAX_RESIZED_SIDE`` the centre square is cut first and resized
    alone: the same region, sampled at a slightly different phase.
    """
    import cv2

    h, w = image.shape[:2]
    short = size / CROP_FRACTION
    scale = short / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if max(new_w, new_h) > MAX_RESIZED_SIDE:
        side = max(1, round(min(h, w) * CROP_FRACTION))
        top, left = (h - side) // 2, (w - side) // 2
        image, new_w, new_h = image[top:top + side, left:left + side], size, size
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size].transpose(2, 0, 1).astype(np.float32)


class OnnxClassifier(ModelVariant):
    """One ImageNet classifier; ``infer`` classifies every crop of the batch in one call."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.size = int(spec.input_size or DEFAULT_INPUT)
        self.max_crops = int(self.param("max_crops", MAX_CROPS))
        self.class_names: list[str] = []

    def load(self) -> None:
        import json

        import onnxruntime as ort

        files = model_files(self.model_name())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        assert files.labels is not None
        self.class_names = json.loads(files.labels.read_text(encoding="utf-8"))
        self._model = ort.InferenceSession(str(files.weights), opts, providers=["CPUExecutionProvider"])

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        session = self._require_loaded()
        if not batch:
            return []
        plans = [self._plan(p) for p in batch]
        inputs = np.stack([preprocess(crop(img, box), self.size) for img, boxes in plans for box in boxes])
        (probs,) = session.run(None, {"image": inputs})
        out: list[StageOutput] = []
        row = 0
        for _, boxes in plans:
            out.append(Classifications(tuple(self._top1(probs[row + i], box) for i, box in enumerate(boxes))))
            row += len(boxes)
        return out

    def _plan(self, payload: Payload) -> tuple[np.ndarray, list[Box | None]]:
        img = payload.image
        if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise BadInputError(f"request {payload.request_id!r}: the classifier needs an HxWx3 uint8 RGB image")
        return img, select_crops(payload.outputs, img.shape[1], img.shape[0], self.max_crops)

    def _top1(self, probs: np.ndarray, box: Box | None) -> Classification:
        k = int(probs.argmax())
        return Classification(k, self.class_names[k], float(probs[k]), box)


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> ModelVariant:
    """onnxruntime on the CPU; ``device="gpu"``: the PyTorch modules (``classifier_torch``) on CUDA."""
    if device == "gpu":
        from varipipe.pipelines.variants.classifier_torch import TorchClassifier

        return TorchClassifier(spec, threads=threads, device=device)
    return OnnxClassifier(spec, threads=threads, device=device)
