"""rag-qa's evaluation set (the spec's ``evaluation``): questions whose answering passage is known.

``data/rag_questions.json`` names, for each question, the corpus passage that
answers it and the function or class the answer should name. Scores per
stage, each in [0, 1]:

- ``retriever``: 1 when the answering passage is among the passages returned
  (so the mean is recall@k for the variant's k), else 0.
- ``llm``: 1 when the answer names the expected function or class (its last
  dotted component, as a whole word, case-insensitive), else 0.

The profiler uses ``PROFILE_QUESTIONS`` of the 48 questions (every other one)
so that two LLM variants answer them in a few minutes on two busy cores;
``questions()`` gives all of them for offline checks.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from varipipe.pipelines.variant import Payload, StageOutput

__all__ = ["RagEvaluation", "make", "questions", "answer_named", "PROFILE_QUESTIONS"]

PROFILE_QUESTIONS = 24
METRICS = {"retriever": "recall@k of the answering passage", "llm": "answer names the expected function"}


def questions() -> list[dict[str, Any]]:
    path = resources.files("varipipe.pipelines.variants") / "data" / "rag_questions.json"
    return list(json.loads(path.read_text(encoding="utf-8"))["questions"])


def answer_named(answer: str, expected: str) -> bool:
    """Whether ``answer`` names ``expected``'s last dotted component as a whole word."""
    name = expected.rsplit(".", 1)[-1]
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", answer, re.IGNORECASE) is not None


class RagEvaluation:
    """The ``EvaluationSet`` of rag-qa (see ``varipipe.profiler.evaluate``)."""

    def __init__(self, limit: int | None = PROFILE_QUESTIONS) -> None:
        qs = questions()
        step = max(1, len(qs) // limit) if limit else 1
        self.questions = {q["id"]: q for q in qs[::step][:limit] if q}

    def payloads(self) -> list[Payload]:
        return [Payload(request_id=i, text=q["question"]) for i, q in self.questions.items()]

    def metric(self, stage: str) -> str:
        return METRICS.get(stage, "")

    def score(self, stage: str, payload: Payload, output: StageOutput) -> float | None:
        q = self.questions.get(payload.request_id)
        if q is None:
            return None
        if stage == "retriever":
            return float(q["passage"] in [p.id for p in getattr(output, "items", ())])
        if stage == "llm":
            return float(answer_named(str(getattr(output, "text", "")), q["answer"]))
        return None


def make() -> RagEvaluation:
    return RagEvaluation()
