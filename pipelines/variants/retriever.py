"""rag-qa retriever variants: BM25, dense (all-MiniLM-L6-v2), and a hybrid of both.

The corpus is ``data/rag_corpus.json`` (339 passages from the Python standard
library's docstrings, PSF licence; ``data/rag_corpus.md``). Each variant
returns the top ``k`` passages for the request's question as ``Passages``,
whose ``context()`` the LLM stage puts into its prompt.

- ``bm25``: Okapi BM25 (rank-bm25, k1 = 1.5, b = 0.75) over lower-cased word
  tokens; dotted and snake_case names are also split into their parts.
- ``dense``: cosine similarity of MiniLM sentence embeddings (``_minilm``);
  the corpus embeddings are computed once by ``rag_corpus_build`` and shipped
  as ``data/rag_corpus_minilm.npy`` (recomputed on load if the corpus changed),
  so a request only encodes its question; a batch encodes all its questions in
  one call.
- ``hybrid``: reciprocal rank fusion (Cormack et al. 2009, k = 60) of the
  two rankings.

Spec params: ``method`` (bm25 | dense | hybrid), ``k`` (passages returned).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from varipipe.errors import BadInputError
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants._base import ModelVariant
from varipipe.records import VariantSpec
from varipipe.text import content_words

__all__ = ["Passage", "Passages", "Retriever", "make", "corpus", "corpus_digest", "tokens", "rrf",
           "METHODS", "TOP_K", "embeddings_file"]

METHODS = ("bm25", "dense", "hybrid")
TOP_K = 3  # passages handed to the LLM: three fit its context (MAX_CONTEXT_CHARS) with the question
RRF_K = 60  # reciprocal rank fusion constant (Cormack, Clarke, Buettcher, SIGIR 2009)
CANDIDATES = 50  # depth of each ranking that the fusion looks at
# Function words of a question, left out of its search terms.
QUERY_STOPWORDS = frozenset("a an the of to in on for and or is are be by it its as at with from this that "
                       "how do i can which what does into my me".split())


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "score": round(self.score, 4)}


@dataclass(frozen=True)
class Passages:
    """The retriever's output for one question: the top passages, best first."""

    items: tuple[Passage, ...]
    question: str

    def context(self) -> str:
        return " ".join(p.text for p in self.items)

    def ids(self) -> list[str]:
        return [p.id for p in self.items]

    def to_json(self) -> dict[str, Any]:
        return {"question": self.question, "passages": [p.to_json() for p in self.items]}

    def summary(self) -> str:
        return ", ".join(self.ids()) or "no passages"


def _data() -> Path:
    return Path(str(resources.files("varipipe.pipelines.variants") / "data"))


@lru_cache(maxsize=1)
def corpus() -> tuple[tuple[str, str], ...]:
    """(id, text) of every passage, in file order."""
    doc = json.loads((_data() / "rag_corpus.json").read_text(encoding="utf-8"))
    return tuple((p["id"], p["text"]) for p in doc["passages"])


def corpus_digest() -> str:
    h = hashlib.sha256()
    for pid, text in corpus():
        h.update(f"{pid}\t{text}\n".encode())
    return h.hexdigest()[:16]


def embeddings_file() -> Path:
    return _data() / "rag_corpus_minilm.npy"


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens without stop words; ``os.path.basename`` also yields os, path, basename."""
    return content_words(text.replace("_", " "), QUERY_STOPWORDS, digits=True)


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the rankings, best first."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            score[doc] = score.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(score.items(), key=lambda t: (-t[1], t[0]))


def corpus_embeddings(encoder: Any) -> np.ndarray:
    """The shipped corpus embeddings if they belong to this corpus, else computed now (slow)."""
    path = embeddings_file()
    stamp = path.with_suffix(".json")
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()).get("corpus_sha256_16") == corpus_digest():
        return np.load(path)
    texts = [t for _, t in corpus()]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for start in range(0, len(order), 16):
        idx = order[start:start + 16]
        out[idx] = encoder.encode([texts[i] for i in idx])
    return out


class Retriever(ModelVariant):
    """One retrieval method over the bundled corpus; ``infer`` returns ``Passages`` per question."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.method = str(self.param("method", "bm25"))
        if self.method not in METHODS:
            raise spec.spec_error(".params.method", f"must be one of {METHODS}, got {self.method!r}")
        self.k = int(self.param("k", TOP_K))
        self._bm25: Any = None
        self._encoder: Any = None
        self._matrix: np.ndarray | None = None

    def load(self) -> None:
        if self.method in ("bm25", "hybrid"):
            from rank_bm25 import BM25Okapi

            self._bm25 = BM25Okapi([tokens(t) for _, t in corpus()])
        if self.method in ("dense", "hybrid"):
            import scipy.special  # noqa: F401 - imported now, not on the first request (1-2 s)

            from varipipe.pipelines.variants._minilm import MiniLM

            self._encoder = MiniLM()
            self._matrix = corpus_embeddings(self._encoder)
        self._model = self.method

    def unload(self) -> None:
        self._bm25 = self._encoder = self._matrix = None
        super().unload()

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        self._require_loaded()
        questions = [_question(p) for p in batch]
        dense = self._dense(questions) if self._encoder is not None else [None] * len(batch)
        return [self._top(q, d) for q, d in zip(questions, dense, strict=True)]

    def _dense(self, questions: list[str]) -> list[np.ndarray]:
        assert self._matrix is not None
        return list(self._encoder.encode(questions) @ self._matrix.T)

    def _top(self, question: str, dense: np.ndarray | None) -> Passages:
        if self.method == "bm25":
            ranked = _ranked(self._bm25.get_scores(tokens(question)))
        elif self.method == "dense":
            assert dense is not None
            ranked = _ranked(dense)
        else:
            assert dense is not None
            fused = rrf([[i for i, _ in _ranked(self._bm25.get_scores(tokens(question)))[:CANDIDATES]],
                         [i for i, _ in _ranked(dense)[:CANDIDATES]]])
            ranked = fused
        docs = corpus()
        return Passages(tuple(Passage(docs[i][0], docs[i][1], float(s)) for i, s in ranked[: self.k]), question)


def _ranked(scores: np.ndarray) -> list[tuple[int, float]]:
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [(int(i), float(scores[i])) for i in order]


def _question(payload: Payload) -> str:
    if not payload.text or not payload.text.strip():
        raise BadInputError(f"request {payload.request_id!r}: the retriever needs a question as text, got none")
    return payload.text.strip()


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> Retriever:
    return Retriever(spec, threads=threads, device=device)
