"""Detector variants on PyTorch: the GPU path of the detector stage (and its CPU check).

The same spec entries as the OpenCV detector (``detector.py``); ``device="gpu"``
in the factory builds this one. Everything between the request's image and
its ``Detections`` is PyTorch and runs on the variant's device: letterbox,
network, scoring, per-class NMS; only the kept boxes are copied back. None of
it is shared with the OpenCV path, so each checks the other (tests compare
their raw outputs on the same input blob).

The network comes from an *architecture* named by ``params.arch`` (default
``darknet``, any darknet cfg of ``[yolo]`` heads). A new detector family
registers a ``DetectorArch`` whose network maps [B, 3, S, S] RGB in [0, 1] to
rows [B, N, 5 + C] = (centre x, centre y, width, height in input pixels,
objectness, C class probabilities); a family without objectness returns 1 there.

Spec params: ``model``, ``arch``, ``score_threshold``, ``nms_iou``,
``max_detections`` (as the OpenCV variant), ``gpu_dtype`` (default float16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varipipe.errors import BadInputError, UnknownNameError
from varipipe.pipelines.models import ModelFiles, model_files
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants._torch_image import resize_image
from varipipe.pipelines.variants._torch_runtime import TorchVariant
from varipipe.pipelines.variants.outputs import Detection, Detections
from varipipe.records import VariantSpec

__all__ = ["ARCHITECTURES", "DetectorArch", "Placement", "TorchDetector", "letterbox", "nms", "select", "make"]

# Darknet's defaults for `darknet detect` (-thresh .25 in darknet.c; nms .45 in detector.c).
SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45
MAX_DETECTIONS = 20  # per image, as the OpenCV variant
DEFAULT_INPUT = 416  # yolov3-tiny.cfg's trained resolution
# Candidates that enter NMS at most, best first: NMS is quadratic in them, and
# above the score threshold a photo has tens, not thousands.
MAX_CANDIDATES = 1000


@dataclass(frozen=True)
class DetectorArch:
    """A detector family: how to build its network from the model files, how to pad its input."""

    name: str
    build: Callable[[ModelFiles], Any]  # -> torch.nn.Module, float32, CPU, eval mode
    pad_value: float  # letterbox canvas value in [0, 1]


def _build_darknet(files: ModelFiles):  # -> Darknet
    from varipipe.pipelines.variants._darknet import load_darknet

    if files.config is None:
        raise ValueError(f"model {files.name!r}: a darknet network needs its .cfg")
    return load_darknet(files.config, files.weights)


ARCHITECTURES: dict[str, DetectorArch] = {
    # Darknet letterboxes onto 0.5 grey (image.c, letterbox_image: fill_image(boxed, .5)).
    "darknet": DetectorArch("darknet", _build_darknet, 0.5),
}


@dataclass(frozen=True)
class Placement:
    """Where an image landed on the square input: input pixel = image pixel x scale + offset."""

    scale: float
    offset_x: int
    offset_y: int
    width: int
    height: int


def letterbox(image, size: int, pad_value: float):  # (torch uint8 HxWx3 on the device) -> (3xSxS, Placement)
    """The image scaled to fit a size x size square (aspect kept), centred on ``pad_value``, in [0, 1]."""
    import torch

    h, w = int(image.shape[0]), int(image.shape[1])
    scale = min(size / w, size / h)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    x = resize_image(image, new_h, new_w).div_(255.0)
    canvas = torch.full((3, size, size), pad_value, dtype=x.dtype, device=x.device)
    ox, oy = (size - new_w) // 2, (size - new_h) // 2
    canvas[:, oy:oy + new_h, ox:ox + new_w] = x[0]
    return canvas, Placement(scale, ox, oy, w, h)


def _pairwise_iou(a, b):
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4], both x1y1x2y2."""
    import torch

    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes, scores, classes, iou_threshold: float):  # -> LongTensor of kept indices, best first
    """Greedy per-class non-maximum suppression: a box is dropped when a better kept box of its
    class overlaps it by more than ``iou_threshold`` (the overlap matrix is built on the device)."""
    import torch

    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    b, c = boxes[order], classes[order]
    overlaps = ((_pairwise_iou(b, b) > iou_threshold) & (c[:, None] == c[None, :])).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= overlaps[i]
    return order.cpu()[torch.tensor(kept, dtype=torch.long)]


