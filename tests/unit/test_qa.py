"""Grounded questions (issue 17 item 3): the QA set's generator and scorer, the template rung, the question
API's validation and parsing, the LLM's QA prompt. No model, no Ray."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from varipipe.errors import BadInputError
from varipipe.pipelines.ingress_logic import QUESTION_HEADER, image_request
from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants._qa_prompt import build_qa_prompt, objects_line
from varipipe.pipelines.variants.outputs import (
    Classification,
    Classifications,
    Detection,
    Detections,
)
from varipipe.pipelines.variants.template import UNKNOWN, answer, caption, make
from varipipe.profiler.qa import (
    CATEGORY,
    CATEGORY_WORDS,
    COUNT,
    UNCOUNTABLE,
    QaItem,
    generate,
    load_qa_set,
    load_supercategories,
    normalise_answer,
    qa_document,
    score_answer,
)
from varipipe.profiler.qa_task import QaTask, ground_truth_upstream
from varipipe.question import MAX_QUESTION_CHARS, check_question
from varipipe.records import VariantSpec
from varipipe.text import plural

EVALSET = Path(__file__).resolve().parents[2] / "profiler" / "evalset"


def _labels() -> dict:
    return json.loads((EVALSET / "labels.json").read_text(encoding="utf-8"))


# --- the scorer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,kind,expected", [
    ("3", COUNT, "3"), (" 03 people", COUNT, "3"), ("Three.", COUNT, "3"), ("There are two dogs", COUNT, "2"),
    ("zero", COUNT, "0"), ("None", COUNT, "0"), ("No dogs", COUNT, "0"), ("twelve", COUNT, "12"),
    ("many", COUNT, ""), ("", COUNT, ""), ("yes", COUNT, ""),
    ("Yes", CATEGORY, "yes"), ("no.", CATEGORY, "no"), ("I think yes, there is", CATEGORY, "yes"),
    ("There is one. No wait, yes", CATEGORY, "no"), ("maybe", CATEGORY, ""), ("2", CATEGORY, ""),
    ("yesterday", CATEGORY, ""), ("nothing", CATEGORY, ""),
])
def test_normalise_answer(text, kind, expected):
    assert normalise_answer(text, kind) == expected


def test_score_is_exact_match_after_normalisation():
    q = QaItem("x#0", "x", "dev", COUNT, "How many cats are in the picture?", "2", "cat")
    assert score_answer(q, "Two") == 1.0
    assert score_answer(q, "2 cats") == 1.0
    assert score_answer(q, "3") == 0.0
    assert score_answer(q, "cats") == 0.0
    yes = QaItem("x#1", "x", "dev", CATEGORY, "Is there an animal in the picture?", "yes", "animal")
    assert score_answer(yes, "Yes.") == 1.0 and score_answer(yes, "no") == 0.0 and score_answer(yes, "") == 0.0


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        normalise_answer("3", "colour")


# --- the generator and the shipped set ------------------------------------------------------------

def test_supercategories_cover_the_80_classes_in_order():
    names = [c for c in (EVALSET / "coco_classes.txt").read_text(encoding="utf-8").split("\n") if c]
    supers = load_supercategories()
    assert list(supers) == names
    assert set(CATEGORY_WORDS) <= set(supers.values())
    assert supers["cat"] == "animal" and supers["cup"] == "kitchen" and supers["tv"] == "electronic"


def test_generator_is_deterministic_and_the_shipped_file_is_its_output():
    labels, supers = _labels(), load_supercategories()
    first, second = generate(labels, supers), generate(labels, supers)
    assert first == second
    shipped = json.loads((EVALSET / "qa.json").read_text(encoding="utf-8"))
    assert shipped == json.loads(json.dumps(qa_document(first)))
    assert generate(labels, supers, seed=18) != first  # the seed matters


def test_answers_match_labels_json():
    labels, supers = _labels(), load_supercategories()
    photos = {it["id"]: it for it in labels["items"]}
    qa = load_qa_set()
    for q in qa.items:
        it = photos[q.image]
        assert q.split == it["split"]
        boxes = it["boxes"]
        if q.kind == COUNT:
            assert q.question == f"How many {plural(q.subject)} are in the picture?"
            assert q.subject not in UNCOUNTABLE
            assert not any(b["crowd"] for b in boxes if b["label"] == q.subject), q.id  # crowds are never counted
            assert int(q.answer) == sum(1 for b in boxes if b["label"] == q.subject)
        else:
            has = any(supers[b["label"]] == q.subject for b in boxes)
            assert q.answer == ("yes" if has else "no"), q.id
            assert CATEGORY_WORDS[q.subject] in q.question


def test_the_set_is_big_enough_balanced_and_has_zero_counts():
    qa = load_qa_set()
    test = qa.split("test")
    assert len(test) >= 100
    cats = Counter(q.answer for q in test if q.kind == CATEGORY)
    assert cats["yes"] == cats["no"] > 0
    counts = [q for q in test if q.kind == COUNT]
    assert sum(q.answer == "0" for q in counts) >= len(counts) // 5
    assert sum(q.answer != "0" for q in counts) >= len(counts) // 2
    assert len({q.id for q in qa.items}) == len(qa.items)
    photos = {it["id"]: it["split"] for it in _labels()["items"]}
    assert {q.image for q in test} == {i for i, s in photos.items() if s == "test"}


# --- the template rung ----------------------------------------------------------------------------

def _payload(question: str | None = None) -> Payload:
    dets = Detections((Detection((0, 0, 9, 9), 0, "person", 0.9), Detection((0, 0, 9, 9), 41, "cup", 0.8),
                       Detection((1, 1, 9, 9), 0, "person", 0.4), Detection((1, 1, 9, 9), 5, "bus", 0.3)), (10, 10))
    cls = Classifications((Classification(281, "tabby cat", 0.4),))
    return Payload(question=question, outputs={"detector": dets, "classifier": cls})


@pytest.mark.parametrize("question,expected", [
    ("How many people are in the picture?", "2"),
    ("How many cups are in the picture?", "1"),
    ("how many buses are there?", "1"),
    ("How many person are in the picture?", "2"),  # the label itself matches too
    ("How many dogs are in the picture?", "0"),
    ("Is there a person in the picture?", "yes"),
    ("Is there a bus in the picture?", "yes"),
    ("Is there a tabby cat in the picture?", "yes"),  # a classifier label
    ("Is there an animal in the picture?", "no"),  # no knowledge: "animal" is no label
    ("Is there a vehicle in the picture?", "no"),
    ("Are there cups on the table?", "yes"),
    ("What colour is the bus?", UNKNOWN),
])
def test_template_answers_by_string_rules(question, expected):
    assert answer(question, _payload(question)) == expected


def test_template_variant_answers_and_captions():
    v = make(VariantSpec(name="template", stage="llm", runtime="template",
                         factory="varipipe.pipelines.variants.template:make"))
    v.load()
    out = v.infer([_payload("How many people are in the picture?"), _payload()])
    assert out[0].text == "2" and out[0].question == "How many people are in the picture?"
    assert out[1].text == "The photo shows two people, a cup and a bus." and out[1].question is None
    assert caption(Payload()) == "The photo shows nothing recognisable."


def test_template_is_right_on_category_questions_only_when_the_word_is_a_label():
    """On the dev split with ground truth, the template rung counts right and misses category 'yes'es."""
    labels = _labels()
    classes = [c for c in (EVALSET / "coco_classes.txt").read_text(encoding="utf-8").split("\n") if c]
    photos = {it["id"]: it for it in labels["items"]}
    task = QaTask()
    right = Counter()
    for q in task.qa.split("dev"):
        it = photos[q.image]
        up = ground_truth_upstream([(b["label"], tuple(b["box"]), b["crowd"]) for b in it["boxes"]],
                                   (it["width"], it["height"]), classes)
        p = Payload(request_id=q.id, question=q.question, outputs=up)
        right[(q.kind, q.answer == "yes" if q.kind == CATEGORY else "n")] += score_answer(q, answer(q.question, p))
    dev = task.qa.split("dev")
    counts = sum(1 for q in dev if q.kind == COUNT)
    assert right[(COUNT, "n")] == counts  # counting from ground truth is exact
    yes = [q for q in dev if q.kind == CATEGORY and q.answer == "yes"]
    assert right[(CATEGORY, True)] == sum(q.subject == "person" for q in yes) < len(yes)  # not saturated
    assert right[(CATEGORY, False)] == sum(1 for q in dev if q.kind == CATEGORY and q.answer == "no")


# --- the LLM's QA prompt --------------------------------------------------------------------------

def test_objects_line_counts_detections_and_adds_other_classifier_labels():
    assert objects_line(_payload("q")) == ("person: 2, cup: 1, bus: 1", "tabby cat")
    assert objects_line(Payload(question="q")) == ("none", "")


@pytest.mark.parametrize("style", ["chatml", "completion"])
def test_qa_prompt_ends_with_the_question_and_the_answer_slot(style):
    prompt = build_qa_prompt(_payload("How many cups are in the picture?"), style, shots=2)
    assert "Objects: person: 2, cup: 1, bus: 1\nCloser look: tabby cat\nQuestion: How many cups" in prompt
    assert prompt.endswith("<|im_start|>assistant\n" if style == "chatml" else "Answer:")
    assert prompt.count("Question:") == 3


def test_ground_truth_upstream_has_the_stage_inputs_shape():
    up = ground_truth_upstream([("cat", (1, 2, 30, 40), False), ("person", (5, 5, 50, 60), True)], (64, 64),
                               ["person", "bicycle", "cat"])
    assert [d.label for d in up["detector"].items] == ["cat", "person"]
    assert up["detector"].items[0].class_id == 2 and up["detector"].items[0].score == 1.0
    assert [c.label for c in up["classifier"].items] == ["cat", "person"]


# --- the question API -----------------------------------------------------------------------------

def test_check_question():
    assert check_question("  How many\tcats?\n", "field") == "How many cats?"
    for bad, words in [("", "empty"), ("   ", "empty"), (3, "must be a string"), (None, "must be a string"),
                       ("x" * (MAX_QUESTION_CHARS + 1), "limit")]:
        with pytest.raises(BadInputError, match=words) as e:
            check_question(bad, 'field "question"')
        assert 'field "question"' in str(e.value)
    with pytest.raises(BadInputError) as e:
        check_question("x" * (MAX_QUESTION_CHARS + 1), "f")
    assert e.value.status == 413


def _parse(**kwargs):
    """Parse an httpx-built request with the ingress's own reader (a starlette Request, no server)."""
    from starlette.requests import Request

    built = httpx.Request("POST", "http://127.0.0.1/vision-caption", **kwargs)
    body = built.read()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/vision-caption", "query_string": b"",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in built.headers.items()]}
    return asyncio.run(image_request(Request(scope, receive)))


