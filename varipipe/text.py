"""Content words of a text: the one tokenizer of the caption metric, the OCR summary
metric and the BM25 retriever. Pure.

Each use keeps its own list of function words (what counts as content differs
between judging a caption, a summary and a search query) and says whether
numbers count and whether words are stemmed; the splitting is this one function.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["content_words", "stem", "plural", "article"]

_LETTERS = re.compile(r"[a-z]+")
_LETTERS_DIGITS = re.compile(r"[a-z0-9]+")
# Suffixes a crude stemmer takes off, longest first, keeping a stem of at least 3 letters.
_SUFFIXES = ("ing", "es", "s")
_MIN_STEM = 3


def stem(word: str) -> str:
    """``dogs`` -> ``dog``, ``running`` -> ``runn``: crude, but the same for both sides of a comparison."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= _MIN_STEM:
            return word[: -len(suffix)]
    return word


def content_words(text: str, stopwords: Collection[str], *, digits: bool = False,
                  stemmed: bool = False) -> list[str]:
    """The lower-cased words of ``text`` in order, ``stopwords`` removed; runs of digits count
    as words when ``digits``; each word is :func:`stem`-med (after the stopword check) when
    ``stemmed``."""
    pattern = _LETTERS_DIGITS if digits else _LETTERS
    words = [w for w in pattern.findall(text.lower()) if w not in stopwords]
    return [stem(w) for w in words] if stemmed else words


# English plural rules (grammar, not knowledge of what things are): nouns whose plural is
# irregular, nouns that do not change, then the suffix rules. Covers COCO's class names
# (profiler/evalset/coco_classes.txt) and ordinary English nouns.
_IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children",
                      "mouse": "mice", "knife": "knives", "foot": "feet", "tooth": "teeth",
                      "goose": "geese", "leaf": "leaves", "shelf": "shelves", "wolf": "wolves"}
_UNCHANGED_PLURALS = frozenset({"sheep", "deer", "fish", "broccoli", "skis", "scissors", "glasses"})
_SIBILANT_ENDINGS = ("s", "x", "z", "ch", "sh")
_VOWELS = "aeiou"


def plural(noun: str) -> str:
    """The English plural of a noun or noun phrase (its last word): ``bus`` -> ``buses``,
    ``wine glass`` -> ``wine glasses``, ``person`` -> ``people``, ``sheep`` -> ``sheep``."""
    head, _, last = noun.strip().lower().rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        word = _IRREGULAR_PLURALS[last]
    elif last in _UNCHANGED_PLURALS:
        word = last
    elif last.endswith(_SIBILANT_ENDINGS):
        word = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in _VOWELS:
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def article(noun: str) -> str:
    """``a`` or ``an`` before a noun, by its first letter (no exceptions: "an hour" is not needed here)."""
    return "an" if noun.strip().lower()[:1] in _VOWELS else "a"
