"""What one llama.cpp decode step costs per sequence, by the number of sequences in the call.

    python benchmarks/llm_decode_steps.py [--pipeline vision-caption] [--rows 1,2,3,4,8,16] [--steps 12]
                                          [--threads 1] [--out FILE]

For every llama.cpp LLM variant of the pipeline: the batched decoder's context with
16 sequences, each holding the same caption prompt (chelsea's labels), then
``--steps`` decode calls of one token for each of ``rows`` sequences; the
median call time and its share per sequence. Beside it, one-token calls on
the sequential path's own context (``Llama.eval``): the baseline. Batched
decoding pays when the per-sequence cost falls with the rows; where the
matrix-vector kernels are compute-bound it barely falls. Writes
benchmarks/results/llm_decode_steps.json. Run under the shared lock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants._llama_batch import BatchDecoder, _Entry, prompt_tokens
from varipipe.profiler.measure import raise_priority
from varipipe.spec import find_spec

RESULTS = Path(__file__).resolve().parent / "results" / "llm_decode_steps.json"
LABELS = "tabby cat, barber chair"  # chelsea's labels from the default detector and classifier
TOKEN = 1000  # any ordinary token: the cost of a step does not depend on which


def _median_s(fn, steps: int) -> float:  # type: ignore[no-untyped-def]
    """Median time of ``fn(i)`` for i = 1..steps, after one untimed call ``fn(0)``."""
    fn(0)
    times = []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(vspec, rows: list[int], steps: int, threads: int) -> dict:  # type: ignore[no-untyped-def]
    import llama_cpp

    variant = build_variant(vspec, threads=threads)
    variant.load()
    llm = variant._model
    prompt = prompt_tokens(llm, variant._prompt(Payload(text=LABELS))[0])
    decoder = BatchDecoder(llm, threads, variant.n_ctx, [])
    most = max(rows)
    decoder._ensure(len(prompt) + steps + 2, most)
    for seq in range(most):
        decoder._decode([_Entry(t, pos, seq, pos == len(prompt) - 1) for pos, t in enumerate(prompt)])
    out = {}
    for n in rows:
        call = _median_s(lambda i, n=n: decoder._decode([_Entry(TOKEN, len(prompt) + i, s, True)
                                                          for s in range(n)]), steps)
        for seq in range(most):
            llama_cpp.llama_memory_seq_rm(decoder._ctx.memory, seq, len(prompt), -1)
        out[n] = {"call_s": call, "per_sequence_s": call / n}
        print(f"  {vspec.name:<14} {n:>2} sequences: {call * 1e3:7.1f} ms a call, {call / n * 1e3:6.1f} ms each",
              flush=True)
    llm.reset()
    llm.eval(prompt)
    sequential = _median_s(lambda i: llm.eval([TOKEN]), steps)
    print(f"  {vspec.name:<14} sequential path: {sequential * 1e3:7.1f} ms a one-token call", flush=True)
    decoder.close()
    variant.unload()
    return {"variant": vspec.name, "prompt_tokens": len(prompt), "rows": out, "sequential_call_s": sequential}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="vision-caption", help="whose llama.cpp LLM variants to measure")
    parser.add_argument("--rows", default="1,2,3,4,8,16")
    parser.add_argument("--steps", type=int, default=12, help="timed calls per row count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=-10,
                        help="autogroup nice of this process, as `varipipe profile --nice` (0: leave it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    nice = raise_priority(args.nice) if args.nice else None
    rows = [int(r) for r in args.rows.split(",")]
    spec = find_spec(args.pipeline)
    results = [measure(v, rows, args.steps, args.threads) for v in spec.stage("llm").variants
               if v.runtime == "llama_cpp"]  # not the template rung: no model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/llm_decode_steps.py " + " ".join(sys.argv[1:]),
        "threads": args.threads, "steps": args.steps, "nice": nice,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "variants": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