def test_question_from_json_multipart_and_header():
    import base64

    img = b"\x89PNG fake bytes"
    b64 = base64.b64encode(img).decode()
    assert _parse(json={"image": b64, "question": "How many cats?"}) == (img, "How many cats?")
    assert _parse(json={"image": b64}) == (img, None)
    assert _parse(files={"image": ("x.png", img, "image/png")}, data={"question": "Is there a dog?"}) == \
        (img, "Is there a dog?")
    assert _parse(content=img, headers={QUESTION_HEADER: "How many cups?"}) == (img, "How many cups?")
    assert _parse(content=img) == (img, None)


@pytest.mark.parametrize("kwargs,words", [
    ({"json": {"image": "aGk=", "question": ""}}, 'field "question": the question is empty'),
    ({"json": {"image": "aGk=", "question": 7}}, "must be a string"),
    ({"json": {"image": "aGk=", "question": "q" * (MAX_QUESTION_CHARS + 1)}}, "limit"),
    ({"content": b"img", "headers": {QUESTION_HEADER: "  "}}, f"header {QUESTION_HEADER}: the question is empty"),
    ({"json": {"image": "aGk=", "question": "a?"}, "headers": {QUESTION_HEADER: "b?"}}, "sent twice"),
    ({"files": {"image": ("x.png", b"i", "image/png"), "question": ("q.txt", b"q", "text/plain")}},
     "must be a text field"),
])
def test_bad_questions_are_4xx_naming_why(kwargs, words):
    with pytest.raises(BadInputError, match=words) as e:
        _parse(**kwargs)
    assert 400 <= e.value.status < 500


