"""Typed stage outputs of the doc-ocr variants: text boxes, their orientation, the text read.

Like the vision-caption outputs, these are small frozen dataclasses of plain
Python values (pickled between replicas, rendered to JSON in replies). Every
output with ``items`` has one item per text box, so the profiler's
``items_per_request`` reads the detector's fan-out (boxes per document).

``RecognizedText`` carries a ``context()``: the text a downstream LLM stage
puts into its prompt (``variants.llm``'s ``{context}``), without knowing which
stage produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Quad", "TextBox", "TextBoxes", "Orientation", "Orientations", "TextLine", "RecognizedText"]

# Four (x, y) corners in original-image pixels: top-left, top-right, bottom-right, bottom-left.
Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]

SUMMARY_CHARS = 120  # characters of recognised text shown in a one-line summary


def _quad_json(q: Quad) -> list[list[float]]:
    return [[round(float(x), 1), round(float(y), 1)] for x, y in q]


@dataclass(frozen=True)
class TextBox:
    """One text line found by the detector, with the DB score of its region."""

    quad: Quad
    score: float

    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.quad], [p[1] for p in self.quad]
        return min(xs), min(ys), max(xs), max(ys)

    def to_json(self) -> dict[str, Any]:
        return {"quad": _quad_json(self.quad), "score": round(self.score, 4)}


@dataclass(frozen=True)
class TextBoxes:
    """The detector's boxes for one image, in reading order (top to bottom, left to right)."""

    items: tuple[TextBox, ...]
    image_size: tuple[int, int]  # (width, height)

    def to_json(self) -> dict[str, Any]:
        return {"boxes": [b.to_json() for b in self.items], "image_size": list(self.image_size)}

    def summary(self) -> str:
        return f"{len(self.items)} text boxes"


@dataclass(frozen=True)
class Orientation:
    """A text line's angle (0 or 180 degrees) and the classifier's confidence in it."""

    angle: int
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"angle": self.angle, "score": round(self.score, 4)}


@dataclass(frozen=True)
class Orientations:
    """The angle classifier's output: one orientation per upstream text box, same order."""

    items: tuple[Orientation, ...]

    def to_json(self) -> dict[str, Any]:
        return {"orientations": [o.to_json() for o in self.items]}

    def summary(self) -> str:
        flipped = sum(o.angle == 180 for o in self.items)
        return f"{len(self.items)} lines, {flipped} upside down"


@dataclass(frozen=True)
class TextLine:
    """One recognised line: its text, the mean character confidence, and its box."""

    text: str
    score: float
    quad: Quad

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "score": round(self.score, 4), "quad": _quad_json(self.quad)}


@dataclass(frozen=True)
class RecognizedText:
    """The recogniser's output for one document: its lines in reading order."""

    items: tuple[TextLine, ...]

    def text(self) -> str:
        return "\n".join(line.text for line in self.items if line.text)

    def context(self) -> str:
        """What a downstream LLM is told the document says."""
        return " ".join(line.text for line in self.items if line.text)

    def to_json(self) -> dict[str, Any]:
        return {"lines": [line.to_json() for line in self.items], "text": self.text()}

    def summary(self) -> str:
        text = self.context()
        if not text:
            return "no text recognised"
        return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"
