"""Greedy decoding of several prompts in one llama.cpp batch, over a cached shared prefix.

``Llama.create_completion`` decodes one sequence at a time, so every generated
token reads all the weights for one row of activations. Here every prompt of
a batch is a sequence of one llama.cpp context (``n_seq_max`` sequences) and
each step decodes the next token of every unfinished sequence in one
``llama_decode`` call: the weights are read once per step for the whole
batch. Each sequence ends on its own (end-of-generation token, a stop string
or its token budget) and drops out of the following steps.

The prompt prefix every request shares (system message, instruction) is
evaluated once, kept in sequence 0 across calls, and copied into each
request's sequence, so only the request's own tokens are evaluated.

Same output as the sequential path, bit for bit (measured: benchmarks/README.md,
issue 19). llama.cpp's CPU kernels are not batch-invariant: a one-token call,
a small call and a large one round differently, and with these 4-bit models
a rounding difference flips a greedy choice in about one caption in three (so
does switching flash attention on). What keeps them equal here:

* one KV stream per sequence (``kv_unified=False``): a sequence's cells sit at
  the same offsets as in the sequential context, and its attention is a
  one-query product in a decode step, as in sequential generation. (In one
  unified cache, cells land wherever the batch put them: 42 of 60 captions
  matched.) llama.cpp copies streams whole, so the prefix stream is copied
  and then cut to the tokens the prompt shares;
* each prompt's own tokens evaluated in one call of their own, at least two
  tokens, as the sequential path evaluates a prompt in one call;
* the prefix only where splitting a prompt there gives the same numbers
  (SmolLM2's Q4_1 weights; not Gemma-3's Q4_K_M mix: ``prefix_cache`` param);
* greedy choice as llama.cpp's greedy sampler (the first maximum, as
  ``numpy.argmax``; the sequential sampler chain adds a no-op repetition
  penalty), and each sequence's end decided by ``create_completion``'s rules
  in its order (``_Ending``).

The context has its own KV cache over the weights of an existing ``Llama``
(``_internals.LlamaContext`` registers itself with the model, which frees it
first when the ``Llama`` is closed). It grows when a batch needs more or
longer sequences than it has room for, which evaluates the prefix again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Completion", "BatchTiming", "BatchDecoder", "prompt_tokens", "shared_length", "sum_timings"]

# Tokens per llama_decode call (llama.cpp's logical and physical batch): the
# sequential path's n_batch default in llama-cpp-python.
N_BATCH = 512
# Sequences of one context beside the prefix's; a larger batch is decoded in chunks of this
# many. The profiler's largest batch (DEFAULT_BATCHES) is 16.
MAX_SEQUENCES = 16
# A stream's KV cells are a multiple of llama.cpp's KV padding (256 cells in this version):
# a caption (about 50 prompt tokens and 24 new ones) fits one stream of 256. A cell costs
# 18-23 KB for these two models (layers x K and V width x fp16).
KV_PAD = 256
PREFIX_SEQ = 0  # the sequence that holds the shared prefix between calls
# (bytes, lead-byte pattern) of UTF-8 multi-byte characters, as create_completion checks them.
_MULTIBYTE = ((2, 192), (3, 224), (4, 240))


@dataclass(frozen=True)
class Completion:
    """One sequence's result, as ``create_completion`` reports it."""

    text: str  # the generated text, cut before the first stop string
    tokens: int  # tokens generated, the end-of-generation token not counted ("completion_tokens")
    finish_reason: str  # "stop" (end-of-generation token or stop string) or "length"


@dataclass(frozen=True)
class BatchTiming:
    """Where the last ``complete`` call spent its time."""

    sequences: int
    prompt_tokens: int  # all prompts' tokens
    evaluated_tokens: int  # prompt tokens evaluated in this call (the rest came from the cached prefix)
    generated_tokens: int  # tokens decoded after the prompts
    steps: int  # decode steps after the prompts (the longest sequence's)
    prompt_s: float  # evaluating the prompts (and the prefix, when the context was (re)built)
    generate_s: float


