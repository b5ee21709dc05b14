"""doc-ocr helpers without models: scoring (CER, line F1), rendering, outputs, reading order."""

from __future__ import annotations

import numpy as np
import pytest

from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants import _ocr, ocr_docs, ocr_eval
from varipipe.pipelines.variants.ocr_outputs import (
    Orientation,
    Orientations,
    RecognizedText,
    TextBox,
    TextBoxes,
    TextLine,
)

QUAD = ((0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0))


def test_cer_counts_edits_over_truth_length():
    assert ocr_eval.cer("abc", "abc") == 0.0
    assert ocr_eval.cer("abd", "abc") == pytest.approx(1 / 3)
    assert ocr_eval.cer("", "abcd") == 1.0
    assert ocr_eval.cer("INVOICE2041", "INVOICE 2041") == pytest.approx(1 / 12)


def test_line_f1_matches_one_to_one_at_iou_half():
    truth = [(0, 0, 10, 10), (0, 20, 10, 30)]
    assert ocr_eval.line_f1([(0, 0, 10, 10), (0, 20, 10, 30)], truth) == 1.0
    assert ocr_eval.line_f1([(0, 0, 10, 10)], truth) == pytest.approx(2 / 3)
    assert ocr_eval.line_f1([(0, 0, 10, 10), (1, 1, 10, 10)], [(0, 0, 10, 10)]) == pytest.approx(2 / 3)
    assert ocr_eval.line_f1([], truth) == 0.0


def test_rendered_documents_know_their_text_boxes_and_orientation():
    docs = ocr_docs.rendered_docs()
    assert {d.name for d in docs} >= set(ocr_docs.DOCUMENTS)
    for d in docs:
        assert d.image.dtype == np.uint8 and d.image.ndim == 3 and d.image.shape[2] == 3
        assert len(d.boxes) == len(d.lines)
        h, w = d.image.shape[:2]
        assert all(0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h for x1, y1, x2, y2 in d.boxes)
        assert d.angle == (180 if d.name in ocr_docs.FLIPPED else 0)
    again = ocr_docs.rendered_docs()
    assert all(np.array_equal(a.image, b.image) for a, b in zip(docs, again, strict=True))  # deterministic


def test_evaluation_scores_a_perfect_reading_as_one():
    ev = ocr_eval.make()
    doc = ev.docs["invoice"]
    payload = Payload(request_id="invoice", image=doc.image)
    boxes = TextBoxes(tuple(TextBox(((x1, y1), (x2, y1), (x2, y2), (x1, y2)), 0.9) for x1, y1, x2, y2 in doc.boxes),
                      (doc.image.shape[1], doc.image.shape[0]))
    lines = RecognizedText(tuple(TextLine(t, 0.9, QUAD) for t in doc.lines))
    assert ev.score("det", payload, boxes) == 1.0
    assert ev.score("cls", payload, Orientations((Orientation(0, 1.0),) * len(doc.lines))) == 1.0
    assert ev.score("rec", payload, lines) == 1.0
    assert ev.score("rec", Payload(request_id="photo-text"), lines) is None  # no transcript
    assert ev.metric("rec") and not ev.metric("unknown-stage")


def test_flipped_page_reads_bottom_line_first():
    ev = ocr_eval.make()
    doc = ev.docs["ticket"]
    read = RecognizedText(tuple(TextLine(t, 0.9, QUAD) for t in reversed(doc.lines)))
    assert ev.score("rec", Payload(request_id="ticket"), read) == 1.0


def test_outputs_render_json_and_context():
    text = RecognizedText((TextLine("Hello", 0.9, QUAD), TextLine("world", 0.8, QUAD)))
    assert text.context() == "Hello world"
    assert text.to_json()["text"] == "Hello\nworld"
    assert TextBoxes((TextBox(QUAD, 0.5),), (10, 5)).summary() == "1 text boxes"


def test_reading_order_is_top_down_then_left_right():
    def box(x, y):
        return (np.array([[x, y], [x + 5, y], [x + 5, y + 4], [x, y + 4]], dtype=np.float32), 1.0)

    ordered = _ocr.reading_order([box(50, 40), box(30, 2), box(0, 0)])
    assert [float(b[0][0][0]) for b in ordered] == [0.0, 30.0, 50.0]


def test_det_input_is_a_multiple_of_the_stride_and_capped():
    x = _ocr.det_input(np.zeros((700, 1500, 3), np.uint8), 960)
    assert x.shape[0] == 1 and x.shape[1] == 3
    assert x.shape[2] % _ocr.NET_STRIDE == 0 and x.shape[3] % _ocr.NET_STRIDE == 0
    assert max(x.shape[2:]) <= 960
