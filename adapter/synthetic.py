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

__all__ = ["synthetic_profile", "vision_caption_like", "DEFAULT_BATCHES"]

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