# --- the hook in vision-caption's evaluation set --------------------------------------------------

def test_the_flagship_set_scores_the_llm_on_the_questions_with_ground_truth_upstream():
    from varipipe.pipelines.variants.outputs import Caption
    from varipipe.profiler.evaluate import accuracy_payloads
    from varipipe.profiler.vision_eval import CLASSIFIER, DETECTOR, LLM, evaluation_for

    ev = evaluation_for("dev")
    assert "exact match" in ev.metric(LLM)
    photos = ev.payloads()
    assert all(p.question for p in photos)  # the profiler times the LLM on questions
    qs = accuracy_payloads(ev, LLM, photos)
    dev = load_qa_set().split("dev")
    assert sorted(q.request_id for q in qs) == sorted(q.id for q in dev)
    first = qs[0]
    assert set(first.outputs) == {DETECTOR, CLASSIFIER}
    by_id = {q.id: q for q in dev}
    assert first.question == by_id[first.request_id].question
    right, wrong = Caption(by_id[first.request_id].answer, 1), Caption("banana", 1)
    assert ev.score(LLM, first, right) == 1.0 and ev.score(LLM, first, wrong) == 0.0


def test_another_set_gets_questions_generated_from_its_labels(tmp_path):
    from tests.unit.evalset_fixture import write_set
    from varipipe.profiler.evaluate import accuracy_payloads
    from varipipe.profiler.vision_eval import LLM, evaluation_for

    ev = evaluation_for("test", write_set(tmp_path))
    qs = accuracy_payloads(ev, LLM, ev.payloads())
    assert qs and all(q.request_id.split("#")[0] in ev.items for q in qs)
    street = [q for q in qs if q.request_id.startswith("street-b#")]
    assert not any(q.question == "How many people are in the picture?" for q in street)  # a crowd of people


def test_the_load_generator_sends_the_dev_questions_about_its_photo_to_vision_caption_only():
    from varipipe.loadgen.questions import QUESTION_HEADER as LOAD_HEADER
    from varipipe.loadgen.questions import question_headers, questions_for

    assert LOAD_HEADER == QUESTION_HEADER
    chelsea = questions_for("http://127.0.0.1:8000/vision-caption", "chelsea")
    assert chelsea == [q.question for q in load_qa_set().split("dev") if q.image == "skimage-chelsea"]
    assert len(questions_for("vision-caption-ci", "synthetic")) == len(load_qa_set().split("dev"))
    assert questions_for("http://127.0.0.1:8000/identity-chain", "chelsea") == []
    assert question_headers(chelsea, len(chelsea) + 1) == {QUESTION_HEADER: chelsea[1]}
    assert question_headers([], 3) == {}
