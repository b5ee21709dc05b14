"""Grounded questions about the labelled photos: the LLM stage's task on vision-caption. Pure.

``profiler/evalset/qa.json`` holds questions generated from ``labels.json``
(the ground truth, never a model's output) by ``generate`` (written by
``profiler/evalset/tools/make_qa.py``), each with one exact answer:

- ``count``: "How many <plural> are in the picture?" -> a non-negative integer:
  the photo's non-crowd boxes of that class; classes with a crowd box in the
  photo are never asked (a crowd makes the count ambiguous). Some questions
  ask for a class the photo does not have (answer 0).
- ``category``: "Is there <a/an> <category word> in the picture?" -> yes/no:
  yes when a box (crowd ones too) has a class of that COCO supercategory
  (``coco_supercategories.json``: the ``supercategory`` field of COCO 2017's
  instances categories). One yes and one no per photo, so the set is balanced.

Scoring (``normalise_answer``, ``score_answer``): exact match after
normalisation: lower case; a count answer is its first number (digits, or a
number word "zero" ... "twenty"; "no"/"none" = 0), a category answer its first
"yes" or "no" token; an answer without one is wrong.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varipipe.text import article, plural

__all__ = [
    "QaItem",
    "QaSet",
    "COUNT",
    "CATEGORY",
    "KINDS",
    "QA_FILE",
    "SUPERCATEGORY_FILE",
    "CATEGORY_WORDS",
    "UNCOUNTABLE",
    "count_question",
    "category_question",
    "normalise_answer",
    "score_answer",
    "generate",
    "load_supercategories",
    "load_qa_set",
    "qa_document",
]

COUNT, CATEGORY = "count", "category"
KINDS = (COUNT, CATEGORY)
_EVALSET = Path(__file__).resolve().parent / "evalset"
QA_FILE = "qa.json"
SUPERCATEGORY_FILE = "coco_supercategories.json"
SCHEMA = 1
SEED = 17  # the labelled set's split seed (labels.json "split.seed"), reused: one seed for the set

# How each COCO supercategory is asked about: a countable English noun phrase for the
# supercategory word ("sports" and "kitchen" are not nouns one can put "a" before).
# COCO's "indoor" and "outdoor" supercategories are left out: they are catch-alls for where a
# thing is usually found (a book, a bench), not a kind of thing a question can name.
CATEGORY_WORDS = {
    "person": "person",
    "vehicle": "vehicle",
    "animal": "animal",
    "accessory": "accessory",
    "sports": "piece of sports equipment",
    "kitchen": "piece of kitchenware",
    "food": "food item",
    "furniture": "piece of furniture",
    "electronic": "electronic device",
    "appliance": "appliance",
}
# Classes never counted: broccoli is a mass noun, skis and scissors are counted in pairs.
UNCOUNTABLE = frozenset({"broccoli", "skis", "scissors"})
# Share of photos that also get a count question about a class they do not have (answer 0).
ABSENT_COUNT_SHARE = 0.5

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_ZERO_WORDS = ("no", "none")
_TOKENS = re.compile(r"[a-z]+|\d+")


@dataclass(frozen=True)
class QaItem:
    """One question about one photo, with its exact answer."""

    id: str  # "<photo id>#<n>", unique
    image: str  # the photo's id in labels.json
    split: str  # the photo's split: "dev" | "test"
    kind: str  # COUNT | CATEGORY
    question: str
    answer: str  # digits (count) or "yes" / "no" (category)
    subject: str  # the COCO class counted, or the COCO supercategory asked about

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "split": self.split, "kind": self.kind,
                "question": self.question, "answer": self.answer, "subject": self.subject}


@dataclass(frozen=True)
class QaSet:
    items: tuple[QaItem, ...]

    def split(self, name: str) -> list[QaItem]:
        return [q for q in self.items if q.split == name]

    def of_image(self, image: str) -> list[QaItem]:
        return [q for q in self.items if q.image == image]

    def by_id(self) -> dict[str, QaItem]:
        return {q.id: q for q in self.items}


def count_question(label: str) -> str:
    return f"How many {plural(label)} are in the picture?"


def category_question(supercategory: str) -> str:
    word = CATEGORY_WORDS[supercategory]
    return f"Is there {article(word)} {word} in the picture?"


def normalise_answer(text: str, kind: str) -> str:
    """The answer's normal form: digits for ``count``, ``yes``/``no`` for ``category``; "" if none is found."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for token in _TOKENS.findall(text.lower()):
        if kind == CATEGORY:
            if token in ("yes", "no"):
                return token
        elif token.isdigit():
            return str(int(token))
        elif token in _NUMBER_WORDS:
            return str(_NUMBER_WORDS[token])
        elif token in _ZERO_WORDS:
            return "0"
    return ""


