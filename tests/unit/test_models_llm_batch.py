"""The batched LLM path's pure parts: each sequence's end, the shared prefix, step splitting (no model).

The real-model checks (batched output equals sequential output) are in
tests/integration/test_llm_batched.py.
"""

from __future__ import annotations

import pytest

from varipipe.errors import SpecError
from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants._llama_batch import _Ending, _even_parts, shared_length
from varipipe.pipelines.variants._qa_prompt import SHOTS, build_qa_prompt, qa_prefix
from varipipe.pipelines.variants.llm import (
    PRIMER,
    LlamaCaptioner,
    build_instruction_prompt,
    build_prompt,
    shared_prefix,
)
from varipipe.pipelines.variants.outputs import Classification, Classifications
from varipipe.records import VariantSpec

# A toy vocabulary: token id -> bytes, so the end rules can be checked without a model.
PIECES = {1: b" a", 2: b" cat", 3: b".", 4: b" on", 5: b"\xc3", 6: b"\xa9", 7: b"\n"}
STOP = [b".", b"!", b"?", b"\n"]


def _ending(budget: int, stop=STOP) -> _Ending:  # type: ignore[no-untyped-def]
    return _Ending(budget, stop, lambda tokens: b"".join(PIECES[t] for t in tokens))


def _feed(ending: _Ending, tokens: list[int], eog: int = -1) -> int:
    """Push tokens until the sequence ends; how many were pushed."""
    for n, t in enumerate(tokens, 1):
        if ending.push(t, t == eog):
            return n
    return len(tokens)


def test_a_stop_string_ends_the_sequence_and_is_cut_from_the_text():
    e = _ending(24)
    assert _feed(e, [1, 2, 3, 4]) == 3
    c = e.completion()
    assert (c.text, c.tokens, c.finish_reason) == (" a cat", 3, "stop")


def test_the_end_of_generation_token_is_not_counted():
    e = _ending(24)
    assert _feed(e, [1, 2, 99, 4], eog=99) == 3
    assert (e.completion().text, e.completion().tokens, e.completion().finish_reason) == (" a cat", 2, "stop")


def test_the_token_budget_ends_the_sequence_with_length():
    e = _ending(2)
    assert _feed(e, [1, 2, 4, 4]) == 2
    assert (e.completion().text, e.completion().tokens, e.completion().finish_reason) == (" a cat", 2, "length")


def test_the_first_stop_string_in_list_order_wins_as_in_create_completion():
    e = _ending(24, stop=[b".", b"\n"])
    pieces = {**PIECES, 8: b"\nx."}  # both stops arrive in one token
    e.detokenize = lambda tokens: b"".join(pieces[t] for t in tokens)
    e.push(1, False)
    assert e.push(8, False)
    assert e.completion().text == " a\nx"  # cut at ".", the first in the list, not at the earlier "\n"


def test_an_incomplete_utf8_character_is_held_back_past_the_budget():
    # create_completion skips the stop and budget checks while a character is incomplete
    # (as it looks for a lead byte among the text's last three bytes).
    e = _ending(2)
    assert not e.push(1, False)
    assert not e.push(5, False)  # lead byte of "é": held back although the budget is reached
    assert e.push(6, False)
    assert (e.completion().text, e.completion().tokens, e.completion().finish_reason) == (" aé", 3, "length")


def test_sequences_end_independently():
    short, long = _ending(24), _ending(24)
    assert _feed(short, [1, 3]) == 2
    assert _feed(long, [1, 2, 4, 1, 2, 3]) == 6
    assert (short.completion().tokens, long.completion().tokens) == (2, 6)


@pytest.mark.parametrize(("prompt", "prefix", "shared"), [
    ([5, 6, 7, 8, 9], [5, 6, 7], 3),
    ([5, 6, 7, 8, 9], [5, 6, 0], 2),  # the prefix's last token merged differently in the prompt
    ([5, 6, 7], [5, 6, 7], 1),  # at least two tokens are evaluated
    ([5, 6, 7, 8], [], 0),
    ([5], [5], 0),
    ([], [5], 0),
])
def test_shared_length(prompt, prefix, shared):
    assert shared_length(prompt, prefix) == shared


@pytest.mark.parametrize(("n", "most", "sizes"), [
    (8, 7, [4, 4]), (7, 7, [7]), (15, 7, [5, 5, 5]), (16, 16, [16]), (3, 1, [1, 1, 1]), (9, 4, [3, 3, 3]),
])
def test_even_parts(n, most, sizes):
    parts = _even_parts(list(range(n)), most)
    assert [len(p) for p in parts] == sizes
    assert [i for p in parts for i in p] == list(range(n))


@pytest.mark.parametrize("style", ["chatml", "completion"])
def test_the_shared_prefix_starts_every_caption_prompt_and_stops_before_the_labels(style):
    prefix = shared_prefix(style)
    for labels in (["tabby cat"], ["rocket", "person", "clock"]):
        assert build_prompt(labels, style).startswith(prefix)
    assert "tabby" not in prefix and PRIMER not in prefix


@pytest.mark.parametrize("style", ["chatml", "completion"])
def test_the_shared_prefix_of_an_instruction_template_stops_at_its_first_field(style):
    template = "Documentation: {context}\nQuestion: {text}\nName the function."
    prefix = shared_prefix(style, template, system="Be brief.", primer="Use")
    prompt = build_instruction_prompt(template, Payload(text="how do I sort?"), style, "Be brief.", "Use")
    assert prompt.startswith(prefix)
    assert prefix.endswith("Documentation: ")


def _spec(**params) -> VariantSpec:  # type: ignore[no-untyped-def]
    return VariantSpec(stage="llm", name="smollm2-135m", runtime="llama_cpp", factory="m:f",
                       params={"model": "smollm2-135m-instruct-q4_1", **params})


def test_decoding_defaults_to_batched_and_a_bad_value_names_the_field():
    assert LlamaCaptioner(_spec()).decoding == "batched"
    assert LlamaCaptioner(_spec(decoding="sequential")).decoding == "sequential"
    with pytest.raises(SpecError, match="params.decoding"):
        LlamaCaptioner(_spec(decoding="parallel"))


@pytest.mark.parametrize("style", ["chatml", "completion"])
@pytest.mark.parametrize("shots", [0, len(SHOTS)])
def test_the_question_prefix_starts_every_question_prompt_and_stops_before_the_request(style, shots):
    prefix = qa_prefix(style, shots)
    for question, labels in (("How many cats are in the picture?", ()), ("Is there a dog?", ("dog", "ball"))):
        payload = Payload(question=question, outputs={"classifier": Classifications(tuple(
            Classification(i, label, 0.9, None) for i, label in enumerate(labels)))})
        prompt = build_qa_prompt(payload, style, shots)
        assert prompt.startswith(prefix) and len(prompt) > len(prefix)
        assert question not in prefix
    assert prefix.endswith("Objects: ")
    assert all(q in prefix for _, _, q, _ in SHOTS[:shots])
