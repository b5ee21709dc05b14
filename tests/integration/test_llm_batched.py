"""Batched LLM decoding on the real weights gives the sequential path's captions, token for token.

Both LLM variants of vision-caption and an instruction-prompt variant of
rag-qa; the prompts are label sets like the upstream stages produce. No Ray:
the variants are run in this process (real llama.cpp, real GGUF files).
"""

from __future__ import annotations

import pytest

from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants import _llama_batch
from varipipe.pipelines.variants._llama_batch import BatchDecoder, prompt_tokens
from varipipe.spec import find_spec

pytestmark = pytest.mark.slow

BUDGET = 8  # tokens: SmolLM2's captions of LABEL_SETS take 5 to 12 with its full stop
LABEL_SETS = ("tabby cat", "rocket", "espresso, cup, dining table", "person, motorcycle",
              "nothing recognisable", "plate rack, clock, bowl", "bow tie, person", "golden retriever, frisbee")


def _payloads(texts=LABEL_SETS) -> list[Payload]:  # type: ignore[no-untyped-def]
    return [Payload(request_id=f"p{i}", text=t) for i, t in enumerate(texts)]


def _same(a, b) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [(x.text, x.tokens) for x in a], [(y.text, y.tokens) for y in b]


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def captioner(request):
    variant = build_variant(find_spec("vision-caption").stage("llm").variant(request.param))
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
    variant = build_variant(find_spec("vision-caption").stage("llm").variant("smollm2-135m"))
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
    variant = build_variant(find_spec("vision-caption").stage("llm").variant("smollm2-135m"))
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
    variant = build_variant(find_spec("vision-caption").stage("llm").variant("smollm2-135m"))
    variant.load()
    first = variant.infer(_payloads()[:2])
    variant.unload()
    assert not variant.loaded and variant.last_timing is None
    variant.load()
    try:
        again = variant.infer(_payloads()[:2])
    finally:
        variant.unload()
    expected, got = _same(first, again)
    assert got == expected