def prompt_tokens(llm, prompt: str) -> list[int]:  # type: ignore[no-untyped-def]
    """The tokens ``Llama.create_completion`` feeds for ``prompt`` (its BOS/EOS rules, specials parsed)."""
    model = llm._model
    bos = model.token_cls() if model.token_cls() != -1 else llm.token_bos()
    head = [bos] if model.add_bos_token() and bos != -1 else []
    sep = model.token_sep()
    tail = [sep if sep != -1 else llm.token_eos()] if (model.add_eos_token() or sep != -1) else []
    return head + llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) + tail


def shared_length(prompt: Sequence[int], prefix: Sequence[int]) -> int:
    """How many leading tokens of ``prompt`` can come from the cached ``prefix``.

    The longest common prefix, leaving at least two of the prompt's tokens to
    evaluate: the last gives the first new token's logits, and a one-token call
    would round differently from the sequential path's call on the whole prompt.
    """
    n = 0
    for a, b in zip(prompt, prefix, strict=False):
        if a != b:
            break
        n += 1
    return min(n, max(0, len(prompt) - 2))


class _Ending:
    """One sequence's end, decided token by token as ``create_completion`` decides it.

    Same order of checks: end-of-generation token; append; hold back while a
    UTF-8 character is incomplete (which also skips the budget check, as
    there); first stop string in list order found in the text; token budget.
    """

    def __init__(self, budget: int, stop: Sequence[bytes], detokenize: Callable[[list[int]], bytes]) -> None:
        self.budget = budget
        self.stop = stop
        self.detokenize = detokenize
        self.tokens: list[int] = []
        self.text = b""
        self.finish = ""
        self._multibyte = 0

    @property
    def done(self) -> bool:
        return bool(self.finish)

    def push(self, token: int, end_of_generation: bool) -> bool:
        """Take the next greedy token; True when the sequence has ended (then ``token`` is not fed)."""
        if end_of_generation:
            return self._end(self.detokenize(self.tokens), "stop")
        self.tokens.append(token)
        text = self.detokenize(self.tokens)
        for k, char in enumerate(text[-3:]):
            for num, pattern in _MULTIBYTE:
                if num > 3 - k and pattern & char == pattern:
                    self._multibyte = num - (3 - k)
        if self._multibyte > 0:
            self._multibyte -= 1
            return False
        found = [s for s in self.stop if s in text]
        if found:
            return self._end(text[: text.index(found[0])], "stop")
        if len(self.tokens) >= self.budget:
            return self._end(text, "length")
        return False

    def _end(self, text: bytes, reason: str) -> bool:
        self.text, self.finish = text, reason
        return True

    def completion(self) -> Completion:
        return Completion(self.text.decode("utf-8", errors="ignore"), len(self.tokens), self.finish)


@dataclass
class _Entry:
    """One token of a llama_batch."""

    token: int
    pos: int
    seq: int
    logits: bool


