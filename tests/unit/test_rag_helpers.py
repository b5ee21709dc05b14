"""rag-qa helpers without models: corpus, questions, tokens, fusion, scoring, WordPiece."""

from __future__ import annotations

import json

import pytest

from varipipe.errors import BadInputError
from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants import rag_eval, retriever
from varipipe.pipelines.variants.llm import build_instruction_prompt, prompt_context
from varipipe.pipelines.variants.retriever import Passage, Passages
from varipipe.records import VariantSpec


def test_corpus_and_questions_agree():
    ids = {pid for pid, _ in retriever.corpus()}
    assert 200 <= len(ids) <= 400 and len(ids) == len(retriever.corpus())
    qs = rag_eval.questions()
    assert len(qs) >= 40
    assert all(q["passage"] in ids for q in qs)


def test_shipped_embeddings_belong_to_the_corpus():
    stamp = json.loads(retriever.embeddings_file().with_suffix(".json").read_text())
    assert stamp["corpus_sha256_16"] == retriever.corpus_digest()
    assert stamp["shape"] == [len(retriever.corpus()), 384]


def test_tokens_split_dotted_and_snake_names():
    assert retriever.tokens("os.path.expand_user: How") == ["os", "path", "expand", "user"]


def test_rrf_rewards_agreement():
    fused = retriever.rrf([[1, 2, 3], [2, 1, 3]])
    assert {fused[0][0], fused[1][0]} == {1, 2} and fused[2][0] == 3


def test_answer_named_is_a_whole_word_match():
    assert rag_eval.answer_named("Use json.loads() to parse it.", "json.loads")
    assert not rag_eval.answer_named("Use json.load for files.", "json.loads")
    assert rag_eval.answer_named("use HEAPIFY", "heapq.heapify")


def test_retriever_score_is_hit_at_k():
    ev = rag_eval.RagEvaluation(limit=None)
    qid, q = next(iter(ev.questions.items()))
    hit = Passages((Passage(q["passage"], "t", 1.0),), q["question"])
    miss = Passages((Passage("nothing", "t", 1.0),), q["question"])
    p = Payload(request_id=qid, text=q["question"])
    assert ev.score("retriever", p, hit) == 1.0 and ev.score("retriever", p, miss) == 0.0
    assert ev.score("retriever", Payload(request_id="other"), hit) is None


def test_bm25_finds_the_answer_passage_and_rejects_empty_questions():
    spec = VariantSpec(stage="retriever", name="bm25", runtime="python", factory="x", params={"method": "bm25", "k": 3})
    r = retriever.make(spec)
    r.load()
    (out,) = r.infer([Payload(request_id="q", text="How do I check whether a year is a leap year?")])
    assert "calendar.isleap" in out.ids() and len(out.items) == 3
    with pytest.raises(BadInputError, match="question"):
        r.infer([Payload(request_id="q", text="  ")])


def test_unknown_method_names_the_field():
    spec = VariantSpec(stage="retriever", name="x", runtime="python", factory="x", params={"method": "magic"})
    with pytest.raises(Exception, match="params.method"):
        retriever.make(spec)


def test_instruction_prompt_takes_context_and_text():
    p = Payload(request_id="q", text="Which?", outputs={"retriever": Passages((Passage("a", "alpha", 1.0),), "Which?")})
    assert prompt_context(p) == "alpha"
    prompt = build_instruction_prompt("C: {context} Q: {text}", p, "completion", primer="Use")
    assert prompt == "C: alpha Q: Which?\nUse"


def test_wordpiece_matches_bert_uncased_ids():
    from varipipe.pipelines.variants._minilm import WordPiece, model_dir

    tok = WordPiece(model_dir() / "vocab.txt")
    # bert-base-uncased / all-MiniLM-L6-v2 ids: [CLS] hello , world ! [SEP]
    assert tok.encode("Hello, world!") == [101, 7592, 1010, 2088, 999, 102]