def select(rows, score_threshold: float, iou_threshold: float, max_detections: int):
    """One image's rows [N, 5 + C] -> (boxes x1y1x2y2 in input pixels, class ids, scores) after NMS, on CPU.

    A row's score is objectness x its best class probability (darknet's ``prob``), one class per box.
    """
    import torch

    probs = rows[:, 5:] * rows[:, 4:5]
    scores, classes = probs.max(dim=1)
    keep = torch.nonzero(scores >= score_threshold).flatten()
    if len(keep) > MAX_CANDIDATES:
        keep = keep[torch.topk(scores[keep], MAX_CANDIDATES).indices]
    centre, size = rows[keep, 0:2], rows[keep, 2:4]
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    kept = nms(boxes, scores[keep], classes[keep], iou_threshold)[:max_detections]
    kept_dev = kept.to(boxes.device)
    return boxes[kept_dev].cpu(), classes[keep][kept_dev].cpu(), scores[keep][kept_dev].cpu()


class TorchDetector(TorchVariant):
    """One input size of a detector network on PyTorch; ``infer`` runs the batch in one forward pass."""

    cudnn_benchmark = True  # the input shape is fixed by the batch size: timed once per size, in warm-up

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.size = int(spec.input_size or DEFAULT_INPUT)
        self.score_threshold = float(self.param("score_threshold", SCORE_THRESHOLD))
        self.nms_iou = float(self.param("nms_iou", NMS_IOU))
        self.max_detections = int(self.param("max_detections", MAX_DETECTIONS))
        name = str(self.param("arch", "darknet"))
        if name not in ARCHITECTURES:
            raise UnknownNameError("detector architecture", name, list(ARCHITECTURES))
        self.arch = ARCHITECTURES[name]
        self.class_names: list[str] = []
        self._device: Any = None
        self._dtype: Any = None

    def load(self) -> None:
        files = model_files(str(self.param("model", "yolov3-tiny")))
        self._device, self._dtype = self.torch_setup()
        net = self.arch.build(files)
        assert files.labels is not None
        self.class_names = files.labels.read_text(encoding="utf-8").split("\n")
        self._model = net.to(self._device, self._dtype).eval()

    def network_input(self, batch: Sequence[Payload]) -> tuple[Any, list[Placement]]:
        """The batch as the network's input tensor (on the device) and each image's placement."""
        import torch

        placed = [letterbox(torch.from_numpy(_image_of(p)).to(self._device), self.size, self.arch.pad_value)
                  for p in batch]
        return torch.stack([c for c, _ in placed]).to(self._dtype), [g for _, g in placed]

    def raw_outputs(self, batch: Sequence[Payload]) -> tuple[Any, list[Placement]]:
        """The network's rows [B, N, 5 + C] (float32, on the device) before scoring and NMS, and placements."""
        import torch

        net = self._require_loaded()
        with torch.inference_mode():
            x, placements = self.network_input(batch)
            return net(x).float(), placements

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        import torch

        if not batch:
            return []
        rows, placements = self.raw_outputs(batch)
        with torch.inference_mode():
            return [self._detections(rows[i], placements[i]) for i in range(len(batch))]

    def _detections(self, rows, geo: Placement) -> Detections:
        boxes, classes, scores = select(rows, self.score_threshold, self.nms_iou, self.max_detections)
        items = []
        for box, k, s in zip(boxes.tolist(), classes.tolist(), scores.tolist(), strict=True):
            x1, x2 = (min(max((v - geo.offset_x) / geo.scale, 0.0), geo.width) for v in (box[0], box[2]))
            y1, y2 = (min(max((v - geo.offset_y) / geo.scale, 0.0), geo.height) for v in (box[1], box[3]))
            items.append(Detection((x1, y1, x2, y2), int(k), self.class_names[k], float(s)))
        return Detections(tuple(items), (geo.width, geo.height))


def _image_of(payload: Payload) -> np.ndarray:
    img = payload.image
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        shape = None if img is None else (img.shape, str(img.dtype))
        raise BadInputError(f"request {payload.request_id!r}: the detector needs an HxWx3 uint8 RGB image, got {shape}")
    return np.ascontiguousarray(img)


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> TorchDetector:
    return TorchDetector(spec, threads=threads, device=device)
