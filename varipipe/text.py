"""Content words of a text: the one tokenizer of the caption metric, the OCR summary
metric and the BM25 retriever. Pure.

Each use keeps its own list of function words (what counts as content differs
between judging a caption, a summary and a search query) and says whether
numbers count and whether words are stemmed; the splitting is this one function.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["content_words", "stem"]

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
