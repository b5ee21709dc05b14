"""Synthetic profiles for tests, fixtures and the solve-time benchmark.

Shapes follow what the profiler measures: per (variant, batch, hardware) a
latency l(b) = α + β·b with p50 < p95 < p99, throughput b / mean latency, and an
accuracy that grows with the variant's cost. On ``gpu:<model>`` the batch costs
little per item (l(b) nearly flat in b) and ``memory_mb`` is the peak GPU memory
at that batch: weights plus activations that grow with b. Deterministic for a
given seed. Pure: returns records, writes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from varipipe.records import Profile, ProfilePoint

__all__ = ["synthetic_profile", "vision_caption_like", "vision_caption_gpu_like", "DEFAULT_BATCHES", "GPU_BATCHES",
           "SYNTHETIC_GPU"]

DEFAULT_BATCHES = (1, 2, 4, 8, 16)
# Percentile spread relative to the mean batch latency: a plausible CPU tail
# (the profiler sees p99/mean of 1.2–1.6 on the vision models).
_P50, _P95, _P99 = 0.95, 1.2, 1.4
# A second core speeds a batch up by ~1/0.6 (intra-op threading is not linear).
_TWO_CORE_SPEEDUP = 0.6
_SOURCE = "synthetic (varipipe.adapter.synthetic)"
# A synthetic GPU's shape relative to one core (not a measurement): the batch's fixed
# part (launches, the framework's overhead) stays at this share of the core's, each
# item costs this share of a core's per-item time. Issue 19 measured a nearly flat
# curve on an H200 (the LLMs' 16 new tokens: 99 ms at batch 1, 84 ms at batch 32).
_GPU_FIXED_SHARE = 0.5
_GPU_PER_ITEM_SHARE = 0.02
# Synthetic GPU memory (MiB): weights per unit of the variant's batch-1 latency (s),
# and activations per item per unit of per-item latency; about 1 GiB for a 10 ms model.
_GPU_WEIGHTS_MB_PER_S = 1.0e5
_GPU_ACTIVATIONS_MB_PER_S = 2.0e4
# CPU points' memory_mb (resident memory), unused by the optimizer.
_CPU_MEMORY_MB = 100.0


def _point(stage: str, variant: str, batch: int, hw: str, alpha: float, beta: float, acc: float) -> ProfilePoint:
    memory = _CPU_MEMORY_MB
    if hw.startswith("gpu:"):
        memory = _GPU_WEIGHTS_MB_PER_S * (alpha + beta) + _GPU_ACTIVATIONS_MB_PER_S * beta * batch
        alpha, beta = alpha * _GPU_FIXED_SHARE, beta * _GPU_PER_ITEM_SHARE
    scale = _TWO_CORE_SPEEDUP if hw == "cpu:2" else 1.0
    mean = (alpha + beta * batch) * scale
    return ProfilePoint(
        stage=stage, variant=variant, batch=batch, hardware=hw,
        latency_p50_s=mean * _P50, latency_p95_s=mean * _P95, latency_p99_s=mean * _P99,
        throughput_rps=batch / mean, memory_mb=round(memory, 1), samples=200, accuracy=round(acc, 4),
        accuracy_kind="declared", accuracy_source=_SOURCE, latency_mean_s=mean,
    )


def synthetic_profile(n_stages: int, n_variants: int, batches: Sequence[int] = DEFAULT_BATCHES,
                      hardware: Sequence[str] = ("cpu:1",), seed: int = 0, base_latency_s: float = 0.01,
                      fanout: Mapping[str, float] | None = None, pipeline: str = "synthetic") -> Profile:
    """``n_stages`` × ``n_variants`` × batches × hardware points with random but sane numbers."""
    rng = random.Random(seed)
    points = []
    for s in range(n_stages):
        stage = f"stage{s}"
        base = base_latency_s * rng.uniform(0.5, 2.0)
        for v in range(n_variants):
            b1 = base * (1.0 + v * rng.uniform(0.3, 0.8))
            alpha = b1 * rng.uniform(0.3, 0.7)
            acc = min(0.99, 0.5 + 0.45 * (v + 1) / n_variants + rng.uniform(-0.02, 0.02))
            for hw in hardware:
                for b in batches:
                    points.append(_point(stage, f"v{v}", b, hw, alpha, b1 - alpha, acc))
    return Profile(pipeline=pipeline, points=tuple(points), fanout=dict(fanout or {}),
                   metadata={"source": _SOURCE, "seed": seed})


# (variant, batch-1 latency s, share of it that does not grow with the batch, accuracy)
# Latencies: DESIGN §6 measurements on this machine kind; LLM: ~64 tokens at
# ~106 tok/s for SmolLM2, Gemma-3-270M ~1.7x slower; llama.cpp loops over a batch.
_VISION_CAPTION = {
    "detector": [("yolov3-tiny-320", 0.028, 0.5, 0.55), ("yolov3-tiny-416", 0.037, 0.5, 0.62),
                 ("yolov3-tiny-608", 0.077, 0.5, 0.68)],
    "classifier": [("mobilenetv2", 0.0039, 0.5, 0.72), ("efficientnet-lite0", 0.0050, 0.5, 0.75),
                   ("efficientnet-lite1", 0.0087, 0.5, 0.77), ("efficientnet-lite2", 0.0177, 0.5, 0.80)],
    "llm": [("smollm2-135m", 0.60, 0.02, 0.60), ("gemma3-270m", 1.02, 0.02, 0.66)],
}


def vision_caption_like(batches: Sequence[int] = DEFAULT_BATCHES,
                        hardware: Sequence[str] = ("cpu:1", "cpu:2")) -> Profile:
    """A profile shaped like the flagship vision-caption pipeline (3 / 4 / 2 variants)."""
    points = []
    for stage, variants in _VISION_CAPTION.items():
        for name, b1, fixed_share, acc in variants:
            alpha = b1 * fixed_share
            for hw in hardware:
                for b in batches:
                    points.append(_point(stage, name, b, hw, alpha, b1 - alpha, acc))
    return Profile(pipeline="vision-caption", points=tuple(points),
                   metadata={"source": _SOURCE, "shape": "vision-caption (DESIGN §6 latencies)"})


# The flagship on a GPU, synthetic: (variant, batch latency's fixed part s, per item s,
# weights MiB, activations MiB per item, first-call compile s). Shaped by issue 19's H200
# figures, not measured: the LLMs' 16 new tokens took 99 ms at batch 1 and 84 ms at batch 32
# with a static KV cache, so a ~64-token caption is ~0.4 s nearly flat in the batch, and the
# first call compiled for 31-52 s; the vision models take a few ms per batch. Memory: fp16
# weights plus activations (the LLMs' KV cache) growing with the batch.
_VISION_CAPTION_GPU = {
    "detector": [("yolov3-tiny-320", 0.003, 0.0004, 40, 12, 1.0), ("yolov3-tiny-416", 0.004, 0.0007, 40, 20, 1.0),
                 ("yolov3-tiny-608", 0.006, 0.0015, 40, 45, 1.0)],
    "classifier": [("mobilenetv2", 0.002, 0.0001, 15, 6, 0.5), ("efficientnet-lite0", 0.0025, 0.00015, 20, 8, 0.5),
                   ("efficientnet-lite1", 0.003, 0.0002, 25, 11, 0.5),
                   ("efficientnet-lite2", 0.0035, 0.0003, 30, 16, 0.5)],
    "llm": [("smollm2-135m", 0.40, 0.002, 300, 40, 31.0), ("gemma3-270m", 0.55, 0.003, 600, 60, 52.0)],
}
GPU_BATCHES = (1, 2, 4, 8, 16, 32)
SYNTHETIC_GPU = "gpu:h200"
# One H200's memory as torch reports it (141 GiB class): what the GPU profiler writes into
# metadata.device.gpu_memory_mib; the synthetic profile carries it the same way.
_H200_MEMORY_MIB = 143771
# Synthetic replica start on the GPU (the GPU profiler's metadata.replica_start shape):
# weights to the device, then three timed warm-up calls per batch size; a new batch size
# recompiles a tenth of the first compile.
_GPU_LOAD_S = 2.0
_WARM_CALL_S = 0.01
_RECOMPILE_SHARE = 0.1


def _gpu_point(stage: str, variant: str, batch: int, fixed: float, per_item: float, weights: float,
               activations: float, acc: float) -> ProfilePoint:
    mean = fixed + per_item * batch
    return ProfilePoint(
        stage=stage, variant=variant, batch=batch, hardware=SYNTHETIC_GPU,
        latency_p50_s=mean * _P50, latency_p95_s=mean * _P95, latency_p99_s=mean * _P99,
        throughput_rps=batch / mean, memory_mb=float(weights + activations * batch), samples=200, accuracy=acc,
        accuracy_kind="declared", accuracy_source=_SOURCE, latency_mean_s=mean)


def _replica_start(compile_s: float) -> dict:
    warm = {str(b): [round(compile_s * _RECOMPILE_SHARE, 3) if b > 1 else _WARM_CALL_S, _WARM_CALL_S, _WARM_CALL_S]
            for b in GPU_BATCHES}
    model_warmup = [compile_s, _WARM_CALL_S, _WARM_CALL_S]
    cold = _GPU_LOAD_S + sum(model_warmup) + sum(warm["1"])
    return {"load_s": _GPU_LOAD_S, "model_warmup_s": model_warmup, "warmup_s": warm, "first_batch": 1,
            "cold_start_s": round(cold, 3)}


def vision_caption_gpu_like() -> Profile:
    """:func:`vision_caption_like` (cpu:1, cpu:2) plus every variant on a synthetic ``gpu:h200``,
    with the GPU profiler's metadata: one GPU's memory and each GPU replica's start-up."""
    cpu = vision_caption_like()
    accuracy = {(stage, name): acc for stage, variants in _VISION_CAPTION.items() for name, *_, acc in variants}
    points, starts = list(cpu.points), {}
    for stage, variants in _VISION_CAPTION_GPU.items():
        for name, fixed, per_item, weights, activations, compile_s in variants:
            points += [_gpu_point(stage, name, b, fixed, per_item, weights, activations, accuracy[stage, name])
                       for b in GPU_BATCHES]
            starts[f"{stage}/{name}/{SYNTHETIC_GPU}"] = _replica_start(compile_s)
    return Profile(pipeline="vision-caption", points=tuple(points), metadata={
        "source": _SOURCE, "shape": "vision-caption (DESIGN §6 latencies) with a synthetic H200-like GPU (issue 19)",
        "device": {"gpu": "synthetic H200-like", "gpu_memory_mib": _H200_MEMORY_MIB}, "replica_start": starts})
