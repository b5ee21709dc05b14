"""Caption LLM variants (SmolLM2-135M-Instruct, Gemma-3-270M) on llama-cpp-python.

The LLM writes one short sentence describing the scene from the labels the
upstream stages found (collected through their outputs' ``labels()``).
Decoding is greedy and no request sees another's tokens, so the same labels
always give the same sentence, alone or in a batch.

``infer`` decodes the whole batch together (``_llama_batch``: one llama.cpp
batch with a sequence per request, each ending on its own, the prompt prefix
every request shares evaluated once and kept cached), so the spec says
``native_batching: true``. The earlier path, one ``create_completion`` per
request in turn, stays as ``infer_sequential`` and ``decoding: sequential``:
the baseline of the batched one (issue 19; benchmarks/README.md).

Spec params: ``model`` (weights name), ``max_tokens`` (the token budget is part
of the variant), ``prompt_style`` ("chatml" for instruction-tuned models,
"completion" for base models), ``n_ctx`` (each sequence's context),
``decoding`` ("batched" or "sequential"); where batched decoding would change
the model's output (see ``_llama_batch``): ``prefix_cache`` (reuse the shared
prompt prefix, default true) and ``max_step_rows`` (sequences decoded in one
llama.cpp call, default ``MAX_SEQUENCES``).

With a question (``payload.question``, from the request) the model answers it
instead of captioning (``_qa_prompt``: the counted labels, few-shot examples,
``qa_max_tokens`` and ``qa_shots`` params); the answer is a Caption whose
``question`` is set.

Other pipelines reuse this variant with their own prompt: ``instruction`` is a
template with ``{labels}`` (upstream labels), ``{context}`` (the ``context()``
text of upstream outputs, e.g. recognised document text or retrieved passages,
cut to ``max_context_chars``) and ``{text}`` (the request's text); ``primer``
starts the answer, ``system`` replaces the system message and ``stop`` the
stop strings (an answer naming ``json.loads`` must not stop at its dot).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from varipipe.pipelines.models import model_files
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants._base import ModelVariant
from varipipe.pipelines.variants._llama_batch import (
    MAX_SEQUENCES,
    BatchDecoder,
    BatchTiming,
    prompt_tokens,
    sum_timings,
)
from varipipe.pipelines.variants._qa_prompt import (
    QA_MAX_TOKENS,
    QA_STOP,
    SHOTS,
    build_qa_prompt,
    clean_answer,
    qa_prefix,
)
from varipipe.pipelines.variants.outputs import Caption, collect_labels
from varipipe.records import VariantSpec

__all__ = ["LlamaCaptioner", "make", "build_prompt", "build_instruction_prompt", "first_sentence",
           "prompt_labels", "prompt_context", "shared_prefix", "PRIMER", "DECODINGS"]

# The answer is started for the model: it keeps small models on topic and makes even an
# 8-token budget yield a sentence about the scene. The primer is part of the caption.
PRIMER = "The photo shows"
MAX_PROMPT_LABELS = 5  # more labels than this only lengthen the prompt of a one-sentence caption
MAX_TOKENS = 24  # default budget: one short sentence of a caption
N_CTX = 512  # context tokens: prompt (< 100 tokens) plus the answer, with room to spare
SEED = 0  # fixed; greedy decoding does not sample, but llama.cpp wants a seed
NOTHING_FOUND = "nothing recognisable"
SYSTEM = "You are a helpful assistant that describes photos in one short sentence."
# About 300 tokens of upstream text: the prompt must fit N_CTX with the answer.
MAX_CONTEXT_CHARS = 1200
STYLES = ("chatml", "completion")
# Stop at the end of the first sentence or turn: a caption is one sentence, and a base
# model would otherwise spend the whole token budget on more.
_STOP = [".", "!", "?", "\n", "<|im_end|>", "<end_of_turn>"]
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
_HOLE = "\x00"  # stands for the request's part of a prompt when finding the shared prefix
DECODINGS = ("batched", "sequential")
_construct_lock = threading.Lock()


def prompt_labels(payload: Payload) -> list[str]:
    """What the caption is about: upstream labels, else the request's text, else a placeholder."""
    labels = collect_labels(payload.outputs)[:MAX_PROMPT_LABELS]
    if labels:
        return labels
    if payload.text:
        return [payload.text.strip()]
    return [NOTHING_FOUND]


