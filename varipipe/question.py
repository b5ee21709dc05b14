"""A request's question about its image: the one validation rule of the HTTP ingress and ``varipipe run``. Pure."""

from __future__ import annotations

from varipipe.errors import BadInputError

__all__ = ["MAX_QUESTION_CHARS", "check_question"]

# A question about one photo is one sentence: the QA set's longest is under 60 characters
# (profiler/evalset/qa.json). 300 characters (~75 tokens) keeps the LLM's prompt well inside its
# 512-token context (pipelines/variants/llm.py N_CTX) with the labels and the answer.
MAX_QUESTION_CHARS = 300


def check_question(question: object, where: str) -> str:
    """``question`` with its whitespace collapsed; a ``BadInputError`` naming ``where`` and why when it is not
    a string, is empty or blank, or is longer than ``MAX_QUESTION_CHARS`` (413)."""
    if not isinstance(question, str):
        raise BadInputError(f"{where}: the question must be a string, got {type(question).__name__}")
    text = " ".join(question.split())
    if not text:
        raise BadInputError(f"{where}: the question is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise BadInputError(f"{where}: the question has {len(text)} characters; the limit is {MAX_QUESTION_CHARS}",
                            status=413)
    return text