def score_answer(item: QaItem, answer: str) -> float:
    """1.0 when the normalised answer equals the item's answer, else 0.0."""
    return 1.0 if normalise_answer(answer, item.kind) == item.answer else 0.0


def _rng(image_id: str, seed: int) -> random.Random:
    """A generator of its own per photo: a photo's questions do not depend on the others'."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generate(labels: Mapping[str, Any], supercategories: Mapping[str, str], seed: int = SEED) -> list[QaItem]:
    """The QA items of a labels.json document (see the module doc), photos in file order.

    Per photo: a count question about a class it has (when one can be counted), on about
    half of the photos (and always when none can) a count question about a class it lacks,
    drawn from the classes of the whole set; and, when one of its classes has an asked
    supercategory, a yes and a no category question.
    """
    items = labels["items"]
    in_set = sorted({b["label"] for it in items for b in it["boxes"]} - UNCOUNTABLE)
    asked = sorted(CATEGORY_WORDS)
    out: list[QaItem] = []
    for it in items:
        rng = _rng(it["id"], seed)
        present = {b["label"] for b in it["boxes"]}
        crowded = {b["label"] for b in it["boxes"] if b["crowd"]}
        countable = sorted(present - crowded - UNCOUNTABLE)
        found: list[tuple[str, str, str, str]] = []  # kind, question, answer, subject
        if countable:
            label = rng.choice(countable)
            n = sum(1 for b in it["boxes"] if b["label"] == label and not b["crowd"])
            found.append((COUNT, count_question(label), str(n), label))
        if not countable or rng.random() < ABSENT_COUNT_SHARE:
            label = rng.choice([c for c in in_set if c not in present])
            found.append((COUNT, count_question(label), "0", label))
        have = sorted({supercategories[c] for c in present} & set(asked))
        if have:
            yes = rng.choice(have)
            no = rng.choice([s for s in asked if s not in have])
            found.append((CATEGORY, category_question(yes), "yes", yes))
            found.append((CATEGORY, category_question(no), "no", no))
        out.extend(QaItem(f"{it['id']}#{k}", it["id"], it["split"], kind, q, a, s)
                   for k, (kind, q, a, s) in enumerate(found))
    return out


def load_supercategories(path: Path | None = None) -> dict[str, str]:
    """COCO class -> supercategory, from COCO 2017's instances categories (``coco_supercategories.json``)."""
    doc = json.loads((path or _EVALSET / SUPERCATEGORY_FILE).read_text(encoding="utf-8"))
    return {c["name"]: c["supercategory"] for c in doc["categories"]}


def qa_document(items: Iterable[QaItem], seed: int = SEED) -> dict[str, Any]:
    """What ``make_qa.py`` writes to qa.json."""
    items = list(items)
    return {
        "schema": SCHEMA,
        "generator": "profiler/evalset/tools/make_qa.py (varipipe.profiler.qa.generate)",
        "from": "labels.json (ground truth) and coco_supercategories.json (COCO 2017 instances categories)",
        "seed": seed,
        "scoring": "exact match after normalisation (varipipe.profiler.qa.normalise_answer)",
        "counts": {split: {kind: sum(1 for q in items if q.split == split and q.kind == kind) for kind in KINDS}
                   for split in ("dev", "test")},
        "items": [q.to_json() for q in items],
    }


def load_qa_set(path: Any = None) -> QaSet:
    """The QA set in ``path`` (a Path or an importlib Traversable; default the shipped qa.json)."""
    doc = json.loads((path or _EVALSET / QA_FILE).read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path or QA_FILE}: schema {doc.get('schema')!r}, expected {SCHEMA}")
    return QaSet(tuple(QaItem(**d) for d in doc["items"]))


def answers_by_kind(items: Sequence[QaItem], scores: Sequence[float]) -> dict[str, float]:
    """Mean score per question kind (and "all")."""
    out: dict[str, float] = {}
    for kind in (*KINDS, "all"):
        chosen = [s for q, s in zip(items, scores, strict=True) if kind in ("all", q.kind)]
        if chosen:
            out[kind] = sum(chosen) / len(chosen)
    return out
