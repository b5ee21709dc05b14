"""Caption LLM variants on PyTorch (transformers): the GPU path of the LLM stage.

The same spec entries as the llama.cpp variants (``llm.py``); ``device="gpu"``
in the factory builds this one. It writes the same prompts (``llm.build_prompt``
and ``llm.build_instruction_prompt``; for a request with a question,
``_qa_prompt.build_qa_prompt`` with ``qa_shots`` examples) and decodes greedily
with the same token budget and stop strings (an answer: ``qa_max_tokens``,
``QA_STOP``), but the *whole batch in one* ``generate`` call: prompts
left-padded, one KV cache for all sequences, each sequence finishing at its own
stop (a finished one only waits for the batch). With real weights, the
questions of a batch and its captions are two calls (their budgets and stops
differ).

**This is not the Q4 variant.** transformers reads the GGUF file with the
``gguf`` package and *dequantises* it (``weights: gguf``): the network runs in
bfloat16 on the GPU (float32 on the CPU) with the Q4 weights' values, not
with the Q4 kernels, so its captions can differ from llama.cpp's. The stage's
accuracy figure stays the one measured for the Q4 variant on the CPU; GPU
profile points say so in their ``accuracy_source``.

``weights: random`` builds the architecture from a config committed under
``data/llm_arch/`` (derived from the GGUF metadata by
``benchmarks/llm_arch_configs.py``) with seeded random weights, for timing
where the GGUF files cannot travel. Such a model has no tokenizer and its
output means nothing, so it reads a *recording* (``params.recording``: a JSON
file written by ``varipipe.profiler.gpu_inputs``) of each prompt's token ids
and of the number of tokens the Q4 variant generated for it on the CPU, and
generates exactly that many tokens per batch (the most any of its prompts
needed, as a real batch runs until its longest caption stops).

Decoding uses a *static* KV cache (``params.cache``, default ``static``) of a
fixed length, ``MAX_PROMPT_TOKENS`` + ``max_tokens``: on CUDA, transformers then
compiles the decode step with ``torch.compile``, which takes tens of seconds on
the first call at a new batch size. A replica must warm up before it takes
traffic; the GPU profile records that warm-up per batch size.

Spec params: as ``llm.py`` (``model``, ``prompt_style``, ``max_tokens``,
``instruction``, ``primer``, ``system``, ``max_context_chars``, ``stop``,
``qa_max_tokens``, ``qa_shots``), plus
``weights`` (``gguf`` | ``random``), ``recording`` and ``arch_config`` (random weights: a
config JSON other than the committed one), ``cache``
(``static`` | ``dynamic``), ``gpu_dtype`` (default bfloat16: Gemma-3's
activations overflow float16).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from varipipe.errors import ModelUnavailableError
from varipipe.pipelines.models import model_files
from varipipe.pipelines.variant import Payload, StageOutput
from varipipe.pipelines.variants._qa_prompt import (
    QA_MAX_TOKENS,
    QA_STOP,
    SHOTS,
    build_qa_prompt,
    clean_answer,
)
from varipipe.pipelines.variants._torch_runtime import TorchVariant
from varipipe.pipelines.variants.llm import (
    _STOP,
    MAX_CONTEXT_CHARS,
    MAX_TOKENS,
    PRIMER,
    STYLES,
    SYSTEM,
    build_instruction_prompt,
    build_prompt,
    first_sentence,
    prompt_labels,
)
from varipipe.pipelines.variants.outputs import Caption
from varipipe.records import VariantSpec

__all__ = ["TorchCaptioner", "Recording", "arch_config", "arch_config_path", "WEIGHTS", "MAX_PROMPT_TOKENS", "make"]

WEIGHTS = ("gguf", "random")
CACHES = ("static", "dynamic")
RANDOM_SEED = 0  # random weights are seeded: every run times the same network
# Static KV cache length = this + the larger token budget. The captions' prompts are under 100
# tokens (llm.N_CTX's note); the questions' with the 4 few-shot examples 159-233 on the labelled
# set's 332 questions with ground-truth labels (Gemma-3's, Qwen2.5's and SmolLM2's llama.cpp
# vocabularies), and real detectors may name more classes: room for ~90 more tokens. A longer
# prompt makes transformers grow the cache (and recompile).
MAX_PROMPT_TOKENS = 320
RECORDING_SCHEMA = 1


def arch_config_path(model: str) -> Path:
    """The committed architecture config of a GGUF model (``data/llm_arch/<model>.json``)."""
    return Path(str(resources.files("varipipe.pipelines.variants") / "data" / "llm_arch" / f"{model}.json"))


def arch_config(model: str, path: Path | None = None):  # -> transformers.PretrainedConfig
    """The transformers config of ``model``'s architecture, from its committed JSON (or ``path``)."""
    from transformers import AutoConfig

    path = path or arch_config_path(model)
    if not path.exists():
        raise ModelUnavailableError(f"no architecture config for {model!r} at {path}; derive it with "
                                    "benchmarks/llm_arch_configs.py")
    doc = json.loads(path.read_text(encoding="utf-8"))
    cfg = dict(doc["config"])
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


