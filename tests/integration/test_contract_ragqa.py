"""The variant contract for every rag-qa retriever variant, and the rag-qa LLM prompt, on real weights.

Every retriever: builds, loads, gives the same passages for a batch as for
single calls, unloads, and finds the answering passage of most questions
(recall@3 >= 0.85 on all 48). The LLM (the flagship's variant with rag-qa's
instruction) answers from the retrieved passages naming a function.
"""

from __future__ import annotations

import pytest

from varipipe.pipelines.runner import PipelineRunner
from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants import rag_eval
from varipipe.spec import find_spec

pytestmark = pytest.mark.slow

SPEC = find_spec("rag-qa")
MIN_RECALL_AT_3 = 0.85  # measured here: bm25 0.917, dense 0.979, hybrid 0.938 on the 48 questions


@pytest.mark.parametrize("vspec", SPEC.stage("retriever").variants, ids=lambda v: v.name)
def test_retriever_contract(vspec):
    ev = rag_eval.RagEvaluation(limit=None)
    payloads = ev.payloads()
    variant = build_variant(vspec)
    variant.load()
    try:
        singles = [variant.infer([p])[0] for p in payloads[:4]]
        batched = variant.infer(payloads[:4])
        assert [s.ids() for s in singles] == [b.ids() for b in batched]
        outs = variant.infer(payloads)
    finally:
        variant.unload()
    assert all(len(o.items) == vspec.params["k"] and o.summary() for o in outs)
    recall = sum(ev.score("retriever", p, o) for p, o in zip(payloads, outs, strict=True)) / len(payloads)
    assert recall >= MIN_RECALL_AT_3


def test_rag_pipeline_answers_naming_a_function():
    spec = find_spec("rag-qa-ci")
    with PipelineRunner(spec) as runner:
        result = runner.run(Payload(request_id="q", text="How do I check whether a year is a leap year?"))
    assert "calendar.isleap" in result.stage("retriever").output.ids()
    answer = result.stage("llm").output.text
    assert answer.startswith("Use") and len(answer) > len("Use")
