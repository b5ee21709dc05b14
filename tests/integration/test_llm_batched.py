"""Batched LLM decoding on the real weights gives the sequential path's outputs, token for token.

The three llama.cpp models the specs use: vision-caption's Qwen2.5-Coder,
vision-caption-ci's SmolLM2 (the two answer questions about the image, as the
load generator and the profiler ask them) and rag-qa's Gemma-3 (instruction
prompts, no prefix reuse, at most 7 sequences a step); the prompts are label
sets like the upstream stages produce, and questions over counted detections.
No Ray: the variants are run in this process (real llama.cpp, real GGUF files).
"""

from __future__ import annotations

import dataclasses

import pytest

from varipipe.loadgen.questions import QA_PIPELINES
from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants import _llama_batch
from varipipe.pipelines.variants._llama_batch import BatchDecoder, prompt_tokens
from varipipe.pipelines.variants.outputs import (
    Classification,
    Classifications,
    Detection,
    Detections,
)
from varipipe.spec import find_spec

pytestmark = pytest.mark.slow

BUDGET = 8  # tokens: SmolLM2's captions of LABEL_SETS take 5 to 12 with its full stop
LABEL_SETS = ("tabby cat", "rocket", "espresso, cup, dining table", "person, motorcycle",
              "nothing recognisable", "plate rack, clock, bowl", "bow tie, person", "golden retriever, frisbee")
# (detected labels, classifier labels, question): questions of the QA set's kinds over upstream outputs
QUESTIONS = (
    (("cat",), ("tabby",), "How many cats are in the picture?"),
    (("person", "person", "motorcycle"), (), "How many people are in the picture?"),
    ((), ("espresso",), "Is there a cup in the picture?"),
    (("dog", "frisbee"), ("golden retriever",), "Is there an animal in the picture?"),
    (("car", "car", "car", "truck"), (), "How many cars are in the picture?"),
    (("bowl", "clock"), ("plate rack",), "Is there a vehicle in the picture?"),
)
SMALL = ("vision-caption-ci", "smollm2-135m")  # the cheapest model, for the checks of the decoder's mechanics


def _payloads(texts=LABEL_SETS) -> list[Payload]:  # type: ignore[no-untyped-def]
    return [Payload(request_id=f"p{i}", text=t) for i, t in enumerate(texts)]


def _questions() -> list[Payload]:
    out = []
    for i, (detected, classified, question) in enumerate(QUESTIONS):
        dets = Detections(tuple(Detection((0.0, 0.0, 10.0, 10.0), k, label, 0.9) for k, label in enumerate(detected)),
                          (640, 480))
        classes = Classifications(tuple(Classification(k, label, 0.8) for k, label in enumerate(classified)))
        out.append(Payload(request_id=f"q{i}", question=question, outputs={"detector": dets, "classifier": classes}))
    return out


def _same(a, b) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [(x.text, x.tokens, x.question) for x in a], [(y.text, y.tokens, y.question) for y in b]


def _batched(spec):  # type: ignore[no-untyped-def]
    """The variant with batched decoding, whatever its spec ships (the flagship's Qwen ships
    sequential until its LLM stage is re-profiled batched)."""
    return dataclasses.replace(spec, params={**spec.params, "decoding": "batched"})


def _small():  # type: ignore[no-untyped-def]
    return build_variant(find_spec(SMALL[0]).stage("llm").variant(SMALL[1]))


@pytest.fixture(scope="module", params=[("vision-caption", "qwen2.5-coder-0.5b"), SMALL, ("rag-qa", "gemma3-270m")],
                ids=lambda p: p[1])
def captioner(request):
    pipeline, name = request.param
    variant = build_variant(_batched(find_spec(pipeline).stage("llm").variant(name)))
    variant.load()
    yield variant
    variant.unload()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batched_captions_equal_sequential_captions(captioner, batch):
    payloads = _payloads()
    sequential = captioner.infer_sequential(payloads)
    batched = [c for i in range(0, len(payloads), batch) for c in captioner.infer_batched(payloads[i:i + batch])]
    expected, got = _same(sequential, batched)
    assert got == expected


