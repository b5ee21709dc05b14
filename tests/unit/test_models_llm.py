"""Prompt building and label collection of the caption LLM (no model)."""

from __future__ import annotations

import pytest

from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants.llm import PRIMER, build_prompt, first_sentence, prompt_labels
from varipipe.pipelines.variants.outputs import (
    Caption,
    Classification,
    Classifications,
    Detection,
    Detections,
    collect_labels,
)


def _outputs():
    dets = Detections((Detection((0, 0, 9, 9), 15, "cat", 0.9), Detection((0, 0, 9, 9), 56, "chair", 0.5),
                       Detection((1, 1, 9, 9), 15, "cat", 0.4)), (10, 10))
    cls = Classifications((Classification(281, "tabby cat", 0.4), Classification(423, "barber chair", 0.8)))
    return {"detector": dets, "classifier": cls}


def test_labels_come_from_later_stages_first_without_repeats():
    assert collect_labels(_outputs()) == ["barber chair", "tabby cat", "cat", "chair"]


def test_outputs_without_labels_are_ignored():
    assert collect_labels({"llm": Caption("x", 1), **_outputs()}) == ["barber chair", "tabby cat", "cat", "chair"]


def test_prompt_labels_fall_back_to_text_then_placeholder():
    assert prompt_labels(Payload(outputs=_outputs()))[:2] == ["barber chair", "tabby cat"]
    assert prompt_labels(Payload(text=" a rocket ")) == ["a rocket"]
    assert prompt_labels(Payload()) == ["nothing recognisable"]


@pytest.mark.parametrize("style", ["chatml", "completion"])
def test_prompt_names_every_label_and_ends_with_the_primer(style):
    prompt = build_prompt(["tabby cat", "chair"], style)
    assert "tabby cat, chair" in prompt
    assert prompt.endswith(PRIMER)
    assert ("<|im_start|>" in prompt) == (style == "chatml")


def test_unknown_prompt_style_is_refused():
    with pytest.raises(ValueError, match="prompt_style"):
        build_prompt(["cat"], "poem")


def test_first_sentence_keeps_the_primer_and_cuts_after_one_sentence():
    assert first_sentence(" a cat on a mat. It sleeps.") == f"{PRIMER} a cat on a mat."
    assert first_sentence(" a cat on\n a mat", stopped=True) == f"{PRIMER} a cat on a mat."
    assert first_sentence(" a cat on a", stopped=False) == f"{PRIMER} a cat on a"