@dataclass(frozen=True)
class RecordedPrompt:
    ids: tuple[int, ...]
    new_tokens: int  # what the Q4 variant generated for this prompt on the CPU


@dataclass(frozen=True)
class Recording:
    """Token ids and generated lengths of known prompts: a random-weights model's stand-in tokenizer."""

    model: str
    prompts: dict[str, RecordedPrompt]
    source: str

    @classmethod
    def load(cls, path: Path) -> Recording:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if doc.get("schema") != RECORDING_SCHEMA:
            raise ValueError(f"{path}: recording schema {doc.get('schema')!r}, expected {RECORDING_SCHEMA}")
        prompts = {p["prompt"]: RecordedPrompt(tuple(int(i) for i in p["ids"]), int(p["new_tokens"]))
                   for p in doc["prompts"]}
        return cls(str(doc["model"]), prompts, str(doc.get("source", "")))

    def to_json(self) -> dict[str, Any]:
        return {"schema": RECORDING_SCHEMA, "model": self.model, "source": self.source,
                "prompts": [{"prompt": k, "ids": list(v.ids), "new_tokens": v.new_tokens}
                            for k, v in self.prompts.items()]}

    def lookup(self, prompt: str) -> RecordedPrompt:
        try:
            return self.prompts[prompt]
        except KeyError:
            raise ValueError(f"prompt not in the recording of {self.model!r} (random weights can only run "
                             f"recorded prompts): {prompt[:120]!r}") from None