@pytest.mark.parametrize("pipeline, name", [("vision-caption", "qwen2.5-coder-0.5b"), SMALL], ids=["qwen", "smollm2"])
def test_answers_to_questions_mixed_with_captions_equal_the_sequential_ones(pipeline, name):
    assert pipeline in QA_PIPELINES  # its requests carry questions (loadgen, profiler)
    variant = build_variant(_batched(find_spec(pipeline).stage("llm").variant(name)))
    variant.load()
    try:
        questions, captions = _questions(), _payloads()[:6]
        payloads = [p for pair in zip(questions, captions, strict=True) for p in pair]  # the kinds alternate
        sequential = variant.infer_sequential(payloads)
        expected = _same(sequential, sequential)[0]
        for batch in (1, 4, 12):
            batched = [c for i in range(0, len(payloads), batch) for c in variant.infer_batched(payloads[i:i + batch])]
            assert _same(batched, batched)[0] == expected, f"batch {batch}"
        assert [c.question for c in batched] == [p.question for p in payloads]
        # batch 12: each question's system message and examples came from the cache, not from evaluation
        # (all but at most the prefix's last token, which the request's text may tokenise with)
        timing = variant.last_timing
        assert timing is not None and timing.sequences == len(payloads) and variant.qa_prefix_tokens > 0
        assert timing.evaluated_tokens <= timing.prompt_tokens - len(questions) * (variant.qa_prefix_tokens - 1)
    finally:
        variant.unload()


def test_infer_decodes_the_batch_together_and_reports_its_split(captioner):
    out = captioner.infer(_payloads()[:4])
    timing = captioner.last_timing
    assert len(out) == 4 and timing is not None
    assert timing.sequences == 4 and timing.generated_tokens == sum(c.tokens for c in out)
    assert timing.steps < timing.generated_tokens  # several sequences per step
    if captioner.prefix_tokens:  # the shared prefix came from the cache, not from evaluation
        assert timing.evaluated_tokens < timing.prompt_tokens
    else:
        assert timing.evaluated_tokens == timing.prompt_tokens


def test_each_sequence_stops_at_its_own_end():
    """A budget of 8 tokens: some captions end on a full stop first (after 5-7 tokens), others on the budget."""
    variant = _small()
    variant.load()
    llm = variant._model
    prompts = [prompt_tokens(llm, variant._prompt(p)[0]) for p in _payloads()]
    decoder = BatchDecoder(llm, threads=1, n_ctx_seq=variant.n_ctx, prefix=[])
    try:
        batched = decoder.complete(prompts, max_tokens=BUDGET, stop=variant.stop)
        sequential = []
        for p in prompts:
            llm.reset()
            r = llm.create_completion(p, max_tokens=BUDGET, temperature=0.0, top_k=1, repeat_penalty=1.0,
                                      stop=variant.stop)
            sequential.append((r["choices"][0]["text"], r["usage"]["completion_tokens"],
                               r["choices"][0]["finish_reason"]))
    finally:
        decoder.close()
        variant.unload()
    assert [(c.text, c.tokens, c.finish_reason) for c in batched] == sequential
    assert {c.finish_reason for c in batched} == {"stop", "length"}
    assert len({c.tokens for c in batched}) > 1


def test_a_batch_larger_than_one_context_is_decoded_in_chunks(monkeypatch):
    monkeypatch.setattr(_llama_batch, "MAX_SEQUENCES", 3)
    variant = _small()
    variant.load()
    try:
        payloads = _payloads()
        expected, got = _same(variant.infer_sequential(payloads), variant.infer_batched(payloads))
    finally:
        variant.unload()
    assert got == expected


def test_instruction_prompts_and_a_growing_context_keep_the_sequential_output():
    """rag-qa's prompts are long: the batch context grows from a short prompt's size to theirs."""
    variant = build_variant(find_spec("rag-qa").stage("llm").variant("smollm2-135m"))
    variant.load()
    try:
        short = _payloads(["how do I sort a list?"])
        long = _payloads(["how do I read a file line by line?", "how do I join paths?", "how do I parse json?"])
        for p in long:  # upstream context as the retriever would hand it: long enough for a bigger stream
            p.outputs["retriever"] = _Passages("open(file) returns a file object; iterate over it for lines. " * 20)
        expected, got = _same(variant.infer_sequential(short + long),
                              variant.infer_batched(short) + variant.infer_batched(long))
    finally:
        variant.unload()
    assert got == expected


class _Passages:
    """The part of a retriever output the prompt reads."""

    def __init__(self, text: str) -> None:
        self.text = text

    def context(self) -> str:
        return self.text


def test_unload_frees_the_batch_context_and_a_reload_serves_again():
    variant = _small()
    variant.load()
    first = variant.infer(_payloads()[:2])
    variant.unload()
    assert not variant.loaded and variant.last_timing is None and variant.qa_prefix_tokens == 0
    variant.load()
    try:
        again = variant.infer(_payloads()[:2])
    finally:
        variant.unload()
    expected, got = _same(first, again)
    assert got == expected