class BatchDecoder:
    """Greedy completions of many prompts at once over one ``Llama``'s weights.

    ``n_ctx_seq`` is each sequence's context (prompt plus answer), as the
    sequential path's ``n_ctx``; ``prefix`` the tokens every prompt is
    expected to start with. Not thread-safe: one ``complete`` at a time (the
    stage runs one batch at a time).
    """

    def __init__(self, llm, threads: int, n_ctx_seq: int, prefix: Sequence[int] = (),  # type: ignore[no-untyped-def]
                 max_step_rows: int = MAX_SEQUENCES) -> None:
        self._llm = llm
        self._threads = threads
        self._n_ctx_seq = n_ctx_seq
        self._prefix = list(prefix)
        self._max_step_rows = max(1, max_step_rows)
        self._n_vocab = llm.n_vocab()
        self._ctx = None
        self._batch = None
        self._cells = 0
        self._seqs = 0
        self._held: dict[int, int] = {}  # sequence -> prefix tokens its stream holds from an earlier batch
        self._built_s = 0.0  # time spent (re)building the context and its prefix in the current call
        self.last_timing: BatchTiming | None = None

    @property
    def prefix_tokens(self) -> int:
        return len(self._prefix)

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
        if self._batch is not None:
            self._batch.close()
        self._ctx = self._batch = None
        self._held = {}

    def complete(self, prompts: Sequence[Sequence[int]], max_tokens: int, stop: Sequence[str]) -> list[Completion]:
        """Greedy completions of ``prompts`` (token lists), each ending on its own."""
        out: list[Completion] = []
        timings = []
        for start in range(0, len(prompts), MAX_SEQUENCES):
            out.extend(self._complete(prompts[start:start + MAX_SEQUENCES], max_tokens, stop))
            timings.append(self.last_timing)
        self.last_timing = sum_timings([t for t in timings if t is not None])
        return out

    def _complete(self, prompts: Sequence[Sequence[int]], max_tokens: int, stop: Sequence[str]) -> list[Completion]:
        budgets = [self._budget(p, max_tokens) for p in prompts]
        shared = [shared_length(p, self._prefix) for p in prompts]
        self._built_s = 0.0
        self._ensure(max([len(self._prefix)] + [len(p) + b for p, b in zip(prompts, budgets, strict=True)]),
                     len(prompts) + (1 if self._prefix else 0))
        stops = [s.encode("utf-8") for s in stop]
        endings = [_Ending(b, stops, self._detokenizer(p)) for p, b in zip(prompts, budgets, strict=True)]
        first = PREFIX_SEQ + 1 if self._prefix else 0  # no prefix: no stream kept for it
        seqs = [first + i for i in range(len(prompts))]
        t0 = time.perf_counter()
        try:
            nxt = [self._prefill(p, k, seq) for p, k, seq in zip(prompts, shared, seqs, strict=True)]
            t1 = time.perf_counter()
            steps = self._generate(endings, nxt, [len(p) for p in prompts], seqs)
        finally:
            self._release(seqs, shared)
        self.last_timing = BatchTiming(
            sequences=len(prompts), prompt_tokens=sum(len(p) for p in prompts),
            evaluated_tokens=sum(len(p) - k for p, k in zip(prompts, shared, strict=True)),
            generated_tokens=sum(len(e.tokens) for e in endings), steps=steps,
            prompt_s=t1 - t0 + self._built_s, generate_s=time.perf_counter() - t1)
        return [e.completion() for e in endings]

    def _prefill(self, prompt: Sequence[int], shared: int, seq: int) -> int:
        """Put ``prompt`` in ``seq`` (its first ``shared`` tokens from the prefix); the greedy first token.

        A stream keeps the prefix between batches; llama.cpp copies streams whole,
        so a stream that holds too little of it gets the prefix's stream again.
        """
        import llama_cpp

        mem = self._ctx.memory
        if shared > self._held.get(seq, 0):
            llama_cpp.llama_memory_seq_cp(mem, PREFIX_SEQ, seq, -1, -1)
        llama_cpp.llama_memory_seq_rm(mem, seq, shared, -1)
        self._held[seq] = shared
        # One prompt per call, as the sequential path evaluates a prompt in one call.
        (token,) = self._decode([_Entry(tok, pos, seq, pos == len(prompt) - 1) for pos, tok in enumerate(prompt)
                                 if pos >= shared])
        return token

    def _generate(self, endings: list[_Ending], nxt: list[int], lengths: list[int], seqs: list[int]) -> int:
        """Decode one token of every unfinished sequence per step until all have ended; the number of steps."""
        import llama_cpp

        vocab = self._llm._model.vocab
        steps = 0
        while True:
            feed = [i for i, (ending, token) in enumerate(zip(endings, nxt, strict=True))
                    if not ending.done and not ending.push(token, llama_cpp.llama_vocab_is_eog(vocab, token))]
            if not feed:
                return steps
            for part in _even_parts(feed, self._max_step_rows):
                step = self._decode([_Entry(nxt[i], lengths[i] + len(endings[i].tokens) - 1, seqs[i], True)
                                     for i in part])
                for i, token in zip(part, step, strict=True):
                    nxt[i] = token
            steps += 1

    def _release(self, seqs: list[int], shared: list[int]) -> None:
        """Cut each sequence back to the prefix it shares: the next batch starts from there."""
        import llama_cpp

        for seq, k in zip(seqs, shared, strict=True):
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq, k, -1)

    def _budget(self, prompt: Sequence[int], max_tokens: int) -> int:
        """``max_tokens`` cut to the sequence's context, as create_completion cuts it."""
        if len(prompt) >= self._n_ctx_seq:
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self._n_ctx_seq}")
        if max_tokens <= 0:
            return self._n_ctx_seq - len(prompt)
        return max_tokens if max_tokens + len(prompt) < self._n_ctx_seq else self._n_ctx_seq - len(prompt)

    def _detokenizer(self, prompt: Sequence[int]) -> Callable[[list[int]], bytes]:
        prev = list(prompt)
        return lambda tokens: self._llm.detokenize(tokens, prev_tokens=prev)

    def _ensure(self, cells: int, seqs: int) -> None:
        """A context with ``seqs`` streams of at least ``cells`` KV cells each, the prefix evaluated in stream 0."""
        if self._ctx is not None and cells <= self._cells and seqs <= self._seqs:
            return
        t0 = time.perf_counter()
        self._build(_round_up(max(cells, self._cells), KV_PAD), max(seqs, self._seqs))
        if self._prefix:
            self._decode([_Entry(tok, pos, PREFIX_SEQ, pos == len(self._prefix) - 1)
                          for pos, tok in enumerate(self._prefix)])
        self._built_s = time.perf_counter() - t0

    def _build(self, cells: int, seqs: int) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        self.close()
        # The sequential context's settings (attention kind, RoPE, KV types), with a stream per sequence.
        params = llama_cpp.llama_context_params.from_buffer_copy(self._llm.context_params)
        params.n_ctx = cells * seqs
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = seqs
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = self._threads
        with suppress_stdout_stderr(disable=self._llm.verbose):
            self._ctx = _internals.LlamaContext(model=self._llm._model, params=params, verbose=self._llm.verbose)
        self._batch = _internals.LlamaBatch(n_tokens=N_BATCH, embd=0, n_seq_max=1, verbose=self._llm.verbose)
        self._cells = llama_cpp.llama_n_ctx(self._ctx.ctx) // seqs
        self._seqs = seqs

    def _decode(self, entries: Sequence[_Entry]) -> list[int]:
        """Evaluate ``entries`` in llama_batches of up to N_BATCH; the greedy token after each one marked."""
        import llama_cpp

        batch = self._batch.batch
        out = []
        for start in range(0, len(entries), N_BATCH):
            chunk = entries[start:start + N_BATCH]
            for j, e in enumerate(chunk):
                batch.token[j] = e.token
                batch.pos[j] = e.pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = e.seq
                batch.logits[j] = e.logits
            batch.n_tokens = len(chunk)
            code = llama_cpp.llama_decode(self._ctx.ctx, batch)
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code} for {len(chunk)} tokens "
                                   f"({self._cells} KV cells, {self._seqs} sequences)")
            for j, e in enumerate(chunk):
                if e.logits:
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, j),
                                                   shape=(self._n_vocab,))
                    out.append(int(np.argmax(logits)))
        return out


def _even_parts(items: list[int], most: int) -> list[list[int]]:
    """``items`` in as few parts of at most ``most`` as possible, of sizes differing by one at most."""
    parts = -(-len(items) // most)
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (p < extra)
        out.append(items[start:end])
        start = end
    return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def sum_timings(parts: Sequence[BatchTiming]) -> BatchTiming | None:
    if not parts:
        return None
    return BatchTiming(*(sum(getattr(t, f) for t in parts) for f in BatchTiming.__dataclass_fields__))
