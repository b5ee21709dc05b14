"""Where the LLM stage's time goes: prompt evaluation vs generation, on the real prompts.

    python benchmarks/llm_tokens.py [--pipeline vision-caption] [--rounds 5] [--threads 1] [--nice -10]

For every LLM variant of the pipeline, on the profiler's own inputs (the
bundled photos through the default upstream variants, ``profiler.inputs``),
one request at a time on the sequential path (``infer_sequential``: one
``create_completion`` per request, the path the shipped profile measured):

* prompt tokens and tokens generated per request;
* llama.cpp's own split of each request (``llama_perf_context``): prompt
  evaluation (decode calls of more than one token) and generation (one token
  per call), and what is left of the wall time (tokenising, detokenising, the
  stop-string checks in Python);
* a latency model built from that split, ``latency = other + p * prompt_tokens
  + g * one_token_calls`` (``p``, ``g``: llama.cpp's time per prompt token and
  per one-token call over all requests; a request generating G tokens makes
  G - 1 such calls, G when it ends on the end-of-generation token), and its
  error on each request (a free regression is ill-posed here: the prompts
  differ by a few tokens only);
* the shipped profile's batch-1 ``cpu:<threads>`` point for the same variant
  beside the fit's prediction at the profile's mean token counts, and the
  profiler's host-speed reference loop now and when the profile was made:
  so a gap between the profile and a live run can be split into inputs
  (tokens) and host speed.

Medians per input over ``--rounds`` rounds after a warm-up round; rounds
interleave the inputs. Writes benchmarks/results/llm_tokens.json. Run under
the shared lock (it times things).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from varipipe.pipelines.variant import Payload, build_variant
from varipipe.profiler.inputs import payloads_for_stage, stage_inputs
from varipipe.profiler.measure import host_speed_reference_s, raise_priority
from varipipe.profiler.store import load_profile
from varipipe.spec import find_spec

RESULTS = Path(__file__).resolve().parent / "results" / "llm_tokens.json"
PROFILES = Path(__file__).resolve().parent.parent / "profiler" / "profiles"
STAGE = "llm"


@dataclass(frozen=True)
class RequestSplit:
    """One input's request on the sequential path: medians over the rounds."""

    request_id: str
    caption: str
    prompt_tokens: int
    generated_tokens: int
    wall_s: float
    prompt_eval_s: float  # llama.cpp: decode calls of more than one token (the prompt)
    generation_s: float  # llama.cpp: one-token decode calls (every generated token but the last)
    other_s: float  # wall - prompt_eval - generation: tokenising, detokenising, stop checks, Python
    cpu_share: float  # process CPU seconds / wall seconds (< 1 when other work took the core)


@dataclass(frozen=True)
class VariantSplit:
    variant: str
    threads: int
    requests: list[RequestSplit]
    mean_prompt_tokens: float
    mean_generated_tokens: float
    median_wall_s: float
    mean_wall_s: float
    share_prompt_eval: float  # of the summed wall time
    share_generation: float
    share_other: float
    s_per_prompt_token: float  # prompt_eval / prompt tokens evaluated
    s_per_generated_token: float  # generation / one-token calls
    mean_other_s: float
    model_mean_abs_error: float  # relative error of the latency model on each request's median wall
    profile_p50_s: float | None  # the shipped profile's batch-1 point on cpu:<threads>
    profile_mean_s: float | None
    profile_mean_generated_tokens: float | None
    ratio_profile_mean_to_now: float | None  # profile mean / this run's mean, same inputs and tokens


def _perf(llm) -> tuple[float, float, int, int]:  # type: ignore[no-untyped-def]
    import llama_cpp

    d = llama_cpp.llama_perf_context(llm.ctx)
    return d.t_p_eval_ms / 1e3, d.t_eval_ms / 1e3, d.n_p_eval, d.n_eval


def _one(variant, payload: Payload) -> tuple[float, float, tuple[float, float, int, int], object]:  # type: ignore[no-untyped-def]
    import llama_cpp

    llm = variant._require_loaded()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    c0, t0 = time.process_time(), time.perf_counter()
    (caption,) = variant.infer_sequential([payload])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, _perf(llm), caption


