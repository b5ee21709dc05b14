"""Classifier variants on PyTorch: the GPU path of the classifier stage (and its CPU check).

The same spec entries as the ONNX classifier (``classifier.py``); ``device="gpu"``
in the factory builds this one. The networks are the very modules the ONNX
files are exported from (``_export.build_classifier``: normalisation and
softmax inside), so the two paths differ only in runtime and in resampling
code. Crops are chosen and cut by the same rules (``classifier.select_crops`` and ``crop``), then
resized and centre-cropped on the device; all crops of a batch go into one
forward pass and only the top-1 index and score come back.

Spec params: ``model``, ``max_crops`` (as the ONNX variant), ``gpu_dtype``
(default float16), ``weights``: ``packaged`` (default) or ``random`` (torch's
initialisation, seeded: for timing where the weights cannot travel; its
outputs mean nothing).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from varipipe.errors import BadInputError
from varipipe.pipelines.models import imagenet_labels
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants._torch_image import resize_image
from varipipe.pipelines.variants._torch_runtime import TorchVariant
from varipipe.pipelines.variants.classifier import (
    CROP_FRACTION,
    DEFAULT_INPUT,
    MAX_CROPS,
    MAX_RESIZED_SIDE,
    crop,
    select_crops,
)
from varipipe.pipelines.variants.outputs import Box, Classification, Classifications
from varipipe.records import VariantSpec

__all__ = ["TorchClassifier", "WEIGHTS", "RANDOM_SEED", "make"]

WEIGHTS = ("packaged", "random")
RANDOM_SEED = 0  # random weights are seeded: every replica and every run times the same network


def preprocess(image, size: int):  # torch uint8 HxWx3 -> 3 x size x size float in [0, 255]
    """Resize the short side to size / CROP_FRACTION, then take the centre size x size.

    As the ONNX path (``classifier.preprocess``): past ``MAX_RESIZED_SIDE`` a thin image's centre
    square is cut first and resized alone, instead of a huge resize (10000 x 1: 2,560,000 x 256 px).
    """
    h, w = int(image.shape[0]), int(image.shape[1])
    scale = size / CROP_FRACTION / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if max(new_w, new_h) > MAX_RESIZED_SIDE:
        side = max(1, round(min(h, w) * CROP_FRACTION))
        top, left = (h - side) // 2, (w - side) // 2
        image, new_w, new_h = image[top:top + side, left:left + side], size, size
    x = resize_image(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[0, :, top:top + size, left:left + size]


class TorchClassifier(TorchVariant):
    """One ImageNet classifier on PyTorch; ``infer`` classifies every crop of the batch in one call."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.size = int(spec.input_size or DEFAULT_INPUT)
        self.max_crops = int(self.param("max_crops", MAX_CROPS))
        self.weights = str(self.param("weights", "packaged"))
        if self.weights not in WEIGHTS:
            raise spec.spec_error(".params.weights", f"must be one of {WEIGHTS}, got {self.weights!r}")
        self.class_names: list[str] = []
        self._device: Any = None
        self._dtype: Any = None

    def load(self) -> None:
        import torch

        from varipipe.pipelines.variants._export import build_classifier

        self._device, self._dtype = self.torch_setup()
        self.class_names = json.loads(imagenet_labels().read_text(encoding="utf-8"))
        if self.weights == "random":
            torch.manual_seed(RANDOM_SEED)
        net = build_classifier(self.model_name(), pretrained=self.weights == "packaged")
        self._model = net.to(self._device, self._dtype).eval()

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        import torch

        net = self._require_loaded()
        if not batch:
            return []
        plans = [self._plan(p) for p in batch]
        with torch.inference_mode():
            crops = []
            for img, boxes in plans:
                on_device = torch.from_numpy(img).to(self._device)
                crops.extend(preprocess(crop(on_device, box), self.size) for box in boxes)  # crop: >= 1 px
            probs = net(torch.stack(crops).to(self._dtype)).float()
            scores, classes = probs.max(dim=1)
            scores, classes = scores.cpu().tolist(), classes.cpu().tolist()
        out: list[StageOutput] = []
        row = 0
        for _, boxes in plans:
            out.append(Classifications(tuple(
                Classification(classes[row + i], self.class_names[classes[row + i]], scores[row + i], box)
                for i, box in enumerate(boxes))))
            row += len(boxes)
        return out

    def _plan(self, payload: Payload) -> tuple[np.ndarray, list[Box | None]]:
        img = payload.image
        if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise BadInputError(f"request {payload.request_id!r}: the classifier needs an HxWx3 uint8 RGB image")
        return np.ascontiguousarray(img), select_crops(payload.outputs, img.shape[1], img.shape[0], self.max_crops)


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> TorchClassifier:
    return TorchClassifier(spec, threads=threads, device=device)