def prompt_context(payload: Payload, max_chars: int = MAX_CONTEXT_CHARS) -> str:
    """The ``context()`` text of every upstream output that has one, in stage order, cut to ``max_chars``."""
    parts = [o.context() for o in payload.outputs.values() if callable(getattr(o, "context", None))]
    text = " ".join(p for p in parts if p)
    return text[:max_chars] if text else NOTHING_FOUND


def build_instruction_prompt(instruction: str, payload: Payload, style: str, system: str = SYSTEM,
                             primer: str = PRIMER, max_context_chars: int = MAX_CONTEXT_CHARS) -> str:
    """A spec's ``instruction`` template filled from the request, in the model's prompt style."""
    user = instruction.format(labels=", ".join(prompt_labels(payload)), text=(payload.text or "").strip(),
                              context=prompt_context(payload, max_context_chars))
    return _instruction_wrap(user, style, system, primer)


def _instruction_wrap(user: str, style: str, system: str, primer: str) -> str:
    if style == "chatml":
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                f"<|im_start|>assistant\n{primer}")
    if style == "completion":
        return f"{user}\n{primer}"
    raise ValueError(f"prompt_style must be one of {STYLES}, got {style!r}")


def build_prompt(labels: Sequence[str], style: str) -> str:
    """The prompt for one caption, ending with ``PRIMER`` so the model continues the sentence."""
    things = ", ".join(labels)
    if style == "chatml":  # SmolLM2-Instruct's chat template (ChatML)
        return (
            f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\nA photo contains: {things}. Describe the photo in one short sentence.<|im_end|>\n"
            f"<|im_start|>assistant\n{PRIMER}"
        )
    if style == "completion":  # a base model continues text; no chat template
        return f"Objects in the photo: {things}.\nOne-sentence caption of the photo: {PRIMER}"
    raise ValueError(f"prompt_style must be one of {STYLES}, got {style!r}")


def shared_prefix(style: str, instruction: str | None = None, system: str = SYSTEM, primer: str = PRIMER) -> str:
    """The text every prompt of this variant starts with, up to the first request-dependent part."""
    if instruction is None:
        prompt = build_prompt([_HOLE], style)
    else:
        prompt = _instruction_wrap(instruction.format(labels=_HOLE, text=_HOLE, context=_HOLE), style, system, primer)
    return prompt.split(_HOLE, 1)[0]


def first_sentence(generated: str, stopped: bool = False, primer: str = PRIMER) -> str:
    """``primer`` + the generated text, cut after the first sentence; a full stop where it stopped."""
    text = " ".join(f"{primer}{generated}".split())
    end = _SENTENCE_END.search(text)
    if end:
        return text[: end.start() + 1]
    return f"{text}." if stopped else text


@contextmanager
def _without_extra_buffers() -> Iterator[None]:
    """Load with llama.cpp's extra CPU buffer types (AMX, repack) switched off.

    ggml built with GGML_NATIVE on an AMX-capable CPU repacks weights for AMX
    tiles; where the kernel or sandbox does not grant AMX state to the process
    the first large matmul dies with SIGILL (seen on this machine kind).
    llama-cpp-python exposes ``use_extra_bufts`` only through the default
    params, so they are patched for the duration of the constructor.
    """
    import llama_cpp.llama as llama_module

    lib = llama_module.llama_cpp
    original = lib.llama_model_default_params

    def defaults():  # type: ignore[no-untyped-def]
        params = original()
        params.use_extra_bufts = False
        return params

    with _construct_lock:
        lib.llama_model_default_params = defaults
        try:
            yield
        finally:
            lib.llama_model_default_params = original


