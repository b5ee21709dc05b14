"""Typed stage outputs of the vision-caption variants, and label collection.

Outputs are small frozen dataclasses of plain Python values: they are pickled
between Ray Serve replicas and rendered to JSON for HTTP replies. Any output
that names things in the scene has a ``labels()`` method; the LLM stage
collects labels through it without knowing which stage produced them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Box",
    "Detection",
    "Detections",
    "Classification",
    "Classifications",
    "Caption",
    "Labelled",
    "collect_labels",
    "latest_detections",
    "counted_labels",
]

# (x1, y1, x2, y2) in pixels of the original image, x to the right, y down.
Box = tuple[float, float, float, float]


@runtime_checkable
class Labelled(Protocol):
    """An output that names what it saw, most confident first."""

    def labels(self) -> list[str]: ...


def _round_box(box: Box) -> list[float]:
    return [round(float(v), 1) for v in box]


@dataclass(frozen=True)
class Detection:
    """One detected object: box in original-image pixels, COCO class, score in [0, 1]."""

    box: Box
    class_id: int
    label: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"box": _round_box(self.box), "class_id": self.class_id, "label": self.label,
                "score": round(self.score, 4)}


@dataclass(frozen=True)
class Detections:
    """The detector's output for one image, highest score first."""

    items: tuple[Detection, ...]
    image_size: tuple[int, int]  # (width, height) of the image the boxes refer to

    def to_json(self) -> dict[str, Any]:
        return {"detections": [d.to_json() for d in self.items], "image_size": list(self.image_size)}

    def summary(self) -> str:
        if not self.items:
            return "no objects found"
        return ", ".join(f"{d.label} {d.score:.2f}" for d in self.items)

    def labels(self) -> list[str]:
        return _unique(d.label for d in self.items)


@dataclass(frozen=True)
class Classification:
    """Top-1 ImageNet class of one crop (``box`` None: the whole image)."""

    class_id: int
    label: str
    score: float
    box: Box | None = None

    def to_json(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "label": self.label, "score": round(self.score, 4),
                "box": _round_box(self.box) if self.box is not None else None}


@dataclass(frozen=True)
class Classifications:
    """The classifier's output for one image: one entry per crop, in crop order."""

    items: tuple[Classification, ...]

    def to_json(self) -> dict[str, Any]:
        return {"classifications": [c.to_json() for c in self.items]}

    def summary(self) -> str:
        return ", ".join(f"{c.label} {c.score:.2f}" for c in self.items) or "nothing classified"

    def labels(self) -> list[str]:
        ranked = sorted(self.items, key=lambda c: -c.score)
        return _unique(c.label for c in ranked)


@dataclass(frozen=True)
class Caption:
    """The LLM's sentence (or its answer to ``question``), the number of tokens it generated and the
    labels it was given."""

    text: str
    tokens: int
    prompt_labels: tuple[str, ...] = ()
    question: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "tokens": self.tokens, "prompt_labels": list(self.prompt_labels)}
        if self.question is not None:
            out["question"] = self.question
        return out

    def summary(self) -> str:
        return self.text


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def collect_labels(outputs: Mapping[str, object]) -> list[str]:
    """Labels of every upstream output that has them, later stages first, without repeats.

    Later stages come first because they are the finer-grained names (a
    classifier's "tabby cat" is more telling than a detector's "cat").
    """
    found: list[str] = []
    for output in reversed(list(outputs.values())):
        if isinstance(output, Labelled):
            found.extend(output.labels())
    return _unique(found)


def latest_detections(outputs: Mapping[str, object]) -> Detections | None:
    """The last upstream stage's detections (None when no stage detected)."""
    return next((o for o in reversed(list(outputs.values())) if isinstance(o, Detections)), None)


def counted_labels(outputs: Mapping[str, object]) -> list[tuple[str, int]]:
    """(label, how many detections have it) from the latest detections, most frequent first, then in the
    detector's order (most confident first)."""
    found = latest_detections(outputs)
    counts: dict[str, int] = {}
    for d in found.items if found is not None else ():
        counts[d.label] = counts.get(d.label, 0) + 1
    order = {label: k for k, label in enumerate(counts)}
    return sorted(counts.items(), key=lambda lc: (-lc[1], order[lc[0]]))
