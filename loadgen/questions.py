"""The questions the load generator sends with its photos, so served load = profiled load.

The profiler times vision-caption's LLM stage on questions about the labelled
photos (profiler/vision_eval.py: each photo carries one of its questions from
``profiler/evalset/qa.json``). The replayer does the same: each request to a
vision-caption pipeline carries a question (header ``x-question``), drawn in
turn from the QA set's **dev** items about the photo it sends (a scikit-image
sample such as ``chelsea`` is the labelled photo ``skimage-chelsea``), or from
all dev items when the photo is not in the set. Other pipelines get none.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

__all__ = ["QUESTION_HEADER", "QA_PIPELINES", "questions_for", "question_headers"]

QUESTION_HEADER = "x-question"  # the ingress's header (pipelines/ingress_logic.py; loadgen never imports it)
QA_PIPELINES = ("vision-caption", "vision-caption-ci")  # pipelines whose LLM stage answers questions
SPLIT = "dev"  # choices and load use dev; reported accuracy uses test
SAMPLE_PREFIX = "skimage-"  # the labelled set's id of a scikit-image sample photo


def questions_for(url_or_pipeline: str, image: str | None = None) -> list[str]:
    """Questions to send in turn to this pipeline (its URL or name) with ``image`` (a sample name or file)."""
    from varipipe.profiler.qa import load_qa_set

    path = urlsplit(url_or_pipeline).path if "://" in url_or_pipeline else url_or_pipeline
    if path.rstrip("/").rsplit("/", 1)[-1] not in QA_PIPELINES:
        return []
    dev = load_qa_set().split(SPLIT)
    own = [q.question for q in dev if image is not None and q.image == f"{SAMPLE_PREFIX}{image}"]
    return own or [q.question for q in dev]


def question_headers(questions: Sequence[str], index: int) -> dict[str, str]:
    """The extra header of request ``index``: its question in turn (none without questions)."""
    return {QUESTION_HEADER: questions[index % len(questions)]} if questions else {}