class TorchCaptioner(TorchVariant):
    """One causal LM on transformers; ``infer`` captions the whole batch in one ``generate`` call."""

    default_gpu_dtype = "bfloat16"

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self.max_tokens = int(self.param("max_tokens", MAX_TOKENS))
        self.style = str(self.param("prompt_style", "chatml"))
        self.instruction = self.param("instruction", None)
        self.primer = str(self.param("primer", PRIMER))
        self.system = str(self.param("system", SYSTEM))
        self.max_context_chars = int(self.param("max_context_chars", MAX_CONTEXT_CHARS))
        self.stop = [str(s) for s in self.param("stop", _STOP)]
        self.qa_max_tokens = int(self.param("qa_max_tokens", QA_MAX_TOKENS))
        self.qa_shots = int(self.param("qa_shots", len(SHOTS)))
        self.weights = str(self.param("weights", "gguf"))
        self.cache = str(self.param("cache", "static"))
        for key, value, allowed in (("prompt_style", self.style, STYLES), ("weights", self.weights, WEIGHTS),
                                    ("cache", self.cache, CACHES)):
            if value not in allowed:
                raise spec.spec_error(f".params.{key}", f"must be one of {allowed}, got {value!r}")
        if self.weights == "random" and not self.param("recording", ""):
            raise spec.spec_error(".params.recording",
                                  "random weights need a recording of the prompts' token ids (no tokenizer travels)")
        self._tokenizer: Any = None
        self._recording: Recording | None = None
        self._device: Any = None

    # --- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        import torch

        self._device, dtype = self.torch_setup()
        if self.weights == "random":
            from transformers import AutoModelForCausalLM

            self._recording = Recording.load(Path(str(self.param("recording", ""))))
            torch.manual_seed(RANDOM_SEED)
            with self._device:  # initialise on the device: a 270M model's init is seconds on one core
                custom = str(self.param("arch_config", ""))
                config = arch_config(self.model_name(), Path(custom) if custom else None)
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = self._load_gguf(dtype)
        self._model = model.to(self._device).eval()

    def _load_gguf(self, dtype):  # -> transformers model (dequantised)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = model_files(self.model_name()).weights
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tok.padding_side = "left"  # a batch of prompts must end together: generation continues them
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._tokenizer = tok
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)

    def unload(self) -> None:
        self._tokenizer = None
        self._recording = None
        super().unload()

    # --- serving ---------------------------------------------------------------------------------

    def prompt(self, payload: Payload) -> tuple[str, list[str]]:
        """The prompt for one request (as the llama.cpp variant builds it) and the labels it names."""
        if payload.question is not None:
            return build_qa_prompt(payload, self.style, self.qa_shots), prompt_labels(payload)
        if self.instruction is None:
            labels = prompt_labels(payload)
            return build_prompt(labels, self.style), labels
        return build_instruction_prompt(str(self.instruction), payload, self.style, self.system, self.primer,
                                        self.max_context_chars), []

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        import torch

        model = self._require_loaded()
        if not batch:
            return []
        prompts = [self.prompt(p) for p in batch]
        # no_grad, not inference_mode: torch.compile's CUDA graphs (static cache) are captured under it
        with torch.no_grad():
            if self._recording is not None:
                return self._infer_recorded(model, batch, prompts)
            out: list[StageOutput | None] = [None] * len(batch)
            for asked in (True, False):  # questions and captions: their budgets and stops differ
                rows = [i for i, p in enumerate(batch) if (p.question is not None) == asked]
                if rows:
                    done = self._infer_real(model, [batch[i] for i in rows], [prompts[i] for i in rows])
                    for i, o in zip(rows, done, strict=True):
                        out[i] = o
            return [o for o in out if o is not None]

    def budget(self, payload: Payload) -> int:
        """The most tokens one request may generate: an answer's or a caption's."""
        return self.qa_max_tokens if payload.question is not None else self.max_tokens

    def _generate(self, model, input_ids, attention_mask, **kwargs):  # -> LongTensor [B, prompt + new]
        extra: dict[str, Any] = {}
        if self.cache == "static":  # one length for answers and captions: a new length would recompile
            extra = {"cache_implementation": "static",
                     "max_cache_len": max(MAX_PROMPT_TOKENS, int(input_ids.shape[1]))
                     + max(self.max_tokens, self.qa_max_tokens)}
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                              num_beams=1, **extra, **kwargs)

    def _infer_real(self, model, batch: Sequence[Payload], prompts: list[tuple[str, list[str]]]) -> list[StageOutput]:
        """One generate call for requests of one kind (all questions or all captions)."""
        tok = self._tokenizer
        asked = batch[0].question is not None
        budget, stops = (self.qa_max_tokens, QA_STOP) if asked else (self.max_tokens, self.stop)
        enc = tok([p for p, _ in prompts], return_tensors="pt", padding=True).to(self._device)
        out = self._generate(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=budget,
                             stop_strings=stops, tokenizer=tok, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:].cpu().tolist()
        ends = {tok.pad_token_id, tok.eos_token_id}
        captions: list[StageOutput] = []
        for ids, (_, labels), payload in zip(new, prompts, batch, strict=True):
            n = next((i for i, t in enumerate(ids) if t in ends), len(ids))
            text = tok.decode(ids[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if asked:  # as llama.cpp's stop: the answer ends before the first stop string
                cut = min((text.find(s) for s in stops if s in text), default=len(text))
                captions.append(Caption(clean_answer(text[:cut]), n, tuple(labels), payload.question))
                continue
            stopped = n < budget or any(s in text for s in stops)
            captions.append(Caption(first_sentence(text, stopped=stopped, primer=self.primer), n, tuple(labels)))
        return captions

    def _infer_recorded(self, model, batch: Sequence[Payload],
                        prompts: list[tuple[str, list[str]]]) -> list[StageOutput]:
        import torch

        assert self._recording is not None
        recorded = [self._recording.lookup(p) for p, _ in prompts]
        width = max(len(r.ids) for r in recorded)
        pad = int(model.config.pad_token_id or 0)
        ids = torch.tensor([[pad] * (width - len(r.ids)) + list(r.ids) for r in recorded], device=self._device)
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in recorded], device=self._device)
        steps = max(1, *(min(r.new_tokens, self.budget(p)) for r, p in zip(recorded, batch, strict=True)))
        out = self._generate(model, ids, mask, min_new_tokens=steps, max_new_tokens=steps, pad_token_id=pad)
        generated = int(out.shape[1]) - width  # the batch runs until its longest recorded caption is done
        return [Caption(f"[random weights: {r.new_tokens} tokens recorded, {generated} generated in the batch]",
                        min(r.new_tokens, self.budget(p), generated), tuple(labels), p.question)
                for r, (_, labels), p in zip(recorded, prompts, batch, strict=True)]


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> TorchCaptioner:
    return TorchCaptioner(spec, threads=threads, device=device)