class LlamaCaptioner(ModelVariant):
    """One GGUF model with its token budget; ``infer`` writes one caption per request, the batch decoded together."""

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.max_tokens = int(self.param("max_tokens", MAX_TOKENS))
        self.style = str(self.param("prompt_style", "chatml"))
        if self.style not in STYLES:
            raise spec.spec_error(".params.prompt_style", f"must be one of {STYLES}, got {self.style!r}")
        self.decoding = str(self.param("decoding", "batched"))
        if self.decoding not in DECODINGS:
            raise spec.spec_error(".params.decoding", f"must be one of {DECODINGS}, got {self.decoding!r}")
        self.n_ctx = int(self.param("n_ctx", N_CTX))
        self.instruction = self.param("instruction", None)
        if self.instruction is not None:
            _check_template(spec, str(self.instruction))
        self.primer = str(self.param("primer", PRIMER))
        self.system = str(self.param("system", SYSTEM))
        self.max_context_chars = int(self.param("max_context_chars", MAX_CONTEXT_CHARS))
        self.stop = [str(s) for s in self.param("stop", _STOP)]
        self.qa_max_tokens = int(self.param("qa_max_tokens", QA_MAX_TOKENS))
        self.qa_shots = int(self.param("qa_shots", len(SHOTS)))
        self.prefix_cache = bool(self.param("prefix_cache", True))
        self.max_step_rows = int(self.param("max_step_rows", MAX_SEQUENCES))
        self._decoder: BatchDecoder | None = None  # captions
        self._qa_decoder: BatchDecoder | None = None  # questions: their own prompts, prefix and stop strings
        self._last_timing: BatchTiming | None = None

    def load(self) -> None:
        from llama_cpp import Llama

        files = model_files(self.model_name())
        with _without_extra_buffers():
            self._model = Llama(model_path=str(files.weights), n_ctx=self.n_ctx, n_threads=self.threads,
                                n_threads_batch=self.threads, seed=SEED, verbose=False)
        instruction = None if self.instruction is None else str(self.instruction)
        prefix = (prompt_tokens(self._model, shared_prefix(self.style, instruction, self.system, self.primer))
                  if self.prefix_cache else [])
        qa = prompt_tokens(self._model, qa_prefix(self.style, self.qa_shots)) if self.prefix_cache else []
        # Their contexts and KV caches are made on the first batch of their kind: a sequential
        # variant never makes them, a stage that only answers questions makes one.
        self._decoder = BatchDecoder(self._model, self.threads, self.n_ctx, prefix, self.max_step_rows)
        self._qa_decoder = BatchDecoder(self._model, self.threads, self.n_ctx, qa, self.max_step_rows)

    def unload(self) -> None:
        for decoder in (self._decoder, self._qa_decoder):
            if decoder is not None:
                decoder.close()
        self._decoder = self._qa_decoder = None
        self._last_timing = None
        if self._model is not None:
            self._model.close()  # frees the llama.cpp context and weights now, not at GC time
        super().unload()

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        if self.decoding == "sequential":
            return self.infer_sequential(batch)
        return self.infer_batched(batch)

    def infer_batched(self, batch: Sequence[Payload]) -> list[StageOutput]:
        """All outputs of the batch decoded together (one llama.cpp batch, a sequence per request).

        Captions and answers to questions have their own prompts, token budgets and stop strings:
        each kind is decoded as one batch of its own, the outputs returned in the batch's order.
        """
        llm = self._require_loaded()
        assert self._decoder is not None and self._qa_decoder is not None
        out: list[StageOutput | None] = [None] * len(batch)
        timings = []
        captions = [i for i, p in enumerate(batch) if p.question is None]
        questions = [i for i, p in enumerate(batch) if p.question is not None]
        if captions:
            prompts = [self._prompt(batch[i]) for i in captions]
            done = self._decoder.complete([prompt_tokens(llm, text) for text, _ in prompts], self.max_tokens,
                                          self.stop)
            for i, c, (_, labels) in zip(captions, done, prompts, strict=True):
                out[i] = Caption(first_sentence(c.text, stopped=c.finish_reason == "stop", primer=self.primer),
                                 c.tokens, tuple(labels))
            timings.append(self._decoder.last_timing)
        if questions:
            prompts_qa = [build_qa_prompt(batch[i], self.style, self.qa_shots) for i in questions]
            done = self._qa_decoder.complete([prompt_tokens(llm, text) for text in prompts_qa], self.qa_max_tokens,
                                             QA_STOP)
            for i, c in zip(questions, done, strict=True):
                p = batch[i]
                out[i] = Caption(clean_answer(c.text), c.tokens, tuple(prompt_labels(p)), p.question)
            timings.append(self._qa_decoder.last_timing)
        self._last_timing = sum_timings([t for t in timings if t is not None])
        return [o for o in out if o is not None]

    def infer_sequential(self, batch: Sequence[Payload]) -> list[StageOutput]:
        """One ``create_completion`` per request, in turn: the path before batched decoding (the baseline)."""
        llm = self._require_loaded()
        return [self._caption(llm, p) for p in batch]

    @property
    def prefix_tokens(self) -> int:
        """Tokens of the captions' shared prompt prefix evaluated once and reused by the batched path (0: none)."""
        return self._decoder.prefix_tokens if self._decoder is not None else 0

    @property
    def qa_prefix_tokens(self) -> int:
        """The same for questions' prompts (system message and examples)."""
        return self._qa_decoder.prefix_tokens if self._qa_decoder is not None else 0

    @property
    def last_timing(self) -> BatchTiming | None:
        """Where the last batched ``infer`` spent its time (prompt vs generation), for benchmarks."""
        return self._last_timing

    def _prompt(self, payload: Payload) -> tuple[str, list[str]]:
        if self.instruction is None:
            labels = prompt_labels(payload)
            return build_prompt(labels, self.style), labels
        return build_instruction_prompt(str(self.instruction), payload, self.style, self.system, self.primer,
                                        self.max_context_chars), []

    def _answer(self, llm, payload: Payload) -> Caption:  # type: ignore[no-untyped-def]
        """The answer to ``payload.question`` (greedy, ``qa_max_tokens``, cut at the first line or comma)."""
        prompt = build_qa_prompt(payload, self.style, self.qa_shots)
        llm.reset()
        result = llm.create_completion(prompt, max_tokens=self.qa_max_tokens,
                                       temperature=0.0, top_k=1, repeat_penalty=1.0, stop=QA_STOP)
        labels = tuple(prompt_labels(payload))
        return Caption(clean_answer(result["choices"][0]["text"]), int(result["usage"]["completion_tokens"]),
                       labels, payload.question)

    def _caption(self, llm, payload: Payload) -> Caption:  # type: ignore[no-untyped-def]
        if payload.question is not None:
            return self._answer(llm, payload)
        prompt, labels = self._prompt(payload)
        llm.reset()  # no KV reuse across requests: outputs independent of batch order
        result = llm.create_completion(prompt, max_tokens=self.max_tokens,
                                       temperature=0.0, top_k=1, repeat_penalty=1.0, stop=self.stop)
        choice = result["choices"][0]
        text = first_sentence(choice["text"], stopped=choice["finish_reason"] == "stop", primer=self.primer)
        return Caption(text, int(result["usage"]["completion_tokens"]), tuple(labels))


def _check_template(spec: VariantSpec, template: str) -> None:
    try:
        template.format(labels="", context="", text="")
    except (KeyError, IndexError, ValueError) as e:
        raise spec.spec_error(".params.instruction",
                              f"template may use only {{labels}}, {{context}} and {{text}}; {type(e).__name__}: {e} "
                              f"in {template!r}") from e


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> ModelVariant:
    """llama.cpp on the CPU; ``device="gpu"``: transformers on CUDA (``llm_torch``, dequantised: not Q4)."""
    if device == "gpu":
        from varipipe.pipelines.variants.llm_torch import TorchCaptioner

        return TorchCaptioner(spec, threads=threads, device=device)
    return LlamaCaptioner(spec, threads=threads, device=device)
