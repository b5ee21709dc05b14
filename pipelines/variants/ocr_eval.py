"""doc-ocr's evaluation set (the spec's ``evaluation``): rendered documents with known text.

Inputs: the documents of ``ocr_docs`` (known lines, line boxes, orientation)
and skimage's two text photos (no transcript: timing inputs, never scored).
Scores per stage, each in [0, 1]:

- ``det``: line-detection F1 -- a true line matches a detected box when the
  box's bounds overlap it at IoU >= 0.5 (PASCAL VOC's threshold), one to one.
- ``cls``: share of lines whose angle matches the page's (0 or 180).
- ``rec``: 1 - character error rate (Levenshtein distance / truth length) of
  the recognised lines joined by spaces against the page's lines in on-page
  reading order (an upside-down page reads bottom line first once turned).
- ``llm``: share of the summary's content words (after the primer) that occur
  in the document: how much of what it says comes from the document.
"""

from __future__ import annotations

from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants.ocr_docs import RenderedDoc, rendered_docs, text_photos
from varipipe.text import content_words

__all__ = ["OcrEvaluation", "make", "cer", "line_f1", "summary_words", "SUMMARY_PRIMER", "IOU_THRESHOLD"]

IOU_THRESHOLD = 0.5  # PASCAL VOC box matching
SUMMARY_PRIMER = "The document"  # doc-ocr.yaml's llm primer: the summary starts with it
METRICS = {
    "det": f"text-line detection F1 at IoU {IOU_THRESHOLD:g}",
    "cls": "line orientation accuracy",
    "rec": "1 - character error rate",
    "llm": "share of summary content words found in the document",
}


def cer(predicted: str, truth: str) -> float:
    """Levenshtein distance / len(truth) (insertions, deletions, substitutions cost 1)."""
    if not truth:
        return 0.0 if not predicted else 1.0
    prev = list(range(len(truth) + 1))
    for i, a in enumerate(predicted, start=1):
        cur = [i]
        for j, b in enumerate(truth, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b)))
        prev = cur
    return prev[-1] / len(truth)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def line_f1(found: list[tuple[float, ...]], truth: list[tuple[float, ...]]) -> float:
    """F1 of one-to-one matches at IoU >= IOU_THRESHOLD, greedy by overlap."""
    if not found or not truth:
        return 1.0 if not found and not truth else 0.0
    pairs = sorted(((_iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f, used_t, hits = set(), set(), 0
    for overlap, i, j in pairs:
        if overlap < IOU_THRESHOLD:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            hits += 1
    p, r = hits / len(found), hits / len(truth)
    return 2 * p * r / (p + r) if hits else 0.0


def _page_order(doc: RenderedDoc) -> str:
    lines = reversed(doc.lines) if doc.angle == 180 else doc.lines
    return " ".join(lines)


class OcrEvaluation:
    """The ``EvaluationSet`` of doc-ocr (see ``varipipe.profiler.evaluate``)."""

    def __init__(self) -> None:
        self.docs = {d.name: d for d in rendered_docs()}
        self.photos = text_photos()

    def payloads(self) -> list[Payload]:
        docs = [Payload(request_id=n, image=d.image.copy()) for n, d in self.docs.items()]
        return docs + [Payload(request_id=n, image=img.copy()) for n, img in self.photos]

    def metric(self, stage: str) -> str:
        return METRICS.get(stage, "")

    def score(self, stage: str, payload: Payload, output: StageOutput) -> float | None:
        doc = self.docs.get(payload.request_id)
        if doc is None:
            return None
        items = getattr(output, "items", ())
        if stage == "det":
            return line_f1([b.bounds() for b in items], list(doc.boxes))
        if stage == "cls":
            return sum(o.angle == doc.angle for o in items) / len(items) if items else 0.0
        if stage == "rec":
            got = " ".join(line.text for line in items if line.text)
            return max(0.0, 1.0 - cer(got, _page_order(doc)))
        if stage == "llm":
            return _grounded_share(str(getattr(output, "text", "")), doc.text)
        return None


# Function words carry no content (after the caption metric's list, varipipe.profiler.accuracy).
SUMMARY_STOPWORDS = frozenset("a an the of in on at to and or with by for from is are was were be been it its this that "
                       "these those there here as into onto over under it's has have will can may must not no "
                       "all any some one".split())


def summary_words(text: str) -> set[str]:
    """The summary metric's words of a text: lower-cased words and numbers, function words removed."""
    return set(content_words(text, SUMMARY_STOPWORDS, digits=True))


def _grounded_share(summary: str, document: str) -> float:
    said = summary_words(summary.removeprefix(SUMMARY_PRIMER))
    return len(said & summary_words(document)) / len(said) if said else 0.0


def make() -> OcrEvaluation:
    return OcrEvaluation()
