"""A question about the image over HTTP on the real vision-caption-ci pipeline (issue 17 item 3).

The question travels from the ingress through the detector and classifier
replicas to the LLM stage in the request's payload, in each of its three
encodings; the LLM answers it within the answer budget instead of captioning;
without a question the stage still captions; a bad question is a 4xx naming why,
before any stage runs.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer
from varipipe.pipelines.variants._qa_prompt import QA_MAX_TOKENS
from varipipe.pipelines.variants.llm import PRIMER
from varipipe.question import MAX_QUESTION_CHARS

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT_S = 120.0  # first requests load the models on a busy 2-core host
QUESTION = "How many cats are in the picture?"


@pytest.fixture(scope="module")
def vision(serve_port):
    with LocalServer(AppOptions(pipeline="vision-caption-ci", app_name="question-vision"), port=serve_port) as srv:
        yield srv


def _llm(reply: dict) -> dict:
    assert [s["stage"] for s in reply["stages"]] == ["detector", "classifier", "llm"]
    return reply["stages"][-1]["output"]


def test_the_question_reaches_the_llm_in_every_encoding(vision, chelsea_jpeg):
    b64 = base64.b64encode(chelsea_jpeg).decode()
    answers = []
    for kwargs in ({"json": {"image": b64, "question": QUESTION}},
                   {"files": {"image": ("chelsea.jpg", chelsea_jpeg, "image/jpeg")}, "data": {"question": QUESTION}},
                   {"content": chelsea_jpeg, "headers": {"content-type": "image/jpeg", "x-question": QUESTION}}):
        r = httpx.post(vision.endpoint, timeout=TIMEOUT_S, **kwargs)
        assert r.status_code == 200, r.text
        reply = r.json()
        out = _llm(reply)
        assert reply["question"] == QUESTION and out["question"] == QUESTION
        assert 1 <= out["tokens"] <= QA_MAX_TOKENS and out["text"] and not out["text"].startswith(PRIMER)
        assert reply["answer"] == out["text"]
        answers.append(out["text"])
    assert len(set(answers)) == 1  # greedy decoding: the same question about the same photo, the same answer


def test_without_a_question_the_stage_captions(vision, chelsea_jpeg):
    r = httpx.post(vision.endpoint, content=chelsea_jpeg, headers={"content-type": "image/jpeg"}, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    out = _llm(r.json())
    assert "question" not in r.json() and "question" not in out
    assert out["text"].startswith(PRIMER)


@pytest.mark.parametrize("kwargs,status,words", [
    ({"json": {"question": "   "}}, 400, "the question is empty"),
    ({"json": {"question": "why?" * MAX_QUESTION_CHARS}}, 413, f"the limit is {MAX_QUESTION_CHARS}"),
    ({"json": {"question": ["a", "list"]}}, 400, "must be a string"),
    ({"json": {"question": QUESTION}, "headers": {"x-question": QUESTION}}, 400, "sent twice"),
])
def test_a_bad_question_is_a_4xx_that_says_why(vision, chelsea_jpeg, kwargs, status, words):
    body = {"image": base64.b64encode(chelsea_jpeg).decode(), **kwargs["json"]}
    r = httpx.post(vision.endpoint, json=body, headers=kwargs.get("headers", {}), timeout=TIMEOUT_S)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
