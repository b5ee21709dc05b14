"""Detector variants on PyTorch: the GPU path of the detector stage (and its CPU check).

The same spec entries as the OpenCV detector (``detector.py``); ``device="gpu"``
in the factory builds this one. Everything between the request's image and
its ``Detections`` is PyTorch and runs on the variant's device: letterbox,
network, scoring, per-class NMS; only the kept boxes are copied back. None of
it is shared with the OpenCV path, so each checks the other (tests compare
their raw outputs on the same input blob).

The network comes from an *architecture* named by ``params.arch`` (default
``darknet``, any darknet cfg of ``[yolo]`` heads; ``yolov10``: YOLOv10-N's
one-to-one head, the GPU path of ``yolov10.py``). A new detector family
registers a ``DetectorArch`` whose network maps [B, 3, S, S] RGB in [0, 1] to
rows [B, N, 5 + C] = (centre x, centre y, width, height in input pixels,
objectness, C class probabilities); a family without objectness returns 1 there.
Darknet scores one class per box (its best); YOLOv10 every (box, class) pair
above the threshold, as its ONNX path does.

``multiscale`` (darknet rungs ``-ms``): each image also enters the batch as a
shrunk copy on the pad value (``_multiscale``'s geometry, this module's
resampling), so the network sees 2B inputs in one forward pass; both views'
candidates are mapped to image pixels, clipped and merged by one per-class NMS.

Spec params: ``model``, ``arch``, ``score_threshold``, ``nms_iou`` (``null``:
no NMS, YOLOv10's NMS-free output), ``max_detections``, ``multiscale`` (as the
CPU variants), ``gpu_dtype`` (default float16), ``weights``: ``packaged``
(default) or ``random`` (darknet only: the cfg's network with seeded random
weights, ``_darknet.random_darknet``, for timing where the weights cannot
travel; its detections mean nothing), ``arch_config``: with random weights, the
darknet cfg to build (default: the model's own, which needs its package).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varipipe.errors import BadInputError, UnknownNameError
from varipipe.pipelines.models import ModelFiles, coco_labels, model_files
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants._torch_image import resize_image
from varipipe.pipelines.variants._torch_runtime import TorchVariant
from varipipe.pipelines.variants.outputs import Detection, Detections
from varipipe.records import VariantSpec

__all__ = ["ARCHITECTURES", "DetectorArch", "Placement", "TorchDetector", "WEIGHTS", "RANDOM_SEED", "candidates",
           "letterbox", "nms", "select", "shrunk_letterbox", "suppress", "make"]

# Darknet's defaults for `darknet detect` (-thresh .25 in darknet.c; nms .45 in detector.c).
SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45
MAX_DETECTIONS = 20  # per image, as the OpenCV variant
DEFAULT_INPUT = 416  # yolov3-tiny.cfg's trained resolution
# Candidates that enter NMS at most, best first: NMS is quadratic in them, and
# above the score threshold a photo has tens, not thousands.
MAX_CANDIDATES = 1000
WEIGHTS = ("packaged", "random")
RANDOM_SEED = 0  # random weights are seeded: every replica and every run times the same network


@dataclass(frozen=True)
class DetectorArch:
    """A detector family: how to build its network from the model files, how to pad its input."""

    name: str
    build: Callable[[ModelFiles], Any]  # -> torch.nn.Module, float32, CPU, eval mode
    pad_value: float  # letterbox canvas value in [0, 1]
    multi_label: bool = False  # every (box, class) pair above the threshold, or only each box's best class
    files: Callable[[str], str] = str  # params.model -> the name of the model files the network is built from
    # (config file, seed) -> the network with seeded random weights; None: the family has no random mode
    build_random: Callable[[Any, int], Any] | None = None


def _build_darknet(files: ModelFiles):  # -> Darknet
    from varipipe.pipelines.variants._darknet import load_darknet

    if files.config is None:
        raise ValueError(f"model {files.name!r}: a darknet network needs its .cfg")
    return load_darknet(files.config, files.weights)


def _random_darknet(cfg, seed: int):  # -> Darknet
    from varipipe.pipelines.variants._darknet import random_darknet

    return random_darknet(cfg, seed)


def _build_yolov10(files: ModelFiles):  # -> YOLOv10Rows
    from varipipe.pipelines.variants._yolov10 import YOLOv10Rows, load_yolov10n

    return YOLOv10Rows(load_yolov10n(files.weights))


# YOLOv10's CPU path letterboxes onto 127 grey (_yolo.PAD_VALUE, an 8-bit canvas); the same here.
_YOLOV10_PAD = 127 / 255

ARCHITECTURES: dict[str, DetectorArch] = {
    # Darknet letterboxes onto 0.5 grey (image.c, letterbox_image: fill_image(boxed, .5)).
    "darknet": DetectorArch("darknet", _build_darknet, 0.5, build_random=_random_darknet),
    # The network is built from the pickled checkpoint (model "<name>-pt"), not from the ONNX export.
    "yolov10": DetectorArch("yolov10", _build_yolov10, _YOLOV10_PAD, multi_label=True,
                            files=lambda model: f"{model}-pt"),
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
    h, w = int(image.shape[0]), int(image.shape[1])
    scale = min(size / w, size / h)
    return _place(image, size, pad_value, scale, max(1, min(size, round(w * scale))),
                  max(1, min(size, round(h * scale))))


def shrunk_letterbox(image, size: int, pad_value: float):  # -> (3xSxS, Placement)
    """The multi-scale rung's second view: the image at ``_multiscale.SHRINK`` of its letterboxed
    size, centred on ``pad_value`` (the geometry is ``_multiscale``'s, shared with the OpenCV path)."""
    from varipipe.pipelines.variants._multiscale import SHRINK, shrunk_fit

    h, w = int(image.shape[0]), int(image.shape[1])
    return _place(image, size, pad_value, *shrunk_fit(w, h, size, SHRINK))


def _place(image, size: int, pad_value: float, scale: float, new_w: int, new_h: int):
    """The image resized to new_w x new_h, centred on a size x size canvas of ``pad_value``, in [0, 1]."""
    import torch

    h, w = int(image.shape[0]), int(image.shape[1])
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


def candidates(rows, score_threshold: float, multi_label: bool = False):
    """One image's rows [N, 5 + C] -> (boxes x1y1x2y2 in input pixels, class ids, scores) scoring at
    least ``score_threshold``, at most ``MAX_CANDIDATES`` (the best), on the rows' device.

    A score is objectness x class probability (darknet's ``prob``): each row's best class, or with
    ``multi_label`` every class that reaches the threshold (a row may then give several boxes).
    """
    import torch

    probs = rows[:, 5:] * rows[:, 4:5]
    if multi_label:
        keep, classes = torch.nonzero(probs >= score_threshold, as_tuple=True)
        scores = probs[keep, classes]
    else:
        scores, classes = probs.max(dim=1)
        keep = torch.nonzero(scores >= score_threshold).flatten()
        scores, classes = scores[keep], classes[keep]
    if len(keep) > MAX_CANDIDATES:
        top = torch.topk(scores, MAX_CANDIDATES).indices
        keep, classes, scores = keep[top], classes[top], scores[top]
    centre, size = rows[keep, 0:2], rows[keep, 2:4]
    return torch.cat([centre - size / 2, centre + size / 2], dim=1), classes, scores


def suppress(boxes, scores, classes, iou_threshold: float | None):  # -> LongTensor of kept indices on CPU
    """Per-class NMS at ``iou_threshold``; ``None``: no NMS, every box, best first."""
    import torch

    if iou_threshold is None:
        return torch.argsort(scores, descending=True, stable=True).cpu()
    return nms(boxes, scores, classes, iou_threshold)


def select(rows, score_threshold: float, iou_threshold: float | None, max_detections: int,
           multi_label: bool = False):
    """One image's rows [N, 5 + C] -> (boxes x1y1x2y2 in input pixels, class ids, scores) after NMS, on CPU."""
    boxes, classes, scores = candidates(rows, score_threshold, multi_label)
    kept = suppress(boxes, scores, classes, iou_threshold)[:max_detections].to(boxes.device)
    return boxes[kept].cpu(), classes[kept].cpu(), scores[kept].cpu()


class TorchDetector(TorchVariant):
    """One input size of a detector network on PyTorch; ``infer`` runs the batch in one forward pass."""

    cudnn_benchmark = True  # the input shape is fixed by the batch size: timed once per size, in warm-up

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu", arch: str | None = None) -> None:
        super().__init__(spec, threads, device)
        self.size = int(spec.input_size or DEFAULT_INPUT)
        self.score_threshold = float(self.param("score_threshold", SCORE_THRESHOLD))
        nms_iou = self.param("nms_iou", NMS_IOU)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.max_detections = int(self.param("max_detections", MAX_DETECTIONS))
        self.multiscale = bool(self.param("multiscale", False))
        name = arch or str(self.param("arch", "darknet"))
        if name not in ARCHITECTURES:
            raise UnknownNameError("detector architecture", name, list(ARCHITECTURES))
        self.arch = ARCHITECTURES[name]
        self.weights = str(self.param("weights", "packaged"))
        if self.weights not in WEIGHTS:
            raise spec.spec_error(".params.weights", f"must be one of {WEIGHTS}, got {self.weights!r}")
        if self.weights == "random" and self.arch.build_random is None:
            raise spec.spec_error(".params.weights", f"random weights are not implemented for arch {name!r}")
        self.class_names: list[str] = []
        self._device: Any = None
        self._dtype: Any = None

    def model_name(self) -> str:
        """The model files this variant's network is built from (``params.model`` through its architecture)."""
        return self.arch.files(str(self.param("model", "yolov3-tiny")))

    def load(self) -> None:
        from pathlib import Path

        self._device, self._dtype = self.torch_setup()
        if self.weights == "random":
            assert self.arch.build_random is not None
            custom = str(self.param("arch_config", ""))
            cfg = Path(custom) if custom else model_files(self.model_name()).config
            net, labels = self.arch.build_random(cfg, RANDOM_SEED), coco_labels()  # every family here is COCO's
        else:
            files = model_files(self.model_name())
            net, labels = self.arch.build(files), files.labels
        assert labels is not None
        self.class_names = labels.read_text(encoding="utf-8").split("\n")
        self._model = net.to(self._device, self._dtype).eval()

    def network_input(self, batch: Sequence[Payload]) -> tuple[Any, list[Placement]]:
        """The batch as the network's input tensor (on the device) and each input's placement.

        With ``multiscale`` every image has two inputs in a row (its letterbox, its shrunk copy).
        """
        import torch

        placers = (letterbox, shrunk_letterbox) if self.multiscale else (letterbox,)
        placed = []
        for p in batch:
            image = torch.from_numpy(_image_of(p)).to(self._device)
            placed += [place(image, self.size, self.arch.pad_value) for place in placers]
        return torch.stack([c for c, _ in placed]).to(self._dtype), [g for _, g in placed]

    def views_per_image(self) -> int:
        return 2 if self.multiscale else 1

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
        n = self.views_per_image()
        with torch.inference_mode():
            return [self._detections([(rows[j], placements[j]) for j in range(i, i + n)])
                    for i in range(0, len(placements), n)]

    def _detections(self, views: Sequence[tuple[Any, Placement]]) -> Detections:
        """One image's detections from the rows of each of its views (one, or two with ``multiscale``)."""
        import torch

        found = [candidates(rows, self.score_threshold, self.arch.multi_label) for rows, _ in views]
        # In image pixels; with several views clipped before the merge, as _multiscale.merge does.
        boxes = torch.cat([_to_image(b, geo, clip=len(views) > 1) for (b, _, _), (_, geo) in zip(found, views,
                                                                                              strict=True)])
        classes, scores = torch.cat([c for _, c, _ in found]), torch.cat([s for _, _, s in found])
        kept = suppress(boxes, scores, classes, self.nms_iou)[:self.max_detections].to(boxes.device)
        geo = views[0][1]
        items = [Detection(tuple(box), int(k), self.class_names[k], float(s)) for box, k, s in
                 zip(_to_image_clip(boxes[kept], geo).tolist(), classes[kept].tolist(), scores[kept].tolist(),
                     strict=True)]
        return Detections(tuple(items), (geo.width, geo.height))


def _to_image(boxes, geo: Placement, clip: bool):
    """Boxes x1y1x2y2 in input pixels -> image pixels (float32), optionally clipped to the image."""
    shift = boxes.new_tensor([geo.offset_x, geo.offset_y, geo.offset_x, geo.offset_y])
    out = (boxes.float() - shift) / geo.scale
    return _to_image_clip(out, geo) if clip else out


def _to_image_clip(boxes, geo: Placement):
    import torch

    return torch.minimum(boxes.clamp(min=0.0), boxes.new_tensor([geo.width, geo.height, geo.width, geo.height]))


def _image_of(payload: Payload) -> np.ndarray:
    img = payload.image
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        shape = None if img is None else (img.shape, str(img.dtype))
        raise BadInputError(f"request {payload.request_id!r}: the detector needs an HxWx3 uint8 RGB image, got {shape}")
    return np.ascontiguousarray(img)


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> TorchDetector:
    return TorchDetector(spec, threads=threads, device=device)