def measure_variant(vspec, payloads: list[Payload], rounds: int, threads: int, profile) -> VariantSplit:  # type: ignore[no-untyped-def]
    variant = build_variant(vspec, threads=threads)
    variant.load()
    llm = variant._require_loaded()
    from varipipe.pipelines.variants._llama_batch import prompt_tokens

    lengths = {p.request_id: len(prompt_tokens(llm, variant._prompt(p)[0])) for p in payloads}
    for p in payloads:  # warm-up round
        _one(variant, p)
    samples: dict[str, list] = {p.request_id: [] for p in payloads}
    for _ in range(rounds):
        for p in payloads:
            samples[p.request_id].append(_one(variant, p))
    variant.unload()
    requests = []
    for p in payloads:
        runs = samples[p.request_id]
        caption = runs[0][3]
        walls = [r[0] for r in runs]
        pe = statistics.median(r[2][0] for r in runs)
        ge = statistics.median(r[2][1] for r in runs)
        wall = statistics.median(walls)
        requests.append(RequestSplit(p.request_id, caption.text, lengths[p.request_id], caption.tokens, wall, pe, ge,
                                     wall - pe - ge, statistics.median(r[1] / r[0] for r in runs)))
    total = sum(r.wall_s for r in requests)
    point = _profile_point(profile, vspec.name, threads)
    out_tokens = (profile.metadata.get("output_tokens_mean", {}).get(f"{STAGE}/{vspec.name}")
                  if profile is not None else None)
    mean_prompt = statistics.mean(r.prompt_tokens for r in requests)
    all_runs = [r for p in payloads for r in samples[p.request_id]]
    per_prompt = sum(r[2][0] for r in all_runs) / max(1, sum(r[2][2] for r in all_runs))
    per_call = sum(r[2][1] for r in all_runs) / max(1, sum(r[2][3] for r in all_runs))
    other = statistics.mean(r.other_s for r in requests)
    calls = {p.request_id: statistics.median(r[2][3] for r in samples[p.request_id]) for p in payloads}
    errors = [abs(other + per_prompt * r.prompt_tokens + per_call * calls[r.request_id] - r.wall_s) / r.wall_s
              for r in requests]
    mean_wall = statistics.mean(r.wall_s for r in requests)
    return VariantSplit(
        variant=vspec.name, threads=threads, requests=requests,
        mean_prompt_tokens=mean_prompt, mean_generated_tokens=statistics.mean(r.generated_tokens for r in requests),
        median_wall_s=statistics.median(r.wall_s for r in requests),
        mean_wall_s=mean_wall,
        share_prompt_eval=sum(r.prompt_eval_s for r in requests) / total,
        share_generation=sum(r.generation_s for r in requests) / total,
        share_other=sum(r.other_s for r in requests) / total,
        s_per_prompt_token=per_prompt, s_per_generated_token=per_call, mean_other_s=other,
        model_mean_abs_error=statistics.mean(errors),
        profile_p50_s=point.latency_p50_s if point else None,
        profile_mean_s=point.mean_latency_s if point else None,
        profile_mean_generated_tokens=out_tokens,
        ratio_profile_mean_to_now=point.mean_latency_s / mean_wall if point else None,
    )


def _profile_point(profile, variant: str, threads: int):  # type: ignore[no-untyped-def]
    if profile is None:
        return None
    for p in profile.points:
        if p.stage == STAGE and p.variant == variant and p.batch == 1 and p.hardware == f"cpu:{threads}":
            return p
    return None


def _print(v: VariantSplit) -> None:
    print(f"\n{v.variant} (threads {v.threads})")
    print(f"  {'input':<28}{'prompt':>7}{'gen':>5}{'wall ms':>9}{'prompt ms':>10}{'gen ms':>8}{'other':>7}{'cpu':>6}")
    for r in v.requests:
        print(f"  {r.request_id:<28}{r.prompt_tokens:>7}{r.generated_tokens:>5}{r.wall_s * 1e3:>9.1f}"
              f"{r.prompt_eval_s * 1e3:>10.1f}{r.generation_s * 1e3:>8.1f}{r.other_s * 1e3:>7.1f}{r.cpu_share:>6.2f}")
    print(f"  mean tokens: prompt {v.mean_prompt_tokens:.1f}, generated {v.mean_generated_tokens:.2f}; "
          f"wall median {v.median_wall_s * 1e3:.1f} ms, mean {v.mean_wall_s * 1e3:.1f} ms")
    print(f"  share of wall: prompt eval {v.share_prompt_eval:.0%}, generation {v.share_generation:.0%}, "
          f"other {v.share_other:.0%}; {v.s_per_prompt_token * 1e3:.2f} ms per prompt token, "
          f"{v.s_per_generated_token * 1e3:.2f} ms per generated token")
    print(f"  model: {v.mean_other_s * 1e3:.1f} ms + {v.s_per_prompt_token * 1e3:.2f} ms x prompt tokens + "
          f"{v.s_per_generated_token * 1e3:.2f} ms x one-token calls: mean error {v.model_mean_abs_error:.1%}")
    if v.profile_p50_s is not None:
        print(f"  shipped profile b1 on these inputs: p50 {v.profile_p50_s * 1e3:.0f} ms, mean "
              f"{v.profile_mean_s * 1e3:.0f} ms at {v.profile_mean_generated_tokens:.2f} generated tokens "
              f"(this run: {v.mean_generated_tokens:.2f}): profile / now = {v.ratio_profile_mean_to_now:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="vision-caption")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds over all inputs (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=-10,
                        help="autogroup nice of this process, as `varipipe profile --nice` (0: leave it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    nice = raise_priority(args.nice) if args.nice else None
    spec = find_spec(args.pipeline)
    profile_path = PROFILES / f"{spec.name}.json"
    profile = load_profile(profile_path) if profile_path.exists() else None
    inputs = payloads_for_stage(spec, STAGE, stage_inputs(spec, threads=args.threads))
    ref_before = host_speed_reference_s()
    results = [measure_variant(v, inputs, args.rounds, args.threads, profile) for v in spec.stage(STAGE).variants
               if v.runtime == "llama_cpp"]  # not the template rung: no model
    ref_after = host_speed_reference_s()
    for r in results:
        _print(r)
    refs = [c.get("host_speed_ref_s") for k, c in (profile.metadata.get("conditions", {}) if profile else {}).items()
            if k.startswith(f"{STAGE}/") and c.get("host_speed_ref_s")]
    profile_ref = statistics.median(refs) if refs else None
    print(f"\nhost-speed reference loop: now {ref_before * 1e3:.2f} / {ref_after * 1e3:.2f} ms (before / after); "
          f"when the profile's LLM points were made: {profile_ref * 1e3 if profile_ref else float('nan'):.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/llm_tokens.py " + " ".join(sys.argv[1:]),
        "pipeline": spec.name, "rounds": args.rounds, "threads": args.threads, "nice": nice,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": str(profile_path.relative_to(PROFILES.parent.parent)) if profile else None,
        "host_speed_ref_s": {"before": ref_before, "after": ref_after, "profile_llm_points_median": profile_ref},
        "variants": [asdict(r) for r in results],
    }, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
